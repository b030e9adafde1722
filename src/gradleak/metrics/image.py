"""Per-image similarity metrics between two batches of images in ``[0, data_range]``: SSIM, PSNR, MSE (and LPIPS).

All functions take ``(N, C, H, W)`` batches (tensors or arrays), pair image ``i`` of ``a`` with image ``i`` of
``b`` and return one value per pair as a float64 tensor ``(N,)`` on ``a``'s device. They are differentiable.

:func:`ssim` reproduces :func:`skimage.metrics.structural_similarity` with ``gaussian_weights=True,
use_sample_covariance=False, channel_axis=<C>`` (Wang et al. 2004) to ~1e-12, batched in torch: skimage filters with
:func:`scipy.ndimage.gaussian_filter` (``truncate=3.5``, mode ``'reflect'``, i.e. the edge sample repeated, numpy's
``'symmetric'``), computes the SSIM map, crops ``(win_size - 1) // 2`` pixels from each border and averages; the
channel mean equals skimage's per-channel loop. Here that filter (including the reflected borders and the crop) is
folded into two small matrices per image size, so filtering a whole batch is two batched matmuls,
``rows @ plane @ cols.T`` — 3-8× faster than a float64 ``conv2d`` on a padded copy, and differentiable.

Examples
--------
>>> x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
>>> ssim(x, x)
tensor([1., 1., 1., 1.], dtype=torch.float64)
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypedDict

import numpy as np
import torch
from torch import Tensor

from gradleak.metrics._checks import as_images, as_pair
from gradleak.metrics.errors import MetricInputError
from gradleak.metrics.perceptual import lpips

__all__ = ["lpips", "mse", "pairwise", "psnr", "ssim"]

_TRUNCATE = 3.5  # skimage's truncate for gaussian_weights=True
_PAIR_CHUNK_ELEMENTS = 1 << 22  # bound on the pairwise SSIM work tensor (float64 elements)


class SSIMOptions(TypedDict, total=False):
    """Keyword options of :func:`ssim` (scikit-image's names)."""

    data_range: float
    win_size: int | None
    sigma: float
    gaussian: bool
    K1: float
    K2: float
    use_sample_covariance: bool


def ssim(
    a: Tensor | np.ndarray,
    b: Tensor | np.ndarray,
    *,
    data_range: float = 1.0,
    win_size: int | None = None,
    sigma: float = 1.5,
    gaussian: bool = True,
    K1: float = 0.01,
    K2: float = 0.03,
    use_sample_covariance: bool = False,
) -> Tensor:
    """Mean structural similarity of each image pair, averaged over channels (skimage's ``channel_axis``).

    Parameters
    ----------
    a, b
        Image batches ``(N, C, H, W)`` of the same shape.
    data_range
        Range of the pixel values (1 for images in ``[0, 1]``).
    win_size
        Side of the window whose border is cropped before averaging; with ``gaussian=False`` also the side of the
        uniform filter. ``None`` (the default) chooses as skimage does: ``2 * int(3.5 * sigma + 0.5) + 1`` (11 for
        ``sigma=1.5``) with Gaussian weights, 7 without. It must be odd and at most ``min(H, W)``.
    sigma
        Standard deviation of the Gaussian window (radius ``int(3.5 * sigma + 0.5)``, whatever ``win_size`` is).
    gaussian
        Gaussian weights (Wang et al. 2004) when true, a uniform ``win_size`` window when false.
    K1, K2
        Stabilising constants: ``C1 = (K1 * data_range)**2``, ``C2 = (K2 * data_range)**2``.
    use_sample_covariance
        Normalise (co)variances by ``NP - 1`` instead of ``NP`` (``NP = win_size**2``). False matches Wang et al.

    Returns
    -------
    Tensor
        ``(N,)`` float64 SSIM values in ``[-1, 1]`` (computed in float64 whatever the input dtype).

    Raises
    ------
    MetricInputError
        Shapes differ or are not 4-D, the window is even or larger than the image, or a constant is negative.
    """
    x, y = as_pair(a, b)
    window = _window(x, win_size=win_size, sigma=sigma, gaussian=gaussian, K1=K1, K2=K2)
    n, c = x.shape[:2]
    moments = _filter(torch.cat([x, y, x * x, y * y, x * y], dim=1), window)
    ux, uy, uxx, uyy, uxy = moments.view(n, 5, c, *moments.shape[-2:]).unbind(1)
    return _ssim_from_moments(ux, uy, uxx, uyy, uxy, data_range, K1, K2, window.win, use_sample_covariance)


def psnr(a: Tensor | np.ndarray, b: Tensor | np.ndarray, *, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio ``10 log10(data_range**2 / MSE)`` of each pair, in dB.

    Equals :func:`skimage.metrics.peak_signal_noise_ratio` per image. Identical images give ``torch.inf``.

    Returns
    -------
    Tensor
        ``(N,)`` float64 values.
    """
    if data_range <= 0:
        raise MetricInputError(f"data_range must be positive, got {data_range}")
    return 10.0 * torch.log10(data_range**2 / mse(a, b))


def mse(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> Tensor:
    """Mean squared error of each pair over channels and pixels.

    Returns
    -------
    Tensor
        ``(N,)`` float64 values.
    """
    x, y = as_pair(a, b)
    return (x - y).square().flatten(1).mean(dim=1)


def pairwise(metric: str, recon: Tensor | np.ndarray, truth: Tensor | np.ndarray, **options: Any) -> Tensor:
    """Score matrix ``(N, M)``: ``metric`` between every reconstruction ``i`` and every ground-truth image ``j``.

    Parameters
    ----------
    metric
        ``"ssim"``, ``"psnr"`` or ``"mse"``.
    recon, truth
        Batches ``(N, C, H, W)`` and ``(M, C, H, W)`` with equal ``C, H, W``.
    **options
        Passed to the metric (``data_range``, SSIM's window options).

    Returns
    -------
    Tensor
        ``(N, M)`` float64 scores; entry ``[i, j]`` equals ``metric(recon[i:i+1], truth[j:j+1])``.
    """
    x = as_images(recon, "recon")
    y = as_images(truth, "truth").to(x.device)
    if x.shape[1:] != y.shape[1:]:
        raise MetricInputError(f"recon {tuple(x.shape[1:])} and truth {tuple(y.shape[1:])} images differ in shape")
    if metric in ("mse", "psnr"):
        # ||x - y||^2 through differences, not the expanded dot product, to stay exact for near-identical images
        err = torch.stack([(xi - y).square().flatten(1).mean(dim=1) for xi in x])
        if metric == "mse":
            return err
        data_range = float(options.get("data_range", 1.0))
        return 10.0 * torch.log10(data_range**2 / err)
    if metric != "ssim":
        raise MetricInputError(f"unknown pairwise metric {metric!r}; choose 'ssim', 'psnr' or 'mse'")
    return _pairwise_ssim(x, y, **options)


def _pairwise_ssim(
    x: Tensor,
    y: Tensor,
    *,
    data_range: float = 1.0,
    win_size: int | None = None,
    sigma: float = 1.5,
    gaussian: bool = True,
    K1: float = 0.01,
    K2: float = 0.03,
    use_sample_covariance: bool = False,
) -> Tensor:
    """SSIM of all pairs: the means and second moments of each image are filtered once; only ``x*y`` per pair."""
    window = _window(x, win_size=win_size, sigma=sigma, gaussian=gaussian, K1=K1, K2=K2)
    (n, c, h, w), m = x.shape, y.shape[0]
    hw = (window.rows.shape[0], window.cols.shape[0])
    ux, uxx = _filter(torch.cat([x, x * x], dim=1), window).view(n, 2, c, *hw).unbind(1)
    uy, uyy = _filter(torch.cat([y, y * y], dim=1), window).view(m, 2, c, *hw).unbind(1)
    rows = max(1, _PAIR_CHUNK_ELEMENTS // (m * c * h * w))
    out = []
    for start in range(0, n, rows):
        sl = slice(start, start + rows)
        uxy = _filter(x[sl, None] * y[None], window)
        scores = _ssim_from_moments(
            ux[sl, None], uy[None], uxx[sl, None], uyy[None], uxy, data_range, K1, K2, window.win, use_sample_covariance
        )
        out.append(scores)
    return torch.cat(out)


class _Window(NamedTuple):
    """skimage's filter as two matrices: ``filtered = rows @ plane @ cols.T``, already border-cropped."""

    rows: Tensor  # (H - 2 pad, H)
    cols: Tensor  # (W - 2 pad, W)
    win: int


def _window(x: Tensor, *, win_size: int | None, sigma: float, gaussian: bool, K1: float, K2: float) -> _Window:
    """The separable filter of ``x``'s planes, validated against the image size."""
    if K1 < 0 or K2 < 0:
        raise MetricInputError(f"K1 and K2 must be non-negative, got K1={K1}, K2={K2}")
    if sigma < 0:
        raise MetricInputError(f"sigma must be non-negative, got {sigma}")
    if gaussian:
        radius = int(_TRUNCATE * sigma + 0.5)
        win = 2 * radius + 1 if win_size is None else int(win_size)
        taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kernel = torch.exp(-0.5 / sigma**2 * taps**2) if sigma > 0 else torch.ones(1, dtype=torch.float64)
        kernel = kernel / kernel.sum()
    else:
        win = 7 if win_size is None else int(win_size)
        radius = win // 2
        kernel = torch.full((max(win, 1),), 1.0 / max(win, 1), dtype=torch.float64)
    if win < 1 or win % 2 == 0:
        raise MetricInputError(f"win_size must be a positive odd integer, got {win}")
    h, w = x.shape[-2:]
    if win > min(h, w):
        raise MetricInputError(
            f"win_size {win} exceeds the image extent {(h, w)}; pass an odd win_size at most "
            "min(H, W) (and, with gaussian=True, a smaller sigma)"
        )
    pad = (win - 1) // 2
    rows = _filter_matrix(h, kernel, radius, pad).to(x.device)
    cols = rows if w == h else _filter_matrix(w, kernel, radius, pad).to(x.device)
    return _Window(rows, cols, win)


def _filter_matrix(size: int, kernel: Tensor, radius: int, pad: int) -> Tensor:
    """1-D correlation with ``kernel`` under scipy's mode ``'reflect'`` as a ``(size - 2 pad, size)`` matrix.

    Row ``i`` holds the weights output ``pad + i`` gives each input sample. The extension is ``d c b a | a b c d |
    d c b a`` (the edge sample repeated, numpy's ``'symmetric'``), periodic with period ``2 size`` for radii
    beyond the image. Only the rows SSIM keeps after cropping ``pad`` samples from each border are built.
    """
    out = torch.arange(pad, size - pad)
    source = out[:, None] + torch.arange(-radius, radius + 1)[None, :]  # (rows, taps) positions in the extension
    source = source % (2 * size)
    source = torch.where(source >= size, 2 * size - 1 - source, source)
    matrix = torch.zeros(out.numel(), size, dtype=torch.float64)
    return matrix.scatter_add_(1, source, kernel.expand_as(source).contiguous())


def _filter(images: Tensor, window: _Window) -> Tensor:
    """Separable filtering of every ``(H, W)`` plane of ``images``: ``(..., H, W) -> (..., H', W')`` cropped."""
    return window.rows @ images @ window.cols.T


def _ssim_from_moments(
    ux: Tensor,
    uy: Tensor,
    uxx: Tensor,
    uyy: Tensor,
    uxy: Tensor,
    data_range: float,
    K1: float,
    K2: float,
    win: int,
    use_sample_covariance: bool,
) -> Tensor:
    """skimage's SSIM map from filtered (already border-cropped) moments, averaged over ``(C, H, W)``."""
    points = win * win
    cov_norm = points / (points - 1) if use_sample_covariance and points > 1 else 1.0
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    a1, a2 = 2 * ux * uy + c1, 2 * vxy + c2
    b1, b2 = ux**2 + uy**2 + c1, vx + vy + c2
    s = (a1 * a2) / (b1 * b2)
    return s.mean(dim=(-3, -2, -1))
