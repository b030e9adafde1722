"""The stateless ``Attack`` base class and the attack registry.

An attack is a configured, stateless callable (foolbox's style): configure it once, call it on any number of
:class:`~gradleak.records.ServerView` objects. The base class owns ``__call__`` — it validates the view, seeds,
times and packages the :class:`~gradleak.records.Reconstruction`; a subclass writes :meth:`reconstruct`.
Subclasses are frozen dataclasses, so ``repr(attack)`` prints the full configuration and two attacks with
the same configuration compare equal. Attacks never grade themselves: :mod:`gradleak.metrics` does.

Examples
--------
>>> attack = ATTACKS.create("inverting-gradients", iterations=200)   # doctest: +SKIP
>>> reconstruction = attack(view, generator=torch.Generator().manual_seed(0))   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from gradleak.errors import GradleakError
from gradleak.records import Reconstruction, ServerView
from gradleak.registry import Registry

if TYPE_CHECKING:
    from gradleak.attacks.imprint.secrets import ImprintSecrets

__all__ = ["ATTACKS", "Attack", "AttackError"]


class AttackError(GradleakError, ValueError):
    """The view does not give the attack what it needs (e.g. labels for a known-label attack)."""


class Attack(ABC):
    """Base class of every attack; subclasses are ``@dataclass(frozen=True)`` and implement ``reconstruct``.

    Class attributes a subclass may set:

    ``name``
        Registry name (set by registration).
    ``needs_labels``
        The attack requires ``view.labels``.
    ``needs_recipe``
        The attack replays local training and requires ``view.recipe``.
    ``max_updates``
        Largest number of updates the attack accepts in one view (``None``: any).
    ``modifies_model``
        A malicious-server attack: it sends the clients a modified model (:meth:`modify_model`) and reads the
        updates with the secrets of that modification (``threat="malicious-model"`` in
        :func:`gradleak.audit.simulate_and_attack`).
    """

    name: ClassVar[str] = ""
    needs_labels: ClassVar[bool] = False
    needs_recipe: ClassVar[bool] = False
    max_updates: ClassVar[int | None] = 1
    modifies_model: ClassVar[bool] = False

    def __call__(self, view: ServerView, *, generator: torch.Generator | None = None) -> Reconstruction:
        """Validate ``view``, run :meth:`reconstruct` with a seeded generator, and package the result."""
        self.validate(view)
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        started = time.perf_counter()
        result = self.reconstruct(view, generator)
        elapsed = time.perf_counter() - started
        return dataclasses.replace(result, wall_time=elapsed, attack=self.name or type(self).__name__,
                                   config={**self.config(), **result.config})

    @abstractmethod
    def reconstruct(self, view: ServerView, generator: torch.Generator) -> Reconstruction:
        """The attack itself: images in ``[0, 1]`` pixel space, labels, trials, loss trace, iterations."""

    def modify_model(self, model: nn.Module, image_shape: tuple[int, int, int], *, public: Tensor | None = None,
                     generator: torch.Generator | None = None) -> tuple[nn.Module, ImprintSecrets]:
        """The model a malicious server sends instead of ``model`` and the secrets it keeps (for
        ``ServerView.secrets``). ``public``: normalised images the server holds (never the attacked ones)."""
        raise AttackError(f"{type(self).__name__} does not modify the model; it attacks honest updates "
                          "(use threat='honest' or 'informed')")

    def validate(self, view: ServerView) -> None:
        """Raise :class:`AttackError` when ``view`` lacks what this attack needs."""
        if not isinstance(view, ServerView):
            raise AttackError(f"{type(self).__name__} takes a ServerView, got {type(view).__name__}")
        if not view.updates:
            raise AttackError("the view holds no update to attack")
        if self.max_updates is not None and len(view.updates) > self.max_updates:
            raise AttackError(f"{type(self).__name__} attacks at most {self.max_updates} update(s) per view; "
                              f"this view holds {len(view.updates)}")
        if self.needs_labels and view.labels is None:
            raise AttackError(f"{type(self).__name__} needs the labels; the threat model does not grant them")
        if self.needs_recipe and view.recipe is None:
            raise AttackError(f"{type(self).__name__} replays local training and needs view.recipe")

    def config(self) -> dict[str, Any]:
        """The attack's configuration (dataclass fields)."""
        if dataclasses.is_dataclass(self):
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {}


ATTACKS: Registry[Attack] = Registry("attack", named=True)
