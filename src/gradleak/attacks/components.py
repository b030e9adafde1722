"""The components of the targeted attacks (:mod:`gradleak.attacks.targeted`): each is a small function of the
attack and one blank replay that returns the partial :class:`~gradleak.attacks.replay.Targeting` it contributes;
an attack's targeting is the merge of its components' (:func:`~gradleak.attacks.replay.merge_targetings`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

from gradleak.attacks.base import AttackError
from gradleak.attacks.replay import Targeting
from gradleak.defenses.modules import VariationalBottleneck
from gradleak.defenses.step import DPSGD, StepPrune
from gradleak.fl.recipe import LocalRecipe
from gradleak.records import ServerView

if TYPE_CHECKING:
    from gradleak.attacks.targeted import TargetedAttack

__all__ = ["COMPONENTS", "Component", "Replayed", "noise_base"]

TensorDict = dict[str, Tensor]


def noise_base(key: str) -> str:
    """A noise key without its call index (``"dropout@0"`` -> ``"dropout"``)."""
    return key.rsplit("@", 1)[0]


class Replayed(NamedTuple):
    """What a component reads: the victims' views, the attacker's model, the recipe replayed, and a blank
    replay's noise shapes and module order."""

    views: Sequence[ServerView]
    model: nn.Module
    recipe: LocalRecipe
    shapes: dict[str, torch.Size]
    order: dict[str, int]


def _true_noise(attack: TargetedAttack, seen: Replayed) -> Targeting:
    """WIIG: the client's own noise, handed to the replay."""
    fixed = []
    for v in seen.views:
        given = v.client_noise
        if given is None:
            raise AttackError("wiig needs the client's noise in view.client_noise (threat 'well-informed')")
        missing = set(seen.shapes) - set(given)
        if missing:
            raise AttackError(f"view.client_noise lacks {sorted(missing)}")
        fixed.append({k: given[k] for k in seen.shapes})
    return Targeting(fixed=fixed)


def _dropout_masks(attack: TargetedAttack, seen: Replayed) -> Targeting:
    """DIA: dropout masks optimised from Bernoulli(1 - p), clipped to [0, 1], with the mask-rate regulariser."""
    rate = {name: m.p for name, m in seen.model.named_modules() if isinstance(m, nn.Dropout) and m.p > 0}
    keep = {k: 1.0 - rate[noise_base(k)] for k in seen.shapes if noise_base(k) in rate}
    if not keep:
        raise AttackError("dia targets dropout and the model has no active nn.Dropout")

    def regularizer(z: TensorDict) -> Tensor:
        return attack.mask_reg * sum((z[k].mean() - p).abs() for k, p in keep.items())  # type: ignore[return-value]

    def project(z: TensorDict) -> TensorDict:
        return {k: v.clamp(0.0, 1.0) if k in keep else v for k, v in z.items()}

    return Targeting(leaves={k: _bernoulli(seen.shapes[k], p) for k, p in keep.items()}, regularizer=regularizer,
                     project=project, lr_scale=dict.fromkeys(keep, attack.noise_lr))


def _bottleneck_noise(attack: TargetedAttack, seen: Replayed) -> Targeting:
    """VBIA: the variational bottleneck's ε optimised from N(0, I)."""
    names = {m.noise_name for m in seen.model.modules() if isinstance(m, VariationalBottleneck)}
    keys = [k for k in seen.shapes if noise_base(k) in names]
    if not keys:
        raise AttackError("vbia targets a variational bottleneck (precode/cvb) and the model has none")
    return Targeting(leaves={k: _normal(seen.shapes[k]) for k in keys}, lr_scale=dict.fromkeys(keys, attack.noise_lr))


def _dp_keys(seen: Replayed) -> tuple[DPSGD, list[str]]:
    dp = [d for d in seen.views[0].defenses if isinstance(d, DPSGD)]
    keys = [k for k in seen.shapes if noise_base(k).startswith("dp-sgd/")]
    if not dp or not keys:
        raise AttackError("dpia targets dp-sgd and the view lists none (or its replay draws no DP noise)")
    return dp[0], keys


def _dp_noise(attack: TargetedAttack, seen: Replayed) -> Targeting:
    """DPIA: a dummy DP noise σC·ξ optimised, ξ from N(0, I) regularised towards mean 0 and std 1."""
    dp, keys = _dp_keys(seen)
    std = dp.noise_multiplier * dp.clip

    def inject(z: TensorDict) -> TensorDict:
        return {k: v * std if k in keys else v for k, v in z.items()}

    def regularizer(z: TensorDict) -> Tensor:
        return attack.dp_reg * sum(z[k].mean().pow(2) + (z[k].std(correction=0) - 1.0).pow(2)  # type: ignore[return-value]
                                   for k in keys)

    return Targeting(leaves={k: _normal(seen.shapes[k]) for k in keys}, inject=inject, regularizer=regularizer,
                     lr_scale=dict.fromkeys(keys, attack.noise_lr))


def _dp_mean(attack: TargetedAttack, seen: Replayed) -> Targeting:
    """CDIA under DP: the DP noise replaced by its mean, 0."""
    _, keys = _dp_keys(seen)
    return Targeting(fixed=[{k: torch.zeros(seen.shapes[k]) for k in keys} for _ in seen.views])


def _pruning_masks(attack: TargetedAttack, seen: Replayed) -> Targeting:
    """GPIA: the client's mask (the received update's non-zeros) on the dummy update; no pruning replayed."""
    return Targeting(masks=[{k: (d != 0).to(d.dtype) for k, d in v.update.delta.items()} for v in seen.views],
                     recipe=seen.recipe)


def _ignored(attack: TargetedAttack, seen: Replayed) -> Targeting:
    """PIG: the stochastic gradients left out of the distance."""
    return Targeting(ignore=attack.ignored(seen.model, seen.order))


def _same(recipe: LocalRecipe) -> LocalRecipe:
    return recipe


def _without_pruning(recipe: LocalRecipe) -> LocalRecipe:
    """GPIA replays no pruning: the client's mask replaces pruning by the dummy's own magnitudes."""
    return recipe.replace(step_transforms=tuple(t for t in recipe.step_transforms if not isinstance(t, StepPrune)))


@dataclass(frozen=True)
class Component:
    """One targeted component: how it changes the recipe the attacker replays (before the blank replay that
    discovers the noise keys), and the partial targeting it contributes."""

    build: Callable[[TargetedAttack, Replayed], Targeting]
    replay: Callable[[LocalRecipe], LocalRecipe] = _same


#: the targeted components by name, in the order their targetings are merged
COMPONENTS: dict[str, Component] = {
    "true-noise": Component(_true_noise),
    "dropout": Component(_dropout_masks),
    "bottleneck": Component(_bottleneck_noise),
    "dp-noise": Component(_dp_noise),
    "dp-mean": Component(_dp_mean),
    "pruning": Component(_pruning_masks, replay=_without_pruning),
    "ignore": Component(_ignored),
}


def _bernoulli(shape: torch.Size, keep: float) -> Callable[[torch.Generator, int], Tensor]:
    def sample(g: torch.Generator, restarts: int) -> Tensor:
        return torch.bernoulli(torch.full((restarts, *shape), keep), generator=g)

    return sample


def _normal(shape: torch.Size) -> Callable[[torch.Generator, int], Tensor]:
    def sample(g: torch.Generator, restarts: int) -> Tensor:
        return torch.randn((restarts, *shape), generator=g)

    return sample
