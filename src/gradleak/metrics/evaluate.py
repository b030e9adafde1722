"""Grade one :class:`~gradleak.records.Reconstruction` against the ground truth it never saw."""

from __future__ import annotations

from collections import Counter
from typing import TypedDict

import numpy as np
import torch
from torch import Tensor

from gradleak.metrics._checks import as_images
from gradleak.metrics.errors import MetricInputError
from gradleak.metrics.image import mse, psnr, ssim
from gradleak.metrics.leakage import attack_success_rate, rdlv_from_ssim
from gradleak.metrics.matching import assign as assign_pairs
from gradleak.records import Reconstruction

__all__ = ["Evaluation", "evaluate_reconstruction"]


class Evaluation(TypedDict, total=False):
    """What :func:`evaluate_reconstruction` returns. Per-image tensors have one entry per ground-truth image
    (``NaN`` where no reconstruction was paired with it); means ignore ``NaN``.
    """

    order: Tensor
    ssim: Tensor
    psnr: Tensor
    mse: Tensor
    ssim_mean: float
    psnr_mean: float
    mse_mean: float
    asr: float
    n_reconstructions: int
    n_truth: int
    n_matched: int
    label_accuracy: float
    label_multiset_accuracy: float
    ssim_prior: Tensor
    rdlv: Tensor
    rdlv_mean: float


def evaluate_reconstruction(
    recon: Reconstruction,
    truth_images: Tensor | np.ndarray,
    truth_labels: Tensor | np.ndarray | None = None,
    *,
    prior: Tensor | np.ndarray | None = None,
    tau: float = 0.5,
    assign: bool = True,
) -> Evaluation:
    """Per-image SSIM / PSNR / MSE after optimal pairing, their means, ASR, label accuracy and RDLV.

    Parameters
    ----------
    recon
        The attack's output. Images its ``valid`` mask marks invalid (e.g. imprint bins hit by several inputs)
        take no part in the pairing.
    truth_images
        The attacked client's images ``(M, C, H, W)`` in ``[0, 1]``.
    truth_labels
        ``(M,)`` labels; label accuracies are reported when given and the reconstruction has (hard or soft) labels.
    prior
        The prior image(s) the attack started from (``(C, H, W)``, ``(1, C, H, W)`` or ``(M, C, H, W)``); adds
        ``ssim_prior`` and RDLV (Hatamizadeh et al. 2022, Eq. 6).
    tau
        SSIM threshold of the attack success rate.
    assign
        Pair by maximal total SSIM (:func:`~gradleak.metrics.matching.assign`). When false, reconstruction ``j``
        is graded against ground-truth image ``j`` and the counts must be equal.

    Returns
    -------
    Evaluation
        ``order`` (``(M,)``: reconstruction index paired with each ground-truth image, ``-1`` for none),
        ``ssim``/``psnr``/``mse`` per image and ``*_mean``, ``asr`` (share of ground-truth images with SSIM
        above ``tau``; unpaired ones count as failures), counts, ``label_accuracy`` (paired labels equal, over
        ``M``), ``label_multiset_accuracy`` (order-free overlap of the label multisets, over ``M``), and with
        a prior ``ssim_prior``, ``rdlv``, ``rdlv_mean``.
    """
    truth = as_images(truth_images, "truth_images")
    images = as_images(recon.images, "recon.images").to(truth.device)
    if images.shape[1:] != truth.shape[1:]:
        raise MetricInputError(f"reconstructions {tuple(images.shape[1:])} and truth {tuple(truth.shape[1:])} differ")
    n, m = images.shape[0], truth.shape[0]
    valid = torch.ones(n, dtype=torch.bool) if recon.valid is None else recon.valid.detach().cpu().bool()
    if assign:
        candidates = torch.nonzero(valid).flatten()
        order = torch.full((m,), -1, dtype=torch.long)
        if candidates.numel():
            local = assign_pairs(images[candidates.to(images.device)], truth, metric="ssim").order.cpu()
            order = torch.where(local >= 0, candidates[local.clamp(min=0)], order)
    else:
        if n != m:
            raise MetricInputError(f"assign=False needs as many reconstructions as truth images, got {n} and {m}")
        order = torch.where(valid, torch.arange(m), torch.full((m,), -1))
    paired = torch.nonzero(order >= 0).flatten()
    result: Evaluation = {"order": order, "n_reconstructions": n, "n_truth": m, "n_matched": int(paired.numel())}
    for name, fn in (("ssim", ssim), ("psnr", psnr), ("mse", mse)):
        scores = torch.full((m,), float("nan"), dtype=torch.float64, device=truth.device)
        if paired.numel():
            p = paired.to(truth.device)
            scores[p] = fn(images[order[paired].to(truth.device)], truth[p])
        result[name] = scores
        result[f"{name}_mean"] = _nanmean(scores)
    result["asr"] = attack_success_rate(result["ssim"], tau)
    predicted = _hard_labels(recon)
    if truth_labels is not None and predicted is not None:
        labels = torch.as_tensor(truth_labels).detach().cpu().long().flatten()
        if labels.numel() != m:
            raise MetricInputError(f"truth_labels has {labels.numel()} entries for {m} truth images")
        if predicted.numel() != n:
            raise MetricInputError(f"the reconstruction has {predicted.numel()} labels for {n} images")
        correct = int((predicted[order[paired]] == labels[paired]).sum()) if paired.numel() else 0
        result["label_accuracy"] = correct / m
        overlap = Counter(predicted.tolist()) & Counter(labels.tolist())
        result["label_multiset_accuracy"] = sum(overlap.values()) / m
    if prior is not None:
        p_img = torch.as_tensor(prior)
        p_img = as_images(p_img[None] if p_img.dim() == 3 else p_img, "prior").to(truth.device)
        if p_img.shape[0] not in (1, m):
            raise MetricInputError(f"prior must hold 1 or {m} images, got {p_img.shape[0]}")
        result["ssim_prior"] = ssim(truth, p_img.expand_as(truth))
        result["rdlv"] = rdlv_from_ssim(result["ssim"], result["ssim_prior"])
        result["rdlv_mean"] = _nanmean(result["rdlv"])
    return result


def _hard_labels(recon: Reconstruction) -> Tensor | None:
    if recon.labels is not None:
        return recon.labels.detach().cpu().long().flatten()
    if recon.soft_labels is not None:
        return recon.soft_labels.detach().cpu().argmax(dim=-1)
    return None


def _nanmean(values: Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else float("nan")
