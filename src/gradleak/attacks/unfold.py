"""Convolutions as unfold + matrix product, for the attack's replay.

The replay differentiates the client's weight gradient with respect to the dummy images (a double backward),
often for several victims or restarts at once under ``torch.func.vmap``. With ``nn.Conv2d`` the per-trial weight
gradient of a convolution becomes a grouped convolution under vmap and a small oneDNN weight-gradient call
without it; both are slow for the small feature maps of the benchmark models. Written as ``unfold`` (im2col)
and ``matmul``, the same convolution's weight gradient is a batched matrix product and its double backward is
made of ``fold``/``unfold`` and matrix products, faster for one image and for victims vectorised.

Only layers whose unfolded input stays small are rewritten (``max_columns`` values per image), so large
images keep the native convolution. The rewritten model has the same parameter and buffer names and values;
outputs agree with ``nn.Conv2d`` to rounding.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UnfoldConv2d", "strided_columns", "unfold_convolutions"]

#: default bound on C_in·k_h·k_w·H_out·W_out per image for a layer to be rewritten (ResNet-18's wide stages are
#: faster natively)
MAX_COLUMNS = 1 << 17


class UnfoldConv2d(nn.Conv2d):
    """``nn.Conv2d`` (groups 1, zero padding given as numbers) computed as ``weight @ unfold(x)``."""

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        padding: tuple[int, ...] = self.padding  # type: ignore[assignment]  # numbers (_eligible)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, padding, self.dilation
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        weight = self.weight.reshape(self.out_channels, -1)
        if n == 1 and torch._C._functorch.peek_interpreter_stack() is None:
            # one image outside vmap: a 2-D product with the bias fused (addmm) has fewer autograd nodes than the
            # batched matmul (~12 % of a single-image attack iteration on the cnn; slower under vmap, not used there)
            cols = F.unfold(x[0], self.kernel_size, self.dilation, padding, self.stride)  # (C·kh·kw, L)
            out = torch.mm(weight, cols) if self.bias is None else torch.addmm(self.bias.unsqueeze(1), weight, cols)
            return out.reshape(1, self.out_channels, oh, ow)
        if n == 1 and torch.compiler.is_compiling():  # one image per trial, compiled: faster as strided slices
            cols = strided_columns(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow))
        else:
            cols = F.unfold(x, self.kernel_size, self.dilation, padding, self.stride)  # (n, C·kh·kw, L)
        out = (weight @ cols).reshape(n, self.out_channels, oh, ow)
        if self.bias is not None:
            out = out + self.bias.reshape(1, -1, 1, 1)
        return out


def strided_columns(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                    dilation: tuple[int, int], out: tuple[int, int]) -> Tensor:
    """``F.unfold(x)`` ``(n, C·kh·kw, oh·ow)`` written as strided slices of the zero-padded input, the same values.

    Compiled, for one image per trial (a single image, or single-image victims attacked together under vmap), the
    backward of these slices is a sum of strided slices, which Inductor lowers to vectorised loops, where
    ``F.unfold``'s backward (``col2im``) becomes scalar ones. Eager, and for batches of several images, ``F.unfold``
    is the faster of the two.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = kernel, stride, padding, dilation, out
    n, c = x.shape[:2]
    xp = F.pad(x, (pw, pw, ph, ph))
    taps = [xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            for i in range(kh) for j in range(kw)]
    return torch.stack(taps, 2).reshape(n, c * kh * kw, oh * ow)


def _eligible(conv: nn.Module) -> bool:
    # 'same'/'valid' padding strings and non-zero padding modes keep the native layer
    return (type(conv) is nn.Conv2d and conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


def _columns(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int] | None:
    """C_in·k_h·k_w·H_out·W_out of every eligible convolution for one ``input_shape`` image (a forward pass
    of a zero image in eval mode), or None when the model does not run on it."""
    sizes: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if _eligible(m):
            def hook(mod: nn.Conv2d, args: tuple, result: Tensor, name: str = name) -> None:
                sizes[name] = mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1] * result[0, 0].numel()
            hooks.append(m.register_forward_hook(hook))
    if not hooks:
        return sizes
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    except (RuntimeError, ValueError):  # a model that does not run on a blank image keeps its native layers
        return None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return sizes


def unfold_convolutions(model: nn.Module, input_shape: tuple[int, ...] | None = None,
                        max_columns: int = MAX_COLUMNS) -> nn.Module:
    """A copy of ``model`` whose eligible ``nn.Conv2d`` layers are :class:`UnfoldConv2d`.

    Parameters
    ----------
    model
        Left untouched.
    input_shape
        ``(C, H, W)`` of one input image. With it, a layer is rewritten only if its unfolded input has at most
        ``max_columns`` values per image (measured by a forward pass of one zero image in eval mode; if that
        fails, nothing is rewritten); without it, every eligible layer is.
    max_columns
        See ``input_shape``.

    Returns
    -------
    nn.Module
        The copy, with the same ``state_dict``.
    """
    out = copy.deepcopy(model)
    sizes = None if input_shape is None else _columns(out, tuple(input_shape))
    if input_shape is not None and sizes is None:
        return out
    for name, m in out.named_modules():
        if _eligible(m) and (sizes is None or sizes.get(name, max_columns + 1) <= max_columns):
            m.__class__ = UnfoldConv2d  # same attributes, parameters and hooks; only forward changes
    return out
