"""How much leaked: attack success rate, relative data leakage (RDLV), image identifiability precision (IIP).

References
----------
- RDLV: Hatamizadeh et al. (2022), "Do Gradient Inversion Attacks Make Federated Learning Unsafe?", Eq. 6.
- IIP: Yin et al. (2021), "See through Gradients: Image Batch Recovery via GradInversion", and its FL variant in
  Hatamizadeh et al. (2022), Sec. II-D.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gradleak.metrics._checks import as_images
from gradleak.metrics.embed import pixel_features
from gradleak.metrics.errors import MetricInputError
from gradleak.metrics.image import ssim

__all__ = [
    "FLIdentifiability",
    "attack_success_rate",
    "embedding_cosine",
    "fl_identifiability",
    "image_identifiability_precision",
    "nearest_neighbours",
    "rdlv",
    "rdlv_from_ssim",
]

Space = str | Callable[[Tensor], Tensor]


class FLIdentifiability(NamedTuple):
    """Result of :func:`fl_identifiability`; unpacks as ``score, flags``."""

    score: float
    flags: Tensor
    """``(N,)`` bool: the nearest pool image of reconstruction ``i`` belongs to the attacked client."""


def attack_success_rate(ssims: Tensor | np.ndarray | Sequence[float], tau: float = 0.5) -> float:
    """Share of images whose SSIM exceeds ``tau`` (``NaN`` — an image nobody reconstructed — counts as a failure).

    Parameters
    ----------
    ssims
        Per-image SSIM values (one per ground-truth image).
    tau
        Success threshold.
    """
    values = torch.as_tensor(ssims).detach().double()
    if values.numel() == 0:
        raise MetricInputError("attack_success_rate needs at least one SSIM value")
    return float((values.flatten() > tau).double().mean())


def rdlv(
    truth: Tensor | np.ndarray,
    recon: Tensor | np.ndarray,
    prior: Tensor | np.ndarray,
    **ssim_options: Any,
) -> Tensor:
    """Relative data leakage value ``100 (SSIM(T, I) - SSIM(T, P)) / |SSIM(T, P)|`` per image (Eq. 6).

    Positive when the reconstruction is closer to the training image than the prior the attack started from,
    zero when it is no closer, negative when it is further.

    Parameters
    ----------
    truth, recon
        Paired training images ``T_i`` and reconstructions ``I_i``, ``(N, C, H, W)``.
    prior
        The attack's prior ``P``: one image ``(C, H, W)`` / ``(1, C, H, W)`` or one per pair ``(N, C, H, W)``.
    **ssim_options
        Passed to :func:`~gradleak.metrics.image.ssim`.

    Returns
    -------
    Tensor
        ``(N,)`` float64 percentages.
    """
    t = as_images(truth, "truth")
    p = torch.as_tensor(prior)
    p = as_images(p[None] if p.dim() == 3 else p, "prior").to(t.device)
    if p.shape[0] == 1:
        p = p.expand_as(t)
    return rdlv_from_ssim(ssim(t, recon, **ssim_options), ssim(t, p, **ssim_options))


def rdlv_from_ssim(ssim_recon: Tensor, ssim_prior: Tensor) -> Tensor:
    """Eq. 6 from precomputed SSIMs: ``100 (s_recon - s_prior) / |s_prior|``.

    The paper divides by ``SSIM(T, P)``, positive in practice (0.37 in its Fig. 6); dividing by its absolute value
    is the same there and keeps the sign meaning "closer than the prior" if it is ever negative. ``SSIM(T, P) = 0``
    gives ``±inf`` (``NaN`` if the reconstruction's SSIM is 0 too).
    """
    ssim_recon, ssim_prior = torch.as_tensor(ssim_recon), torch.as_tensor(ssim_prior)
    return 100.0 * (ssim_recon - ssim_prior) / ssim_prior.abs()


def nearest_neighbours(
    queries: Tensor | np.ndarray,
    pool: Tensor | np.ndarray,
    *,
    space: Space = "pixel",
    similarity: str = "cosine",
    batch_size: int = 256,
) -> Tensor:
    """Index of the nearest pool image of every query image, in pixel space or a feature space.

    Parameters
    ----------
    queries, pool
        Images ``(N, C, H, W)`` and ``(P, C, H, W)``.
    space
        ``"pixel"`` or a feature extractor ``images -> (n, D)`` (see :mod:`gradleak.metrics.embed`), applied in
        batches of ``batch_size``.
    similarity
        ``"cosine"`` (largest cosine similarity, as Yin et al. and Hatamizadeh et al.) or ``"l2"`` (smallest
        Euclidean distance). Ties go to the lowest pool index.

    Returns
    -------
    Tensor
        ``(N,)`` long indices into ``pool``.
    """
    q, p = _features(queries, space, batch_size, "queries"), _features(pool, space, batch_size, "pool")
    if q.shape[1] != p.shape[1]:
        raise MetricInputError(f"query features ({q.shape[1]}) and pool features ({p.shape[1]}) differ in size")
    p = p.to(q.device)
    if similarity == "cosine":
        return (F.normalize(q, dim=1) @ F.normalize(p, dim=1).T).argmax(dim=1)
    if similarity == "l2":
        return torch.cdist(q, p, compute_mode="donot_use_mm_for_euclid_dist").argmin(dim=1)
    raise MetricInputError(f"unknown similarity {similarity!r}; choose 'cosine' or 'l2'")


def image_identifiability_precision(
    recon: Tensor | np.ndarray,
    pool: Tensor | np.ndarray,
    true_index: Tensor | np.ndarray | Sequence[int],
    *,
    space: Space = "pixel",
    similarity: str = "cosine",
    batch_size: int = 256,
) -> float:
    """Yin et al.'s IIP: share of reconstructions whose nearest pool image is their own training image.

    ``IIP = m / N``, where ``N`` is the number of reconstructions and ``m`` the number of *unique* exact matches
    (pool images that are the nearest neighbour of a reconstruction of themselves; two reconstructions of the same
    image identify it once).

    Parameters
    ----------
    recon
        Reconstructions ``(N, C, H, W)``.
    pool
        Candidate images ``(P, C, H, W)``, containing the true ones.
    true_index
        ``(N,)``: the pool index of the image reconstruction ``i`` is an attempt at.
    space, similarity, batch_size
        See :func:`nearest_neighbours`.

    Returns
    -------
    float
        IIP in ``[0, 1]``; chance level is about ``1 / P``.
    """
    nearest = nearest_neighbours(recon, pool, space=space, similarity=similarity, batch_size=batch_size)
    truth = _indices(true_index, nearest.shape[0], _count(pool), "true_index").to(nearest.device)
    hits = nearest == truth
    return torch.unique(nearest[hits]).numel() / nearest.shape[0]


def fl_identifiability(
    recon: Tensor | np.ndarray,
    pool: Tensor | np.ndarray,
    pool_client_ids: Tensor | np.ndarray | Sequence[int],
    attacked_client: int,
    *,
    space: Space = "pixel",
    similarity: str = "cosine",
    unique: bool = True,
    batch_size: int = 256,
) -> FLIdentifiability:
    """IIP adjusted to FL (Hatamizadeh et al. 2022): is the nearest image of all clients' data the attacked client's?

    The pool holds the training and validation images of *all* clients; a reconstruction is an exact match when
    its nearest pool image belongs to ``attacked_client``.

    Parameters
    ----------
    recon
        Reconstructions ``(N, C, H, W)`` from the attacked client's update.
    pool
        All clients' training and validation images ``(P, C, H, W)``.
    pool_client_ids
        ``(P,)``: the client owning each pool image.
    attacked_client
        The client whose update was attacked.
    unique
        Count each matched pool image once (``m`` unique exact matches, as IIP); false counts every flagged
        reconstruction, i.e. ``score = flags.mean()``.
    space, similarity, batch_size
        See :func:`nearest_neighbours`.

    Returns
    -------
    FLIdentifiability
        ``(score, flags)``: ``m / N`` and the per-reconstruction match flags.
    """
    nearest = nearest_neighbours(recon, pool, space=space, similarity=similarity, batch_size=batch_size)
    owners = torch.as_tensor(pool_client_ids).detach().long().flatten().to(nearest.device)
    if owners.numel() != _count(pool):
        raise MetricInputError(f"pool_client_ids has {owners.numel()} entries for {_count(pool)} pool images")
    flags = owners[nearest] == int(attacked_client)
    m = torch.unique(nearest[flags]).numel() if unique else int(flags.sum())
    return FLIdentifiability(m / nearest.shape[0], flags)


def embedding_cosine(a: Tensor | np.ndarray, b: Tensor | np.ndarray, extractor: Space = "pixel") -> Tensor:
    """Cosine similarity of the features of each pair ``(a[i], b[i])`` (Hatamizadeh et al., Fig. 9 dotted lines).

    Returns
    -------
    Tensor
        ``(N,)`` values in ``[-1, 1]``.
    """
    fa, fb = _features(a, extractor, 256, "a"), _features(b, extractor, 256, "b")
    if fa.shape != fb.shape:
        raise MetricInputError(f"feature batches differ in shape: {tuple(fa.shape)} and {tuple(fb.shape)}")
    return F.cosine_similarity(fa, fb.to(fa.device), dim=1)


def _features(images: Tensor | np.ndarray, space: Space, batch_size: int, name: str) -> Tensor:
    x = as_images(images, name, dtype=torch.float32 if callable(space) else torch.float64)
    if isinstance(space, str):
        if space != "pixel":
            raise MetricInputError(f"unknown space {space!r}; use 'pixel' or a feature extractor callable")
        return pixel_features(x)
    if not callable(space):
        raise MetricInputError(f"space must be 'pixel' or a callable, got {type(space).__name__}")
    if batch_size < 1:
        raise MetricInputError(f"batch_size must be >= 1, got {batch_size}")
    feats = torch.cat([torch.as_tensor(space(x[i : i + batch_size])).flatten(1) for i in range(0, len(x), batch_size)])
    return feats.detach().double()


def _count(images: Tensor | np.ndarray) -> int:
    return int(images.shape[0])


def _indices(values: Tensor | np.ndarray | Sequence[int], n: int, limit: int, name: str) -> Tensor:
    index = torch.as_tensor(values).detach().long().flatten()
    if index.numel() != n:
        raise MetricInputError(f"{name} has {index.numel()} entries for {n} reconstructions")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= limit):
        low, high = int(index.min()), int(index.max())
        raise MetricInputError(f"{name} must lie in [0, {limit}), got values from {low} to {high}")
    return index
