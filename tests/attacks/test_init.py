"""Initialisations: shapes, ranges, determinism, prior image."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks.init import initialize
from gradleak.data.transforms import denormalize

MEAN, STD = (0.5,), (0.25,)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", ["gaussian", "uniform", "mean"])
def test_shapes_and_determinism(kind: str) -> None:
    a = initialize(kind, trials=3, n=2, image_shape=(1, 6, 6), generator=gen(), mean=MEAN, std=STD, noise=0.1)
    b = initialize(kind, trials=3, n=2, image_shape=(1, 6, 6), generator=gen(), mean=MEAN, std=STD, noise=0.1)
    assert a.shape == (3, 2, 1, 6, 6) and torch.equal(a, b)


def test_uniform_is_uniform_pixels_and_mean_is_zero() -> None:
    pixels = denormalize(initialize("uniform", trials=1, n=500, image_shape=(1, 4, 4), generator=gen(),
                                    mean=MEAN, std=STD), MEAN, STD)
    assert 0 <= float(pixels.min()) and float(pixels.max()) <= 1 and abs(float(pixels.mean()) - 0.5) < 0.01
    assert torch.equal(initialize("mean", trials=2, n=1, image_shape=(1, 3, 3), generator=gen()),
                       torch.zeros(2, 1, 1, 3, 3))


def test_prior() -> None:
    prior = torch.rand(1, 5, 5)
    x = initialize("prior", trials=2, n=3, image_shape=(1, 5, 5), generator=gen(), mean=MEAN, std=STD, prior=prior)
    torch.testing.assert_close(denormalize(x, MEAN, STD), prior.expand(2, 3, 1, 5, 5))
    with pytest.raises(ValueError, match="needs a prior image"):
        initialize("prior", trials=1, n=1, image_shape=(1, 5, 5), generator=gen())
    with pytest.raises(ValueError, match="shape"):
        initialize("prior", trials=1, n=1, image_shape=(1, 4, 4), generator=gen(), prior=prior)
    with pytest.raises(ValueError, match="unknown initialisation"):
        initialize("zeros", trials=1, n=1, image_shape=(1, 4, 4), generator=gen())
