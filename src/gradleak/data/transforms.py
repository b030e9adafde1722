"""The one place where stored images become what models see.

Datasets keep images channels-last, ``(N, H, W, C)``, as ``uint8`` (0..255) or ``float32`` in [0, 1].
Models see ``torch.float32`` tensors ``(N, C, H, W)`` in [0, 1], optionally normalised per channel.

Examples
--------
>>> import numpy as np
>>> x = to_tensor(np.zeros((2, 28, 28, 1), dtype=np.uint8), size=32)
>>> tuple(x.shape)
(2, 1, 32, 32)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gradleak.data.errors import InvalidDatasetError

__all__ = ["RESIZE_MODES", "channel_stats", "denormalize", "normalize", "to_tensor"]

RESIZE_MODES = ("pad", "bilinear")


def to_tensor(images: np.ndarray, size: int | None = None, resize: str = "pad") -> torch.Tensor:
    """Convert channels-last images to a float32 ``(N, C, H, W)`` tensor in [0, 1].

    Parameters
    ----------
    images
        ``(N, H, W, C)`` array, ``uint8`` (0..255) or floating point in [0, 1].
    size
        Side of the square output; ``None`` keeps the stored size.
    resize
        ``"pad"``: zero-pad, centred (MNIST 28 → 32 adds 2 px on every side; the original pixels are
        unchanged). Padding can only enlarge. ``"bilinear"``: :func:`torch.nn.functional.interpolate`,
        antialiased when shrinking.

    Returns
    -------
    torch.Tensor
        A new tensor (never a view of ``images``), ``float32``, values in [0, 1].
    """
    if resize not in RESIZE_MODES:
        raise InvalidDatasetError(f"unknown resize mode {resize!r}; use one of {', '.join(RESIZE_MODES)}")
    arr = np.asarray(images)
    if arr.ndim != 4:
        raise InvalidDatasetError(
            f"images must have shape (N, H, W, C) (channels last); got shape {arr.shape}"
        )
    if arr.dtype == np.uint8:
        scale = 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        scale = 1.0
    else:
        raise InvalidDatasetError(f"images must be uint8 or float in [0, 1]; got dtype {arr.dtype}")
    if not arr.flags.writeable:  # torch.from_numpy warns about read-only arrays
        arr = arr.copy()
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)
    x = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    if scale != 1.0:
        x.div_(scale)  # as torchvision's ToTensor: exactly k / 255
    if size is None:
        return x
    if not isinstance(size, int | np.integer) or size < 1:
        raise InvalidDatasetError(f"size must be a positive integer or None; got {size!r}")
    size = int(size)
    n, c, h, w = x.shape
    if (h, w) == (size, size):
        return x
    if resize == "pad":
        if size < h or size < w:
            raise InvalidDatasetError(
                f"cannot pad {h}x{w} images to {size}x{size}: padding only enlarges; use resize='bilinear'"
            )
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(x, (left, size - w - left, top, size - h - top), mode="constant", value=0.0)
    if n == 0:
        return x.new_zeros((0, c, size, size))
    shrink = size < h or size < w
    out = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return out.clamp_(0.0, 1.0)


def _channel_tensor(values: Sequence[float], x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dim() < 3:
        raise InvalidDatasetError(f"expected a (..., C, H, W) tensor; got shape {tuple(x.shape)}")
    t = torch.as_tensor(tuple(values), dtype=x.dtype, device=x.device)
    if t.dim() != 1 or t.numel() != x.shape[-3]:
        raise InvalidDatasetError(
            f"{what} has {t.numel()} values but the images have {x.shape[-3]} channels "
            f"(shape {tuple(x.shape)})"
        )
    return t.view(-1, 1, 1)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Return ``(x - mean) / std`` per channel for a ``(..., C, H, W)`` tensor in [0, 1] (differentiable)."""
    m = _channel_tensor(mean, x, "mean")
    s = _channel_tensor(std, x, "std")
    if bool((s <= 0).any()):
        raise InvalidDatasetError(f"std must be positive; got {tuple(std)}")
    return (x - m) / s


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Inverse of :func:`normalize`: ``x * std + mean`` per channel (no clamping)."""
    m = _channel_tensor(mean, x, "mean")
    s = _channel_tensor(std, x, "std")
    return x * s + m


def channel_stats(images: np.ndarray, chunk: int = 2048) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of images in [0, 1] units.

    Parameters
    ----------
    images
        ``(N, H, W, C)`` array, ``uint8`` or float in [0, 1].
    chunk
        Images processed at a time (bounds the float64 working memory).

    Returns
    -------
    tuple
        ``(mean, std)``, each a tuple of ``C`` floats; this is how the standard MNIST (0.1307, 0.3081) and
        CIFAR-10 values are computed.
    """
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[0] == 0:
        raise InvalidDatasetError(f"need a non-empty (N, H, W, C) array; got shape {arr.shape}")
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    c = arr.shape[3]
    total = np.zeros(c, dtype=np.float64)
    squares = np.zeros(c, dtype=np.float64)
    for start in range(0, arr.shape[0], chunk):
        block = arr[start : start + chunk].astype(np.float64) / scale
        total += block.sum(axis=(0, 1, 2))
        squares += np.square(block).sum(axis=(0, 1, 2))
    count = arr.shape[0] * arr.shape[1] * arr.shape[2]
    mean = total / count
    var = np.maximum(squares / count - mean**2, 0.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in np.sqrt(var))
