"""Optimal one-to-one pairing of reconstructions with ground-truth images.

A batch attack returns its images in no particular order, so every per-image number starts by pairing each
ground-truth image with the reconstruction that resembles it, maximising the total similarity (Hungarian
algorithm, :func:`scipy.optimize.linear_sum_assignment` on the pairwise score matrix).

Examples
--------
>>> order, scores = assign(reconstruction.images, truth)      # doctest: +SKIP
>>> aligned = reconstruction.images[order]  # when N >= M     # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from gradleak.metrics.errors import MetricInputError
from gradleak.metrics.image import pairwise

__all__ = ["MAXIMISE", "Assignment", "assign"]

MAXIMISE = {"ssim": True, "psnr": True, "mse": False}
"""Whether a larger value of each metric means a closer pair."""


class Assignment(NamedTuple):
    """Result of :func:`assign`; unpacks as ``order, scores``.

    Attributes
    ----------
    order
        ``(M,)`` long: ``order[j]`` is the index of the reconstruction paired with ground-truth image ``j``, or
        ``-1`` when there are fewer reconstructions than ground-truth images and ``j`` got none.
    scores
        ``(M,)`` float64: the metric of each pair, ``NaN`` where ``order`` is ``-1``.
    """

    order: Tensor
    scores: Tensor


def assign(
    recon: Tensor | np.ndarray,
    truth: Tensor | np.ndarray,
    *,
    metric: str = "ssim",
    **options: Any,
) -> Assignment:
    """Pair reconstructions with ground-truth images one-to-one, optimising the total ``metric``.

    Parameters
    ----------
    recon
        Reconstructions ``(N, C, H, W)``.
    truth
        Ground-truth images ``(M, C, H, W)``. ``N`` and ``M`` may differ: with ``N > M`` the surplus
        reconstructions stay unpaired, with ``N < M`` some ground-truth images do.
    metric
        ``"ssim"`` or ``"psnr"`` (maximised) or ``"mse"`` (minimised).
    **options
        Passed to the metric (``data_range``, SSIM window options).

    Returns
    -------
    Assignment
        ``(order, scores)``, one entry per ground-truth image (see :class:`Assignment`).

    Raises
    ------
    MetricInputError
        Unknown metric or incompatible shapes.
    """
    if metric not in MAXIMISE:
        raise MetricInputError(f"unknown matching metric {metric!r}; choose one of {sorted(MAXIMISE)}")
    scores = pairwise(metric, recon, truth, **options)  # (N, M)
    values = scores.detach().cpu().numpy()
    cost = -values if MAXIMISE[metric] else values.copy()
    finite = np.abs(cost[np.isfinite(cost)])
    big = (float(finite.max()) if finite.size else 1.0) * 1e3 + 1.0  # inf/NaN outrank every real pair, stay exact
    cost = np.nan_to_num(cost, nan=big, posinf=big, neginf=-big)
    rows, cols = linear_sum_assignment(cost)
    m = scores.shape[1]
    order = torch.full((m,), -1, dtype=torch.long)
    order[torch.as_tensor(cols, dtype=torch.long)] = torch.as_tensor(rows, dtype=torch.long)
    paired = torch.full((m,), float("nan"), dtype=scores.dtype, device=scores.device)
    paired[torch.as_tensor(cols, device=scores.device)] = scores[rows, cols]
    return Assignment(order.to(scores.device), paired)
