"""evaluate_reconstruction: pairing, means, ASR, label accuracy, RDLV, validity mask."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradleak.metrics import MetricInputError, evaluate_reconstruction, psnr, ssim
from gradleak.records import Reconstruction
from tests.metrics._images import noisy, photo_crops


def test_evaluation_after_optimal_pairing(rng: np.random.Generator) -> None:
    truth = torch.from_numpy(photo_crops(rng, 6, 3, 32, 32))
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    perm = torch.tensor([4, 0, 5, 1, 3, 2])
    images = truth[perm].clone()
    images[0] = torch.rand(3, 32, 32, dtype=torch.float64)  # truth 4 is not recovered
    recon = Reconstruction(images=images, labels=torch.tensor([4, 0, 5, 1, 7, 2]))  # truth 3 mislabelled
    prior = torch.full((3, 32, 32), 0.5)

    result = evaluate_reconstruction(recon, truth, labels, prior=prior)

    assert result["order"].tolist() == torch.argsort(perm).tolist()
    expected_ssim = ssim(images[result["order"]], truth)
    torch.testing.assert_close(result["ssim"], expected_ssim)
    assert result["ssim_mean"] == pytest.approx(float(expected_ssim.mean()))
    assert result["asr"] == pytest.approx(5 / 6)
    assert torch.isinf(result["psnr"]).sum() == 5 and math.isinf(result["psnr_mean"])
    assert result["mse"][4] > 0.05 and (result["mse"][[0, 1, 2, 3, 5]] == 0).all()
    assert result["label_accuracy"] == pytest.approx(5 / 6)
    assert result["label_multiset_accuracy"] == pytest.approx(5 / 6)
    s_prior = ssim(truth, prior.expand(6, -1, -1, -1))
    torch.testing.assert_close(result["rdlv"], 100 * (expected_ssim - s_prior) / s_prior.abs())
    assert (result["rdlv"][[0, 1, 2, 3, 5]] > 0).all()


def test_fewer_reconstructions_and_invalid_ones_count_as_failures(rng: np.random.Generator) -> None:
    truth = torch.from_numpy(photo_crops(rng, 4, 1, 28, 40))
    images = torch.from_numpy(noisy(rng, truth[[2, 0, 1]].numpy(), 0.02))
    recon = Reconstruction(images=images, valid=torch.tensor([True, True, False]))
    result = evaluate_reconstruction(recon, truth)
    assert result["order"].tolist() == [1, -1, 0, -1]
    assert result["n_matched"] == 2 and result["n_reconstructions"] == 3 and result["n_truth"] == 4
    assert torch.isnan(result["ssim"][[1, 3]]).all()
    assert result["asr"] == 0.5
    assert result["ssim_mean"] == pytest.approx(float(result["ssim"][[0, 2]].mean()))
    assert "label_accuracy" not in result and "rdlv" not in result


def test_without_assignment_pairs_by_index(rng: np.random.Generator) -> None:
    truth = torch.from_numpy(photo_crops(rng, 3, 1, 32, 32))
    images = truth.flip(0)
    result = evaluate_reconstruction(Reconstruction(images=images), truth, assign=False)
    assert result["order"].tolist() == [0, 1, 2]
    torch.testing.assert_close(result["psnr"], psnr(images, truth))
    soft = Reconstruction(images=images, soft_labels=torch.eye(3)[[2, 1, 0]])
    assert evaluate_reconstruction(soft, truth, [0, 1, 2], assign=False)["label_accuracy"] == pytest.approx(1 / 3)
    with pytest.raises(MetricInputError, match="assign=False"):
        evaluate_reconstruction(Reconstruction(images=images[:2]), truth, assign=False)
