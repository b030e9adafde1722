"""Optimal pairing recovers a known permutation, also with unequal counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradleak.metrics import MetricInputError, assign, pairwise, ssim
from tests.metrics._images import noisy, photo_crops


@pytest.mark.parametrize("metric", ["ssim", "psnr", "mse"])
def test_assign_recovers_a_known_permutation(rng: np.random.Generator, metric: str) -> None:
    truth = photo_crops(rng, 12, 3, 32, 32)
    perm = rng.permutation(12)
    recon = noisy(rng, truth[perm], 0.05)  # recon[i] is an attempt at truth[perm[i]]
    order, scores = assign(torch.from_numpy(recon), torch.from_numpy(truth), metric=metric)
    assert torch.equal(order, torch.from_numpy(np.argsort(perm)))
    assert torch.equal(torch.from_numpy(perm)[order], torch.arange(12))
    if metric == "ssim":
        torch.testing.assert_close(scores, ssim(recon[order.numpy()], truth))


def test_assign_with_more_reconstructions_than_truth(rng: np.random.Generator) -> None:
    truth = photo_crops(rng, 4, 1, 28, 40)
    recon = np.concatenate([rng.random((3, 1, 28, 40)), noisy(rng, truth[::-1], 0.05)])  # 3 decoys, then reversed
    order, scores = assign(recon, truth)
    assert order.tolist() == [6, 5, 4, 3]
    torch.testing.assert_close(scores, ssim(recon[order.numpy()], truth))
    assert (scores > pairwise("ssim", recon[:3], truth).amax(dim=0)).all()  # each pair beats every decoy


def test_assign_with_fewer_reconstructions_than_truth(rng: np.random.Generator) -> None:
    truth = photo_crops(rng, 5, 1, 32, 32)
    recon = noisy(rng, truth[[3, 1]], 0.05)
    order, scores = assign(recon, truth, metric="mse")
    assert order.tolist() == [-1, 1, -1, 0, -1]
    assert torch.isnan(scores[[0, 2, 4]]).all() and (scores[[1, 3]] < 0.01).all()


def test_assign_handles_identical_pairs_with_infinite_psnr(rng: np.random.Generator) -> None:
    truth = photo_crops(rng, 4, 1, 32, 32)
    recon = truth[[2, 0, 3, 1]].copy()
    recon[1] = noisy(rng, recon[1], 0.1)  # one finite pair among infinite ones
    order, scores = assign(recon, truth, metric="psnr")
    assert order.tolist() == [1, 3, 0, 2]
    assert torch.isinf(scores).sum() == 3


def test_assign_rejects_unknown_metric() -> None:
    with pytest.raises(MetricInputError, match="choose one of"):
        assign(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16), metric="lpips")
