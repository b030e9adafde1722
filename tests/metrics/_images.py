"""Test images with real structure (scikit-image's bundled photographs), not only uniform noise."""

from __future__ import annotations

import functools

import numpy as np
import skimage.data


def photo_crops(rng: np.random.Generator, n: int, channels: int, height: int, width: int) -> np.ndarray:
    """``n`` random crops ``(n, C, H, W)`` in ``[0, 1]`` of camera (grey) or astronaut/coffee (RGB).

    Flat crops (pixel std below 0.1) are redrawn, so crops carry structure and are not near-duplicates.
    """
    sources = _sources(channels)
    crops: list[np.ndarray] = []
    while len(crops) < n:
        src = sources[rng.integers(len(sources))]
        top = rng.integers(src.shape[1] - height)
        left = rng.integers(src.shape[2] - width)
        crop = src[:, top : top + height, left : left + width]
        if crop.std() >= 0.1:
            crops.append(crop)
    return np.stack(crops)


def noisy(rng: np.random.Generator, images: np.ndarray, sigma: float) -> np.ndarray:
    """``images`` plus Gaussian noise, clipped to ``[0, 1]``."""
    return np.clip(images + sigma * rng.standard_normal(images.shape), 0.0, 1.0)


@functools.cache
def _sources(channels: int) -> tuple[np.ndarray, ...]:
    if channels == 1:
        return (skimage.data.camera()[None].astype(np.float64) / 255.0,)
    return tuple(np.moveaxis(img, -1, 0) / 255.0 for img in (skimage.data.astronaut(), skimage.data.coffee()))
