"""to_tensor / normalize / denormalize: the single conversion to model inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradleak.data import InvalidDatasetError, channel_stats, denormalize, normalize, to_tensor


def _digits(n: int = 4, c: int = 1) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 28, 28, c), dtype=np.uint8)


def test_to_tensor_layout_and_scale() -> None:
    imgs = _digits(3, 3)
    x = to_tensor(imgs)
    assert x.dtype == torch.float32 and tuple(x.shape) == (3, 3, 28, 28) and x.is_contiguous()
    assert torch.equal(x, torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    floats = imgs.astype(np.float32) / 255
    assert torch.equal(to_tensor(floats), x)


def test_pad_to_32_keeps_the_original_centred() -> None:
    imgs = _digits()
    x = to_tensor(imgs, size=32)
    assert tuple(x.shape) == (4, 1, 32, 32)
    assert torch.equal(x[:, :, 2:30, 2:30], to_tensor(imgs))
    border = x.clone()
    border[:, :, 2:30, 2:30] = 0
    assert float(border.abs().sum()) == 0.0
    odd = to_tensor(imgs, size=33)  # uneven padding: the extra row/column goes bottom/right
    assert torch.equal(odd[:, :, 2:30, 2:30], to_tensor(imgs)) and float(odd[:, :, 30:].abs().sum()) == 0.0
    with pytest.raises(InvalidDatasetError, match="bilinear"):
        to_tensor(imgs, size=16)


def test_bilinear_resize() -> None:
    const = np.full((2, 28, 28, 1), 128, dtype=np.uint8)
    up = to_tensor(const, size=56, resize="bilinear")
    assert tuple(up.shape) == (2, 1, 56, 56)
    assert torch.allclose(up, torch.full_like(up, 128 / 255), atol=1e-6)
    down = to_tensor(_digits(), size=14, resize="bilinear")
    assert tuple(down.shape) == (4, 1, 14, 14) and float(down.min()) >= 0 and float(down.max()) <= 1
    # antialiased shrinking by 2 averages 2x2 blocks of a smooth image: close to average pooling
    smooth = np.tile(np.linspace(0, 255, 28, dtype=np.float32), (28, 1)).astype(np.uint8)[None, :, :, None]
    pooled = torch.nn.functional.avg_pool2d(to_tensor(smooth), 2)
    assert float((to_tensor(smooth, size=14, resize="bilinear") - pooled).abs().max()) < 0.02
    with pytest.raises(InvalidDatasetError, match="resize mode"):
        to_tensor(const, size=32, resize="nearest")


def test_to_tensor_never_aliases_the_array() -> None:
    imgs = np.random.default_rng(1).random((2, 5, 5, 1)).astype(np.float32)
    before = imgs.copy()
    x = to_tensor(imgs)
    x.add_(1.0)
    assert np.array_equal(imgs, before)


def test_normalize_round_trip_and_standardises() -> None:
    imgs = _digits(50, 3)
    mean, std = channel_stats(imgs)
    x = to_tensor(imgs)
    z = normalize(x, mean, std)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-5)
    assert float((denormalize(z, mean, std) - x).abs().max()) < 1e-6
    single = normalize(x[0], mean, std)  # (C, H, W) works too
    assert torch.equal(single, z[0])
    with pytest.raises(InvalidDatasetError, match="3 channels"):
        normalize(x, (0.5,), (0.2,))


def test_normalize_is_differentiable() -> None:
    x = torch.rand(2, 1, 4, 4, requires_grad=True)
    normalize(x, (0.1307,), (0.3081,)).sum().backward()
    assert x.grad is not None and torch.allclose(x.grad, torch.full_like(x, 1 / 0.3081))
