"""Gradient-inversion and malicious-server attacks; each registered by name in :data:`ATTACKS`."""

from gradleak.attacks.base import ATTACKS, Attack, AttackError

__all__ = ["ATTACKS", "Attack", "AttackError"]
