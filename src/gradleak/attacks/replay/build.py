"""Building a replay attack's :class:`~gradleak.attacks.replay.problem.Problem` from the views it attacks, and
packaging the optimiser's result as reconstructions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.func import grad_and_value, vmap

from gradleak.attacks.base import AttackError
from gradleak.attacks.compiling import AdaptiveIteration, problem_key
from gradleak.attacks.labels import infer_labels
from gradleak.attacks.objectives import layer_weights, matcher
from gradleak.attacks.optimize import OptimResult
from gradleak.attacks.priors import bn_momenta, group_consistency
from gradleak.attacks.replay.problem import (
    Problem,
    Replay,
    TrialVariables,
    Victim,
    distance_to_target,
    objective_parts,
    share_or_stack,
    trial_loss,
    vectorize,
    victim_constants,
)
from gradleak.attacks.replay.targeting import LEAF, TensorDict, stack_per_view
from gradleak.attacks.unfold import unfold_convolutions
from gradleak.data.transforms import denormalize
from gradleak.fl.local import bind_functional
from gradleak.fl.recipe import batch_schedule
from gradleak.records import Reconstruction, ServerView, Trial

if TYPE_CHECKING:
    from gradleak.attacks.replay.attack import ReplayAttack

__all__ = ["build_problem", "package"]

#: options that change how long an attack runs, not what one iteration computes (left out of the compile key)
BUDGET = ("iterations", "tolerance", "check_every", "patience", "trace_every", "compile")


def _attacker_model(view: ServerView, device: torch.device, unfold: bool) -> nn.Module:
    model = view.build_model()
    model.to(device)
    if unfold:
        model = unfold_convolutions(model, tuple(view.image_shape))
    bind_functional(model)  # the attacker's own copy: BatchNorm/dropout forwards installed once, not per call
    return model


def _victims(attack: ReplayAttack, views: Sequence[ServerView], replay: Replay, keys: Sequence[str],
             labels: Tensor | None, device: torch.device, single: bool) -> tuple[Victim, Victim]:
    """Every victim's state stacked over victims (or shared when equal), and the vmap dimensions of each field."""
    view0, tg = views[0], replay.targeting
    params, pdim = share_or_stack([v.global_state.params for v in views])
    buffers, bdim = share_or_stack([v.global_state.buffers for v in views])
    sign = -1.0 if replay.sgd_step else 1.0
    # one plain SGD step: delta / lr is minus the step's gradient, which the replay hands back; matching the
    # gradient to -delta/lr (every objective is invariant under negating both sides) saves the out-of-place
    # SGD step and its derivative on every parameter
    targets = {k: torch.stack([v.update.delta[k].to(device) * (sign * replay.scale) for v in views]) for k in keys}
    received: TensorDict = {}
    if attack.bn_buffers:
        names = [k for k in view0.global_state.buffers if k.endswith(("running_mean", "running_var"))]
        if not names or any(k not in v.update.buffers for v in views for k in names):
            raise AttackError("bn_buffers > 0 needs the BatchNorm running statistics of the update; the "
                              "client withheld them (or the model has no BatchNorm): set bn_buffers=0")
        received = {k: torch.stack([v.update.buffers[k].to(device) for v in views]) for k in names}
    weights = layer_weights(keys, attack.layer_weighting)
    # under vmap, each victim's target constants (the cosine's target norm), computed once; one trial runs
    # without vmap and its matcher computes them
    constants = {} if single else victim_constants(attack.objective, targets, weights, len(views))
    fixed, masks = stack_per_view(tg.fixed, device), stack_per_view(tg.masks, device)
    victim = Victim(params, buffers, targets, constants, received, fixed, masks, labels)
    dims = Victim._make([pdim, bdim, 0, 0 if constants else None, 0 if received else None, 0 if fixed else None,
                         0 if masks else None, None if labels is None else 0])  # vmap's in_dims of each field
    return victim, dims


def _replay(attack: ReplayAttack, views: Sequence[ServerView], model: nn.Module, n: int, joint: bool) -> Replay:
    view0 = views[0]
    recipe = attack.replay_recipe(view0, n)
    tg = attack.targeting(views, model, recipe, n)
    if tg.recipe is not None:
        recipe = tg.recipe
    sgd_step = (len(batch_schedule(n, recipe)) == 1 and recipe.optimizer == "sgd" and not recipe.momentum
                and not recipe.weight_decay and recipe.lr_at(0, 1) == recipe.lr)
    return Replay(model, recipe, sgd_step, 1.0 / recipe.lr, joint, tg)


