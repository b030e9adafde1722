"""The one optimisation loop of every optimisation attack.

:func:`minimize` minimises a *batched* objective: every variable has a leading trial dimension ``T`` and the
objective returns one value per trial, ``(T,)``. Trials never interact through the optimiser (Adam, signed
gradients and SGD are element-wise; L-BFGS keeps one curvature history per trial and takes per-trial inner
products), so running ``T`` trials together gives the same iterates as running them one by one — the
property ``tests/attacks/test_optimize.py`` checks. Per trial the loop keeps the best iterate seen (so a
diverging trial falls back to its best point) and records the objective every ``trace_every`` iterations.
Nothing inside the loop reads a value back to the host; with ``tolerance`` set, the loop checks for
convergence every ``check_every`` iterations only.

Optimisers
----------
``"adam"`` (Kingma & Ba, as ``torch.optim.Adam``), ``"sgd"``, ``"lbfgs"`` (two-loop recursion with history
``history``, step ``lr`` and PyTorch's first-step scaling ``min(1, 1/|g|_1)``; no line search, as DLG's use
of ``torch.optim.LBFGS``). ``signed=True`` replaces the gradient by its sign before the step (Geiping et al.
2020). Schedules: ``"constant"``, ``"step"`` (multiply by ``gamma`` at the fractions ``milestones`` of the
run; Geiping et al. use 3/8, 5/8, 7/8) and ``"cosine"`` (to 0), each after ``warmup`` linear warm-up steps.

Examples
--------
>>> import torch
>>> target = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
>>> out = minimize(lambda v: (v["x"] - target).pow(2).sum(1), {"x": torch.zeros(2, 2)},
...                iterations=200, optimizer=OptimizerConfig(name="adam", lr=0.1))
>>> torch.allclose(out.variables["x"], target, atol=1e-2)
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["OptimResult", "OptimizerConfig", "minimize", "report_progress"]

Variables = dict[str, Tensor]


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimiser, learning-rate schedule and gradient transform of :func:`minimize`."""

    name: Literal["adam", "sgd", "lbfgs"] = "adam"
    lr: float = 0.1
    schedule: Literal["constant", "step", "cosine", "plateau"] = "constant"
    milestones: tuple[float, ...] = (3 / 8, 5 / 8, 7 / 8)
    gamma: float = 0.1
    plateau: int = 400
    warmup: int = 0
    signed: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    history: int = 100

    def __post_init__(self) -> None:
        if self.name not in ("adam", "sgd", "lbfgs"):
            raise ValueError(f"optimizer must be adam, sgd or lbfgs, got {self.name!r}")
        if self.schedule not in ("constant", "step", "cosine", "plateau"):
            raise ValueError(f"schedule must be constant, step, cosine or plateau, got {self.schedule!r}")
        if self.schedule == "plateau" and (self.plateau < 1 or self.name == "lbfgs"):
            raise ValueError("schedule='plateau' needs plateau >= 1 and adam or sgd")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive and finite, got {self.lr}")
        if self.warmup < 0 or self.history < 1:
            raise ValueError("warmup must be >= 0 and history >= 1")

    def lr_at(self, i: int, total: int) -> float:
        """Learning rate at iteration ``i`` of ``total`` (for ``"plateau"``: the base rate, after warm-up)."""
        if i < self.warmup:
            return self.lr * (i + 1) / self.warmup
        if self.schedule == "step":
            return self.lr * self.gamma ** sum(i >= int(f * total) for f in self.milestones)
        if self.schedule == "cosine":
            span = max(total - self.warmup, 1)
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * (i - self.warmup) / span))
        return self.lr


@dataclass(frozen=True)
class OptimResult:
    """Best iterate and objective per trial, the objective trace ``(records, T)`` and its iteration indices;
    ``trial_iterations`` (with ``patience``): the iterations each trial ran before it stopped."""

    variables: Variables
    objective: Tensor
    trace: Tensor
    trace_iterations: Tensor
    iterations: int
    trial_iterations: Tensor | None = None


