"""What a targeted attack changes in the replay: :class:`Targeting` (see :mod:`gradleak.attacks.targeted`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gradleak.attacks.base import AttackError
from gradleak.fl.recipe import LocalRecipe

__all__ = ["LEAF", "Targeting", "TensorDict", "merge_targetings", "stack_per_view"]

TensorDict = dict[str, Tensor]

LEAF = "noise:"  # prefix of the optimised noise leaves among the optimisation variables


def _identity(leaves: TensorDict) -> TensorDict:
    return dict(leaves)


@dataclass(frozen=True)
class Targeting:
    """What a targeted attack changes in the replay (every field optional; the default changes nothing).

    Attributes
    ----------
    leaves
        Noise optimised jointly with the images, by leaf name: a sampler ``(generator, restarts) -> (R, *shape)``
        of each leaf's starting values (drawn per victim from the victim's generator, after the images).
    inject
        Maps one trial's leaves to the noise injected into ``local_update(noise=...)`` (default: by leaf name).
    fixed
        One mapping per view of noise handed to the replay as is (the client's true noise, or its mean);
        shared by the victim's restarts. Empty: none.
    masks
        One mapping per view ``parameter -> mask`` multiplied into the dummy update before matching (the
        client's pruning mask). Empty: none.
    ignore
        Parameters left out of the objective (Partial IG).
    regularizer
        One trial's leaves -> a 0-d penalty added to the objective (one more term of the objective).
    project
        Applied to the (batched) leaves after every step, like the pixel box (clip masks to ``[0, 1]``).
    lr_scale
        Learning-rate factor per leaf (see :func:`~gradleak.attacks.optimize.minimize`).
    recipe
        The recipe to replay instead of the view's (e.g. without the pruning step GPIA replaces by the mask).
    """

    leaves: Mapping[str, Callable[[torch.Generator, int], Tensor]] = dataclasses.field(default_factory=dict)
    inject: Callable[[TensorDict], TensorDict] = _identity
    fixed: Sequence[Mapping[str, Tensor]] = ()
    masks: Sequence[Mapping[str, Tensor]] = ()
    ignore: frozenset[str] = frozenset()
    regularizer: Callable[[TensorDict], Tensor] | None = None
    project: Callable[[TensorDict], TensorDict] | None = None
    lr_scale: Mapping[str, float] = dataclasses.field(default_factory=dict)
    recipe: LocalRecipe | None = None


def stack_per_view(dicts: Sequence[Mapping[str, Tensor]], device: torch.device) -> TensorDict:
    """One tensor per key with a leading view dimension (empty when ``dicts`` is)."""
    if not dicts:
        return {}
    keys = set(dicts[0])
    if any(set(d) != keys for d in dicts):
        raise AttackError("views attacked together must have the same noise/mask keys")
    return {k: torch.stack([d[k].detach().to(device) for d in dicts]) for k in dicts[0]}


def merge_targetings(parts: Sequence[Targeting], views: int) -> Targeting:
    """One :class:`Targeting` from several partial ones (each component of a combined attack contributes
    one): leaves, injections, fixed noise, masks, ignored parameters, regularisers, projections and learning-rate
    factors are united; at most one part may replace the recipe, and a later part's recipe sees the earlier's."""
    parts = [p for p in parts if p != Targeting()]
    if not parts:
        return Targeting()
    if len(parts) == 1:
        return parts[0]
    recipes = [p.recipe for p in parts if p.recipe is not None]
    if len(recipes) > 1:
        raise AttackError("two components of a combined attack both replace the replayed recipe")
    injects = [p.inject for p in parts if p.inject is not _identity]
    regs = [p.regularizer for p in parts if p.regularizer is not None]
    projects = [p.project for p in parts if p.project is not None]

    def inject(leaves: TensorDict) -> TensorDict:
        out: TensorDict = {}
        for fn in injects:
            out.update(fn(leaves))
        return out if injects else dict(leaves)

    def regularizer(z: TensorDict) -> Tensor:
        return sum(r(z) for r in regs)  # type: ignore[return-value]

    def project(z: TensorDict) -> TensorDict:
        out = dict(z)
        for fn in projects:
            out.update(fn(out))
        return out

    def per_view(field: str) -> list[dict[str, Tensor]]:
        chosen = [getattr(p, field) for p in parts if getattr(p, field)]
        return [{k: v for mapping in chosen for k, v in mapping[i].items()} for i in range(views)] if chosen else []

    return Targeting(
        leaves={k: v for p in parts for k, v in p.leaves.items()},
        inject=inject if injects else _identity,
        fixed=per_view("fixed"),
        masks=per_view("masks"),
        ignore=frozenset().union(*(p.ignore for p in parts)),
        regularizer=regularizer if regs else None,
        project=project if projects else None,
        lr_scale={k: v for p in parts for k, v in p.lr_scale.items()},
        recipe=recipes[0] if recipes else None,
    )
