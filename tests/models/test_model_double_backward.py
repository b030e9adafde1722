"""Every model must be twice differentiable w.r.t. its input: gradient-inversion attacks minimise a
distance between parameter gradients, so they differentiate ``∇_θ L(x)`` with respect to ``x``.

We check the double-backward input gradient of ``f(x) = ‖∇_θ L(f_θ(x), y)‖²`` against a central finite
difference along a random direction, in float64 and in training mode (BatchNorm uses batch statistics).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from gradleak.models import MODELS, create_model

# Small inputs keep ResNet-18 and the ViT cheap on 2 CPU cores. BatchNorm needs 16×16 so that layer4's
# statistics are taken over 2×2×2 values (over 2 values, at 8×8, the normalisation is degenerate).
CASES = {
    "cnn": ({}, (1, 32, 32)),
    "lenet": ({}, (3, 32, 32)),
    "convnet": ({"width": 16}, (3, 16, 16)),
    "resnet18": ({}, (3, 16, 16)),
    "resnet18-group": ({"norm": "group"}, (3, 8, 8)),
    "resnet8": ({"width": 8}, (1, 16, 16)),
    "resnet8-silu": ({"width": 8, "activation": "silu"}, (1, 16, 16)),
    "mlp": ({}, (1, 28, 28)),
    "vit": ({}, (3, 16, 16)),
}


def gradient_norm(
    model: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor, *, create_graph: bool = True
) -> Tensor:
    """``‖∇_θ L‖²``, computed through ``functional_call`` as the attacks do."""
    loss = nn.functional.cross_entropy(functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    return sum(g.pow(2).sum() for g in grads)


def test_cases_cover_every_registered_model() -> None:
    assert {case.split("-")[0] for case in CASES} == set(MODELS.names())


@pytest.mark.parametrize("case", sorted(CASES))
def test_double_backward_wrt_input_matches_finite_differences(case: str) -> None:
    options, (c, s, _) = CASES[case]
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = create_model(case.split("-")[0], in_channels=c, image_size=s, **options).double().train()
    params = {k: v.detach().requires_grad_() for k, v in model.named_parameters()}
    x = torch.rand(2, c, s, s, dtype=torch.float64, generator=generator, requires_grad=True)
    y = torch.tensor([1, 4])

    (gx,) = torch.autograd.grad(gradient_norm(model, params, x, y), x)
    assert bool(torch.isfinite(gx).all()) and float(gx.norm()) > 0

    # along the computed gradient, <∇f, gx/|gx|> = |gx| holds only if gx is the gradient; and the derivative
    # is as large as it gets, so float64 round-off (|f|·1e-16/eps) stays far below the tolerance
    direction = gx / gx.norm()
    eps = 1e-6
    plus = gradient_norm(model, params, (x + eps * direction).detach(), y, create_graph=False)
    minus = gradient_norm(model, params, (x - eps * direction).detach(), y, create_graph=False)
    numeric = float((plus - minus).detach() / (2 * eps))
    analytic = float((gx * direction).sum())
    assert analytic == pytest.approx(float(gx.norm()))
    assert numeric == pytest.approx(analytic, rel=1e-5)


# the same layer types as the registered defaults, smaller where vmap's cost would dominate the suite
VMAP_CASES = {
    "cnn": ({}, (1, 32, 32)),
    "lenet": ({}, (3, 16, 16)),
    "mlp": ({}, (1, 28, 28)),
    "vit": ({"dim": 64, "heads": 4, "depth": 2, "mlp_dim": 128}, (3, 16, 16)),
}


@pytest.mark.parametrize("case", sorted(VMAP_CASES))
def test_vmap_over_trials_matches_loop(case: str) -> None:
    """Attacks run many trials at once with ``torch.func.vmap``; the models must support it.

    (BatchNorm models in training mode update their running statistics in place, which ``torch.func.grad``
    refuses; gradleak.fl's local_update handles buffers itself.)
    """
    options, (c, s, _) = VMAP_CASES[case]
    torch.manual_seed(0)
    model = create_model(case, in_channels=c, image_size=s, **options)
    params = {k: v.detach() for k, v in model.named_parameters()}
    y = torch.tensor([0, 3])

    def input_gradient(x: Tensor) -> Tensor:
        def loss(p: dict[str, Tensor], x: Tensor) -> Tensor:
            return nn.functional.cross_entropy(functional_call(model, p, (x,)), y)

        def norm(x: Tensor) -> Tensor:
            return sum(g.pow(2).sum() for g in grad(loss)(params, x).values())

        return grad(norm)(x)

    trials = torch.rand(2, 2, c, s, s)
    vectorised = vmap(input_gradient)(trials)
    looped = torch.stack([input_gradient(t) for t in trials])
    torch.testing.assert_close(vectorised, looped, rtol=1e-4, atol=1e-6 * float(looped.abs().max()))