def _flat(values: Mapping[str, Tensor], trials: int) -> Tensor:
    return torch.cat([v.reshape(trials, -1) for v in values.values()], dim=1)


def _unflat(flat: Tensor, like: Mapping[str, Tensor]) -> Variables:
    out, start = {}, 0
    for k, v in like.items():
        n = v[0].numel()
        out[k] = flat[:, start:start + n].reshape(v.shape)
        start += n
    return out


class _LBFGS:
    """Batched L-BFGS direction: one history per trial (rows of the flattened variables)."""

    def __init__(self, history: int) -> None:
        self.history = history
        self.pairs: list[tuple[Tensor, Tensor, Tensor]] = []
        self.gamma: Tensor | None = None
        self.prev: tuple[Tensor, Tensor] | None = None

    def direction(self, x: Tensor, g: Tensor) -> Tensor:
        if self.gamma is None:
            self.gamma = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
        if self.prev is not None:
            s, y = x - self.prev[0], g - self.prev[1]
            ys = (y * s).sum(1, keepdim=True)
            ok = ys > 1e-10  # curvature condition, per trial (as torch.optim.LBFGS, which skips the pair)
            rho = torch.where(ok, 1.0 / torch.where(ok, ys, torch.ones_like(ys)), torch.zeros_like(ys))
            self.gamma = torch.where(ok, ys / (y * y).sum(1, keepdim=True).clamp_min(1e-30), self.gamma)
            self.pairs.append((s, y, rho))
            if len(self.pairs) > self.history:
                self.pairs.pop(0)
        self.prev = (x, g)
        q = -g
        alphas = []
        for s, y, rho in reversed(self.pairs):
            a = rho * (s * q).sum(1, keepdim=True)
            q = q - a * y
            alphas.append(a)
        r = self.gamma * q
        for (s, y, rho), a in zip(self.pairs, reversed(alphas), strict=True):
            b = rho * (y * r).sum(1, keepdim=True)
            r = r + s * (a - b)
        return r


#: Called as ``callback(done, iterations, best_objective)`` every ``check_every`` iterations and at the end, when
#: set with :func:`report_progress` (the only extra host synchronisation, and only then).
_PROGRESS: ContextVar[Callable[[int, int, Tensor], None] | None] = ContextVar("gradleak_progress", default=None)


@contextmanager
def report_progress(callback: Callable[[int, int, Tensor], None]) -> Iterator[None]:
    """Within the block, every optimisation loop reports ``(done, iterations, best objective per trial)`` to
    ``callback`` every ``check_every`` iterations and when it ends (``gradleak attack`` draws a progress bar)."""
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def minimize(
    objective: Callable[[Variables], Tensor],
    variables: Mapping[str, Tensor],
    *,
    iterations: int,
    optimizer: OptimizerConfig | None = None,
    project: Callable[[Variables], Variables] | None = None,
    trace_every: int = 10,
    tolerance: float | None = None,
    check_every: int = 100,
    value_and_grad: Callable[[Variables], tuple[Tensor, Variables]] | None = None,
    lr_scale: Mapping[str, float] | None = None,
    patience: int | None = None,
) -> OptimResult:
    """Minimise ``objective`` over ``variables`` (each with leading trial dimension ``T``).

    Parameters
    ----------
    objective, variables
        ``variables -> (T,)`` per-trial objective (differentiable), and the starting values (not modified).
    iterations, optimizer
        Objective evaluations (= optimiser steps); optimiser and schedule (default: Adam, lr 0.1, constant).
    project, trace_every
        Applied after every step without gradient (box constraints); record the objective every this many
        iterations.
    tolerance, check_every
        Stop once every trial's best objective is ``<= tolerance``, checked every ``check_every`` iterations
        (the only host synchronisation of the loop).
    value_and_grad
        Optional ``variables -> ((T,) objective, gradients)`` used instead of differentiating ``objective``
        with ``torch.autograd`` (the replay attacks pass theirs); ``objective`` then only scores the final iterate.
    lr_scale
        Per-variable factor on the learning rate (default 1; Adam and SGD): variables of another scale than the
        images (dropout masks, a bottleneck's noise) take smaller steps.
    patience
        Stop a trial once its best objective has not improved for this many iterations (Scheliga et al. 2024:
        4,000): it keeps its best iterate and takes no more steps; the loop ends when every trial has stopped
        (checked every ``check_every`` iterations). Stopping never replaces a trial's best point.
    """
    cfg = optimizer or OptimizerConfig()
    scale = _check(cfg, iterations, lr_scale, patience)
    current = {k: v.detach().clone() for k, v in variables.items()}
    track = _Tracker(current, cfg, patience)
    step = _Step(cfg, scale, iterations, track.trials)
    trace: list[Tensor] = []
    trace_at: list[int] = []
    done = 0
    progress = _PROGRESS.get()
    for i in range(iterations):
        obj, values, grads = _evaluate(objective, value_and_grad, current)
        with torch.no_grad():
            better = track.remember(values, obj)
            track.after(obj, better)
            if i % trace_every == 0:
                trace.append(obj)
                trace_at.append(i)
            current = step(i, values, grads, track.factor)
            if patience is not None:
                current = {k: torch.where(track.per_trial(track.active, v), v, values[k]) for k, v in current.items()}
            if project is not None:
                current = project(current)
        done = i + 1
        if progress is not None and done % check_every == 0:
            progress(done, iterations, track.best_obj)
        if tolerance is not None and done % check_every == 0 and bool((track.best_obj <= tolerance).all()):
            break
        if patience is not None and done % check_every == 0 and not bool(track.active.any()):
            break
    with torch.no_grad():
        final = objective(current).detach()
    track.remember(current, final)
    if progress is not None:
        progress(done, iterations, track.best_obj)
    return track.result(trace, trace_at, done)


