"""ASR, RDLV (Hatamizadeh et al. Eq. 6), IIP (Yin et al.) and its FL variant on cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gradleak.metrics import (
    MetricInputError,
    attack_success_rate,
    embedding_cosine,
    fl_identifiability,
    image_identifiability_precision,
    model_features,
    nearest_neighbours,
    rdlv,
    ssim,
)
from tests.metrics._images import noisy, photo_crops

POOL = 64


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 10)
    )


def test_attack_success_rate_counts_strictly_above_tau() -> None:
    assert attack_success_rate([0.2, 0.5, 0.51, 0.9], tau=0.5) == 0.5
    assert attack_success_rate(torch.tensor([0.6, float("nan")])) == 0.5  # unreconstructed = failure
    with pytest.raises(MetricInputError):
        attack_success_rate([])


def test_rdlv_is_zero_at_the_prior_and_positive_closer_to_truth(rng: np.random.Generator) -> None:
    truth = photo_crops(rng, 6, 1, 32, 32)
    prior = np.full((1, 32, 32), truth.mean())  # a mean image, as the paper's prior initialisation
    at_prior = np.repeat(prior[None], 6, axis=0)
    torch.testing.assert_close(rdlv(truth, at_prior, prior), torch.zeros(6, dtype=torch.float64))
    closer = 0.3 * at_prior + 0.7 * truth
    values = rdlv(truth, closer, prior)
    assert (values > 0).all()
    s_prior = ssim(truth, at_prior)
    torch.testing.assert_close(values, 100 * (ssim(truth, closer) - s_prior) / s_prior)
    # a reconstruction that *is* the truth gains 100 (1 - s_P) / s_P
    torch.testing.assert_close(rdlv(truth, truth, prior), 100 * (1 - s_prior) / s_prior)
    assert (rdlv(truth, rng.random(truth.shape), prior) < 0).all()  # noise is further than the smooth prior


@pytest.mark.parametrize("similarity", ["cosine", "l2"])
def test_iip_is_one_for_slightly_noisy_originals(rng: np.random.Generator, similarity: str) -> None:
    pool = photo_crops(rng, POOL, 3, 32, 32)
    true_index = rng.choice(POOL, size=16, replace=False)
    recon = noisy(rng, pool[true_index], 0.05)
    assert image_identifiability_precision(recon, pool, true_index, similarity=similarity) == 1.0
    extractor = model_features(small_cnn())
    iip = image_identifiability_precision(recon, pool, true_index, space=extractor, similarity=similarity)
    assert iip == 1.0


def test_iip_of_pure_noise_is_near_chance(rng: np.random.Generator) -> None:
    # chance: each of N reconstructions hits its own image with probability 1/P, so IIP ~ 1/P = 0.016;
    # P(IIP >= 5/N) under Binomial(64, 1/64) is < 0.4 %, while any real leak would push it far higher
    pool = rng.random((POOL, 1, 32, 32))
    recon = rng.random((POOL, 1, 32, 32))
    iip = image_identifiability_precision(recon, pool, np.arange(POOL))
    assert iip < 5 / POOL


def test_iip_counts_unique_matches_only(rng: np.random.Generator) -> None:
    pool = photo_crops(rng, 8, 1, 32, 32)
    recon = noisy(rng, pool[[2, 2, 2, 5]], 0.02)  # three reconstructions of image 2 identify it once
    assert image_identifiability_precision(recon, pool, [2, 2, 2, 5]) == 0.5
    with pytest.raises(MetricInputError, match=r"must lie in \[0, 8\)"):
        image_identifiability_precision(recon, pool, [2, 2, 2, 8])


def test_fl_identifiability_flags_the_attacked_clients_images(rng: np.random.Generator) -> None:
    pool = photo_crops(rng, 30, 3, 32, 32)  # three clients' training + validation images
    owners = np.repeat([0, 1, 2], 10)
    recon = noisy(rng, pool[[10, 11, 12, 25]], 0.05)  # three of client 1, one of client 2
    score, flags = fl_identifiability(recon, pool, owners, attacked_client=1)
    assert flags.tolist() == [True, True, True, False]
    assert score == 0.75
    duplicate = noisy(rng, pool[[10, 10]], 0.02)
    assert fl_identifiability(duplicate, pool, owners, 1).score == 0.5
    assert fl_identifiability(duplicate, pool, owners, 1, unique=False).score == 1.0


def test_nearest_neighbours_l2_and_cosine_differ_on_scaled_images(rng: np.random.Generator) -> None:
    pool = np.stack([np.full((1, 8, 8), 0.2), np.full((1, 8, 8), 0.9)])
    query = np.full((1, 1, 8, 8), 0.25)
    assert nearest_neighbours(query, pool, similarity="l2").tolist() == [0]
    assert nearest_neighbours(query, pool, similarity="cosine").tolist() == [0]  # tie: equal directions -> lowest
    with pytest.raises(MetricInputError, match="cosine' or 'l2'"):
        nearest_neighbours(query, pool, similarity="dot")


def test_embedding_cosine(rng: np.random.Generator) -> None:
    a = photo_crops(rng, 4, 3, 32, 32)
    torch.testing.assert_close(embedding_cosine(a, a), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(embedding_cosine(a, 2 * a), torch.ones(4, dtype=torch.float64))
    feats = embedding_cosine(a, noisy(rng, a, 0.3), model_features(small_cnn()))
    assert feats.shape == (4,) and (feats > 0.5).all() and (feats < 1).all()
