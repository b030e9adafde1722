"""Convolutions as unfold + matmul (the replay's default): equal to ``nn.Conv2d`` in value, first and second
derivatives, under vmap; only small layers rewritten; the attack's result unchanged to rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from gradleak.attacks.inverting_gradients import InvertingGradients
from gradleak.attacks.unfold import (
    UnfoldConv2d,
    channels_last_columns,
    phase_columns,
    strided_columns,
    unfold_convolutions,
)
from gradleak.fl import LocalRecipe
from gradleak.models import create_model

from ._helpers import client_view, mnist, tiny_bn_net


def odd_convs() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 5, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2)), nn.Tanh(),
                         nn.Conv2d(5, 3, 1, bias=False), nn.Tanh(), nn.Conv2d(3, 4, 3, padding="same"),
                         nn.Flatten(), nn.LazyLinear(3))


def gradient_match(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: list[torch.Tensor]) -> torch.Tensor:
    """The attack's double backward: d/dx of the cosine between the weight gradient at x and ``target``."""
    x = x.clone().requires_grad_(True)
    g = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()), create_graph=True)
    dot = sum((a * b).sum() for a, b in zip(g, target, strict=True))
    norm = sum(a.pow(2).sum() for a in g).sqrt() * sum(b.pow(2).sum() for b in target).sqrt()
    return torch.autograd.grad(1 - dot / norm, x)[0]


def test_unfold_equals_conv2d_in_value_gradient_and_double_backward() -> None:
    native = odd_convs()
    x = torch.randn(3, 2, 9, 8, dtype=torch.float64)
    native.double()(x)  # materialise the lazy layer
    fast = unfold_convolutions(native)
    kinds = [type(m) for m in fast if isinstance(m, nn.Conv2d)]
    assert kinds == [UnfoldConv2d, UnfoldConv2d, nn.Conv2d]  # 'same' string padding keeps the native layer
    state = fast.state_dict()
    assert state.keys() == native.state_dict().keys()
    assert all(torch.equal(v, state[k]) for k, v in native.state_dict().items())
    assert all(type(m) is nn.Conv2d for m in native if isinstance(m, nn.Conv2d))  # the input is untouched
    target = [torch.randn_like(p) for p in native.parameters()]
    for xb, yb in ((x, torch.tensor([0, 2, 1])), (x[1:2], torch.tensor([2]))):  # batch 1: the 2-D addmm path
        torch.testing.assert_close(fast(xb), native(xb), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gradient_match(fast, xb, yb, target), gradient_match(native, xb, yb, target),
                                   rtol=1e-10, atol=1e-12)


def test_unfold_under_vmap_equals_native_per_sample() -> None:
    torch.manual_seed(1)
    native = create_model("cnn", in_channels=1)
    fast = unfold_convolutions(native, (1, 32, 32))
    assert sum(isinstance(m, UnfoldConv2d) for m in fast.modules()) == 3
    params = {k: v.detach() for k, v in native.named_parameters()}
    x, y = torch.randn(4, 1, 1, 32, 32), torch.randint(0, 10, (4, 1))

    def per_sample(model: nn.Module):
        def g(xi, yi):
            return grad(lambda p: F.cross_entropy(torch.func.functional_call(model, p, (xi,)), yi))(params)
        return vmap(g)(x, y)

    a, b = per_sample(fast), per_sample(native)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_large_layers_keep_the_native_convolution() -> None:
    model = tiny_bn_net()
    # first conv unfolds to 1·9·32·32 = 9216 values, the second to 4·9·16·16 = 9216
    assert sum(isinstance(m, UnfoldConv2d) for m in unfold_convolutions(model, (1, 32, 32)).modules()) == 2
    assert not any(isinstance(m, UnfoldConv2d)
                   for m in unfold_convolutions(model, (1, 32, 32), max_columns=9215).modules())