def _check(cfg: OptimizerConfig, iterations: int, lr_scale: Mapping[str, float] | None, patience: int | None
           ) -> dict[str, float]:
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    scale = dict(lr_scale or {})
    if scale and cfg.name == "lbfgs":
        raise ValueError("lr_scale needs adam or sgd (L-BFGS takes one step on all variables)")
    if any(not (v > 0 and math.isfinite(v)) for v in scale.values()):
        raise ValueError(f"lr_scale values must be positive and finite, got {scale}")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    return scale


def _evaluate(objective: Callable[[Variables], Tensor],
              value_and_grad: Callable[[Variables], tuple[Tensor, Variables]] | None,
              current: Variables) -> tuple[Tensor, Variables, Variables]:
    """The objective per trial, the variables it was evaluated at and their gradients (all detached)."""
    if value_and_grad is not None:
        leaves = current
        obj, grads = value_and_grad(leaves)
    else:
        leaves = {k: v.requires_grad_(True) for k, v in current.items()}
        obj = objective(leaves)
        grads = dict(zip(leaves, torch.autograd.grad(obj.sum(), list(leaves.values())), strict=True))
    with torch.no_grad():
        return obj.detach(), {k: v.detach() for k, v in leaves.items()}, {k: g.detach() for k, g in grads.items()}


