"""The configurable replay attack (:class:`ReplayAttack`): options, validation, the optimisation run and
``tv="auto"``; its objective is built in :mod:`~gradleak.attacks.replay.build`."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from gradleak.attacks.base import Attack, AttackError
from gradleak.attacks.init import INITIALIZERS
from gradleak.attacks.labels import LABEL_STRATEGIES
from gradleak.attacks.objectives import OBJECTIVES
from gradleak.attacks.optimize import OptimizerConfig, OptimResult, minimize
from gradleak.attacks.replay.build import build_problem, package
from gradleak.attacks.replay.problem import Problem
from gradleak.attacks.replay.targeting import LEAF, Targeting
from gradleak.data.transforms import normalize
from gradleak.fl.recipe import LocalRecipe
from gradleak.records import Reconstruction, ServerView

__all__ = ["TV_CANDIDATES", "ReplayAttack", "split_generators"]

#: the TV weights ``tv="auto"`` chooses from (Scheliga et al.'s 1e-2 down to Geiping et al.'s MNIST-era 1e-4)
TV_CANDIDATES = (1e-2, 1e-3, 1e-4)


def split_generators(generator: torch.Generator | Sequence[torch.Generator] | None, n: int
                     ) -> list[torch.Generator]:
    """One generator per view: ``generator`` split into ``n`` seeds (itself when ``n`` is 1), or the ``n``
    generators given."""
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
        in each reconstruction's ``config["tv_auto"]``. Subclasses may accept a mode of their own
        (:attr:`tv_modes`, resolved per run by :meth:`resolve_tv`; the weight it resolved to is in
        ``config["tv_resolved"]``).
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
        iteration (refused without a C++ compiler on a CPU), ``False`` stays eager. A compilation of a small model
        costs seconds (less from the on-disk cache) and makes its iterations faster. Results agree
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

    #: the words ``tv`` accepts besides a number
    tv_modes: ClassVar[tuple[str, ...]] = ("auto",)

    def __post_init__(self) -> None:
        choices: dict[str, Collection[str]] = {"objective": OBJECTIVES, "init": INITIALIZERS,
                                               "labels": LABEL_STRATEGIES, "label_init": ("gaussian", "uniform")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise AttackError(f"{name}={getattr(self, name)!r} is not one of {sorted(valid)}")
        if self.iterations < 0 or self.restarts < 1 or self.trace_every < 1:
            raise AttackError("iterations must be >= 0, restarts >= 1 and trace_every >= 1")
        if isinstance(self.tv, str) and self.tv not in self.tv_modes:
            raise AttackError(f"tv must be a number >= 0 or one of {list(self.tv_modes)}, got {self.tv!r}")
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
        results = self.reconstruct_many(views, split_generators(generator, len(views)))
        share = (time.perf_counter() - started) / len(views)
        return [dataclasses.replace(r, wall_time=share, attack=self.name or type(self).__name__,
                                    config={**self.config(), **r.config}) for r in results]

    # -- the vectorised problem -------------------------------------------------------------------------

    def replay_recipe(self, view: ServerView, n: int) -> LocalRecipe:
        """The recipe the replay runs for ``view`` (``n`` images): the view's, else one SGD step of lr 1."""
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
        return package(result, problem)

    def solve(self, views: Sequence[ServerView], generators: Sequence[torch.Generator]
              ) -> tuple[OptimResult, Problem]:
        """Run the optimisation of :meth:`reconstruct_many` and return its raw result (every variable, the
        noise leaves ``"noise:<name>"`` included, as ``(victims · restarts, ...)``) and the problem."""
        tv = self.resolve_tv(views)
        if tv != self.tv:
            result, problem = dataclasses.replace(self, tv=tv).solve(views, generators)
            return result, dataclasses.replace(problem, notes={**problem.notes, "tv_resolved": tv})
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
                       ) -> tuple[OptimResult, Problem]:
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

    def resolve_tv(self, views: Sequence[ServerView]) -> float | str:
        """The TV weight (a number, or ``"auto"``) this attack runs ``views`` with: ``tv`` itself, unless it is
        a mode of a subclass's own (:attr:`tv_modes`), which the subclass resolves here."""
        return self.tv

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

    def problem(self, views: Sequence[ServerView]) -> Problem:
        """The batched objective of attacking ``views`` together (victims × restarts trials)."""
        tv = self.resolve_tv(views)
        if tv == "auto":
            raise AttackError(f"tv={self.tv!r} chooses the weight by a sweep when the attack runs here; give a number "
                              "to build or evaluate the objective")
        if tv != self.tv:
            return dataclasses.replace(self, tv=tv).problem(views)
        self._check_alike(views)
        return build_problem(self, views)
