"""Privacy accounting for DP-SGD through Opacus's accountants (RDP, Mironov 2017; PRV, Gopi et al. 2021)."""

from __future__ import annotations

from typing import Literal

from gradleak.defenses.step import DPSGD

__all__ = ["dp_epsilon", "fl_dp_epsilon"]


def dp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
               accountant: Literal["rdp", "prv"] = "rdp") -> float:
    """ε of ``steps`` Poisson-subsampled Gaussian steps at ``sample_rate`` and ``noise_multiplier``, at δ.

    Computed by Opacus's ``RDPAccountant`` or ``PRVAccountant``.
    """
    try:
        from opacus.accountants import PRVAccountant, RDPAccountant
    except ImportError as exc:  # pragma: no cover - opacus is a dependency
        raise ImportError("DP accounting needs opacus: pip install opacus") from exc
    if not 0 < sample_rate <= 1 or steps < 1 or not 0 < delta < 1 or noise_multiplier <= 0:
        raise ValueError("need 0 < sample_rate <= 1, steps >= 1, 0 < delta < 1 and noise_multiplier > 0")
    acc = {"rdp": RDPAccountant, "prv": PRVAccountant}[accountant]()
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(acc.get_epsilon(delta=delta))


def fl_dp_epsilon(dp: DPSGD, *, num_examples: int, batch_size: int, steps_per_round: int, rounds: int,
                  delta: float, accountant: Literal["rdp", "prv"] = "rdp") -> float:
    """Per-client ε for a client that runs ``steps_per_round`` DP-SGD steps in each of ``rounds`` rounds.

    Sampling rate ``batch_size / num_examples`` per step, ``rounds · steps_per_round`` steps. Client
    sub-sampling by the server is not credited (conservative), and batches are treated as Poisson samples,
    as Opacus does.
    """
    return dp_epsilon(dp.noise_multiplier, min(1.0, batch_size / num_examples), rounds * steps_per_round,
                      delta, accountant)