def test_attack_result_is_unchanged_by_the_unfolded_replay() -> None:
    x, y, mean, std = mnist(2)
    torch.manual_seed(0)
    model = create_model("cnn", in_channels=1)
    view = client_view(model, x, y, LocalRecipe(lr=0.01, steps=1, batch_size=2, shuffle=False), mean=mean, std=std)
    fast = InvertingGradients(iterations=3, restarts=2, signed=False)(view, generator=torch.Generator().manual_seed(3))
    slow = InvertingGradients(iterations=3, restarts=2, signed=False, unfold_convolutions=False)(
        view, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(fast.images, slow.images, rtol=0, atol=1e-4)


@pytest.mark.parametrize("columns", [strided_columns, phase_columns])
@pytest.mark.parametrize("kernel,stride,padding,dilation", [((5, 5), (2, 2), (2, 2), (1, 1)),
                                                            ((5, 5), (2, 2), (0, 0), (1, 1)),
                                                            ((3, 3), (1, 1), (1, 1), (1, 1)),
                                                            ((3, 2), (2, 1), (0, 1), (2, 1)),
                                                            ((2, 3), (3, 2), (1, 0), (2, 2))])
def test_compiled_columns_equal_unfold_in_value_and_derivatives(columns, kernel, stride, padding, dilation) -> None:
    """The compiled routes' columns: F.unfold's values, the same gradient w.r.t. the input (F.fold), and the same
    second derivative (the replay differentiates the fold again)."""
    x = torch.randn(2, 3, 11, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    ref = F.unfold(x, kernel, dilation, padding, stride)
    h, w = x.shape[-2:]
    out = tuple((size + 2 * p - d * (k - 1) - 1) // s + 1
                for size, p, d, k, s in zip((h, w), padding, dilation, kernel, stride, strict=True))
    got = columns(x, kernel, stride, padding, dilation, out)
    assert got.shape == ref.shape
    assert torch.equal(got, ref)
    v = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (g_ref,) = torch.autograd.grad((ref * v).sum(), x)
    (g_got,) = torch.autograd.grad((got * v).sum(), x)
    torch.testing.assert_close(g_got, g_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_got, F.fold(v, (h, w), kernel, dilation, padding, stride), rtol=0, atol=1e-12)
    assert torch.autograd.gradgradcheck(lambda t: columns(t, kernel, stride, padding, dilation, out).pow(2), (x,))


@pytest.mark.parametrize("kernel,stride,padding,dilation", [((5, 5), (2, 2), (0, 0), (1, 1)),
                                                            ((3, 2), (2, 1), (0, 1), (2, 1))])
def test_channels_last_columns_are_unfold_reordered(kernel, stride, padding, dilation) -> None:
    """Column (i, j, c) of output position l is F.unfold's (c, i, j) of l; the input gradient is F.fold's."""
    x = torch.randn(2, 3, 11, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    ref = F.unfold(x, kernel, dilation, padding, stride)  # (n, C·kh·kw, L)
    n, L = ref.shape[0], ref.shape[2]
    ref = ref.reshape(n, 3, kernel[0] * kernel[1], L).permute(0, 3, 2, 1).reshape(n, L, -1)
    h, w = x.shape[-2:]
    out = tuple((size + 2 * p - d * (k - 1) - 1) // s + 1
                for size, p, d, k, s in zip((h, w), padding, dilation, kernel, stride, strict=True))
    got = channels_last_columns(x, kernel, stride, padding, dilation, out)
    assert torch.equal(got, ref)
    v = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (g_ref,) = torch.autograd.grad((ref * v).sum(), x)
    (g_got,) = torch.autograd.grad((got * v).sum(), x)
    torch.testing.assert_close(g_got, g_ref, rtol=0, atol=1e-12)


def test_only_the_layer_reading_the_images_is_marked() -> None:
    """The compiled replay unfolds the first layer by phase (its input gradient is the image gradient)."""
    fast = unfold_convolutions(create_model("cnn", in_channels=3), (3, 32, 32))
    marks = [m.takes_input for m in fast.modules() if isinstance(m, UnfoldConv2d)]
    assert marks == [True, False, False]
    assert not any(m.takes_input for m in unfold_convolutions(create_model("cnn", in_channels=3)).modules()
                   if isinstance(m, UnfoldConv2d))  # without an input shape nothing is measured
