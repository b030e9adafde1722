"""Targeted attacks on stochastic and sparsifying defenses: WIIG, DIA, PIG, GPIA, VBIA, DPIA and CDIA.

References
----------
Scheliga, Mäder, Seeland. "Combining Stochastic Defenses to Resist Gradient Inversion: An Ablation Study",
2024 (Section 4, Algorithm 2): an attacker that *mimics the client's gradient computation* defeats each
single defense. Scheliga, Mäder, Seeland. "Dropout is NOT All You Need to Prevent Gradient Leakage", AAAI 2023
(DIA and the well-informed attack). Scheliga, Mäder, Seeland. "Privacy Preserving Federated Learning with
Convolutional Variational Bottlenecks", 2024b (the "ignore" attack, here PIG).

Every attack here is :class:`~gradleak.attacks.inverting_gradients.InvertingGradients` (same loop, objective,
priors and defaults) plus a :class:`~gradleak.attacks.replay.Targeting` of the replay:

- ``wiig``: the client's true randomness (``view.client_noise``, threat ``"well-informed"``) is injected.
- ``dia``: the dropout masks are optimised with the images, initialised Bernoulli(1 - p), clipped to [0, 1],
  with the mask-rate regulariser ``mask_reg · |mean(ψ) - (1 - p)|`` per dropout layer.
- ``pig``: the stochastic gradients are left out: those of the variational bottleneck's decoder and of every
  layer after it (:func:`after_bottleneck`; the layers before it and its encoder are matched), or the layers
  named by ``ignore``.
- ``gpia``: the client's pruning mask, the non-zeros of the received update, multiplies the dummy update;
  the replay does not prune by the dummy's own magnitudes. Exact for one local step (with several steps,
  the received zeros are those of the last step's pruning combined with the earlier updates).
- ``vbia``: the bottleneck's reparameterisation ε (PRECODE/CVB) is optimised, initialised N(0, I).
- ``dpia``: a dummy DP noise ``σC · ξ`` is optimised, ξ initialised N(0, I) and regularised towards mean 0
  and standard deviation 1 (the DP noise's mean 0 and scale σC): ``dp_reg · Σ (mean ξ)² + (std ξ - 1)²``.
- ``cdia``: all that apply, chosen from ``view.defenses`` (Algorithm 2): DIA for dropout, GPIA for pruning
  (``prune`` or ``prune-update``), VBIA for PRECODE/CVB; DP is not targeted (the paper's CDIA "corresponds
  to IG for DP"): its noise is replaced by its mean, 0. With no defense it is plain inverting-gradients.

TV weight: ``tv="auto-bottleneck"`` by default, inverting-gradients' 1e-2 unless the replayed model holds a
variational bottleneck (PRECODE, CVB), where the attack chooses the weight by ``tv="auto"``'s short sweep
(1e-2, 1e-3, 1e-4, scored by the update match alone, never the ground truth). Behind a bottleneck 1e-2 can be far
too strong: on CIFAR-10 behind PRECODE before the classifier ``wiig`` and ``vbia`` reached SSIM 0.43 and 0.42 with
1e-2, and 0.84 and 0.83 with the 1e-4 the sweep chooses (``benchmarks/README.md``). The weight chosen is in each
reconstruction's ``config["tv_auto"]``. The sweep costs three short runs (``tv_sweep_iterations`` each: 7,800
iterations in all at the default 4,800); a number (``tv=1e-2``) skips it.

Noise leaves are discovered by replaying once on a blank batch and reading the keys the client's modules
draw (:mod:`gradleak.fl.noise`): ``"dropout@0"``, ``"precode@0"``, ``"cvb@0"``, ``"dp-sgd/<param>@0"``...
They take learning-rate steps ``noise_lr`` times the images'.

Examples
--------
>>> from gradleak.audit import simulate_and_attack                       # doctest: +SKIP
>>> result = simulate_and_attack(model, x, y, recipe="fedsgd", attack="cdia",    # doctest: +SKIP
...     defenses=["dropout", "prune", "cvb"], victims="each")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from gradleak.attacks.base import ATTACKS, AttackError
from gradleak.attacks.components import COMPONENTS, Replayed
from gradleak.attacks.inverting_gradients import InvertingGradients
from gradleak.attacks.replay import Targeting, merge_targetings
from gradleak.defenses.modules import CVB, PRECODE, DropoutDefense, VariationalBottleneck
from gradleak.defenses.step import DPSGD, StepPrune
from gradleak.defenses.update import PruneUpdate
from gradleak.fl.local import LocalData, local_update
from gradleak.fl.recipe import LocalRecipe
from gradleak.records import ServerView, in_layer

__all__ = ["BOTTLENECK_FREE_TV", "CDIA", "DIA", "DPIA", "GPIA", "PIG", "VBIA", "WIIG", "TargetedAttack",
           "after_bottleneck", "named_parameters_of", "noise_shapes"]

TensorDict = dict[str, Tensor]

#: the TV weight of ``tv="auto-bottleneck"`` on a model without a variational bottleneck (inverting-gradients')
BOTTLENECK_FREE_TV = InvertingGradients.tv


def noise_shapes(model: nn.Module, view: ServerView, recipe: LocalRecipe, n: int) -> dict[str, torch.Size]:
    """Keys and shapes of the noise the client's modules draw in ``recipe`` (a replay on a blank batch)."""
    return _blank_replay(model, view, recipe, n)[0]


