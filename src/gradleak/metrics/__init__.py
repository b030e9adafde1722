"""Grade reconstructions: image similarity, optimal pairing, leakage measures, bootstrap CIs, embeddings.

Attacks never grade themselves; this stage receives a :class:`~gradleak.records.Reconstruction` and the ground
truth separately, and grades it with one function, :func:`grade` (one SSIM setting, RDLV against the prior,
verbatim counts, the leak verdict).

- :mod:`~gradleak.metrics.grading`: :func:`grade`, :func:`grading_ssim` (scikit-image's default SSIM).
- :mod:`~gradleak.metrics.image`: per-image :func:`ssim` (equals scikit-image in any of its settings), :func:`psnr`,
  :func:`mse`, :func:`lpips` (local weights files only).
- :mod:`~gradleak.metrics.matching`: :func:`assign` (Hungarian pairing of reconstructions with ground truth).
- :mod:`~gradleak.metrics.leakage`: :func:`attack_success_rate`, :func:`rdlv`, :func:`image_identifiability_precision`,
  :func:`fl_identifiability`, :func:`embedding_cosine`.
- :mod:`~gradleak.metrics.stats`: :func:`bootstrap_ci`.
- :mod:`~gradleak.metrics.embed`: feature extractors and :func:`tsne`.

``METRICS`` registers the per-image metrics by name: ``METRICS.get("ssim")(a, b)``.

Examples
--------
>>> result = grade(reconstruction, truth_images, truth_labels, prior=prior)   # doctest: +SKIP
>>> result["ssim_mean"], result["n_leaks"], result["rdlv_mean"]               # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from gradleak.metrics.embed import (
    FeatureExtractor,
    model_features,
    pixel_features,
    torchvision_resnet18_features,
    tsne,
)
from gradleak.metrics.errors import MetricInputError, MissingWeightsError
from gradleak.metrics.grading import LEAK_RULES, SSIM_SETTING, Grade, describe_rule, grade, grading_ssim, leak_rule
from gradleak.metrics.image import lpips, mse, pairwise, psnr, ssim
from gradleak.metrics.leakage import (
    FLIdentifiability,
    attack_success_rate,
    embedding_cosine,
    fl_identifiability,
    image_identifiability_precision,
    nearest_neighbours,
    rdlv,
    rdlv_from_ssim,
)
from gradleak.metrics.matching import Assignment, assign
from gradleak.metrics.stats import BootstrapCI, bootstrap_ci
from gradleak.registry import Registry

__all__ = [
    "LEAK_RULES",
    "METRICS",
    "SSIM_SETTING",
    "Assignment",
    "BootstrapCI",
    "FLIdentifiability",
    "FeatureExtractor",
    "Grade",
    "MetricInputError",
    "MissingWeightsError",
    "assign",
    "attack_success_rate",
    "bootstrap_ci",
    "describe_rule",
    "embedding_cosine",
    "fl_identifiability",
    "grade",
    "grading_ssim",
    "image_identifiability_precision",
    "leak_rule",
    "lpips",
    "model_features",
    "mse",
    "nearest_neighbours",
    "pairwise",
    "pixel_features",
    "psnr",
    "rdlv",
    "rdlv_from_ssim",
    "ssim",
    "torchvision_resnet18_features",
    "tsne",
]

METRICS: Registry[Tensor] = Registry("metric")
"""Per-image metrics ``(a, b, **options) -> (N,)`` by name; ``METRICS.get(name)`` returns the function."""

_PER_IMAGE: dict[str, Callable[..., Tensor]] = {"ssim": ssim, "psnr": psnr, "mse": mse}
for _name, _fn in _PER_IMAGE.items():
    METRICS.register(_name)(_fn)
