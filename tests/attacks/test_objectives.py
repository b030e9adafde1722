"""Update distances against numpy references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from gradleak.attacks.objectives import (
    OBJECTIVES,
    cosine,
    l2_norm,
    layer_weights,
    layerwise_cosine,
    matcher,
    squared_l2,
    target_constants,
)


def pair(seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (4, 3), "a.bias": (4,), "b.weight": (2, 4)}
    d = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
    t = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
    return d, t


def test_against_numpy() -> None:
    d, t = pair()
    w = {"a.weight": 1.0, "a.bias": 0.5, "b.weight": 2.0}
    dn = {k: v.numpy().ravel() for k, v in d.items()}
    tn = {k: v.numpy().ravel() for k, v in t.items()}
    np.testing.assert_allclose(float(squared_l2(d, t, w)), sum(w[k] * ((dn[k] - tn[k]) ** 2).sum() for k in w))
    np.testing.assert_allclose(float(l2_norm(d, t, w)), sum(w[k] * np.linalg.norm(dn[k] - tn[k]) for k in w))
    dot = sum(w[k] * dn[k] @ tn[k] for k in w)
    dd = sum(w[k] * dn[k] @ dn[k] for k in w)
    tt = sum(w[k] * tn[k] @ tn[k] for k in w)
    np.testing.assert_allclose(float(cosine(d, t, w)), 1 - dot / np.sqrt(dd * tt))
    per_layer = sum(w[k] * (1 - dn[k] @ tn[k] / np.linalg.norm(dn[k]) / np.linalg.norm(tn[k])) for k in w)
    np.testing.assert_allclose(float(layerwise_cosine(d, t, w)), per_layer)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
@pytest.mark.parametrize("weights", [None, {"a.weight": 1.0, "a.bias": 0.5, "b.weight": 0.0}])
def test_prepared_target_equals_the_objective(name: str, weights: dict | None) -> None:
    # matcher (one fixed target, constants computed once) and target_constants (the same under vmap) change
    # the summation order only: values and gradients equal the plain objective's
    d, t = pair(1)
    fn = OBJECTIVES[name]
    leaves = {k: v.clone().requires_grad_(True) for k, v in d.items()}
    for value in (matcher(name, t, weights)(leaves), fn(leaves, t, weights, **target_constants(name, t, weights))):
        reference = fn(leaves, t, weights)
        torch.testing.assert_close(value, reference, rtol=1e-12, atol=1e-14)
        got = torch.autograd.grad(value, list(leaves.values()))
        want = torch.autograd.grad(reference, list(leaves.values()))
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="unknown objective"):
        matcher("l3", t)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_zero_at_target_and_positive_elsewhere(name: str) -> None:
    d, t = pair()
    fn = OBJECTIVES[name]
    assert abs(float(fn(t, t))) < 1e-6
    assert float(fn(d, t)) > 0.1


def test_cosine_ignores_scale_and_only_target_layers_count() -> None:
    _, t = pair()
    scaled = {k: 7.5 * v for k, v in t.items()}
    assert abs(float(cosine(scaled, t))) < 1e-12
    assert abs(float(layerwise_cosine(scaled, t))) < 1e-12
    withheld = {k: v for k, v in t.items() if k != "a.bias"}
    changed = {**t, "a.bias": t["a.bias"] + 100}  # the withheld layer of the dummy is not compared
    assert abs(float(squared_l2(changed, withheld))) < 1e-12


def test_layer_weights() -> None:
    names = ["a", "b", "c", "d"]
    assert layer_weights(names) == dict.fromkeys(names, 1.0)
    assert layer_weights(names, "linear") == {"a": 1.0, "b": 0.75, "c": 0.5, "d": 0.25}
    assert list(layer_weights(names, "last").values()) == [0.0, 0.0, 1.0, 1.0]
    exp = list(layer_weights(names, "exp").values())
    assert exp[0] == 1.0 and all(a > b for a, b in itertools.pairwise(exp))
    with pytest.raises(ValueError, match="unknown layer weighting"):
        layer_weights(names, "quadratic")