def after_bottleneck(model: nn.Module, view: ServerView, recipe: LocalRecipe, n: int) -> frozenset[str]:
    """Parameters whose gradients the variational bottleneck makes stochastic (Scheliga et al. 2024b): the
    bottleneck's decoder and every layer that runs after it, in the order of a blank replay's forward pass.

    The layers before the bottleneck and its encoder (μ, σ) are kept, as in the authors' released "ignore"
    attack (their CNN+CVB config leaves out ``decoder`` and the later conv and linear layers). With several
    bottlenecks the first decoder to run decides. Empty when the model has no bottleneck.
    """
    return _after_bottleneck(model, _blank_replay(model, view, recipe, n)[1])


def _after_bottleneck(model: nn.Module, order: dict[str, int]) -> frozenset[str]:
    decoders = [f"{name}.decoder" for name, m in model.named_modules() if isinstance(m, VariationalBottleneck)]
    starts = [order[d] for d in decoders if d in order]
    if not starts:
        return frozenset()
    first = min(starts)
    return frozenset(f"{name}.{p}" if name else p for name, m in model.named_modules() if order.get(name, -1) >= first
                     for p, _ in m.named_parameters(recurse=False))


def named_parameters_of(model: nn.Module, names: Sequence[str]) -> frozenset[str]:
    """The parameters of ``model`` that ``names`` (parameter names or module paths) denote; a name that denotes
    none is an error listing the model's parameters."""
    params = [k for k, _ in model.named_parameters()]
    out: set[str] = set()
    for name in names:
        found = {k for k in params if in_layer(k, name)}
        if not found:
            raise AttackError(f"{name!r} is no parameter or module of the model; its parameters: {params}")
        out |= found
    return frozenset(out)


def _blank_replay(model: nn.Module, view: ServerView, recipe: LocalRecipe, n: int
                  ) -> tuple[dict[str, torch.Size], dict[str, int]]:
    """One replay of ``recipe`` on a blank batch: the noise keys and shapes it draws, and the position of each
    module holding parameters of its own in the order of their first forward call."""
    state = view.global_state
    like = next(iter(state.params.values()))
    x = torch.zeros(n, *view.image_shape, dtype=like.dtype, device=like.device)
    y = torch.zeros(n, dtype=torch.long, device=like.device)
    order: dict[str, int] = {}

    def seen(name: str):
        def hook(_module: nn.Module, _args: object) -> None:
            order.setdefault(name, len(order))
        return hook

    hooks = [m.register_forward_pre_hook(seen(name)) for name, m in model.named_modules()
             if any(True for _ in m.parameters(recurse=False))]
    try:
        with torch.no_grad():
            out = local_update(model, state.params, state.buffers, LocalData(x, y), recipe,
                               generator=torch.Generator().manual_seed(0))
    finally:
        for h in hooks:
            h.remove()
    return {k: v.shape for k, v in out.noise.items()}, order