def _matched_keys(views: Sequence[ServerView], model: nn.Module, ignore: frozenset[str]) -> list[str]:
    sent = views[0].update.delta
    keys = [k for k in dict(model.named_parameters()) if k in sent and k not in ignore]
    if not keys:
        raise AttackError("no parameter is left to match (every sent parameter is ignored)")
    if any(set(v.update.delta) != set(sent) for v in views):
        raise AttackError("views attacked together must send the same parameters")
    return keys


def build_problem(attack: ReplayAttack, views: Sequence[ServerView]) -> Problem:
    """The batched objective of attacking ``views`` together (victims × restarts trials)."""
    view0 = views[0]
    device = next(iter(view0.global_state.params.values())).device
    dtype = next(iter(view0.global_state.params.values())).dtype
    model = _attacker_model(view0, device, attack.unfold_convolutions)
    n = attack.num_images or view0.num_images or view0.update.num_examples
    hard = [infer_labels(attack.labels, v, n) for v in views]
    replay = _replay(attack, views, model, n, joint=hard[0] is None)
    keys = _matched_keys(views, model, replay.targeting.ignore)
    V, R, K = len(views), attack.restarts, view0.num_classes
    labels = None if replay.joint else torch.stack(hard).to(device)  # type: ignore[arg-type]
    victim, dims = _victims(attack, views, replay, keys, labels, device, single=V * R == 1)
    weights = layer_weights(keys, attack.layer_weighting)
    # one trial runs without vmap: its target is fixed, so what depends on the target alone is computed once
    fixed = matcher(attack.objective, {k: t[0] for k, t in victim.target.items()}, weights) if V * R == 1 else None
    single = trial_loss(replay, distance_to_target(attack.objective, weights, fixed),
                        objective_parts(attack, replay.targeting, bn_momenta(model)))
    shape = (V, R, n, *view0.image_shape)
    leaf_names = list(replay.targeting.leaves)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    solve = _Solve(attack, victim, dims, single, shape, leaf_names, replay.joint, K, has_bn)
    value_and_grad = AdaptiveIteration(solve.value_and_grad, solve.transformed, mode=attack.compile,
                                       iterations=attack.iterations, device=device,
                                       key=problem_key(type(model).__module__, type(model).__qualname__,
                                                       [(k, tuple(v.shape)) for k, v in model.state_dict().items()],
                                                       shape, replay.joint, repr(replay.recipe), device.type,
                                                       str(dtype), torch.__version__, type(attack).__qualname__,
                                                       {k: v for k, v in attack.config().items() if k not in BUDGET}))
    return Problem(attack, tuple(views), shape, replay.joint, labels, solve.objective, value_and_grad,
                   _projector(attack, view0, replay, leaf_names, device, dtype), device, dtype, replay.targeting)


