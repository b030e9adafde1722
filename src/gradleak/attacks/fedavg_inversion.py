"""The BatchNorm-aware attack on FedAvg updates of the hospital paper (seed ``000``).

References
----------
Hatamizadeh, Yin, Molchanov, Myronenko, Li, Dogra, Feng, Flores, Kautz, Xu, Roth. "Do Gradient Inversion
Attacks Make Federated Learning Unsafe?", IEEE TMI 2023, Section II-B. The attack network is initialised
with the round's global weights and replays the client's local iterations (its recipe: optimiser, learning
rate, batch size, steps) on dummy images initialised from a domain prior image and on soft labels
initialised ``U[0, 1]``. The replay runs BatchNorm in training mode and re-estimates the running statistics
step by step with the layers' momentum (0.1; Eqs. 3–4) — that is :func:`gradleak.fl.local_update` itself.
The loss (Eq. 1) is the update distance ``sum_l ||delta'_l - delta_l||_2`` (Eq. 2, on ``delta / lr``), plus
the BN-statistics distance (Eq. 5) between the replayed running statistics and the received buffers —
divided by the momentum, so that after one local step it is exactly the distance between the dummy batch's
statistics and the batch statistics implied by the received buffers — plus TV and l2 image priors.

Controls of the paper's Fig. 3: ``bn_replay=False`` replays with frozen BN statistics and no BN term (b);
a view whose ``global_state`` is another round's checkpoint (c).

Defaults: ``iterations=1000``, Adam ``lr=0.05`` with cosine decay, ``bn_buffers=1e-2``, ``tv=1e-4``,
``l2=1e-5``, ``init="prior"`` (``ServerView.prior``), labels ``"joint"`` from ``U[0, 1]``.

Examples
--------
>>> from gradleak.attacks import ATTACKS                                   # doctest: +SKIP
>>> attack = ATTACKS.create("fedavg-inversion", iterations=1000)           # doctest: +SKIP
>>> reconstruction = attack(view, generator=torch.Generator().manual_seed(0))   # doctest: +SKIP
>>> control_b = ATTACKS.create("fedavg-inversion", bn_replay=False)        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from gradleak.attacks.base import ATTACKS
from gradleak.attacks.replay import ReplayAttack

__all__ = ["FedAvgInversion"]


@ATTACKS.register("fedavg-inversion")
@dataclass(frozen=True)
class FedAvgInversion(ReplayAttack):
    """Hatamizadeh et al. 2023: replay of the local iterations with BN re-estimation; update + BN + priors."""

    needs_recipe: ClassVar[bool] = True
    iterations: int = 1000
    objective: str = "l2-norm"
    optimizer: str = "adam"
    lr: float = 0.05
    schedule: str = "cosine"
    bn_buffers: float = 1e-2
    tv: float = 1e-4
    l2: float = 1e-5
    init: str = "prior"
    labels: str = "joint"
    label_init: str = "uniform"

    def without_bn_reestimation(self) -> FedAvgInversion:
        """The Fig. 3b control: frozen BN statistics in the replay, no BN term."""
        return dataclasses.replace(self, bn_replay=False, bn_buffers=0.0)
