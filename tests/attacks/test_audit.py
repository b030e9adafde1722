"""simulate_and_attack: the views it builds, the metrics it computes, its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from gradleak.attacks.inverting_gradients import InvertingGradients
from gradleak.audit import DefensesUnavailableError, image_metrics, simulate_and_attack
from gradleak.errors import GradleakError
from gradleak.fl import LocalRecipe
from gradleak.models import create_model

from ._helpers import mnist


@pytest.fixture(scope="module")
def cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("cnn", in_channels=1)


def test_each_image_its_own_client(cnn) -> None:
    x, y, mean, std = mnist(3)
    result = simulate_and_attack(cnn, x, y, recipe="fedsgd", attack="inverting-gradients",
                                 attack_options={"iterations": 4}, victims="each", mean=mean, std=std)
    assert result.reconstruction.images.shape == (3, 1, 32, 32) and len(result.reconstructions) == 3
    assert result.reconstruction.loss_trace.shape[1] == 3
    assert [v.num_images for v in result.views] == [1, 1, 1] and all(v.labels is None for v in result.views)
    assert result.metrics["label_accuracy"] == 1.0  # iDLG
    assert len(result.metrics["ssim_per_image"]) == 3 and torch.equal(result.truth.images, x)
    # the update in the view is the client's: one SGD step of lr 0.01 on its image
    update = result.views[1].update
    assert update.num_examples == 1 and set(update.delta) == {k for k, _ in cnn.named_parameters()}


def test_one_batch_informed(cnn) -> None:
    x, y, mean, std = mnist(4)
    recipe = LocalRecipe(lr=0.01, steps=2, batch_size=2, shuffle=False)
    result = simulate_and_attack(cnn, x, y, recipe=recipe, attack=InvertingGradients(iterations=3),
                                 threat="informed", mean=mean, std=std, generator=torch.Generator().manual_seed(3))
    (view,) = result.views
    assert torch.equal(view.labels, y) and view.recipe == recipe and view.num_images == 4
    assert result.metrics["label_accuracy"] == 1.0  # known labels
    assert sorted(result.metrics["assignment"]) == [0, 1, 2, 3]


def test_image_metrics_match_reconstructions_to_originals() -> None:
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(3, 1, 16, 16, generator=g)
    shuffled = truth[[2, 0, 1]]
    metrics = image_metrics(shuffled, truth)
    assert metrics["ssim"] == pytest.approx(1.0) and metrics["assignment"] == [1, 2, 0]
    assert np.isinf(metrics["psnr"])
    noisy = (truth + 0.1 * torch.randn(3, 1, 16, 16, generator=g)).clamp(0, 1)
    metrics = image_metrics(noisy, truth, match=False)
    reference = [structural_similarity(noisy[i, 0].double().numpy(), truth[i, 0].double().numpy(), data_range=1.0)
                 for i in range(3)]
    np.testing.assert_allclose(metrics["ssim_per_image"], reference)


def test_errors(cnn) -> None:
    x, y, _, _ = mnist(1)
    with pytest.raises(DefensesUnavailableError, match="defenses"):
        simulate_and_attack(cnn, x, y, recipe="fedsgd", attack="dlg", defenses=["dp"])
    with pytest.raises(GradleakError, match="unknown threat"):
        simulate_and_attack(cnn, x, y, recipe="fedsgd", attack="dlg", threat="omniscient")
    with pytest.raises(GradleakError, match="unknown recipe preset"):
        simulate_and_attack(cnn, x, y, recipe="fedprox", attack="dlg")
    with pytest.raises(GradleakError, match="victims"):
        simulate_and_attack(cnn, x, y, recipe="fedsgd", attack="dlg", victims="all")
    with pytest.raises(GradleakError, match="attack_options"):
        simulate_and_attack(cnn, x, y, recipe="fedsgd", attack=InvertingGradients(), attack_options={"lr": 1.0})
