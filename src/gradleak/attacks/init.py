"""Initialisation of the dummy images, in the model's normalised input space.

Each initialiser returns ``(trials, n, C, H, W)`` and draws only from the given ``torch.Generator``:

- ``"gaussian"`` — ``N(0, 1)`` in normalised space (Geiping et al. 2020; DLG draws ``N(0, 1)`` too).
- ``"uniform"`` — pixels ``U[0, 1]``, then normalised.
- ``"prior"`` — a prior image the attacker holds (the hospital paper's domain prior), plus optional
  Gaussian noise of ``noise`` (in normalised units) so that restarts differ.
- ``"mean"`` — the dataset-mean image (each channel at its mean: 0 after normalisation), plus ``noise``.

Examples
--------
>>> import torch
>>> x = initialize("uniform", trials=2, n=1, image_shape=(1, 4, 4), generator=torch.Generator().manual_seed(0))
>>> tuple(x.shape)
(2, 1, 1, 4, 4)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gradleak.data.transforms import normalize

__all__ = ["INITIALIZERS", "initialize"]


def _gaussian(shape: tuple[int, ...], g: torch.Generator, mean: Sequence[float], std: Sequence[float],
              prior: Tensor | None, noise: float) -> Tensor:
    return torch.randn(shape, generator=g)


def _uniform(shape: tuple[int, ...], g: torch.Generator, mean: Sequence[float], std: Sequence[float],
             prior: Tensor | None, noise: float) -> Tensor:
    return normalize(torch.rand(shape, generator=g), mean, std)


def _prior(shape: tuple[int, ...], g: torch.Generator, mean: Sequence[float], std: Sequence[float],
           prior: Tensor | None, noise: float) -> Tensor:
    if prior is None:
        raise ValueError("init='prior' needs a prior image: set ServerView.prior (pixels in [0, 1])")
    image = prior.detach().to(torch.float32)
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if tuple(image.shape[-3:]) != tuple(shape[-3:]):
        raise ValueError(f"the prior image has shape {tuple(image.shape[-3:])}, the inputs {tuple(shape[-3:])}")
    if image.shape[0] not in (1, shape[1]):
        raise ValueError(f"give one prior image or one per dummy image ({shape[1]}), got {image.shape[0]}")
    base = normalize(image.clamp(0, 1), mean, std).expand(shape)
    return base + noise * torch.randn(shape, generator=g) if noise else base.clone()


def _mean(shape: tuple[int, ...], g: torch.Generator, mean: Sequence[float], std: Sequence[float],
          prior: Tensor | None, noise: float) -> Tensor:
    return noise * torch.randn(shape, generator=g) if noise else torch.zeros(shape)


#: Initialisers by the name attacks use in their configuration.
INITIALIZERS = {"gaussian": _gaussian, "uniform": _uniform, "prior": _prior, "mean": _mean}


def initialize(kind: str, *, trials: int, n: int, image_shape: tuple[int, int, int], generator: torch.Generator,
               mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,), prior: Tensor | None = None,
               noise: float = 0.0) -> Tensor:
    """Dummy images ``(trials, n, C, H, W)`` in normalised space.

    Parameters
    ----------
    kind
        ``"gaussian"``, ``"uniform"``, ``"prior"`` or ``"mean"``.
    trials, n, image_shape
        Number of independent trials, images per trial and ``(C, H, W)``.
    generator
        Source of all randomness.
    mean, std
        The model's per-channel normalisation of ``[0, 1]`` pixels.
    prior
        ``(C, H, W)`` or ``(n, C, H, W)`` prior image(s) in ``[0, 1]`` for ``kind="prior"``.
    noise
        Standard deviation of Gaussian noise added to the ``prior``/``mean`` initialisations.
    """
    try:
        fn = INITIALIZERS[kind]
    except KeyError:
        raise ValueError(f"unknown initialisation {kind!r}; use one of {sorted(INITIALIZERS)}") from None
    return fn((trials, n, *image_shape), generator, mean, std, prior, noise)
