"""Grade one attack unit with :mod:`gradleak.metrics`: the numbers of its table row and the arrays the report
draws (paired images, embeddings)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from gradleak.metrics import (
    embedding_cosine,
    fl_identifiability,
    grade,
    image_identifiability_precision,
    pixel_features,
)
from gradleak.records import Reconstruction
from gradleak.study.config import MetricsConfig

__all__ = ["measure"]


def _embed(images: Tensor, space: Any) -> np.ndarray:
    """Features of ``images`` in ``space`` (``"pixel"`` or a feature extractor), float32 ``(N, D)``."""
    feats = pixel_features(images) if isinstance(space, str) else space(images.float())
    return feats.detach().cpu().float().flatten(1).numpy()


def _mean(values: Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else float("nan")


def measure(
    recon: Reconstruction,
    truth_x: Tensor,
    truth_y: Tensor,
    *,
    prior: Tensor | None,
    metrics: MetricsConfig,
    pool: Tensor,
    owners: Tensor,
    true_index: Tensor,
    client: int,
    iip_space: Any,
    embedding_space: Any,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Table numbers and report arrays of one reconstruction of ``client``'s images ``truth_x``.

    Graded by :func:`gradleak.metrics.grade` (the one grading function): reconstructions are paired with the
    originals by maximal total SSIM (collisions an attack marks invalid take no part), and every original gets
    the leak verdict of its rule. ``iip``: Yin et al.'s identifiability precision of the paired reconstructions
    among ``pool`` (all clients' training and validation images); ``iip_fl``: the FL variant (the nearest pool
    image belongs to ``client``); ``embedding_cosine``: mean cosine of paired embeddings.
    """
    ev = grade(recon, truth_x, truth_y, prior=prior, tau=metrics.tau)
    order = ev["order"].cpu()
    paired = torch.nonzero(order >= 0).flatten()
    images = recon.images.detach().cpu().double().clamp(0, 1)
    numbers: dict[str, Any] = {
        "n_reconstructions": ev["n_reconstructions"], "n_matched": ev["n_matched"],
        "ssim_mean": ev["ssim_mean"], "psnr_mean": ev["psnr_mean"], "mse_mean": ev["mse_mean"], "asr": ev["asr"],
        "label_accuracy": ev.get("label_accuracy"), "ssim_per_image": ev["ssim"].tolist(),
        "psnr_per_image": ev["psnr"].tolist(), "labels": truth_y.tolist(),
        "n_valid": ev["n_valid"], "n_verbatim": ev["n_verbatim"], "verbatim_psnr": ev["verbatim_psnr"],
        "leak_rule": ev["rule"], "n_leaks": ev["n_leaks"], "leak_per_image": ev["leak"].tolist(), "tau": ev["tau"],
    }
    if "rdlv" in ev:
        numbers.update(ssim_prior_mean=_mean(ev["ssim_prior"]), rdlv_mean=ev["rdlv_mean"],
                       rdlv_per_image=ev["rdlv"].tolist(), ssim_to_prior_per_image=ev["ssim_to_prior"].tolist())
    matched = images[order[paired]] if paired.numel() else images[:0]
    if metrics.iip and paired.numel():
        numbers["iip"] = image_identifiability_precision(matched, pool, true_index[paired], space=iip_space)
        numbers["iip_fl"] = fl_identifiability(matched, pool, owners, client, space=iip_space).score
    arrays: dict[str, np.ndarray] = {
        "truth": truth_x.detach().cpu().float().numpy(),
        "paired": np.where(order[:, None, None, None].numpy() >= 0,
                           images[order.clamp(min=0)].float().numpy() if len(images) else 0.0, np.nan),
        "reconstructions": images.float().numpy(),
        "valid": (torch.ones(len(images), dtype=torch.bool) if recon.valid is None else recon.valid.cpu()).numpy(),
    }
    if prior is not None:
        arrays["prior"] = torch.as_tensor(prior).detach().cpu().float().reshape(-1, *truth_x.shape[1:])[0].numpy()
    if paired.numel():
        cos = embedding_cosine(matched, truth_x[paired], embedding_space)
        numbers["embedding_cosine"] = float(cos.mean())
        numbers["cosine_per_image"] = cos.tolist()
        arrays["emb_truth"] = _embed(truth_x, embedding_space)
        arrays["emb_recon"] = _embed(matched, embedding_space)
    return numbers, arrays
