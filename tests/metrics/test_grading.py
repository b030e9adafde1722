"""grade, the one grading function: scikit-image's SSIM, pairing, means, ASR, labels, RDLV, the leak rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from gradleak.metrics import MetricInputError, grade, grading_ssim, psnr
from gradleak.records import Reconstruction
from tests.metrics._images import noisy, photo_crops


def test_grading_ssim_is_scikit_image_default(rng: np.random.Generator) -> None:
    for channels, size in ((1, 28), (3, 32), (1, 5)):
        a = photo_crops(rng, 3, channels, size, size)
        b = noisy(rng, a, 0.1)
        ours = grading_ssim(a, b).numpy()
        # scikit-image's defaults: 7×7 uniform window, sample covariance; smaller images shrink the window
        win = min(7, size if size % 2 else size - 1)
        reference = [structural_similarity(a[i], b[i], data_range=1.0, channel_axis=0, win_size=win)
                     for i in range(3)]
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-10)


def test_grade_after_optimal_pairing(rng: np.random.Generator) -> None:
    truth = torch.from_numpy(photo_crops(rng, 6, 3, 32, 32))
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    perm = torch.tensor([4, 0, 5, 1, 3, 2])
    images = truth[perm].clone()
    images[0] = torch.rand(3, 32, 32, dtype=torch.float64)  # truth 4 is not recovered
    recon = Reconstruction(images=images, labels=torch.tensor([4, 0, 5, 1, 7, 2]))  # truth 3 mislabelled
    prior = torch.full((3, 32, 32), 0.5)

    result = grade(recon, truth, labels, prior=prior)

    assert result["order"].tolist() == torch.argsort(perm).tolist()
    expected_ssim = grading_ssim(images[result["order"]], truth)
    torch.testing.assert_close(result["ssim"], expected_ssim)
    assert result["ssim_mean"] == pytest.approx(float(expected_ssim.mean()))
    assert result["asr"] == pytest.approx(5 / 6)
    assert torch.isinf(result["psnr"]).sum() == 5 and math.isinf(result["psnr_mean"])
    assert result["mse"][4] > 0.05 and (result["mse"][[0, 1, 2, 3, 5]] == 0).all()
    assert result["label_accuracy"] == pytest.approx(5 / 6)
    assert result["label_multiset_accuracy"] == pytest.approx(5 / 6)
    s_prior = grading_ssim(truth, prior.expand(6, -1, -1, -1))
    torch.testing.assert_close(result["rdlv"], 100 * (expected_ssim - s_prior) / s_prior.abs())
    # the five exact recoveries beat the flat prior; the random image does not
    assert result["rule"] == "prior" and result["leak"].tolist() == [True, True, True, True, False, True]
    assert result["n_leaks"] == 5 and result["n_verbatim"] == 5


def test_a_reconstruction_no_closer_than_the_prior_is_not_a_leak(rng: np.random.Generator) -> None:
    # the demo's old false alarm: reconstructions above SSIM 0.5 that are further from the originals than the
    # attacker's prior image
    truth = torch.from_numpy(photo_crops(rng, 4, 1, 28, 28))
    prior = 0.8 * truth + 0.2 * truth.mean(0)
    recon = torch.from_numpy(noisy(rng, truth.numpy(), 0.05))
    g = grade(Reconstruction(images=recon), truth, prior=prior, assign=False)
    assert (g["ssim"] > 0.5).all() and (g["ssim"] < g["ssim_prior"]).all() and (g["rdlv"] < 0).all()
    assert g["rule"] == "prior" and g["n_leaks"] == 0
    # without a prior the same images are judged by the threshold alone
    assert grade(Reconstruction(images=recon), truth, assign=False)["n_leaks"] == 4
    # an exact recovery beats any prior short of the image itself
    assert grade(Reconstruction(images=truth.clone()), truth, prior=prior, assign=False)["n_leaks"] == 4


def test_the_prior_plus_noise_paired_favourably_is_not_a_leak(rng: np.random.Generator) -> None:
    # eight reconstructions that are the attacker's prior plus noise, paired with eight originals by maximal SSIM:
    # the pairing picks favourable pairs, so some beat the prior's own SSIM (RDLV > 0) without having left it
    truth = torch.from_numpy(photo_crops(rng, 8, 1, 28, 28))
    prior = truth.mean(0)
    recon = torch.from_numpy(noisy(rng, prior.expand_as(truth).numpy(), 0.02))
    g = grade(Reconstruction(images=recon), truth, prior=prior, tau=0.0)
    assert ((g["rdlv"] > 0) & (g["ssim"] > 0)).any()  # RDLV > 0 alone would call these leaks
    assert (g["ssim_to_prior"] > g["ssim"]).all() and g["n_leaks"] == 0
    # reconstructions that moved to the originals are leaks under the same rule
    moved = torch.from_numpy(noisy(rng, truth.numpy(), 0.02))
    assert grade(Reconstruction(images=moved), truth, prior=prior, tau=0.0)["n_leaks"] == 8


def test_unpaired_and_invalid_images_count_as_failures(rng: np.random.Generator) -> None:
    truth = torch.from_numpy(photo_crops(rng, 4, 1, 28, 40))
    images = torch.from_numpy(noisy(rng, truth[[2, 0, 1]].numpy(), 0.02))
    recon = Reconstruction(images=images, valid=torch.tensor([True, True, False]))
    result = grade(recon, truth)
    assert result["order"].tolist() == [1, -1, 0, -1]
    assert result["n_matched"] == 2 and result["n_reconstructions"] == 3 and result["n_truth"] == 4
    assert result["n_valid"] == 2
    assert torch.isnan(result["ssim"][[1, 3]]).all()
    assert result["asr"] == 0.5
    assert result["ssim_mean"] == pytest.approx(float(result["ssim"][[0, 2]].mean()))
    assert "label_accuracy" not in result and "rdlv" not in result
    # valid-marked outputs: the verbatim rule; noisy copies (about 34 dB) are not verbatim
    assert result["rule"] == "verbatim" and result["n_leaks"] == 0 and not result["leak"].any()


def test_verbatim_rule_counts_exact_recoveries_of_all_images(rng: np.random.Generator) -> None:
    truth = torch.from_numpy(photo_crops(rng, 4, 1, 16, 16))
    recs = torch.cat([truth[[3, 1]], torch.rand(1, 1, 16, 16, dtype=torch.float64)])
    result = grade(Reconstruction(images=recs, valid=torch.tensor([True, True, False])), truth)
    assert result["order"].tolist() == [-1, 1, -1, 0]
    assert result["n_verbatim"] == 2 and result["n_leaks"] == 2 and result["n_truth"] == 4  # "2 of 4"
    assert result["leak"].tolist() == [False, True, False, True]
    # a noisy but recognisable recovery is a leak only beyond a known prior
    noisy_recs = torch.from_numpy(noisy(rng, recs.numpy(), 0.03))
    g = grade(Reconstruction(images=noisy_recs, valid=torch.tensor([True, True, False])), truth,
              prior=torch.zeros(1, 16, 16))
    assert g["n_verbatim"] == 0 and g["n_leaks"] == 2


def test_without_assignment_pairs_by_index(rng: np.random.Generator) -> None:
    truth = torch.from_numpy(photo_crops(rng, 3, 1, 32, 32))
    images = truth.flip(0)
    result = grade(Reconstruction(images=images), truth, assign=False)
    assert result["order"].tolist() == [0, 1, 2]
    torch.testing.assert_close(result["psnr"], psnr(images, truth))
    soft = Reconstruction(images=images, soft_labels=torch.eye(3)[[2, 1, 0]])
    assert grade(soft, truth, [0, 1, 2], assign=False)["label_accuracy"] == pytest.approx(1 / 3)
    with pytest.raises(MetricInputError, match="assign=False"):
        grade(Reconstruction(images=images[:2]), truth, assign=False)
    with pytest.raises(MetricInputError, match="needs the attacker's prior"):
        grade(Reconstruction(images=images), truth, rule="prior")