@dataclass(frozen=True)
class TargetedAttack(InvertingGradients):
    """Inverting gradients with a targeted replay (see the module docstring); subclasses pick components.

    Parameters (besides inverting-gradients')
    ----------
    tv
        A number, ``"auto"`` (the sweep, :class:`~gradleak.attacks.replay.ReplayAttack`) or ``"auto-bottleneck"``
        (default): 1e-2 on a model without a variational bottleneck, ``"auto"`` on one with (see the module
        docstring).
    noise_lr
        Learning-rate factor of the optimised noise (masks, ε, ξ) relative to the images'.
    mask_reg
        Weight of DIA's mask-rate regulariser.
    dp_reg
        Weight of DPIA's regulariser of the dummy noise towards mean 0 and scale σC.
    """

    name: ClassVar[str] = ""
    tv_modes: ClassVar[tuple[str, ...]] = ("auto", "auto-bottleneck")
    tv: float | str = "auto-bottleneck"
    noise_lr: float = 0.3
    mask_reg: float = 0.1
    dp_reg: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.noise_lr > 0 or self.mask_reg < 0 or self.dp_reg < 0:
            raise AttackError("noise_lr must be > 0, mask_reg and dp_reg >= 0")

    def resolve_tv(self, views: Sequence[ServerView]) -> float | str:
        """``"auto-bottleneck"``: ``"auto"`` when the model of ``views`` holds a variational bottleneck, else
        :data:`BOTTLENECK_FREE_TV`; any other ``tv`` as it is."""
        if self.tv != "auto-bottleneck":
            return self.tv
        model = views[0].model()  # the architecture is enough
        return "auto" if any(isinstance(m, VariationalBottleneck) for m in model.modules()) else BOTTLENECK_FREE_TV

    def components(self, view: ServerView) -> frozenset[str]:
        """The parts of the replay this attack targets for ``view`` (subclasses)."""
        return frozenset()

    def ignored(self, model: nn.Module, order: dict[str, int]) -> frozenset[str]:
        """The parameters left out of the gradient distance by the ``"ignore"`` component: the gradients
        after the variational bottleneck (:func:`after_bottleneck`)."""
        ignore = _after_bottleneck(model, order)
        if not ignore:
            raise AttackError("pig ignores the gradients after a variational bottleneck and the model has none; "
                              "name the layers to leave out with ignore=[...]")
        return ignore

    def targeting(self, views: Sequence[ServerView], model: nn.Module, recipe: LocalRecipe, n: int) -> Targeting:
        """The merge of the partial targetings of this attack's components (:data:`COMPONENTS`)."""
        names = self.components(views[0])
        if any(self.components(v) != names for v in views[1:]):
            raise AttackError("views attacked together must use the same defenses")
        if not names:
            return Targeting()
        chosen = [c for name, c in COMPONENTS.items() if name in names]
        for component in chosen:
            recipe = component.replay(recipe)
        shapes, order = _blank_replay(model, views[0], recipe, n)
        seen = Replayed(views, model, recipe, shapes, order)
        return merge_targetings([c.build(self, seen) for c in chosen], len(views))


