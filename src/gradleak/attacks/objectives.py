"""Distances between a dummy update and the observed one (the data term of every optimisation attack).

Each objective takes two mappings ``name -> tensor`` (dummy and observed update, or gradients) and optional
per-layer weights, and returns a 0-d tensor. Only the layers present in ``target`` are compared, so an
update with withheld layers is matched on what was sent. All are differentiable and vmap-safe.

- :func:`squared_l2` — Zhu et al. 2019 (DLG): ``sum_l w_l ||d_l - t_l||^2``.
- :func:`l2_norm` — Hatamizadeh et al. 2023, Eq. 2: ``sum_l w_l ||d_l - t_l||_2`` (not squared).
- :func:`cosine` — Geiping et al. 2020: ``1 - <d, t>_w / (||d||_w ||t||_w)`` over all layers at once, with
  per-layer weights inside the inner products (their ``sim`` cost).
- :func:`layerwise_cosine` — ``sum_l w_l (1 - cos(d_l, t_l))``, one cosine per layer.

Examples
--------
>>> import torch
>>> d = {"w": torch.tensor([1.0, 0.0])}
>>> t = {"w": torch.tensor([2.0, 0.0])}
>>> float(cosine(d, t)), float(squared_l2(d, t))
(0.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["OBJECTIVES", "cosine", "l2_norm", "layer_weights", "layerwise_cosine", "squared_l2"]

Updates = Mapping[str, Tensor]
Objective = Callable[[Updates, Updates, Mapping[str, float] | None], Tensor]
_EPS = 1e-12
_EPS_NORM = 1e-20  # keeps the norm's gradient finite at 0 without shifting its value visibly


def layer_weights(names: Sequence[str], scheme: str = "equal") -> dict[str, float]:
    """Per-layer weights by position, as Geiping et al.'s ``indices`` options.

    ``"equal"``: 1 everywhere; ``"linear"``: decreasing linearly from 1 at the first layer to 1/L at the
    last; ``"exp"``: ``exp(-l / L)`` (emphasises the early layers, which carry most of the image detail);
    ``"last"``: only the last two tensors (the classifier's weight and bias).
    """
    n = len(names)
    if scheme == "equal":
        values = [1.0] * n
    elif scheme == "linear":
        values = [(n - i) / n for i in range(n)]
    elif scheme == "exp":
        values = [float(torch.exp(torch.tensor(-i / max(n, 1)))) for i in range(n)]
    elif scheme == "last":
        values = [1.0 if i >= n - 2 else 0.0 for i in range(n)]
    else:
        raise ValueError(f"unknown layer weighting {scheme!r}; use equal, linear, exp or last")
    return dict(zip(names, values, strict=True))


def _weight(weights: Mapping[str, float] | None, name: str) -> float:
    return 1.0 if weights is None else float(weights.get(name, 0.0))


def _w(weights: Mapping[str, float] | None, name: str, value: Tensor) -> Tensor:
    """``w_name · value``, without the multiplication (and its backward) when the weight is 1."""
    w = _weight(weights, name)
    return value if w == 1.0 else w * value


def squared_l2(dummy: Updates, target: Updates, weights: Mapping[str, float] | None = None) -> Tensor:
    """``sum_l w_l ||dummy_l - target_l||^2`` (DLG's gradient distance)."""
    terms = [_w(weights, k, (dummy[k] - t).pow(2).sum()) for k, t in target.items()]
    return torch.stack(terms).sum()


def l2_norm(dummy: Updates, target: Updates, weights: Mapping[str, float] | None = None) -> Tensor:
    """``sum_l w_l ||dummy_l - target_l||_2`` (the hospital paper's Eq. 2; each layer's norm, not squared)."""
    terms = [_w(weights, k, ((dummy[k] - t).pow(2).sum() + _EPS_NORM).sqrt()) for k, t in target.items()]
    return torch.stack(terms).sum()


def cosine(dummy: Updates, target: Updates, weights: Mapping[str, float] | None = None) -> Tensor:
    """``1 - <d, t> / (||d|| ||t||)`` over the concatenation of all layers, each layer's products weighted
    by ``w_l`` (Geiping et al. 2020; invariant to the update's scale, e.g. the learning rate)."""
    dot = torch.stack([_w(weights, k, (dummy[k] * t).sum()) for k, t in target.items()]).sum()
    dd = torch.stack([_w(weights, k, dummy[k].pow(2).sum()) for k in target]).sum()
    tt = torch.stack([_w(weights, k, t.pow(2).sum()) for k, t in target.items()]).sum()
    return 1.0 - dot / ((dd + _EPS).sqrt() * (tt + _EPS).sqrt())


def layerwise_cosine(dummy: Updates, target: Updates, weights: Mapping[str, float] | None = None) -> Tensor:
    """``sum_l w_l (1 - cos(d_l, t_l))``: one cosine distance per layer, summed."""
    terms = []
    for k, t in target.items():
        d = dummy[k]
        cos = (d * t).sum() / (((d.pow(2).sum() + _EPS) * (t.pow(2).sum() + _EPS)).sqrt())
        terms.append(_w(weights, k, 1.0 - cos))
    return torch.stack(terms).sum()


#: Objectives by the name attacks use in their configuration.
OBJECTIVES: dict[str, Objective] = {
    "l2": squared_l2,
    "l2-norm": l2_norm,
    "cosine": cosine,
    "layerwise-cosine": layerwise_cosine,
}
