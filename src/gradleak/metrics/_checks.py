"""Input validation shared by the metric modules (never ``assert``: every problem raises a clear error)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from gradleak.metrics.errors import MetricInputError

__all__ = ["as_images", "as_pair", "as_vector"]


def as_images(x: Tensor | np.ndarray, name: str = "images", *, dtype: torch.dtype = torch.float64) -> Tensor:
    """``x`` as a floating ``(N, C, H, W)`` tensor of ``dtype``; anything else raises :class:`MetricInputError`."""
    if not isinstance(x, Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.dim() != 4:
        raise MetricInputError(
            f"{name} must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}; "
            "add a batch axis with x[None] or a channel axis with x[:, None]"
        )
    if x.shape[0] == 0:
        raise MetricInputError(f"{name} is an empty batch")
    if x.is_complex():
        raise MetricInputError(f"{name} must be real, got {x.dtype}")
    return x.to(dtype)


def as_pair(
    a: Tensor | np.ndarray, b: Tensor | np.ndarray, *, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    """Two image batches of identical shape, as ``dtype`` tensors on ``a``'s device."""
    x, y = as_images(a, "a", dtype=dtype), as_images(b, "b", dtype=dtype)
    if x.shape != y.shape:
        raise MetricInputError(
            f"image batches must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}; "
            "use gradleak.metrics.assign to pair batches of different sizes"
        )
    return x, y.to(x.device)


def as_vector(values: Tensor | np.ndarray | Sequence[float], name: str = "values") -> np.ndarray:
    """A non-empty 1-D float64 numpy array."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1:
        raise MetricInputError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise MetricInputError(f"{name} is empty")
    return array
