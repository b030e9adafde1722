"""Inverting Gradients (Geiping et al. 2020), for FedSGD and for multi-step FedAvg updates.

References
----------
Geiping, Bauermeister, Dröge, Moeller. "Inverting Gradients — How easy is it to break privacy in federated
learning?", NeurIPS 2020: the cosine distance between the dummy and the observed gradient (scale-free, so
the direction of the update is matched), anisotropic total variation, Adam on *signed* gradients with step
decay by 0.1 at 3/8, 5/8 and 7/8 of the run, pixels boxed to the valid range, several restarts selected by
objective. Their Section 5 attacks FedAvg updates of several local steps by replaying the local steps on
the dummy data; here that is the same attack on a view whose ``recipe`` has several steps: the replay is
:func:`gradleak.fl.local_update` with that recipe, and the update (``delta / lr``) is matched.

Defaults: ``iterations=4800``, ``lr=0.1``, ``tv=1e-4``, ``restarts=1``, Gaussian initialisation, labels
``"auto"`` (known if granted, iDLG for one image, Wainakh et al. for a batch).

Examples
--------
>>> from gradleak.attacks import ATTACKS                                   # doctest: +SKIP
>>> attack = ATTACKS.create("inverting-gradients", iterations=2000, restarts=4)   # doctest: +SKIP
>>> reconstruction = attack(view, generator=torch.Generator().manual_seed(0))   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from gradleak.attacks.base import ATTACKS
from gradleak.attacks.replay import ReplayAttack

__all__ = ["InvertingGradients"]


@ATTACKS.register("inverting-gradients")
@dataclass(frozen=True)
class InvertingGradients(ReplayAttack):
    """Geiping et al. 2020: cosine matching, TV, signed Adam with step decay, box constraints, restarts."""

    name: ClassVar[str] = "inverting-gradients"
    iterations: int = 4800
    objective: str = "cosine"
    optimizer: str = "adam"
    lr: float = 0.1
    schedule: str = "step"
    signed: bool = True
    boxed: bool = True
    tv: float = 1e-4
    init: str = "gaussian"
    labels: str = "auto"
    restarts: int = 1