class _Solve:
    """The objective and its gradient over the optimisation variables (``x``, ``y``, ``noise:<leaf>``)."""

    def __init__(self, attack: ReplayAttack, victim: Victim, dims: Victim, single: Callable[..., Tensor],
                 shape: tuple[int, ...], leaf_names: list[str], joint: bool, classes: int, has_bn: bool) -> None:
        V, R = shape[:2]
        self.group = attack.group if R > 1 else 0.0
        self.victim, self.shape, self.leaf_names, self.joint, self.classes = victim, shape, leaf_names, joint, classes
        self.outer = vectorize(single, V, R, dims)
        # per-trial gradients as vmap(grad(...)): differentiating *through* vmap with torch.autograd (or
        # torch.func.grad) gives wrong input gradients when the replay contains native BatchNorm (PyTorch
        # 2.14; tests/attacks/test_attacks.py::test_attack_gradient_matches_finite_differences). Without
        # BatchNorm, or with one trial (no vmap), torch.autograd through the objective is exact and cheaper.
        self.outer_vg = vectorize(grad_and_value(single), V, R, dims)
        self.plain_autograd = V * R == 1 or not has_bn

    def trial(self, values: TensorDict) -> TrialVariables:
        V, R, n = self.shape[:3]
        trial: TrialVariables = {"x": values["x"].reshape(self.shape),
                 "z": {k: values[LEAF + k].reshape(V, R, *values[LEAF + k].shape[1:]) for k in self.leaf_names}}
        if self.joint:
            trial["y"] = values["y"].reshape(V, R, n, self.classes)
        return trial

    def group_term(self, x: Tensor) -> Tensor:
        return self.group * vmap(group_consistency)(x)

    def objective(self, values: TensorDict) -> Tensor:
        V, R = self.shape[:2]
        loss = self.outer(self.trial(values), self.victim)
        if self.group:
            loss = loss + self.group_term(values["x"].reshape(self.shape))
        return loss.reshape(V * R)

    def value_and_grad(self, values: TensorDict) -> tuple[Tensor, TensorDict]:
        if not self.plain_autograd:
            return self.transformed(values)
        V, R = self.shape[:2]
        leaves = {k: v.detach().requires_grad_(True) for k, v in values.items()}
        with torch.enable_grad():
            loss = self.outer(self.trial(leaves), self.victim).reshape(V * R)
            if self.group:
                loss = loss + self.group_term(leaves["x"].reshape(self.shape)).reshape(V * R)
            found = torch.autograd.grad(loss.sum(), list(leaves.values()), allow_unused=True, materialize_grads=True)
        return loss.detach(), dict(zip(leaves, found, strict=True))

    def transformed(self, values: TensorDict) -> tuple[Tensor, TensorDict]:
        """The torch.func route (the one the compiled iteration traces)."""
        V, R = self.shape[:2]
        grads, loss = self.outer_vg(self.trial(values), self.victim)
        out = {"x": grads["x"].reshape(values["x"].shape)}
        if self.joint:
            out["y"] = grads["y"].reshape(values["y"].shape)
        out.update({LEAF + k: g.reshape(values[LEAF + k].shape) for k, g in grads["z"].items()})
        if self.group:  # no BatchNorm inside: plain autograd is exact here
            leaf = values["x"].reshape(self.shape).detach().requires_grad_(True)
            with torch.enable_grad():
                term = self.group_term(leaf)
                (g,) = torch.autograd.grad(term.sum(), leaf)
            loss = loss + term.detach()
            out["x"] = out["x"] + g.reshape(values["x"].shape)
        return loss.reshape(V * R), out


def _projector(attack: ReplayAttack, view: ServerView, replay: Replay, leaf_names: list[str],
               device: torch.device, dtype: torch.dtype) -> Callable[[TensorDict], TensorDict]:
    """The pixel box (in normalised space) and the targeting's projection of the noise leaves."""
    mean = torch.tensor(view.mean, device=device, dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor(view.std, device=device, dtype=torch.float64).view(-1, 1, 1)
    lo, hi = ((0 - mean) / std).to(dtype), ((1 - mean) / std).to(dtype)
    tg = replay.targeting

    def project(values: TensorDict) -> TensorDict:
        out = dict(values)
        if attack.boxed:
            out["x"] = torch.maximum(torch.minimum(values["x"], hi), lo)
        if tg.project is not None and leaf_names:
            out.update({LEAF + k: v for k, v in tg.project({k: values[LEAF + k] for k in leaf_names}).items()})
        return out

    return project


def package(result: OptimResult, problem: Problem) -> list[Reconstruction]:
    """One reconstruction per victim: its best trial's images and labels, every trial, the loss trace."""
    V, R, n = problem.shape[:3]
    view0 = problem.views[0]
    images = denormalize(result.variables["x"].reshape(problem.shape), view0.mean, view0.std).clamp(0, 1).cpu()
    objective = result.objective.reshape(V, R).cpu()
    soft = result.variables["y"].reshape(V, R, n, -1).softmax(-1).cpu() if problem.joint else None
    trace = result.trace.reshape(-1, V, R).cpu()
    ran = result.trial_iterations.reshape(V, R) if result.trial_iterations is not None else None
    describe = getattr(problem.value_and_grad, "describe", None)
    execution = {**({"execution": describe()} if describe is not None else {}), **problem.notes}
    out = []
    for v in range(V):
        r = int(objective[v].argmin())
        trials = tuple(Trial(images=images[v, i], objective=float(objective[v, i]),
                             soft_labels=None if soft is None else soft[v, i]) for i in range(R))
        labels = soft[v, r].argmax(-1) if soft is not None else problem.labels[v].cpu()  # type: ignore[index]
        out.append(Reconstruction(
            images=images[v, r], labels=labels, soft_labels=None if soft is None else soft[v, r],
            trials=trials, loss_trace=trace[:, v, r],
            iterations=result.iterations if ran is None else int(ran[v, r]), config=dict(execution)))
    return out