@ATTACKS.register("wiig")
@dataclass(frozen=True)
class WIIG(TargetedAttack):
    """Well-Informed Inverting Gradients (Scheliga et al. 2023, 2024 Sec. 4.1): the replay uses the client's
    true dropout masks, bottleneck ε and DP noise from ``view.client_noise`` (threat ``"well-informed"``)."""

    def components(self, view: ServerView) -> frozenset[str]:
        return frozenset({"true-noise"})


@ATTACKS.register("dia")
@dataclass(frozen=True)
class DIA(TargetedAttack):
    """Dropout Inversion Attack (Scheliga et al. 2023): dropout masks optimised jointly with the images."""

    def components(self, view: ServerView) -> frozenset[str]:
        return frozenset({"dropout"})


@ATTACKS.register("pig")
@dataclass(frozen=True)
class PIG(TargetedAttack):
    """Partial Inverting Gradients, the "ignore" attack (Scheliga et al. 2024b): the gradients the variational
    bottleneck makes stochastic, its decoder's and those of every later layer, are left out of the gradient
    distance (:func:`after_bottleneck`).

    ``ignore`` names the left-out layers instead, as the authors' framework configures it per model
    (``ignore_gradient_layers``): parameter names or module paths (a module leaves out all its parameters),
    e.g. ``["features.block1.cvb.decoder", "features.block2", "features.block3", "classifier"]``. It also
    makes ``pig`` usable on a model whose stochastic layers are not a gradleak bottleneck."""

    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.ignore, (list, tuple)) or not all(isinstance(p, str) and p.strip() for p in self.ignore):
            raise AttackError(f"pig: ignore must be a list of parameter names or module paths, got {self.ignore!r}")
        object.__setattr__(self, "ignore", tuple(self.ignore))

    def components(self, view: ServerView) -> frozenset[str]:
        return frozenset({"ignore"})

    def ignored(self, model: nn.Module, order: dict[str, int]) -> frozenset[str]:
        if not self.ignore:
            return super().ignored(model, order)
        return named_parameters_of(model, self.ignore)


@ATTACKS.register("gpia")
@dataclass(frozen=True)
class GPIA(TargetedAttack):
    """Gradient Pruning Inversion Attack (Scheliga et al. 2024, Sec. 4.2, Eq. 2): the client's pruning mask,
    read from the zeros of the received update, is applied to the dummy update."""

    def components(self, view: ServerView) -> frozenset[str]:
        return frozenset({"pruning"})


@ATTACKS.register("vbia")
@dataclass(frozen=True)
class VBIA(TargetedAttack):
    """Variational Bottleneck Inversion Attack (Scheliga et al. 2024, Sec. 4.3): PRECODE's/CVB's
    reparameterisation ε optimised jointly with the images."""

    def components(self, view: ServerView) -> frozenset[str]:
        return frozenset({"bottleneck"})


@ATTACKS.register("dpia")
@dataclass(frozen=True)
class DPIA(TargetedAttack):
    """Differential Privacy Inversion Attack (Scheliga et al. 2024, Sec. 4.1): a dummy DP noise optimised
    jointly with the images, regularised towards the DP noise's mean 0 and scale σC."""

    def components(self, view: ServerView) -> frozenset[str]:
        return frozenset({"dp-noise"})


@ATTACKS.register("cdia")
@dataclass(frozen=True)
class CDIA(TargetedAttack):
    """Combined Defenses Inversion Attack (Scheliga et al. 2024, Sec. 4.4, Algorithm 2): every targeted
    component that applies to the defenses listed in ``view.defenses``; plain IG with none."""

    def components(self, view: ServerView) -> frozenset[str]:
        parts = set()
        for d in view.defenses:
            if isinstance(d, DropoutDefense) and d.rate > 0:
                parts.add("dropout")
            elif isinstance(d, PRECODE | CVB):
                parts.add("bottleneck")
            elif isinstance(d, StepPrune | PruneUpdate):
                parts.add("pruning")
            elif isinstance(d, DPSGD):
                parts.add("dp-mean")
        return frozenset(parts)
