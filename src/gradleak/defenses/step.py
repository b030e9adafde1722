"""Step-stage defenses: they act on the gradient inside every local step (``LocalRecipe.step_transforms``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from gradleak.defenses.base import DEFENSES, StepDefense
from gradleak.defenses.functional import clip_per_sample, gaussian_like, prune_by_magnitude
from gradleak.fl import noise as noise_mod

__all__ = ["DPSGD", "StepPrune"]


@DEFENSES.register("dp-sgd")
@dataclass(frozen=True)
class DPSGD(StepDefense):
    """DP-SGD (Abadi et al. 2016): clip every example's gradient to norm ``clip``, sum, add Gaussian noise
    of std ``noise_multiplier · clip``, divide by the batch size.

    Defaults are the combined-defenses paper's (Scheliga et al. 2024): ``clip=20``, ``noise_multiplier=1e-4``.
    The noise of parameter ``k`` at step ``t`` is drawn as ``"dp-sgd/k@t"`` from :mod:`gradleak.fl.noise`, so
    a well-informed attacker can be handed it and DPIA can optimise a dummy of it. Privacy: see
    :func:`gradleak.defenses.accounting.dp_epsilon`. Needs a model without BatchNorm in training mode.
    """

    clip: float = 20.0
    noise_multiplier: float = 1e-4
    per_sample: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not self.clip > 0:
            raise ValueError(f"dp-sgd: clip must be > 0, got {self.clip}")
        if self.noise_multiplier < 0:
            raise ValueError(f"dp-sgd: noise_multiplier must be >= 0, got {self.noise_multiplier}")

    def __call__(self, grads: dict[str, Tensor], *, step: int, batch_size: int) -> dict[str, Tensor]:
        std = self.noise_multiplier * self.clip
        out = {}
        for k, g in clip_per_sample(grads, self.clip).items():
            summed = g.sum(0)
            def draw(gen: torch.Generator | None, like: Tensor = summed) -> Tensor:
                return gaussian_like(like, std, gen)

            noise = noise_mod.draw(f"dp-sgd/{k}", draw)
            out[k] = (summed + noise) / batch_size
        return out


@DEFENSES.register("prune")
@dataclass(frozen=True)
class StepPrune(StepDefense):
    """Gradient pruning (Lin et al. 2018, DGC; Zhu et al. 2019): at every local step, zero the ``rate``
    share of smallest-magnitude values of each layer's gradient. Default 0.5 (Scheliga et al. 2024)."""

    rate: float = 0.5
    per_sample: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"prune: rate must be in [0, 1), got {self.rate}")

    def __call__(self, grads: dict[str, Tensor], *, step: int, batch_size: int) -> dict[str, Tensor]:
        return prune_by_magnitude(grads, self.rate)[0]
