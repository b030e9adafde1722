"""The batched objective of a replay attack: one pure function of (trial, victim), vectorised over the grid.

Every victim's state is one pytree (:class:`Victim`: the global parameters and buffers it was sent, its target
update, the objective's constants of that target, its received BatchNorm buffers, the noise handed to its replay,
its pruning masks and its labels when they are not optimised) and every trial's variables another (``{"x": images,
"z": noise leaves}``, and ``"y"``, soft-label logits, when the labels are optimised). :func:`trial_loss` is the
objective of one trial of one victim: the update distance plus a list of pure ``(weight, term)`` parts (a targeted
attack's regulariser is one more part). :func:`vectorize` maps it over restarts and victims with
:func:`torch.func.vmap`, leaving out axes of length 1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import vmap
from torch.utils._pytree import tree_map

from gradleak.attacks.init import initialize
from gradleak.attacks.objectives import OBJECTIVES, target_constants
from gradleak.attacks.priors import bn_statistics, buffer_matching, image_l2, running_statistics, total_variation
from gradleak.attacks.replay.targeting import LEAF, Targeting, TensorDict
from gradleak.fl.local import LocalData, LocalResult, local_update
from gradleak.fl.recipe import LocalRecipe
from gradleak.records import ServerView

if TYPE_CHECKING:
    from gradleak.attacks.replay.attack import ReplayAttack

__all__ = ["Part", "Problem", "Replayed", "TrialVariables", "Victim", "objective_parts", "trial_loss", "vectorize"]

#: one trial's variables: ``{"x": images, "z": {leaf: noise}}`` and, when labels are optimised, ``"y"``
TrialVariables = dict[str, Any]


class Victim(NamedTuple):
    """One victim's state (a pytree; under vmap over victims each field has a leading victim axis or is shared).

    ``params``/``buffers``: the global model it was sent; ``target``: its update as the replay's output should
    be (``-delta/lr`` or ``delta/lr``); ``constants``: what the objective computes from the target alone;
    ``received``: its BatchNorm running statistics; ``fixed``: noise handed to its replay; ``masks``: its
    pruning masks on the dummy update; ``labels``: its ``(n,)`` class labels (``None`` when optimised).
    """

    params: TensorDict
    buffers: TensorDict
    target: TensorDict
    constants: TensorDict
    received: TensorDict
    fixed: TensorDict
    masks: TensorDict
    labels: Tensor | None


class Replayed(NamedTuple):
    """What a part of the objective sees: the trial's images and noise leaves, the replay's result and the
    victim."""

    x: Tensor
    z: TensorDict
    out: LocalResult
    victim: Victim


@dataclass(frozen=True)
class Part:
    """One term of the objective, added as ``weight * term(replayed)`` (``weight`` 1: the term as is)."""

    weight: float
    term: Callable[[Replayed], Tensor]


@dataclass(frozen=True)
class Replay:
    """How one trial's replay runs: the attacker's model, the recipe, whether the replay is one plain SGD step
    (its gradient is matched directly), the scale ``1/lr``, the labels' form and the targeting."""

    model: nn.Module
    recipe: LocalRecipe
    sgd_step: bool
    scale: float
    joint: bool
    targeting: Targeting


def objective_parts(attack: ReplayAttack, targeting: Targeting, momenta: Mapping[str, float]) -> list[Part]:
    """The objective's terms besides the update distance, in the order they are added: the targeted attack's
    regulariser, TV, L2, the BatchNorm-statistics prior and the BatchNorm-buffer matching; weight 0 drops one."""
    parts = []
    regularizer = targeting.regularizer
    if regularizer is not None and targeting.leaves:
        parts.append(Part(1.0, lambda r: regularizer(r.z)))
    if attack.tv:
        parts.append(Part(float(attack.tv), lambda r: total_variation(r.x)))
    if attack.l2:
        parts.append(Part(attack.l2, lambda r: image_l2(r.x)))
    if attack.bn_prior:
        parts.append(Part(attack.bn_prior, lambda r: bn_statistics(
            r.out.per_step[0].bn_stats, running_statistics(r.victim.buffers, momenta))))
    if attack.bn_buffers:
        parts.append(Part(attack.bn_buffers, lambda r: buffer_matching(r.out.buffers, r.victim.received, momenta)))
    return parts


def trial_loss(replay: Replay, distance: Callable[[TensorDict, Victim], Tensor], parts: Sequence[Part]
               ) -> Callable[[TrialVariables, Victim], Tensor]:
    """The objective of one trial (``{"x", "y", "z"}``) of one victim: replay the client's training on the
    trial's images, compare the replay's update with the victim's by ``distance``, add the ``parts``."""
    tg = replay.targeting

    def loss_of(trial: TrialVariables, victim: Victim) -> Tensor:
        x, z = trial["x"], trial["z"]
        y = trial["y"].softmax(-1) if replay.joint else victim.labels
        injected = {**victim.fixed, **tg.inject(z)} if (z or victim.fixed) else None
        out = local_update(replay.model, victim.params, victim.buffers, LocalData(x, y), replay.recipe,  # type: ignore[arg-type]
                           noise=injected, create_graph=True, gradient_only=replay.sgd_step)
        if replay.sgd_step:
            step_grads = out.per_step[0].grads
            dummy = {k: step_grads[k] for k in victim.target}  # type: ignore[index]
        else:
            dummy = {k: (out.params[k] - victim.params[k]) * replay.scale for k in victim.target}
        if victim.masks:
            dummy = {k: d * victim.masks[k] if k in victim.masks else d for k, d in dummy.items()}
        loss = distance(dummy, victim)
        seen = Replayed(x, z, out, victim)
        for part in parts:
            value = part.term(seen)
            loss = loss + (value if part.weight == 1.0 else part.weight * value)
        return loss

    return loss_of


