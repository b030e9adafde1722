"""Feature extractors (hooks leave the model untouched, local weights only) and t-SNE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gradleak.metrics import (
    MetricInputError,
    MissingWeightsError,
    model_features,
    pixel_features,
    torchvision_resnet18_features,
    tsne,
)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )


def test_pixel_features_flatten() -> None:
    x = torch.rand(5, 3, 4, 6)
    torch.testing.assert_close(pixel_features(x), x.double().reshape(5, 72))


def test_model_features_penultimate_and_named_layer() -> None:
    model = net().train()
    x = torch.rand(7, 1, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    feats = model_features(model, batch_size=3)(x)  # three batches
    with torch.no_grad():
        expected = model.eval()[:6](x)
    model.train()
    torch.testing.assert_close(feats, expected)
    assert feats.shape == (7, 16)
    assert model.training  # flag restored
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BN stats untouched
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # hooks removed
    conv = model_features(model, "0")(x)
    assert conv.shape == (7, 4 * 8 * 8)
    with pytest.raises(MetricInputError, match="no layer 'fc'"):
        model_features(model, "fc")
    with pytest.raises(MetricInputError, match=r"nn\.Linear"):
        model_features(nn.Conv2d(1, 1, 1))


def test_resnet18_features_need_a_local_file(tmp_path) -> None:
    with pytest.raises(MissingWeightsError, match=r"resnet18-f37072fd\.pth"):
        torchvision_resnet18_features(None)
    with pytest.raises(MissingWeightsError, match="no such file"):
        torchvision_resnet18_features(tmp_path / "missing.pth")


def test_resnet18_features_from_a_local_file(tmp_path) -> None:
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    extract = torchvision_resnet18_features(path, resize=None, batch_size=2)
    x = torch.rand(3, 1, 32, 32)
    feats = extract(x)
    assert feats.shape == (3, 512)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    reference.fc = nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(feats, reference((x.expand(-1, 3, -1, -1) - mean) / std))


def test_tsne_shapes_and_determinism() -> None:
    rng = np.random.default_rng(0)
    original = rng.standard_normal((20, 16))
    recon = original + 0.05 * rng.standard_normal((20, 16))
    first_a, first_b = tsne(original, recon, seed=3, perplexity=10)
    second_a, second_b = tsne(torch.from_numpy(original), torch.from_numpy(recon), seed=3, perplexity=10)
    assert first_a.shape == (20, 2) and first_b.shape == (20, 2)
    np.testing.assert_array_equal(first_a, second_a)
    np.testing.assert_array_equal(first_b, second_b)
    # close pairs stay close: each reconstruction's nearest original in the map is (almost always) its own
    nearest = np.linalg.norm(first_b[:, None] - first_a[None], axis=-1).argmin(axis=1)
    assert (nearest == np.arange(20)).mean() >= 0.8


def test_tsne_clips_perplexity_for_few_points() -> None:
    a, b = tsne(np.eye(3, 4), np.eye(3, 4)[::-1] + 0.1, seed=0, perplexity=30.0, max_iter=250)  # 6 points < 30
    assert a.shape == (3, 2) and b.shape == (3, 2)
    with pytest.raises(MetricInputError, match="differ in dimension"):
        tsne(np.zeros((3, 4)), np.zeros((3, 5)), seed=0)
