"""The ``Defense`` base class, its four stages, and the defense registry.

A defense is a frozen dataclass (its ``repr`` is its configuration) that says *where* it acts:

``model``
    changes the architecture the clients train (dropout rate, PRECODE, CVB): ``apply(model) -> new model``.
``step``
    transforms the gradient inside every local step (DP-SGD, per-step pruning): it is a
    :class:`gradleak.fl.StepTransform` placed in ``LocalRecipe.step_transforms``.
``update``
    transforms the update before it is sent: ``defense(update, generator) -> new update``.
``aggregate``
    changes what the server sees of a round's updates (secure aggregation).

Defenses never mutate their input; invalid parameters raise ``ValueError`` with the reason.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Literal, TypedDict

import torch
from torch import Tensor, nn

from gradleak.records import ClientUpdate
from gradleak.registry import Registry

__all__ = ["DEFENSES", "AggregateDefense", "Defense", "ModelDefense", "Stage", "Stages", "StepDefense",
           "UpdateDefense", "by_stage", "resolve_defenses"]

Stage = Literal["model", "step", "update", "aggregate"]
STAGES: tuple[Stage, ...] = ("model", "step", "update", "aggregate")


class Defense:
    """Base class of the four stage classes below; a defense is a ``@dataclass(frozen=True)`` subclass of one."""

    stage: ClassVar[Stage]
    name: ClassVar[str] = ""

    @property
    def noop(self) -> bool:
        """Whether this configuration leaves everything unchanged (e.g. ``local-gaussian`` with σ0 = 0): a study
        setting made only of no-ops is an undefended baseline."""
        return False

    def to_json(self) -> dict[str, Any]:
        """Registry name and options (rebuild with ``DEFENSES.create(name, **options)``)."""
        from dataclasses import fields

        return {"name": self.name, "options": {f.name: getattr(self, f.name) for f in fields(self)}}  # type: ignore[arg-type]


class ModelDefense(Defense, ABC):
    """Changes the architecture the clients train."""

    stage: ClassVar[Stage] = "model"

    @abstractmethod
    def apply(self, model: nn.Module) -> nn.Module:
        """A new model (``model`` is left unchanged)."""


class StepDefense(Defense, ABC):
    """Transforms the gradient inside every local step (a ``gradleak.fl.StepTransform``)."""

    stage: ClassVar[Stage] = "step"

    @abstractmethod
    def __call__(self, grads: dict[str, Tensor], *, step: int, batch_size: int) -> dict[str, Tensor]:
        """The transformed gradients of one step (per-sample gradients where the transform needs them)."""


class UpdateDefense(Defense, ABC):
    """Transforms the update before it is sent."""

    stage: ClassVar[Stage] = "update"

    @abstractmethod
    def __call__(self, update: ClientUpdate, generator: torch.Generator | None = None) -> ClientUpdate:
        """A new update (``update`` is left unchanged)."""


class AggregateDefense(Defense, ABC):
    """Changes what the server sees of a round's updates."""

    stage: ClassVar[Stage] = "aggregate"

    @abstractmethod
    def __call__(self, updates: Sequence[ClientUpdate]) -> ClientUpdate:
        """What the server receives of ``updates``."""


class Stages(TypedDict):
    """Defenses split by stage (:func:`by_stage`)."""

    model: list[ModelDefense]
    step: list[StepDefense]
    update: list[UpdateDefense]
    aggregate: list[AggregateDefense]


DEFENSES: Registry[Defense] = Registry("defense", named=True)


def resolve_defenses(defenses: Iterable[str | Defense | dict[str, Any]]) -> list[Defense]:
    """Defense objects from names (paper defaults), ``{"name": ..., "options": {...}}`` dicts or objects."""
    out: list[Defense] = []
    for d in defenses:
        if isinstance(d, Defense):
            out.append(d)
        elif isinstance(d, str):
            out.append(DEFENSES.create(d))
        elif isinstance(d, dict) and "name" in d:
            out.append(DEFENSES.create(d["name"], **dict(d.get("options", {}))))
        else:
            raise TypeError(f"a defense is a name, a {{'name', 'options'}} dict or a Defense; got {d!r}")
    return out


def by_stage(defenses: Sequence[Defense]) -> Stages:
    """Split a defense list by stage, keeping the order within each stage."""
    split = Stages(model=[], step=[], update=[], aggregate=[])
    for d in defenses:
        if isinstance(d, ModelDefense):
            split["model"].append(d)
        elif isinstance(d, StepDefense):
            split["step"].append(d)
        elif isinstance(d, UpdateDefense):
            split["update"].append(d)
        elif isinstance(d, AggregateDefense):
            split["aggregate"].append(d)
        else:
            raise TypeError(f"{type(d).__name__} is a Defense of no stage; subclass one of the four stage classes")
    return split