def vectorize(fn: Callable[..., Any], victims: int, restarts: int, victim_dims: Victim
              ) -> Callable[[TrialVariables, Victim], Any]:
    """``fn(trial, victim)`` over the victims × restarts grid: vmap over victims of vmap over restarts, leaving
    out an axis of length 1 (vmap's batching rules cost ~30% of an iteration on a CPU even over one trial).
    Trials come as ``(V, R, ...)``; outputs get leading ``(V, R)`` dimensions. Stochastic layers the attacker does
    not know the noise of draw fresh noise per trial (``randomness="different"``), as the client did."""
    shared = Victim._make([None] * len(Victim._fields))
    inner = fn if restarts == 1 else vmap(fn, in_dims=(0, shared), randomness="different")
    outer = inner if victims == 1 else vmap(inner, in_dims=(0, victim_dims), randomness="different")

    def call(trial: TrialVariables, victim: Victim) -> Any:
        if restarts == 1:
            trial = tree_map(lambda a: a[:, 0], trial)
        if victims == 1:
            trial = tree_map(lambda a: a[0], trial)
            victim = Victim._make(_first(part, dim) for part, dim in zip(victim, victim_dims, strict=True))  # type: ignore[arg-type]
        out = outer(trial, victim)
        if victims == 1:
            out = tree_map(lambda a: a.unsqueeze(0), out)
        if restarts == 1:
            out = tree_map(lambda a: a.unsqueeze(1), out)
        return out

    return call


def _first(part: Any, dim: int | None) -> Any:
    return tree_map(lambda a: a[0], part) if dim == 0 else part


def share_or_stack(dicts: Sequence[Mapping[str, Tensor]]) -> tuple[TensorDict, int | None]:
    """One mapping and vmap ``in_dims=None`` when all are equal, else the stack and ``in_dims=0``."""
    first = dicts[0]
    if all(d is first or all(torch.equal(d[k], first[k]) for k in first) for d in dicts[1:]):
        return dict(first), None
    return {k: torch.stack([d[k] for d in dicts]) for k in first}, 0


def victim_constants(objective: str, targets: TensorDict, weights: Mapping[str, float], victims: int
                     ) -> TensorDict:
    """Each victim's target constants of the objective (the cosine's target norm), stacked over victims."""
    per_victim = [target_constants(objective, {k: t[v] for k, t in targets.items()}, weights)
                  for v in range(victims)]
    return {k: torch.stack([c[k] for c in per_victim]) for k in per_victim[0]} if per_victim[0] else {}


def distance_to_target(objective: str, weights: Mapping[str, float],
                       fixed: Callable[[TensorDict], Tensor] | None) -> Callable[[TensorDict, Victim], Tensor]:
    """The update distance of one trial: ``fixed`` (a matcher of the one target, when there is one trial), else
    the objective against the victim's target with its constants."""
    objective_fn = OBJECTIVES[objective]
    if fixed is not None:
        return lambda dummy, victim: fixed(dummy)
    return lambda dummy, victim: objective_fn(dummy, victim.target, weights, **victim.constants)


@dataclass(frozen=True)
class Problem:
    """The batched objective of one attack run; trials are ``victims × restarts``, victim-major."""

    attack: ReplayAttack
    views: tuple[ServerView, ...]
    shape: tuple[int, ...]
    joint: bool
    labels: Tensor | None
    objective: Callable[[TensorDict], Tensor]
    value_and_grad: Callable[[TensorDict], tuple[Tensor, TensorDict]]
    project: Callable[[TensorDict], TensorDict]
    device: torch.device
    dtype: torch.dtype
    targeting: Targeting = field(default_factory=Targeting)
    notes: Mapping[str, object] = field(default_factory=dict)

    def initial(self, generators: Sequence[torch.Generator]) -> TensorDict:
        """Starting images (soft-label logits, noise leaves), each victim drawing from its own generator."""
        a, (_, R, n) = self.attack, self.shape[:3]
        xs, ys = [], []
        leaves: dict[str, list[Tensor]] = {k: [] for k in self.targeting.leaves}
        for v, g in zip(self.views, generators, strict=True):
            xs.append(initialize(a.init, trials=R, n=n, image_shape=v.image_shape, generator=g, mean=v.mean,
                                 std=v.std, prior=v.prior, noise=a.init_noise))
            if self.joint:
                draw = torch.randn if a.label_init == "gaussian" else torch.rand
                ys.append(draw((R, n, v.num_classes), generator=g))
            for k, sample in self.targeting.leaves.items():
                leaves[k].append(sample(g, R))
        values = {"x": torch.cat(xs).to(self.device, self.dtype)}
        if self.joint:
            values["y"] = torch.cat(ys).to(self.device, self.dtype)
        for k, drawn in leaves.items():
            values[LEAF + k] = torch.cat(drawn).to(self.device, self.dtype)
        if self.targeting.project is not None and leaves:
            values.update({LEAF + k: v for k, v in self.targeting.project(
                {k: values[LEAF + k] for k in leaves}).items()})
        return values
