"""Pure functions behind the defenses. None mutates its input; every random one takes a generator."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "clip_per_sample",
    "gaussian_like",
    "laplace_like",
    "per_sample_norms",
    "percentile_scale",
    "prune_by_magnitude",
]


def per_sample_norms(grads: Mapping[str, Tensor]) -> Tensor:
    """L2 norm of each example's gradient over all tensors; ``grads[k]`` has a leading batch dimension."""
    squares = [g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads.values()]
    return torch.stack(squares, 0).sum(0).sqrt()


def clip_per_sample(grads: Mapping[str, Tensor], max_norm: float) -> dict[str, Tensor]:
    """Scale each example's gradient to norm at most ``max_norm`` (Abadi et al. 2016; as Opacus: factor
    ``min(1, C / (norm + 1e-6))``)."""
    factor = (max_norm / (per_sample_norms(grads) + 1e-6)).clamp(max=1.0)
    return {k: g * factor.view(-1, *[1] * (g.dim() - 1)) for k, g in grads.items()}


def gaussian_like(t: Tensor, std: float | Tensor, generator: torch.Generator | None) -> Tensor:
    """Gaussian noise of ``t``'s shape, dtype and device with standard deviation ``std``."""
    return torch.randn(t.shape, generator=generator, dtype=t.dtype, device=t.device) * std


def laplace_like(t: Tensor, scale: float | Tensor, generator: torch.Generator | None) -> Tensor:
    """Laplace noise of ``t``'s shape with scale ``b`` (std ``b·√2``), by inverse-CDF sampling."""
    u = torch.rand(t.shape, generator=generator, dtype=t.dtype, device=t.device) - 0.5
    return -scale * torch.sign(u) * torch.log1p(-2 * u.abs())


def percentile_scale(tensors: Mapping[str, Tensor], q: float) -> Tensor:
    """The ``q``-th percentile of ``|x|`` over all values of all tensors together (one scalar, float64),
    computed as ``numpy.percentile`` (linear interpolation), as NVFlare's percentile privacy filter does."""
    flat = np.concatenate([t.detach().reshape(-1).abs().to(torch.float64).cpu().numpy() for t in tensors.values()])
    return torch.tensor(np.percentile(flat, q), dtype=torch.float64)


def prune_by_magnitude(tensors: Mapping[str, Tensor], rate: float) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per-tensor magnitude pruning (Lin et al. 2018, DGC): zero the ``rate`` share of smallest ``|x|``.

    Returns the pruned tensors and the boolean keep-masks. Ties at the threshold are kept, so at most
    ``floor(rate · n)`` values of a tensor of ``n`` are zeroed.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"pruning rate must be in [0, 1), got {rate}")
    pruned, masks = {}, {}
    for k, t in tensors.items():
        n_drop = int(rate * t.numel())
        if n_drop == 0:
            mask = torch.ones_like(t, dtype=torch.bool)
        else:
            threshold = t.detach().abs().reshape(-1).kthvalue(n_drop).values
            mask = t.detach().abs() > threshold
        masks[k] = mask
        pruned[k] = t * mask
    return pruned, masks
