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
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad_and_value, vmap

from gradleak.attacks.base import Attack, AttackError
from gradleak.attacks.init import INITIALIZERS, initialize
from gradleak.attacks.labels import LABEL_STRATEGIES, infer_labels
from gradleak.attacks.objectives import OBJECTIVES, layer_weights
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
from gradleak.data.transforms import denormalize, normalize
from gradleak.fl.local import LocalData, local_update
from gradleak.fl.recipe import LocalRecipe
from gradleak.records import Reconstruction, ServerView, Trial

__all__ = ["ReplayAttack"]

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
    optimizer, lr, schedule, warmup, signed
        See :class:`~gradleak.attacks.optimize.OptimizerConfig`.
    boxed
        Keep dummy pixels in ``[0, 1]`` (a box in normalised space) after every step.
    tv, l2, bn_prior, bn_buffers, group
        Weights of the priors (0 switches a term off).
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
    trace_every, tolerance, check_every
        Loss-trace period and optional early stop (see :func:`~gradleak.attacks.optimize.minimize`).
    """

    iterations: int = 1000
    objective: str = "cosine"
    layer_weighting: str = "equal"
    optimizer: str = "adam"
    lr: float = 0.1
    schedule: str = "step"
    warmup: int = 0
    signed: bool = False
    boxed: bool = True
    tv: float = 0.0
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

    def __post_init__(self) -> None:
        choices = {"objective": OBJECTIVES, "init": INITIALIZERS, "labels": LABEL_STRATEGIES,
                   "label_init": ("gaussian", "uniform")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise AttackError(f"{name}={getattr(self, name)!r} is not one of {sorted(valid)}")
        if self.iterations < 0 or self.restarts < 1 or self.trace_every < 1:
            raise AttackError("iterations must be >= 0, restarts >= 1 and trace_every >= 1")
        if self.num_images is not None and self.num_images < 1:
            raise AttackError(f"num_images must be >= 1, got {self.num_images}")
        if not self.bn_replay and (self.bn_prior or self.bn_buffers):
            raise AttackError("bn_replay=False replays with frozen BN statistics; there are no batch statistics "
                              "to match: set bn_prior=0 and bn_buffers=0")
        self.optimizer_config()  # validates optimizer, lr, schedule, warmup

    def optimizer_config(self) -> OptimizerConfig:
        return OptimizerConfig(name=self.optimizer, lr=self.lr, schedule=self.schedule,  # type: ignore[arg-type]
                               warmup=self.warmup, signed=self.signed)

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
                                    config=self.config()) for r in results]

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
        problem = self.problem(views)
        result = minimize(problem.objective, problem.initial(generators), iterations=self.iterations,
                          optimizer=self.optimizer_config(), project=problem.project if self.boxed else None,
                          trace_every=self.trace_every, tolerance=self.tolerance, check_every=self.check_every,
                          value_and_grad=problem.value_and_grad)
        return self._package(result, problem)

    def evaluate(self, views: Sequence[ServerView], images: Tensor, labels: Tensor | None = None) -> Tensor:
        """The attack's objective at given ``(V, n, C, H, W)`` images in ``[0, 1]``, one value per view.

        ``labels`` are ``(V, n)`` class indices or ``(V, n, K)`` probabilities; they are needed when the
        attack optimises soft labels. At the client's true data and a faithful replay, the update term is 0.
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
        with torch.no_grad():
            return problem.objective(values)

    def problem(self, views: Sequence[ServerView]) -> _Problem:
        """The batched objective of attacking ``views`` together (victims × restarts trials)."""
        self._check_alike(views)
        view0 = views[0]
        model = view0.build_model()
        device = next(iter(view0.global_state.params.values())).device
        model.to(device)
        n = self.num_images or view0.num_images or view0.update.num_examples
        recipe = self._recipe(view0, n)
        scale = 1.0 / recipe.lr
        V, R, K = len(views), self.restarts, view0.num_classes
        keys = [k for k in dict(model.named_parameters()) if k in view0.update.delta]
        if any(set(v.update.delta) != set(view0.update.delta) for v in views):
            raise AttackError("views attacked together must send the same parameters")
        weights = layer_weights(keys, self.layer_weighting)
        momenta = bn_momenta(model)
        objective_fn = OBJECTIVES[self.objective]
        params, pdim = _share_or_stack([v.global_state.params for v in views])
        buffers, bdim = _share_or_stack([v.global_state.buffers for v in views])
        targets = {k: torch.stack([v.update.delta[k].to(device) * scale for v in views]) for k in keys}
        received: TensorDict = {}
        if self.bn_buffers:
            names = [k for k in view0.global_state.buffers if k.endswith(("running_mean", "running_var"))]
            if not names or any(k not in v.update.buffers for v in views for k in names):
                raise AttackError("bn_buffers > 0 needs the BatchNorm running statistics of the update; the "
                                  "client withheld them (or the model has no BatchNorm): set bn_buffers=0")
            received = {k: torch.stack([v.update.buffers[k].to(device) for v in views]) for k in names}
        hard = [infer_labels(self.labels, v, n) for v in views]
        joint = hard[0] is None
        labels = None if joint else torch.stack(hard).to(device)  # type: ignore[arg-type]
        shape = (V, R, n, *view0.image_shape)

        def single(x: Tensor, y: Tensor, p: TensorDict, b: TensorDict, t: TensorDict, recv: TensorDict) -> Tensor:
            out = local_update(model, p, b, LocalData(x, y.softmax(-1) if joint else y), recipe, create_graph=True)
            loss = objective_fn({k: (out.params[k] - p[k]) * scale for k in t}, t, weights)
            if self.tv:
                loss = loss + self.tv * total_variation(x)
            if self.l2:
                loss = loss + self.l2 * image_l2(x)
            if self.bn_prior:
                loss = loss + self.bn_prior * bn_statistics(out.per_step[0].bn_stats, running_statistics(b, momenta))
            if self.bn_buffers:
                loss = loss + self.bn_buffers * buffer_matching(out.buffers, recv, momenta)
            return loss

        inner_dims = (0, 0 if joint else None, None, None, None, None)
        outer_dims = (0, 0, pdim, bdim, 0, 0 if received else None)
        # randomness="different": stochastic layers (dropout, variational bottlenecks) the attacker does not know
        # the client's noise of draw fresh noise per trial, as the client did
        outer = vmap(vmap(single, in_dims=inner_dims, randomness="different"), in_dims=outer_dims,
                     randomness="different")
        # per-trial gradients as vmap(grad(...)): differentiating *through* vmap with torch.autograd (or
        # torch.func.grad) gives wrong input gradients when the replay contains native BatchNorm (PyTorch
        # 2.14; tests/attacks/test_attacks.py::test_attack_gradient_matches_finite_differences)
        single_vg = grad_and_value(single, argnums=(0, 1) if joint else 0)
        outer_vg = vmap(vmap(single_vg, in_dims=inner_dims, randomness="different"), in_dims=outer_dims,
                        randomness="different")

        def group_term(x: Tensor) -> Tensor:
            return self.group * vmap(group_consistency)(x)

        def objective(values: TensorDict) -> Tensor:
            x = values["x"].reshape(shape)
            y = values["y"].reshape(V, R, n, K) if joint else labels
            loss = outer(x, y, params, buffers, targets, received)
            if self.group and R > 1:
                loss = loss + group_term(x)
            return loss.reshape(V * R)

        def value_and_grad(values: TensorDict) -> tuple[Tensor, TensorDict]:
            x = values["x"].reshape(shape)
            y = values["y"].reshape(V, R, n, K) if joint else labels
            grads, loss = outer_vg(x, y, params, buffers, targets, received)
            out = {"x": (grads[0] if joint else grads).reshape(values["x"].shape)}
            if joint:
                out["y"] = grads[1].reshape(values["y"].shape)
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
        dtype = next(iter(view0.global_state.params.values())).dtype
        lo, hi = ((0 - mean) / std).to(dtype), ((1 - mean) / std).to(dtype)

        def project(values: TensorDict) -> TensorDict:
            return {**values, "x": torch.maximum(torch.minimum(values["x"], hi), lo)}

        return _Problem(self, tuple(views), shape, joint, labels, objective, value_and_grad, project, device, dtype)

    def _package(self, result: OptimResult, problem: _Problem) -> list[Reconstruction]:
        V, R, n = problem.shape[:3]
        view0 = problem.views[0]
        images = denormalize(result.variables["x"].reshape(problem.shape), view0.mean, view0.std).clamp(0, 1).cpu()
        objective = result.objective.reshape(V, R).cpu()
        soft = result.variables["y"].reshape(V, R, n, -1).softmax(-1).cpu() if problem.joint else None
        trace = result.trace.reshape(-1, V, R).cpu()
        out = []
        for v in range(V):
            r = int(objective[v].argmin())
            trials = tuple(Trial(images=images[v, i], objective=float(objective[v, i]),
                                 soft_labels=None if soft is None else soft[v, i]) for i in range(R))
            labels = soft[v, r].argmax(-1) if soft is not None else problem.labels[v].cpu()  # type: ignore[index]
            out.append(Reconstruction(
                images=images[v, r], labels=labels, soft_labels=None if soft is None else soft[v, r],
                trials=trials, loss_trace=trace[:, v, r], iterations=result.iterations))
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

    def initial(self, generators: Sequence[torch.Generator]) -> TensorDict:
        """Starting images (and soft-label logits), each victim drawing from its own generator."""
        a, (_, R, n) = self.attack, self.shape[:3]
        xs, ys = [], []
        for v, g in zip(self.views, generators, strict=True):
            xs.append(initialize(a.init, trials=R, n=n, image_shape=v.image_shape, generator=g, mean=v.mean,
                                 std=v.std, prior=v.prior, noise=a.init_noise))
            if self.joint:
                draw = torch.randn if a.label_init == "gaussian" else torch.rand
                ys.append(draw((R, n, v.num_classes), generator=g))
        values = {"x": torch.cat(xs).to(self.device, self.dtype)}
        if self.joint:
            values["y"] = torch.cat(ys).to(self.device, self.dtype)
        return values
