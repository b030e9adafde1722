"""The one grading function: a :class:`~gradleak.records.Reconstruction` against the ground truth it never saw.

Every entry point grades here — :func:`gradleak.audit.simulate_and_attack`, ``gradleak attack``, the study runner
and the benchmarks — so one reconstruction has one score and one verdict.

**SSIM.** One setting everywhere: scikit-image's default :func:`skimage.metrics.structural_similarity` (a 7×7
uniform window, sample covariance, ``K1 = 0.01``, ``K2 = 0.03``) on ``[0, 1]`` images with data range 1; the
window shrinks to the largest odd size that fits images smaller than 7 pixels. This is the SSIM behind the
hospital paper's numbers (Hatamizadeh et al. 2023): its released NVFlare filter
(``research/quantifying-data-leakage``, ``ImageSimMetric``) calls ``structural_similarity`` with the defaults and
has the Gaussian-window options of Wang et al. (2004) commented out. The combined-defenses paper's framework
scores a min-max-scaled Gaussian-window SSIM instead; on the reconstructions we measured it reads 0.05–0.10
higher, so a figure compared with that paper is compared with that caveat.

**Leak.** A reconstructed image is a *leak* only if it beats what the attacker knew without the update:

- ``"prior"`` (the attack had a prior image): SSIM above ``tau``, RDLV > 0 — the reconstruction is closer to
  the training image than the prior alone is (Hatamizadeh et al. 2023, Eq. 6) — *and* the reconstruction is closer
  to the training image than to the prior: it has left the prior. The last condition removes a false alarm that
  RDLV > 0 alone raises on batches: when n reconstructions that are the prior plus noise are paired with n
  originals by maximal SSIM, the pairing picks favourable pairs and some get RDLV slightly above 0 (the demo's
  8-image clients: 4 of 8 each by RDLV alone, every one a noisy grey chest outline nearer the prior than its
  original). The hospital paper reports the same artefact ("some reconstructed images ... could indicate data
  leakage. However, qualitative comparisons did not reveal any data leakage", Sec. V).
- ``"threshold"`` (no prior; the attack started from noise): SSIM above ``tau``;
- ``"verbatim"`` (attacks that return any number of images marked valid: the imprint module, the analytic
  inversion): recovered verbatim, PSNR at least ``verbatim_psnr`` dB against its original — or, where a prior
  is given (what the server knows without the update, e.g. the mean of its public images), recovered
  recognisably beyond it (the ``"prior"`` conditions), as a noisy imprint recovery can be.

An image no reconstruction is paired with is not a leak. Counts are over the client's images ("k of n"), never
over the paired ones alone.

Examples
--------
>>> from gradleak.metrics import grade
>>> g = grade(reconstruction, truth_images, truth_labels, prior=prior)        # doctest: +SKIP
>>> g["ssim_mean"], g["n_leaks"], g["n_truth"], g["rule"]                     # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from typing import Literal, TypedDict

import numpy as np
import torch
from torch import Tensor

from gradleak.metrics._checks import as_images
from gradleak.metrics.errors import MetricInputError
from gradleak.metrics.image import SSIMOptions, mse, psnr, ssim
from gradleak.metrics.leakage import rdlv_from_ssim
from gradleak.metrics.matching import assign as assign_pairs
from gradleak.records import Reconstruction

__all__ = ["LEAK_RULES", "SSIM_SETTING", "Grade", "describe_rule", "grade", "grading_ssim", "leak_rule", "ssim_options"]

#: The grading SSIM: scikit-image's defaults (uniform 7×7 window, sample covariance), data range 1.
SSIM_SETTING: SSIMOptions = {"gaussian": False, "win_size": 7, "use_sample_covariance": True}

#: Plain-language statement of each leak rule (``{tau}`` and ``{psnr}`` are filled in by :func:`describe_rule`).
LEAK_RULES: dict[str, str] = {
    "prior": "a reconstructed image counts as a leak when its SSIM with the original exceeds {tau}, it is closer "
             "to the original than the attacker's prior image is (RDLV > 0), and it is closer to the original than "
             "to that prior (it is no longer the prior plus noise)",
    "threshold": "a reconstructed image counts as a leak when its SSIM exceeds {tau} (the attack had no prior "
                 "image to beat)",
    "verbatim": "an image counts as a leak when it is recovered verbatim (PSNR ≥ {psnr:g} dB against the original) "
                "or, where the attacker's prior is known, recognisably beyond it (as for optimisation attacks: SSIM "
                "above {tau}, RDLV > 0 and closer to the original than to the prior)",
}

Rule = Literal["prior", "threshold", "verbatim"]


class Grade(TypedDict, total=False):
    """What :func:`grade` returns. Per-image tensors have one entry per ground-truth image (``NaN`` or ``False``
    where no reconstruction was paired with it); means ignore ``NaN``."""

    order: Tensor
    ssim: Tensor
    psnr: Tensor
    mse: Tensor
    ssim_mean: float
    psnr_mean: float
    mse_mean: float
    asr: float
    n_reconstructions: int
    n_valid: int
    n_truth: int
    n_matched: int
    label_accuracy: float
    label_multiset_accuracy: float
    ssim_prior: Tensor
    ssim_to_prior: Tensor
    rdlv: Tensor
    rdlv_mean: float
    verbatim: Tensor
    n_verbatim: int
    leak: Tensor
    n_leaks: int
    rule: str
    tau: float
    verbatim_psnr: float


def ssim_options(height: int, width: int) -> SSIMOptions:
    """:data:`SSIM_SETTING` for images of ``height × width`` (the window shrinks to fit images under 7 pixels)."""
    side = min(height, width)
    win = min(7, side if side % 2 else side - 1)
    if win < 1:
        raise MetricInputError(f"images of {height}×{width} pixels are too small for SSIM")
    return {**SSIM_SETTING, "win_size": win}


def grading_ssim(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> Tensor:
    """SSIM of each pair of ``(N, C, H, W)`` batches in ``[0, 1]`` under the one grading setting (float64 ``(N,)``).

    Equals ``skimage.metrics.structural_similarity(a_i, b_i, data_range=1, channel_axis=0)``.
    """
    x = as_images(a, "a")
    return ssim(x, b, **ssim_options(*x.shape[-2:]))


def leak_rule(recon: Reconstruction, prior: object | None) -> Rule:
    """The rule :func:`grade` applies by default: ``"verbatim"`` for attacks that mark their outputs ``valid``
    (imprint, analytic), else ``"prior"`` when the attack had a prior image, else ``"threshold"``."""
    if recon.valid is not None:
        return "verbatim"
    return "prior" if prior is not None else "threshold"


def describe_rule(rule: str, tau: float, verbatim_psnr: float = 60.0) -> str:
    """The plain-language statement of ``rule`` (one of :data:`LEAK_RULES`)."""
    try:
        return LEAK_RULES[rule].format(tau=f"{tau:g}", psnr=verbatim_psnr)
    except KeyError:
        raise MetricInputError(f"unknown leak rule {rule!r}; use one of {sorted(LEAK_RULES)}") from None


def grade(
    recon: Reconstruction,
    truth_images: Tensor | np.ndarray,
    truth_labels: Tensor | np.ndarray | None = None,
    *,
    prior: Tensor | np.ndarray | None = None,
    tau: float = 0.5,
    assign: bool = True,
    verbatim_psnr: float = 60.0,
    rule: Rule | None = None,
) -> Grade:
    """Per-image SSIM / PSNR / MSE after optimal pairing, RDLV against the prior, verbatim recoveries and the
    leak verdict of every ground-truth image.

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
        ``ssim_prior`` and RDLV (Hatamizadeh et al. 2023, Eq. 6).
    tau
        SSIM threshold of the attack success rate and of the ``"prior"``/``"threshold"`` leak rules.
    assign
        Pair by maximal total SSIM (:func:`~gradleak.metrics.matching.assign`). When false, reconstruction ``j``
        is graded against ground-truth image ``j`` and the counts must be equal (one victim per image).
    verbatim_psnr
        PSNR (dB) from which a paired reconstruction counts as recovered verbatim.
    rule
        The leak rule (see the module docstring); default :func:`leak_rule`.

    Returns
    -------
    Grade
        ``order`` (``(M,)``: reconstruction paired with each ground-truth image, ``-1`` for none),
        ``ssim``/``psnr``/``mse`` per image and ``*_mean``, ``asr`` (share of ground-truth images with SSIM
        above ``tau``), counts, label accuracies (paired; order-free multiset), with a prior ``ssim_prior``,
        ``rdlv``, ``rdlv_mean`` and ``ssim_to_prior`` (each paired reconstruction against the prior);
        ``verbatim``/``n_verbatim``; ``leak``/``n_leaks`` and the ``rule`` applied.
    """
    truth = as_images(truth_images, "truth_images").double().clamp(0, 1)
    images = as_images(recon.images, "recon.images").to(truth.device).double().clamp(0, 1)
    if images.shape[1:] != truth.shape[1:]:
        raise MetricInputError(f"reconstructions {tuple(images.shape[1:])} and truth {tuple(truth.shape[1:])} differ")
    options = ssim_options(*truth.shape[-2:])
    n, m = images.shape[0], truth.shape[0]
    valid = torch.ones(n, dtype=torch.bool) if recon.valid is None else recon.valid.detach().cpu().bool()
    if valid.numel() != n:
        raise MetricInputError(f"recon.valid has {valid.numel()} entries for {n} images")
    if assign:
        candidates = torch.nonzero(valid).flatten()
        order = torch.full((m,), -1, dtype=torch.long)
        if candidates.numel():
            local = assign_pairs(images[candidates.to(images.device)], truth, metric="ssim", **options).order.cpu()
            order = torch.where(local >= 0, candidates[local.clamp(min=0)], order)
    else:
        if n != m:
            raise MetricInputError(f"assign=False needs as many reconstructions as truth images, got {n} and {m}")
        order = torch.where(valid, torch.arange(m), torch.full((m,), -1))
    paired = torch.nonzero(order >= 0).flatten()
    result: Grade = {"order": order, "n_reconstructions": n, "n_valid": int(valid.sum()), "n_truth": m,
                     "n_matched": int(paired.numel()), "tau": float(tau), "verbatim_psnr": float(verbatim_psnr)}
    metrics = {"ssim": lambda a, b: ssim(a, b, **options), "psnr": psnr, "mse": mse}
    for name, fn in metrics.items():
        scores = torch.full((m,), float("nan"), dtype=torch.float64, device=truth.device)
        if paired.numel():
            p = paired.to(truth.device)
            scores[p] = fn(images[order[paired].to(truth.device)], truth[p])
        result[name] = scores.cpu()  # type: ignore[literal-required]
        result[f"{name}_mean"] = _nanmean(scores)  # type: ignore[literal-required]
    above = result["ssim"] > tau  # NaN (unpaired) compares False: a failure
    result["asr"] = float(above.double().mean()) if m else float("nan")
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
        p_img = torch.as_tensor(prior).detach()
        p_img = as_images(p_img[None] if p_img.dim() == 3 else p_img, "prior").to(truth.device).double().clamp(0, 1)
        if p_img.shape[0] not in (1, m) or p_img.shape[1:] != truth.shape[1:]:
            raise MetricInputError(f"prior must hold 1 or {m} images of shape {tuple(truth.shape[1:])}, "
                                   f"got {tuple(p_img.shape)}")
        result["ssim_prior"] = ssim(truth, p_img.expand_as(truth), **options).cpu()
        result["rdlv"] = rdlv_from_ssim(result["ssim"], result["ssim_prior"])
        result["rdlv_mean"] = _nanmean(result["rdlv"])
        to_prior = torch.full((m,), float("nan"), dtype=torch.float64)
        if paired.numel():
            p = paired.to(truth.device)
            prior_of = p_img.expand_as(truth)[p]
            to_prior[paired] = ssim(images[order[paired].to(truth.device)], prior_of, **options).cpu()
        result["ssim_to_prior"] = to_prior
        # closer than the prior is, and no longer the prior: see the module docstring
        beyond_prior = (result["rdlv"] > 0) & (result["ssim"] > to_prior)
    result["verbatim"] = result["psnr"] >= verbatim_psnr
    result["n_verbatim"] = int(result["verbatim"].sum())
    chosen = rule if rule is not None else leak_rule(recon, prior)
    if chosen == "verbatim":
        leak = result["verbatim"] | (above & beyond_prior) if prior is not None else result["verbatim"]
    elif chosen == "prior":
        if prior is None:
            raise MetricInputError("rule='prior' needs the attacker's prior image (prior=...)")
        leak = above & beyond_prior
    elif chosen == "threshold":
        leak = above
    else:
        raise MetricInputError(f"unknown leak rule {chosen!r}; use one of {sorted(LEAK_RULES)}")
    result["leak"] = leak
    result["n_leaks"] = int(leak.sum())
    result["rule"] = chosen
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