class _Tracker:
    """Per trial, on the device: the best iterate and objective, the plateau schedule's lr factor, reference
    objective and bad iterations, the stopping rule's iterations since the best improved, which trials still
    run and how many iterations each ran."""

    def __init__(self, current: Variables, cfg: OptimizerConfig, patience: int | None) -> None:
        first = next(iter(current.values()))
        self.trials = trials = first.shape[0]
        self.cfg, self.patience = cfg, patience
        self.best = {k: v.clone() for k, v in current.items()}
        self.best_obj = torch.full((trials,), math.inf, device=first.device)
        self.factor = torch.ones(trials, device=first.device)
        self.reference = torch.full((trials,), math.inf, device=first.device)
        self.bad = torch.zeros(trials, dtype=torch.long, device=first.device)
        self.since = torch.zeros(trials, dtype=torch.long, device=first.device)
        self.active = torch.ones(trials, dtype=torch.bool, device=first.device)
        self.ran = torch.zeros(trials, dtype=torch.long, device=first.device)

    @staticmethod
    def per_trial(t: Tensor, like: Tensor) -> Tensor:
        return t.view(-1, *[1] * (like.dim() - 1))

    def remember(self, values: Variables, obj: Tensor) -> Tensor:
        better = (obj < self.best_obj) & self.active  # NaN never wins; a stopped trial keeps its best
        for k, v in values.items():
            self.best[k] = torch.where(self.per_trial(better, v), v, self.best[k])
        self.best_obj = torch.where(better, obj, self.best_obj)
        return better

    def result(self, trace: list[Tensor], trace_at: list[int], done: int) -> OptimResult:
        return OptimResult(
            variables=self.best,
            objective=self.best_obj,
            trace=torch.stack(trace) if trace else torch.empty(0, self.trials, device=self.best_obj.device),
            trace_iterations=torch.tensor(trace_at, dtype=torch.long),
            iterations=done,
            trial_iterations=self.ran.cpu() if self.patience is not None else None,
        )

    def after(self, obj: Tensor, better: Tensor) -> None:
        """The plateau schedule and the stopping rule after an evaluation."""
        if self.cfg.schedule == "plateau":  # ReduceLROnPlateau(mode="min", threshold=1e-4, threshold_mode="rel")
            improved = obj < self.reference * (1 - 1e-4)
            self.reference = torch.where(improved, obj, self.reference)
            self.bad = torch.where(improved, 0, self.bad + 1)
            cut = self.bad > self.cfg.plateau
            self.factor = torch.where(cut, self.factor * self.cfg.gamma, self.factor)
            self.bad = torch.where(cut, 0, self.bad)
        if self.patience is not None:
            self.ran += self.active.long()
            self.since = torch.where(better, 0, self.since + 1)
            self.active = self.active & (self.since < self.patience)


class _Step:
    """One optimiser step on every trial (Adam as ``torch.optim.Adam``, SGD, or batched L-BFGS)."""

    def __init__(self, cfg: OptimizerConfig, scale: Mapping[str, float], iterations: int, trials: int) -> None:
        self.cfg, self.scale, self.iterations, self.trials = cfg, scale, iterations, trials
        self.state: dict[str, Tensor] = {}
        self.lbfgs = _LBFGS(cfg.history) if cfg.name == "lbfgs" else None

    def __call__(self, i: int, values: Variables, grads: Variables, factor: Tensor) -> Variables:
        cfg = self.cfg
        if cfg.signed:
            grads = {k: g.sign() for k, g in grads.items()}
        lr = cfg.lr_at(i, self.iterations)
        if self.lbfgs is not None:
            flat_g = _flat(grads, self.trials)
            step: Tensor | float = lr
            if i == 0:  # per trial, as torch.optim.LBFGS's first step
                step = lr * (1.0 / flat_g.abs().sum(1, keepdim=True).clamp_min(1e-30)).clamp(max=1.0)
            flat_x = _flat(values, self.trials)
            return _unflat(flat_x + step * self.lbfgs.direction(flat_x, flat_g), values)
        plateau = cfg.schedule == "plateau"
        if cfg.name == "adam":
            return {k: self._adam(i, k, values[k], g, lr, factor, plateau) for k, g in grads.items()}
        return {k: values[k] - (_Tracker.per_trial(factor * lr, g) if plateau else lr) * self.scale.get(k, 1.0) * g
                for k, g in grads.items()}

    def _adam(self, i: int, k: str, value: Tensor, g: Tensor, lr: float, factor: Tensor, plateau: bool) -> Tensor:
        """torch.optim.Adam's arithmetic (single-tensor path), moments updated in place."""
        b1, b2 = self.cfg.betas
        if i == 0:
            self.state[k + "/m"], self.state[k + "/v"] = torch.zeros_like(g), torch.zeros_like(g)
        m, v = self.state[k + "/m"], self.state[k + "/v"]
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / math.sqrt(1 - b2 ** (i + 1))).add_(self.cfg.eps)
        step_size = lr * self.scale.get(k, 1.0) / (1 - b1 ** (i + 1))
        if plateau:
            return value - _Tracker.per_trial(factor * step_size, m) * (m / denom)
        return value.addcdiv(m, denom, value=-step_size)
