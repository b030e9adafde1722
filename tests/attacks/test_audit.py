"""simulate_and_attack: the views it builds, the metrics it computes, its errors."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks.inverting_gradients import InvertingGradients
from gradleak.audit import simulate_and_attack
from gradleak.defenses import DPSGD, LocalGaussian
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


def test_errors(cnn) -> None:
    x, y, _, _ = mnist(1)
    with pytest.raises(GradleakError, match=r"unknown defense 'dp'.*dp-sgd"):
        simulate_and_attack(cnn, x, y, recipe="fedsgd", attack="dlg", defenses=["dp"])
    with pytest.raises(GradleakError, match="malicious-model"):
        simulate_and_attack(cnn, x, y, recipe="fedsgd", attack="imprint")
    with pytest.raises(GradleakError, match=r"modifies the model.*imprint"):
        simulate_and_attack(cnn, x, y, recipe="fedsgd", attack="dlg", threat="malicious-model")
    with pytest.raises(GradleakError, match="unknown threat"):
        simulate_and_attack(cnn, x, y, recipe="fedsgd", attack="dlg", threat="omniscient")
    with pytest.raises(GradleakError, match="unknown recipe preset"):
        simulate_and_attack(cnn, x, y, recipe="fedprox", attack="dlg")
    with pytest.raises(GradleakError, match="victims"):
        simulate_and_attack(cnn, x, y, recipe="fedsgd", attack="dlg", victims="all")
    with pytest.raises(GradleakError, match="attack_options"):
        simulate_and_attack(cnn, x, y, recipe="fedsgd", attack=InvertingGradients(), attack_options={"lr": 1.0})


def test_defenses_by_stage(cnn) -> None:
    x, y, mean, std = mnist(2)
    attack = InvertingGradients(iterations=1)
    plain = simulate_and_attack(cnn, x, y, recipe="fedsgd", attack=attack, victims="each", mean=mean, std=std)
    defended = simulate_and_attack(cnn, x, y, recipe="fedsgd", attack=attack, victims="each", mean=mean, std=std,
                                   defenses=["dropout", DPSGD(clip=1.0, noise_multiplier=0.0),
                                             {"name": "local-gaussian", "options": {"sigma0": 0.0}}],
                                   threat="well-informed")
    view = defended.views[0]
    # model stage: the clients (and the view's architecture) carry dropout; step stage: DP-SGD in the recipe
    assert view.build_model().dropout.p == 0.25 and plain.views[0].build_model().dropout.p == 0.0
    assert isinstance(view.recipe.step_transforms[-1], DPSGD)
    assert [d.name for d in view.defenses] == ["dropout", "dp-sgd", "local-gaussian"]
    # well-informed: the client's dropout masks are handed over; clipping to norm 1 bounds the step
    noise = view.client_noise
    mask = noise["dropout@0"]
    assert mask.shape == (1, view.build_model().classifier.in_features) and set(mask.unique().tolist()) <= {0, 1}
    assert {k.split("/")[0] for k in noise} == {"dropout@0", "dp-sgd"}
    norm = torch.cat([d.flatten() for d in view.update.delta.values()]).norm()
    assert float(norm) <= 0.01 * 1.0 + 1e-6  # lr × clip (σ = 0)
    # update stage: local Gaussian noise changes the update; σ0 = 0 leaves it bit-identical
    noisy = simulate_and_attack(cnn, x, y, recipe="fedsgd", attack=attack, victims="each", mean=mean, std=std,
                                defenses=[LocalGaussian(sigma0=1.0)])
    same = simulate_and_attack(cnn, x, y, recipe="fedsgd", attack=attack, victims="each", mean=mean, std=std,
                               defenses=[LocalGaussian(sigma0=0.0)])
    for k, d in plain.views[0].update.delta.items():
        assert torch.equal(same.views[0].update.delta[k], d)
    assert not all(torch.equal(noisy.views[0].update.delta[k], d) for k, d in plain.views[0].update.delta.items())


def test_secure_aggregation_view_holds_one_aggregate(cnn) -> None:
    x, y, mean, std = mnist(3)
    result = simulate_and_attack(cnn, x, y, recipe="fedsgd", attack=InvertingGradients(iterations=1),
                                 victims="each", mean=mean, std=std, defenses=["secure-aggregation"])
    (view,) = result.views
    assert len(view.updates) == 1 and view.update.num_examples == 3 and view.num_images == 3
    plain = simulate_and_attack(cnn, x, y, recipe="fedsgd", attack=InvertingGradients(iterations=1),
                                victims="each", mean=mean, std=std)
    for k, d in view.update.delta.items():  # FedAvg's average of the three one-image updates
        expected = torch.stack([v.update.delta[k] for v in plain.views]).mean(0)
        torch.testing.assert_close(d, expected, rtol=1e-5, atol=1e-8)


def test_imprint_through_simulate_and_attack() -> None:
    """A malicious server's imprint module before the cnn: a batch of 8 MNIST images read out verbatim
    (PSNR ≥ 60 dB) for every input alone in its bin, bins from the CDF of other images."""
    from gradleak.data import load_dataset

    ds = load_dataset("mnist", split="test")
    x, y = ds.tensors(list(range(8)), size=32)
    public, _ = ds.tensors(list(range(1000, 1500)), size=32)
    torch.manual_seed(0)
    model = create_model("cnn", in_channels=1)
    result = simulate_and_attack(model, x, y, recipe="fedsgd", attack="imprint",
                                 attack_options={"block": {"num_bins": 64}}, threat="malicious-model",
                                 public=public, mean=ds.mean, std=ds.std)
    (view,) = result.views
    secrets = view.secrets
    assert secrets.num_bins == 64
    # the inputs alone in their bin, counted from the originals' measurement h and the secret bin edges
    h = ((x - ds.mean[0]) / ds.std[0]).flatten(1).double() @ secrets.measurement
    bins = torch.bucketize(h, torch.tensor(secrets.edges, dtype=torch.float64)[1:-1])
    singles = int((torch.bincount(bins, minlength=64) == 1).sum())
    assert singles >= 4
    assert result.metrics["verbatim"] == singles and result.metrics["valid"] >= singles
    assert result.metrics["share_recovered"] == singles / 8


