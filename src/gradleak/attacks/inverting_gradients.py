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

Defaults: ``iterations=4800``, signed Adam ``lr=0.1`` with step decay, ``tv=1e-2``, ``restarts=1``, Gaussian
initialisation, labels ``"auto"`` (known if granted, iDLG for one image, Wainakh et al. for a batch). The TV
weight is Scheliga et al. 2024's (Section 5.2) and suits natural and medical images alike: on the untrained
``cnn``, batch 1, one SGD step, 16 test images per dataset (CIFAR-10: drawn at random, other than the
benchmark's victims; MNIST, PneumoniaMNIST: the first 16), TV
``1e-4`` (Geiping et al.'s MNIST-era default here before) against ``1e-2``: CIFAR-10 SSIM 0.670 -> 0.851, MNIST
0.830 -> 0.906, PneumoniaMNIST 0.876 -> 0.862; ``2e-2`` gave CIFAR-10 0.843.

The paper's own schedule (Section 5.2: unsigned Adam from lr 1, cut by 10 after 400 iterations without
improvement, stop after 4,000 without improvement or at 20,000) is ``schedule="plateau", signed=False, lr=1.0,
patience=4000, iterations=20000`` (CIFAR-10, same victims: SSIM 0.840, against 0.851 for the defaults).

Examples
--------
>>> from gradleak.attacks import ATTACKS                                   # doctest: +SKIP
>>> attack = ATTACKS.create("inverting-gradients", iterations=2000, restarts=4)   # doctest: +SKIP
>>> reconstruction = attack(view, generator=torch.Generator().manual_seed(0))   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

from gradleak.attacks.base import ATTACKS
from gradleak.attacks.replay import ReplayAttack

__all__ = ["InvertingGradients"]


@ATTACKS.register("inverting-gradients")
@dataclass(frozen=True)
class InvertingGradients(ReplayAttack):
    """Geiping et al. 2020: cosine matching, TV, signed Adam with step decay, box constraints, restarts."""

    iterations: int = 4800
    objective: str = "cosine"
    optimizer: str = "adam"
    lr: float = 0.1
    schedule: str = "step"
    signed: bool = True
    boxed: bool = True
    tv: float | str = 1e-2
    init: str = "gaussian"
    labels: str = "auto"
    restarts: int = 1
