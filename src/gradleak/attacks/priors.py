"""Image priors and BatchNorm-statistics terms of the optimisation attacks.

Every function returns a 0-d tensor for one trial's dummy batch (vmap over trials), except
:func:`group_consistency`, which sees all restarts of a victim at once.

- :func:`total_variation` — anisotropic TV (Rudin et al. 1992), as Geiping et al. 2020 use it.
- :func:`image_l2` — mean squared value of the (normalised) images (Yin et al. 2021's ``R_l2``).
- :func:`bn_statistics` — ``sum_l ||mu_l(x) - mu_l||_2 + ||var_l(x) - var_l||_2`` between the dummy batch's
  statistics at every BN layer and target statistics (Yin et al. 2021, ``R_feature``; the hospital paper's
  Eq. 5).
- :func:`buffer_matching` — the same comparison made on running buffers: the replayed running mean/var
  against the received ones, divided by the layers' momentum. After one local step this *is* Eq. 5 against
  the statistics implied by the received buffers (:func:`implied_batch_statistics`); after several steps
  it compares the whole momentum-weighted history, which is what the client's buffers hold.
- :func:`group_consistency` — GradInversion's group term: each restart's squared distance to the restarts'
  mean.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = [
    "bn_momenta",
    "bn_statistics",
    "buffer_matching",
    "group_consistency",
    "image_l2",
    "implied_batch_statistics",
    "running_statistics",
    "total_variation",
]

Stats = Mapping[str, tuple[Tensor, Tensor]]
_EPS = 1e-12


def _norm(x: Tensor) -> Tensor:
    return (x.pow(2).sum() + _EPS).sqrt()


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic total variation: mean absolute difference of horizontal plus vertical neighbours."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


def image_l2(x: Tensor) -> Tensor:
    """Mean squared value of the images (pulls dummy pixels towards the normalised mean)."""
    return x.pow(2).mean()


def bn_statistics(stats: Stats, targets: Stats) -> Tensor:
    """``sum_l ||mean_l - target_mean_l||_2 + ||var_l - target_var_l||_2`` over the layers in ``targets``."""
    terms = [_norm(stats[k][0] - m) + _norm(stats[k][1] - v) for k, (m, v) in targets.items()]
    return torch.stack(terms).sum()


def bn_momenta(model: nn.Module) -> dict[str, float]:
    """BatchNorm layer name -> momentum (1.0 for the cumulative average, ``momentum=None``)."""
    return {name: (1.0 if m.momentum is None else float(m.momentum))
            for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}


def _prefix(layer: str) -> str:
    return f"{layer}." if layer else ""


def running_statistics(buffers: Mapping[str, Tensor], momenta: Mapping[str, float]) -> Stats:
    """``layer -> (running_mean, running_var)`` read from a buffer mapping (e.g. a global state's)."""
    return {k: (buffers[_prefix(k) + "running_mean"], buffers[_prefix(k) + "running_var"]) for k in momenta
            if _prefix(k) + "running_mean" in buffers}


def implied_batch_statistics(before: Mapping[str, Tensor], after: Mapping[str, Tensor],
                             momenta: Mapping[str, float]) -> Stats:
    """Batch statistics a one-step client must have used: the momentum update inverted.

    ``running = (1 - m) running_before + m batch``, so ``batch = (running_after - (1 - m) running_before) / m``
    for the mean and for the *unbiased* batch variance (PyTorch updates the running variance with it).
    """
    implied = {}
    for k, m in momenta.items():
        p = _prefix(k)
        if p + "running_mean" not in after:
            continue
        mean = (after[p + "running_mean"] - (1 - m) * before[p + "running_mean"]) / m
        var = (after[p + "running_var"] - (1 - m) * before[p + "running_var"]) / m
        implied[k] = (mean, var)
    return implied


def buffer_matching(replayed: Mapping[str, Tensor], received: Mapping[str, Tensor],
                    momenta: Mapping[str, float]) -> Tensor:
    """``sum_l ||(mean_l - recv_mean_l) / m_l||_2 + ||(var_l - recv_var_l) / m_l||_2`` on running buffers.

    For a one-step replay from the same starting buffers this equals :func:`bn_statistics` between the dummy
    batch's (unbiased) statistics and :func:`implied_batch_statistics` of the received buffers.
    """
    terms = []
    for k, m in momenta.items():
        p = _prefix(k)
        if p + "running_mean" not in received:
            continue
        terms.append(_norm((replayed[p + "running_mean"] - received[p + "running_mean"]) / m)
                     + _norm((replayed[p + "running_var"] - received[p + "running_var"]) / m))
    if not terms:
        raise ValueError("no BatchNorm running statistics to match: the update carries no buffers "
                         "(withheld?) or the model has no BatchNorm layers; set the BN weight to 0")
    return torch.stack(terms).sum()


def group_consistency(x: Tensor) -> Tensor:
    """Per-restart mean squared distance to the restarts' mean, ``mean((x_r - mean_r(x))^2)``, for ``(R, ...)``.

    The consensus (mean over restarts) is a fixed target at each iteration (detached), as in Yin et al. 2021
    (without their image registration, which is not needed for pixel-aligned initialisations).
    """
    consensus = x.mean(0, keepdim=True).detach()
    return (x - consensus).flatten(1).pow(2).mean(1)
