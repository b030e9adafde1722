"""Deep Leakage from Gradients (DLG) and improved DLG (iDLG).

References
----------
Zhu, Liu, Han. "Deep Leakage from Gradients", NeurIPS 2019: dummy images and dummy soft labels, both drawn
from ``N(0, 1)``, are optimised jointly with L-BFGS to minimise the squared Euclidean distance between their
gradient and the client's.
Zhao, Mopuri, Bilen. "iDLG: Improved Deep Leakage from Gradients", arXiv:2001.02610, 2020: for one image
the label is read off the sign of the last layer's gradient; then DLG runs with that label fixed.

Defaults: ``iterations=500`` L-BFGS steps (one objective evaluation each; DLG's 300 calls of
``torch.optim.LBFGS.step`` run up to 20 each), ``lr=1``, history 100, no box, no priors.

Examples
--------
>>> from gradleak.attacks import ATTACKS                                   # doctest: +SKIP
>>> attack = ATTACKS.create("dlg", iterations=300)                         # doctest: +SKIP
>>> reconstruction = attack(view, generator=torch.Generator().manual_seed(0))   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

from gradleak.attacks.base import ATTACKS
from gradleak.attacks.replay import ReplayAttack

__all__ = ["DLG", "IDLG"]


@ATTACKS.register("dlg")
@dataclass(frozen=True)
class DLG(ReplayAttack):
    """Zhu et al. 2019 (DLG): squared-L2 gradient matching with L-BFGS and jointly optimised soft labels."""

    iterations: int = 500
    objective: str = "l2"
    optimizer: str = "lbfgs"
    lr: float = 1.0
    schedule: str = "constant"
    boxed: bool = False
    labels: str = "joint"
    label_init: str = "gaussian"
    init: str = "gaussian"


@ATTACKS.register("idlg")
@dataclass(frozen=True)
class IDLG(DLG):
    """Zhao et al. 2020 (iDLG): the label from the last layer's gradient sign, then DLG with it fixed."""

    labels: str = "idlg"
