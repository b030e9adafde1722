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

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Literal

from gradleak.registry import Registry

__all__ = ["DEFENSES", "Defense", "Stage", "by_stage", "resolve_defenses"]

Stage = Literal["model", "step", "update", "aggregate"]
STAGES: tuple[Stage, ...] = ("model", "step", "update", "aggregate")


class Defense:
    """Base class; subclasses are ``@dataclass(frozen=True)`` and set ``stage``."""

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

        return {"name": self.name, "options": {f.name: getattr(self, f.name) for f in fields(self)}}


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


def by_stage(defenses: Sequence[Defense]) -> dict[Stage, list[Defense]]:
    """Split a defense list by stage, keeping the order within each stage."""
    split: dict[Stage, list[Defense]] = {s: [] for s in STAGES}
    for d in defenses:
        split[d.stage].append(d)
    return split
