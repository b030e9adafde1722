"""The optimisation attack assembled from parts: replay the client's training on dummy data, match the update.

:class:`ReplayAttack` is the configurable base of ``dlg``, ``idlg``, ``inverting-gradients``, ``gradinversion``
and ``fedavg-inversion``; each of those only changes defaults. One iteration computes, for every trial,

    delta' = local_update(model, global params, global buffers, dummy batch, view.recipe, create_graph=True)
    loss   = objective(delta' / lr, delta / lr)            squared L2, L2 norm, cosine, layer-wise cosine
           + tv * TV(x) + l2 * |x|^2                       image priors
           + bn_prior * BN(batch stats of x, global running stats)   (Yin et al. 2021)
           + bn_buffers * BN(replayed buffers, received buffers)     (Hatamizadeh et al. 2023)
           + group * |x - mean over restarts|^2            (Yin et al. 2021)

and :func:`~gradleak.attacks.optimize.minimize` takes one step on the dummy images (and soft labels). The
replay *is* the client's training code, so FedSGD, several local steps over several batches, BatchNorm in
training mode with its running statistics, SGD or Adam are all reproduced exactly. Restarts and victims are
one computation: ``torch.func.vmap`` over victims (each with its own update, and its own global state when
the views differ) of ``vmap`` over restarts.

Targeted attacks (:mod:`gradleak.attacks.targeted`) change the replay through :meth:`ReplayAttack.targeting`,
which returns a :class:`Targeting`: noise handed to the replay per victim (a well-informed attacker's), noise
*optimised* with the images ("noise leaves": per-trial tensors injected into ``local_update(noise=...)`` by
key, vmapped like the images, e.g. dropout masks or a bottleneck's epsilon), their regulariser and projection,
per-parameter masks on the dummy update (a pruning mask), parameters left out of the objective, and the
recipe to replay. Stochastic layers whose noise is neither handed in nor optimised draw fresh noise in every
trial and iteration (``vmap(..., randomness="different")``), as an attacker that does not know it would.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad_and_value, vmap
from torch.utils._pytree import tree_map

from gradleak.attacks.base import Attack, AttackError
from gradleak.attacks.compiling import AdaptiveIteration, problem_key
from gradleak.attacks.init import INITIALIZERS, initialize
from gradleak.attacks.labels import LABEL_STRATEGIES, infer_labels
from gradleak.attacks.objectives import OBJECTIVES, layer_weights, matcher, target_constants
from gradleak.attacks.optimize import OptimizerConfig, OptimResult, minimize
from gradleak.attacks.priors import (
    bn_momenta,
    bn_statistics,
    buffer_matching,
    group_consistency,
    image_l2,
    running_statistics,
    total_variation,
)
from gradleak.attacks.unfold import unfold_convolutions
from gradleak.data.transforms import denormalize, normalize
from gradleak.fl.local import LocalData, bind_functional, local_update
from gradleak.fl.recipe import LocalRecipe, batch_schedule
from gradleak.records import Reconstruction, ServerView, Trial

__all__ = ["ReplayAttack", "Targeting"]

LEAF = "noise:"  # prefix of the optimised noise leaves among the optimisation variables
#: the TV weights ``tv="auto"`` chooses from (Scheliga et al.'s 1e-2 down to Geiping et al.'s MNIST-era 1e-4)
TV_CANDIDATES = (1e-2, 1e-3, 1e-4)

TensorDict = dict[str, Tensor]


def _share_or_stack(dicts: Sequence[Mapping[str, Tensor]]) -> tuple[TensorDict, int | None]:
    """One mapping and vmap ``in_dims=None`` when all are equal, else the stack and ``in_dims=0``."""
    first = dicts[0]
    if all(d is first or all(torch.equal(d[k], first[k]) for k in first) for d in dicts[1:]):
        return dict(first), None
    return {k: torch.stack([d[k] for d in dicts]) for k in first}, 0


def _generators(generator: torch.Generator | Sequence[torch.Generator] | None, n: int) -> list[torch.Generator]:
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    if isinstance(generator, torch.Generator):
        seeds = torch.randint(0, 2**62, (n,), generator=generator).tolist()
        return [torch.Generator().manual_seed(int(s)) for s in seeds] if n > 1 else [generator]
    generators = list(generator)
    if len(generators) != n:
        raise ValueError(f"give one generator per view: {len(generators)} for {n} views")
    return generators


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
        One trial's leaves -> a 0-d penalty added to the objective.
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


def _stack_per_view(dicts: Sequence[Mapping[str, Tensor]], device: torch.device) -> TensorDict:
    if not dicts:
        return {}
    keys = set(dicts[0])
    if any(set(d) != keys for d in dicts):
        raise AttackError("views attacked together must have the same noise/mask keys")
    return {k: torch.stack([d[k].detach().to(device) for d in dicts]) for k in dicts[0]}


@dataclass(frozen=True)
class ReplayAttack(Attack):
    """Gradient/update matching by replaying the client's local training (see the module docstring).

    Parameters
    ----------
    iterations
        Optimisation steps.
    objective, layer_weighting
        Update distance (``"l2"``, ``"l2-norm"``, ``"cosine"``, ``"layerwise-cosine"``) and per-layer weights
        (``"equal"``, ``"linear"``, ``"exp"``, ``"last"``).
    optimizer, lr, schedule, warmup, signed, plateau
        See :class:`~gradleak.attacks.optimize.OptimizerConfig` (``plateau``: iterations without improvement
        before ``schedule="plateau"`` cuts a trial's learning rate by 10).
    boxed
        Keep dummy pixels in ``[0, 1]`` (a box in normalised space) after every step.
    tv, l2, bn_prior, bn_buffers, group
        Weights of the priors (0 switches a term off). ``tv="auto"`` chooses the TV weight per run: a short
        attack (``tv_sweep_iterations``) with each of :data:`TV_CANDIDATES` from the same start, and the weight
        whose reconstructions match the update best (the objective without the TV term, summed over the
        victims attacked together; never the ground truth) runs the full budget. The choice and the scores are
        in each reconstruction's ``config["tv_auto"]``.
    init, init_noise
        Dummy-image initialisation (``"gaussian"``, ``"uniform"``, ``"prior"``, ``"mean"``) and added noise.
    labels, label_init
        Label strategy (``"auto"``, ``"known"``, ``"idlg"``, ``"yin"``, ``"wainakh"``, ``"joint"``) and, for
        ``"joint"``, the soft-label logits' initialisation (``"gaussian"`` or ``"uniform"`` in [0, 1]).
    restarts
        Independent trials per victim; the one with the lowest objective is returned.
    bn_replay
        Replay BatchNorm as the client ran it (training mode, running statistics re-estimated step by step).
        ``False`` replays with frozen running statistics (the assumption of earlier attacks; the hospital
        paper's Fig. 3b control).
    num_images
        Dummy images per victim (default: the view's ``num_images``, else the update's ``num_examples``).
    trace_every, tolerance, check_every, patience
        Loss-trace period and optional early stops (see :func:`~gradleak.attacks.optimize.minimize`):
        ``tolerance`` ends the run once every trial's objective is at most it, ``patience`` stops a trial
        after that many iterations without a new best (each trial keeps its best iterate).
    unfold_convolutions
        Replay convolutions as unfold + matrix product where the unfolded input is small
        (:func:`~gradleak.attacks.unfold.unfold_convolutions`): the same numbers to rounding, faster double
        backward for small feature maps. ``False`` keeps ``nn.Conv2d``.
    compile
        ``"auto"`` (default): time the first eager iterations and compile the rest of the run with
        :func:`torch.compile` (Inductor) when that is expected to save more time than compiling costs; the rule,
        its measured constants and the on-disk cache are in :mod:`gradleak.attacks.compiling`, and each
        reconstruction's ``config["execution"]`` says which path ran and why. ``True`` compiles from the first
        iteration (refused without a C++ compiler on a CPU), ``False`` stays eager. A compilation costs 1-10 s
        for the small CNN on this project's 2-core machine (less from the on-disk cache), after which its
        iterations run 1.5-2.4× faster on a CPU (benchmarks/results/vs_breaching_cpu.json). Results agree
        with the eager iteration to rounding. Stochastic layers the attacker does not know draw their noise
        from Inductor's generator. Where compiling fails, the attack warns and runs the eager iteration.
    """

    iterations: int = 1000
    objective: str = "cosine"
    layer_weighting: str = "equal"
    optimizer: str = "adam"
    lr: float = 0.1
    schedule: str = "step"
    warmup: int = 0
    signed: bool = False
    plateau: int = 400
    boxed: bool = True
    tv: float | str = 0.0
    l2: float = 0.0
    bn_prior: float = 0.0
    bn_buffers: float = 0.0
    group: float = 0.0
    init: str = "gaussian"
    init_noise: float = 0.0
    labels: str = "auto"
    label_init: str = "gaussian"
    restarts: int = 1
    bn_replay: bool = True
    num_images: int | None = None
    trace_every: int = 10
    tolerance: float | None = None
    check_every: int = 100
    patience: int | None = None
    tv_sweep_iterations: int = 1000
    unfold_convolutions: bool = True
    compile: bool | str = "auto"

    def __post_init__(self) -> None:
        choices = {"objective": OBJECTIVES, "init": INITIALIZERS, "labels": LABEL_STRATEGIES,
                   "label_init": ("gaussian", "uniform")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise AttackError(f"{name}={getattr(self, name)!r} is not one of {sorted(valid)}")
        if self.iterations < 0 or self.restarts < 1 or self.trace_every < 1:
            raise AttackError("iterations must be >= 0, restarts >= 1 and trace_every >= 1")
        if isinstance(self.tv, str) and self.tv != "auto":
            raise AttackError(f"tv must be a number >= 0 or 'auto', got {self.tv!r}")
        if self.tv_sweep_iterations < 1:
            raise AttackError(f"tv_sweep_iterations must be >= 1, got {self.tv_sweep_iterations}")
        if self.compile not in (True, False, "auto"):
            raise AttackError(f"compile must be true, false or 'auto', got {self.compile!r}")
        if self.patience is not None and self.patience < 1:
            raise AttackError(f"patience must be >= 1 (or None), got {self.patience}")
        if self.num_images is not None and self.num_images < 1:
            raise AttackError(f"num_images must be >= 1, got {self.num_images}")
        if not self.bn_replay and (self.bn_prior or self.bn_buffers):
            raise AttackError("bn_replay=False replays with frozen BN statistics; there are no batch statistics "
                              "to match: set bn_prior=0 and bn_buffers=0")
        self.optimizer_config()  # validates optimizer, lr, schedule, warmup

    def optimizer_config(self) -> OptimizerConfig:
        return OptimizerConfig(name=self.optimizer, lr=self.lr, schedule=self.schedule,  # type: ignore[arg-type]
                               warmup=self.warmup, signed=self.signed, plateau=self.plateau)

    def validate(self, view: ServerView) -> None:
        super().validate(view)
        if self.init == "prior" and view.prior is None:
            raise AttackError(f"{type(self).__name__} starts from a prior image (init='prior') and the view holds "
                              "none: set ServerView.prior, or init='mean'")

    def reconstruct(self, view: ServerView, generator: torch.Generator) -> Reconstruction:
        return self.reconstruct_many([view], [generator])[0]

    def attack_many(self, views: Sequence[ServerView], *,
                    generator: torch.Generator | Sequence[torch.Generator] | None = None) -> list[Reconstruction]:
        """Attack several victims in one vectorised run; like ``attack(view)`` for each of them.

        ``generator`` is one generator (split into one seed per view) or one generator per view; victim
        ``i`` attacked with ``generators[i]`` gets the same result as ``attack(views[i], generator=...)``.
        ``wall_time`` of each result is the run's time divided by the number of victims.
        """
        if not views:
            raise AttackError("attack_many needs at least one view")
        for view in views:
            self.validate(view)
        started = time.perf_counter()
        results = self.reconstruct_many(views, _generators(generator, len(views)))
        share = (time.perf_counter() - started) / len(views)
        return [dataclasses.replace(r, wall_time=share, attack=self.name or type(self).__name__,
                                    config={**self.config(), **r.config}) for r in results]

    # -- the vectorised problem -------------------------------------------------------------------------

    def _recipe(self, view: ServerView, n: int) -> LocalRecipe:
        recipe = view.recipe if view.recipe is not None else LocalRecipe(lr=1.0, steps=1, batch_size=n,
                                                                         shuffle=False)
        if not isinstance(recipe, LocalRecipe):
            raise AttackError(f"view.recipe must be a gradleak.fl.LocalRecipe, got {type(recipe).__name__}")
        return recipe if self.bn_replay else recipe.replace(bn_mode="eval")

    def _check_alike(self, views: Sequence[ServerView]) -> None:
        first = views[0]
        for field in ("model", "image_shape", "num_classes", "mean", "std", "recipe", "num_images"):
            if any(getattr(v, field) != getattr(first, field) for v in views[1:]):
                raise AttackError(f"views attacked together must share {field}; attack them separately")

    def reconstruct_many(self, views: Sequence[ServerView],
                         generators: Sequence[torch.Generator]) -> list[Reconstruction]:
        """The vectorised attack of ``views`` (one generator each); results in view order."""
        result, problem = self.solve(views, generators)
        return self._package(result, problem)

    def solve(self, views: Sequence[ServerView], generators: Sequence[torch.Generator]
              ) -> tuple[OptimResult, _Problem]:
        """Run the optimisation of :meth:`reconstruct_many` and return its raw result (every variable, the
        noise leaves ``"noise:<name>"`` included, as ``(victims · restarts, ...)``) and the problem."""
        if self.tv == "auto":
            return self._solve_auto_tv(views, generators)
        problem = self.problem(views)
        project = problem.project if (self.boxed or problem.targeting.project is not None) else None
        result = minimize(problem.objective, problem.initial(generators), iterations=self.iterations,
                          optimizer=self.optimizer_config(), project=project,
                          trace_every=self.trace_every, tolerance=self.tolerance, check_every=self.check_every,
                          value_and_grad=problem.value_and_grad, patience=self.patience,
                          lr_scale={LEAF + k: v for k, v in problem.targeting.lr_scale.items()} or None)
        return result, problem

    def _solve_auto_tv(self, views: Sequence[ServerView], generators: Sequence[torch.Generator]
                       ) -> tuple[OptimResult, _Problem]:
        """``tv="auto"``: a short run per candidate weight from the same start, scored by the objective without
        the TV term at each run's best point (summed over victims), then the full run with the best weight."""
        states = [g.get_state() for g in generators]

        def fresh() -> list[torch.Generator]:
            for g, state in zip(generators, states, strict=True):
                g.set_state(state)
            return list(generators)

        short = min(self.iterations, self.tv_sweep_iterations)
        scores: dict[float, float] = {}
        untextured = dataclasses.replace(self, tv=0.0, compile=False).problem(views)  # scores only, never stepped
        for tv in TV_CANDIDATES:
            result, _ = dataclasses.replace(self, tv=tv, iterations=short).solve(views, fresh())
            with torch.no_grad():
                match = untextured.objective(result.variables).reshape(len(views), self.restarts)
            best = result.objective.reshape(len(views), self.restarts).argmin(1)
            scores[tv] = float(match.gather(1, best.unsqueeze(1)).sum())
        chosen = min(scores, key=lambda tv: scores[tv])
        result, problem = dataclasses.replace(self, tv=chosen).solve(views, fresh())
        note = {"chosen": chosen, "scores": scores, "sweep_iterations": short}
        return result, dataclasses.replace(problem, notes={**problem.notes, "tv_auto": note})

    def targeting(self, views: Sequence[ServerView], model: torch.nn.Module, recipe: LocalRecipe,
                  n: int) -> Targeting:
        """How this attack changes the replay of ``views`` (``model`` built from the first view, ``recipe`` the
        one it would replay, ``n`` images per victim). The plain replay changes nothing."""
        return Targeting()

    def evaluate(self, views: Sequence[ServerView], images: Tensor, labels: Tensor | None = None,
                 noise: Mapping[str, Tensor] | None = None) -> Tensor:
        """The attack's objective at given ``(V, n, C, H, W)`` images in ``[0, 1]``, one value per view.

        ``labels`` are ``(V, n)`` class indices or ``(V, n, K)`` probabilities; they are needed when the
        attack optimises soft labels. ``noise`` gives the value ``(V, *shape)`` of every noise leaf the attack
        optimises. At the client's true data (and noise) and a faithful replay, the update term is 0.
        """
        problem = dataclasses.replace(self, restarts=1).problem(views)
        first = views[0]
        x = normalize(images.to(problem.device, problem.dtype), first.mean, first.std)
        values = {"x": x.reshape(problem.shape[0], *problem.shape[2:])}
        if problem.joint:
            if labels is None:
                raise AttackError("this attack optimises soft labels: pass labels to evaluate it")
            probs = labels if labels.is_floating_point() else F.one_hot(labels, first.num_classes).float()
            values["y"] = probs.to(problem.device, problem.dtype).clamp_min(1e-12).log()
        for name in problem.targeting.leaves:
            if noise is None or name not in noise:
                raise AttackError(f"this attack optimises the noise {name!r}: pass its value in noise=")
            values[LEAF + name] = noise[name].to(problem.device, problem.dtype)
        with torch.no_grad():
            return problem.objective(values)

    def problem(self, views: Sequence[ServerView]) -> _Problem:
        """The batched objective of attacking ``views`` together (victims × restarts trials)."""
        if self.tv == "auto":
            raise AttackError("tv='auto' chooses the weight when the attack runs; give a number to build or "
                              "evaluate the objective")
        self._check_alike(views)
        view0 = views[0]
        model = view0.build_model()
        device = next(iter(view0.global_state.params.values())).device
        model.to(device)
        if self.unfold_convolutions:
            model = unfold_convolutions(model, tuple(view0.image_shape))
        bind_functional(model)  # the attacker's own copy: BatchNorm/dropout forwards installed once, not per call
        n = self.num_images or view0.num_images or view0.update.num_examples
        recipe = self._recipe(view0, n)
        tg = self.targeting(views, model, recipe, n)
        if tg.recipe is not None:
            recipe = tg.recipe
        scale = 1.0 / recipe.lr
        V, R, K = len(views), self.restarts, view0.num_classes
        keys = [k for k in dict(model.named_parameters()) if k in view0.update.delta and k not in tg.ignore]
        if not keys:
            raise AttackError("no parameter is left to match (every sent parameter is ignored)")
        if any(set(v.update.delta) != set(view0.update.delta) for v in views):
            raise AttackError("views attacked together must send the same parameters")
        fixed = _stack_per_view(tg.fixed, device)
        masks = _stack_per_view(tg.masks, device)
        leaf_names = list(tg.leaves)
        weights = layer_weights(keys, self.layer_weighting)
        momenta = bn_momenta(model)
        objective_fn = OBJECTIVES[self.objective]
        params, pdim = _share_or_stack([v.global_state.params for v in views])
        dtype = next(iter(view0.global_state.params.values())).dtype
        buffers, bdim = _share_or_stack([v.global_state.buffers for v in views])
        # one plain SGD step: delta / lr is minus the step's gradient, which the replay hands back; matching the
        # gradient to -delta/lr (every objective is invariant under negating both sides) saves the out-of-place
        # SGD step and its derivative on every parameter
        sgd_step = (len(batch_schedule(n, recipe)) == 1 and recipe.optimizer == "sgd" and not recipe.momentum
                    and not recipe.weight_decay and recipe.lr_at(0, 1) == recipe.lr)
        sign = -1.0 if sgd_step else 1.0
        targets = {k: torch.stack([v.update.delta[k].to(device) * (sign * scale) for v in views]) for k in keys}
        received: TensorDict = {}
        if self.bn_buffers:
            names = [k for k in view0.global_state.buffers if k.endswith(("running_mean", "running_var"))]
            if not names or any(k not in v.update.buffers for v in views for k in names):
                raise AttackError("bn_buffers > 0 needs the BatchNorm running statistics of the update; the "
                                  "client withheld them (or the model has no BatchNorm): set bn_buffers=0")
            received = {k: torch.stack([v.update.buffers[k].to(device) for v in views]) for k in names}
        # one trial runs without vmap: its target is fixed, so what depends on the target alone is computed once
        match = matcher(self.objective, {k: t[0] for k, t in targets.items()}, weights) if V * R == 1 else None
        # under vmap, each victim's target constants (the cosine's target norm), computed once
        per_victim = [target_constants(self.objective, {k: t[v] for k, t in targets.items()}, weights)
                      for v in range(V)] if match is None else []
        tconst = {k: torch.stack([c[k] for c in per_victim]) for k in per_victim[0]} if per_victim else {}
        hard = [infer_labels(self.labels, v, n) for v in views]
        joint = hard[0] is None
        labels = None if joint else torch.stack(hard).to(device)  # type: ignore[arg-type]
        shape = (V, R, n, *view0.image_shape)

        def single(x: Tensor, y: Tensor, z: TensorDict, p: TensorDict, b: TensorDict, t: TensorDict,
                   tc: TensorDict, recv: TensorDict, fx: TensorDict, mk: TensorDict) -> Tensor:
            injected = {**fx, **tg.inject(z)} if (z or fx) else None
            out = local_update(model, p, b, LocalData(x, y.softmax(-1) if joint else y), recipe, noise=injected,
                               create_graph=True, gradient_only=sgd_step)
            if sgd_step:
                step_grads = out.per_step[0].grads
                dummy = {k: step_grads[k] for k in t}  # type: ignore[index]
            else:
                dummy = {k: (out.params[k] - p[k]) * scale for k in t}
            if mk:
                dummy = {k: d * mk[k] if k in mk else d for k, d in dummy.items()}
            loss = match(dummy) if match is not None else objective_fn(dummy, t, weights, **tc)
            if tg.regularizer is not None and z:
                loss = loss + tg.regularizer(z)
            if self.tv:
                loss = loss + self.tv * total_variation(x)
            if self.l2:
                loss = loss + self.l2 * image_l2(x)
            if self.bn_prior:
                loss = loss + self.bn_prior * bn_statistics(out.per_step[0].bn_stats, running_statistics(b, momenta))
            if self.bn_buffers:
                loss = loss + self.bn_buffers * buffer_matching(out.buffers, recv, momenta)
            return loss

        inner_dims = (0, 0 if joint else None, 0, None, None, None, None, None, None, None)
        outer_dims = (0, 0, 0, pdim, bdim, 0, 0 if tconst else None, 0 if received else None, 0 if fixed else None,
                      0 if masks else None)

        def first(d: TensorDict, dim: int | None) -> TensorDict:
            return {k: v[0] for k, v in d.items()} if dim == 0 else d

        def batched(fn: Callable) -> Callable:
            """``fn`` over the victims × restarts grid: vmap over victims of vmap over restarts, leaving out an
            axis of length 1 (vmap's batching rules cost ~30% of an iteration on a CPU even over one trial;
            benchmarks/results/vs_breaching_profile.md). Outputs get leading ``(V, R)`` dimensions."""
            # randomness="different": stochastic layers (dropout, variational bottlenecks) the attacker does not
            # know the client's noise of draw fresh noise per trial, as the client did
            inner = fn if R == 1 else vmap(fn, in_dims=inner_dims, randomness="different")
            both = inner if V == 1 else vmap(inner, in_dims=outer_dims, randomness="different")

            def call(x: Tensor, y: Tensor, z: TensorDict, p: TensorDict, b: TensorDict, t: TensorDict,
                     tc: TensorDict, recv: TensorDict, fx: TensorDict, mk: TensorDict):
                if R == 1:
                    x, z = x[:, 0], {k: v[:, 0] for k, v in z.items()}
                    y = y[:, 0] if joint else y
                if V == 1:
                    x, y, z = x[0], y[0], {k: v[0] for k, v in z.items()}
                    p, b, t, tc, recv, fx, mk = (first(p, pdim), first(b, bdim), first(t, 0), first(tc, 0),
                                                 first(recv, 0), first(fx, 0), first(mk, 0))
                out = both(x, y, z, p, b, t, tc, recv, fx, mk)
                if V == 1:
                    out = tree_map(lambda a: a.unsqueeze(0), out)
                if R == 1:
                    out = tree_map(lambda a: a.unsqueeze(1), out)
                return out
            return call

        outer = batched(single)
        # per-trial gradients as vmap(grad(...)): differentiating *through* vmap with torch.autograd (or
        # torch.func.grad) gives wrong input gradients when the replay contains native BatchNorm (PyTorch
        # 2.14; tests/attacks/test_attacks.py::test_attack_gradient_matches_finite_differences). Without
        # BatchNorm, or with one trial (no vmap), torch.autograd through the objective is exact and cheaper.
        argnums = (0, *((1,) if joint else ()), *((2,) if leaf_names else ()))
        outer_vg = batched(grad_and_value(single, argnums=argnums if len(argnums) > 1 else 0))
        plain_autograd = V * R == 1 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                               for m in model.modules())

        def group_term(x: Tensor) -> Tensor:
            return self.group * vmap(group_consistency)(x)

        def leaves_of(values: TensorDict) -> TensorDict:
            return {k: values[LEAF + k].reshape(V, R, *values[LEAF + k].shape[1:]) for k in leaf_names}

        def arguments(values: TensorDict) -> tuple:
            x = values["x"].reshape(shape)
            y = values["y"].reshape(V, R, n, K) if joint else labels
            return x, y, leaves_of(values), params, buffers, targets, tconst, received, fixed, masks

        def objective(values: TensorDict) -> Tensor:
            loss = outer(*arguments(values))
            if self.group and R > 1:
                loss = loss + group_term(values["x"].reshape(shape))
            return loss.reshape(V * R)

        def value_and_grad(values: TensorDict) -> tuple[Tensor, TensorDict]:
            if plain_autograd:
                leaves = {k: v.detach().requires_grad_(True) for k, v in values.items()}
                with torch.enable_grad():
                    loss = outer(*arguments(leaves)).reshape(V * R)
                    if self.group and R > 1:
                        loss = loss + group_term(leaves["x"].reshape(shape)).reshape(V * R)
                    found = torch.autograd.grad(loss.sum(), list(leaves.values()), allow_unused=True,
                                                materialize_grads=True)
                return loss.detach(), dict(zip(leaves, found, strict=True))
            return transformed_value_and_grad(values)

        def transformed_value_and_grad(values: TensorDict) -> tuple[Tensor, TensorDict]:
            x = values["x"].reshape(shape)
            grads, loss = outer_vg(*arguments(values))
            grads = grads if len(argnums) > 1 else (grads,)
            out = {"x": grads[0].reshape(values["x"].shape)}
            if joint:
                out["y"] = grads[1].reshape(values["y"].shape)
            if leaf_names:
                out.update({LEAF + k: g.reshape(values[LEAF + k].shape) for k, g in grads[-1].items()})
            if self.group and R > 1:  # no BatchNorm inside: plain autograd is exact here
                leaf = x.detach().requires_grad_(True)
                with torch.enable_grad():
                    term = group_term(leaf)
                    (g,) = torch.autograd.grad(term.sum(), leaf)
                loss = loss + term.detach()
                out["x"] = out["x"] + g.reshape(values["x"].shape)
            return loss.reshape(V * R), out

        mean = torch.tensor(view0.mean, device=device, dtype=torch.float64).view(-1, 1, 1)
        std = torch.tensor(view0.std, device=device, dtype=torch.float64).view(-1, 1, 1)
        lo, hi = ((0 - mean) / std).to(dtype), ((1 - mean) / std).to(dtype)

        def project(values: TensorDict) -> TensorDict:
            out = dict(values)
            if self.boxed:
                out["x"] = torch.maximum(torch.minimum(values["x"], hi), lo)
            if tg.project is not None and leaf_names:
                out.update({LEAF + k: v for k, v in tg.project({k: values[LEAF + k] for k in leaf_names}).items()})
            return out

        # the compiled route is the torch.func one, traced into one graph (Dynamo cannot trace torch.autograd.grad
        # with create_graph); each problem is a new closure of the same code, so Dynamo's cache is reused across
        # problems of the same model architecture and shapes (its guards check them). cpp_wrapper: Inductor calls
        # its CPU kernels from C++, not Python (one image 2.71 -> 2.32 ms an iteration, 1 thread)
        budget = ("iterations", "tolerance", "check_every", "patience", "trace_every", "compile")
        key = problem_key(type(model).__module__, type(model).__qualname__,
                          [(k, tuple(v.shape)) for k, v in model.state_dict().items()], shape, joint, repr(recipe),
                          device.type, str(dtype), torch.__version__, type(self).__qualname__,
                          {k: v for k, v in self.config().items() if k not in budget})
        value_and_grad = AdaptiveIteration(value_and_grad, transformed_value_and_grad, mode=self.compile,
                                           iterations=self.iterations, key=key, device=device)
        return _Problem(self, tuple(views), shape, joint, labels, objective, value_and_grad, project, device, dtype,
                        tg)

    def _package(self, result: OptimResult, problem: _Problem) -> list[Reconstruction]:
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


@dataclass(frozen=True)
class _Problem:
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
    targeting: Targeting = Targeting()
    notes: Mapping[str, object] = dataclasses.field(default_factory=dict)

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
