"""Analytic inversion of a linear layer (Fowl et al. 2022, Eqs. 2–3) against exact ground truth."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gradleak.attacks.analytic import AnalyticLinear, invert_linear
from gradleak.attacks.base import ATTACKS, AttackError
from gradleak.fl import LocalData, LocalRecipe, local_update, model_state
from gradleak.models import create_model
from gradleak.records import ClientUpdate, GlobalState, ServerView

MEAN, STD = (0.5,), (0.25,)




def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(1.0 / ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-30))


def fedsgd_view(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, *, lr: float = 0.1,
                known_labels: bool = False, num_classes: int = 10) -> ServerView:
    x = (pixels - MEAN[0]) / STD[0]
    params, buffers = model_state(model)
    recipe = LocalRecipe(lr=lr, steps=1, batch_size=len(x), shuffle=False)
    out = local_update(model, params, buffers, LocalData(x, labels), recipe)
    update = ClientUpdate(client=0, round=0, delta=out.delta(params), buffers=out.buffers, num_examples=len(x))
    return ServerView(model=lambda: copy.deepcopy(model), global_state=GlobalState(0, params, buffers),
                      updates=[update], image_shape=tuple(pixels.shape[1:]), num_classes=num_classes,
                      mean=MEAN, std=STD, labels=labels if known_labels else None)


def test_registered() -> None:
    assert ATTACKS.get("analytic") is AnalyticLinear
    assert "refine=0" in repr(AnalyticLinear())


def test_invert_linear_recovers_a_single_input_exactly() -> None:
    g = torch.Generator().manual_seed(0)
    layer = nn.Linear(12, 5).double()
    x = torch.randn(1, 12, generator=g, dtype=torch.float64)
    (layer(x).sin().sum()).backward()
    inputs, rows = invert_linear(layer.weight.grad, layer.bias.grad)
    assert rows.tolist() == [0, 1, 2, 3, 4]
    torch.testing.assert_close(inputs, x.expand(5, 12), rtol=1e-12, atol=1e-12)


def test_invert_linear_skips_rows_without_bias_gradient() -> None:
    gw = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 6.0]])
    gb = torch.tensor([0.5, 0.0, 1.5])
    inputs, rows = invert_linear(gw, gb)
    assert rows.tolist() == [0, 2]
    torch.testing.assert_close(inputs, torch.tensor([[2.0, 4.0], [2.0, 4.0]], dtype=torch.float64))


def test_single_input_through_mlp_is_verbatim_and_lr_invariant() -> None:
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    model = create_model("mlp", in_channels=1, image_size=8, width=16)
    pixels = torch.randint(0, 256, (1, 1, 8, 8), generator=g) / 255.0
    images = []
    for lr in (0.1, 1e-3):
        rec = AnalyticLinear()(fedsgd_view(model, pixels, torch.tensor([3]), lr=lr))
        assert rec.images.shape == (1, 1, 8, 8) and bool(rec.valid.all())
        assert float(psnr(rec.images, pixels)) > 90.0  # exact up to float32 rounding of the update
        images.append(rec.images)
    torch.testing.assert_close(images[0], images[1], atol=1e-4, rtol=0)


def logistic_regression(classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, classes))


def test_distinct_labels_one_input_per_row_eq3() -> None:
    g = torch.Generator().manual_seed(2)
    pixels = torch.rand(4, 1, 8, 8, generator=g)
    labels = torch.tensor([5, 17, 42, 90])
    view = fedsgd_view(logistic_regression(100), pixels, labels, num_classes=100)
    rec = AnalyticLinear()(view)
    assert rec.labels.tolist() == [5, 17, 42, 90]  # rows with a negative bias gradient = the classes present
    # Eq. 3 is approximate: each row also holds the other inputs' softmax mass (about 1/100 each)
    assert float(psnr(rec.images, pixels).min()) > 30.0
    refined = AnalyticLinear(refine=5)(view)
    assert float(psnr(refined.images, pixels).min()) > 100.0


def test_refine_solves_few_classes_with_known_labels() -> None:
    g = torch.Generator().manual_seed(3)
    pixels = torch.rand(4, 1, 8, 8, generator=g)
    labels = torch.tensor([5, 1, 2, 9])
    view = fedsgd_view(logistic_regression(10), pixels, labels, known_labels=True)
    order = torch.argsort(labels)
    plain = AnalyticLinear()(view)
    refined = AnalyticLinear(refine=10)(view)
    assert refined.labels.tolist() == [1, 2, 5, 9]
    assert float(psnr(plain.images, pixels[order]).max()) < 30.0  # 10 classes: Eq. 3 alone is poor
    assert float(psnr(refined.images, pixels[order]).min()) > 100.0


def test_refine_refuses_a_deeper_model() -> None:
    torch.manual_seed(0)
    model = create_model("mlp", in_channels=1, image_size=8, width=16)
    view = fedsgd_view(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(AttackError, match="logistic regression"):
        AnalyticLinear(refine=2)(view)


def test_errors_name_the_problem() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    view = fedsgd_view(model, torch.rand(1, 1, 8, 8), torch.tensor([0]))
    with pytest.raises(AttackError, match=r"no nn\.Linear named"):
        AnalyticLinear(layer="nope")(view)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 4))
    with pytest.raises(AttackError, match="not the flattened image"):
        AnalyticLinear()(fedsgd_view(conv, torch.rand(1, 1, 8, 8), torch.tensor([0])))
    withheld = ServerView(model=view.model, global_state=view.global_state,
                          updates=[ClientUpdate(0, 0, {"1.bias": view.update.delta["1.bias"]})],
                          image_shape=view.image_shape, num_classes=4)
    with pytest.raises(AttackError, match="withholds"):
        AnalyticLinear()(withheld)
    with pytest.raises(ValueError, match="mode"):
        AnalyticLinear(mode="all")  # type: ignore[arg-type]
