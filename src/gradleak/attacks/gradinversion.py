"""GradInversion (Yin et al. 2021): batch label recovery, BatchNorm-statistics prior, group consistency.

References
----------
Yin, Mallya, Vahdat, Alvarez, Kautz, Molchanov. "See through Gradients: Image Batch Recovery via
GradInversion", CVPR 2021: labels of a batch of distinct classes from the row minima of the classifier's
gradient; the loss is the squared gradient distance plus ``alpha_tv`` TV, ``alpha_l2`` image norm,
``alpha_BN`` times the distance between the dummy batch's mean/variance at every BN layer and the model's
running statistics (the global model's buffers), and ``alpha_group`` times each restart's distance to the
restarts' consensus. Restarts run together (vectorised) because the group term couples them. Their image
registration before averaging is omitted (restarts share the pixel grid here).

Defaults: ``iterations=2000``, Adam ``lr=0.1`` with cosine decay and 100 warm-up steps, ``tv=1e-4``,
``l2=1e-6``, ``bn_prior=1e-2``, ``group=1e-2``, ``restarts=4``, labels ``"yin"``.

Examples
--------
>>> from gradleak.attacks import ATTACKS                                   # doctest: +SKIP
>>> attack = ATTACKS.create("gradinversion", iterations=1000)              # doctest: +SKIP
>>> reconstruction = attack(view, generator=torch.Generator().manual_seed(0))   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

from gradleak.attacks.base import ATTACKS
from gradleak.attacks.replay import ReplayAttack

__all__ = ["GradInversion"]


@ATTACKS.register("gradinversion")
@dataclass(frozen=True)
class GradInversion(ReplayAttack):
    """Yin et al. 2021: squared-L2 matching + TV, l2, BN-statistics prior and group consistency; Yin labels."""

    iterations: int = 2000
    objective: str = "l2"
    optimizer: str = "adam"
    lr: float = 0.1
    schedule: str = "cosine"
    warmup: int = 100
    tv: float = 1e-4
    l2: float = 1e-6
    bn_prior: float = 1e-2
    group: float = 1e-2
    restarts: int = 4
    labels: str = "yin"
