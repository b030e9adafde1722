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

__all__ = ["UnfoldConv2d", "channels_last_columns", "phase_columns", "strided_columns", "unfold_convolutions"]

#: kernel, stride, padding, dilation and output size of a convolution, as pairs
Geometry = tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]

#: default bound on C_in·k_h·k_w·H_out·W_out per image for a layer to be rewritten (ResNet-18's wide stages are
#: faster natively)
MAX_COLUMNS = 1 << 17


class UnfoldConv2d(nn.Conv2d):
    """``nn.Conv2d`` (groups 1, zero padding given as numbers) computed as ``weight @ unfold(x)``."""

    #: set by :func:`unfold_convolutions`: this layer reads the model's input (its input gradient is the image's)
    takes_input: bool = False

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        padding: tuple[int, ...] = self.padding  # type: ignore[assignment]  # numbers (_eligible)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, padding, self.dilation
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        weight = self.weight.reshape(self.out_channels, -1)
        if torch.compiler.is_compiling():
            return self._compiled(x, weight, ((kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow)))
        if n == 1 and torch._C._functorch.peek_interpreter_stack() is None:
            # one image outside vmap: a 2-D product with the bias fused (addmm) has fewer autograd nodes than the
            # batched matmul (~12 % of a single-image attack iteration on the cnn; slower under vmap, not used there)
            cols = F.unfold(x[0], self.kernel_size, self.dilation, padding, self.stride)  # (C·kh·kw, L)
            out = torch.mm(weight, cols) if self.bias is None else torch.addmm(self.bias.unsqueeze(1), weight, cols)
            return out.reshape(1, self.out_channels, oh, ow)
        cols = F.unfold(x, self.kernel_size, self.dilation, padding, self.stride)  # (n, C·kh·kw, L)
        out = (weight @ cols).reshape(n, self.out_channels, oh, ow)
        if self.bias is not None:
            out = out + self.bias.reshape(1, -1, 1, 1)
        return out

    def _compiled(self, x: Tensor, weight: Tensor, geometry: Geometry) -> Tensor:
        """The layer as Inductor compiles it fastest (measured on the cnn by ``benchmarks/vs_breaching.py``).

        Several images per trial: the columns are gathered channels-last (:func:`channels_last_columns`) and the
        output stays channels-last, so the next layer's gather and the backward's sums run along contiguous
        channels (vectorised loops; NCHW columns compile to scalar ones). One image per trial (single-image
        victims attacked together under vmap, or one image): the layer that reads the images unfolds by
        :func:`phase_columns` (its backward, the image gradient, is the largest fold), a later layer with zero
        padding channels-last as above, the others by :func:`strided_columns`; the product is
        ``cols^T @ weight^T``, which vmap turns into one matrix product when the trials share the weight (instead
        of a batched product with an expanded weight). The output of that product is channels-last in memory;
        the backward of strided slices of its zero-padded copy (a 'same' convolution after another one: LeNet,
        the ResNets, CVB's 5×5 convolutions) compiled to masked scalar loops, several times slower than eager.
        """
        n = x.shape[0]
        (oh, ow) = geometry[4]
        if n > 1 or (not self.takes_input and any(geometry[2])):
            cols = channels_last_columns(x, *geometry)  # (n, L, kh·kw·C)
            out = cols @ self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, -1).t()
            if self.bias is not None:
                out = out + self.bias
            return out.reshape(n, oh, ow, self.out_channels).permute(0, 3, 1, 2)
        cols = (phase_columns if self.takes_input else strided_columns)(x, *geometry)
        out = cols.transpose(1, 2) @ weight.t()  # (n, L, C_out)
        if self.bias is not None:
            out = out + self.bias
        return out.transpose(1, 2).reshape(n, self.out_channels, oh, ow)


def strided_columns(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                    dilation: tuple[int, int], out: tuple[int, int]) -> Tensor:
    """``F.unfold(x)`` ``(n, C·kh·kw, oh·ow)`` written as strided slices of the zero-padded input, the same values.

    Compiled, for one image per trial, the forward is a vectorised gather, faster than ``F.unfold``'s im2col;
    the backward (a sum of strided slices) compiles to scalar loops, ~5× slower than :func:`phase_columns`'s, which
    is why the layer reading the images (the largest fold) uses that instead.
    """
    (kh, kw), (ph, pw), (oh, ow) = kernel, padding, out
    n, c = x.shape[:2]
    xp = F.pad(x, (pw, pw, ph, ph))
    taps = [xp[:, :, rows, cols] for rows, cols in _tap_slices(kernel, stride, dilation, out)]
    return torch.stack(taps, 2).reshape(n, c * kh * kw, oh * ow)


def _tap_slices(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
                out: tuple[int, int]) -> list[tuple[slice, slice]]:
    """The row and column slices of the padded input that kernel tap ``(i, j)`` reads, taps in row-major order."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out
    return [(slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))
            for i in range(kh) for j in range(kw)]


def phase_columns(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                  dilation: tuple[int, int], out: tuple[int, int]) -> Tensor:
    """``F.unfold(x)`` ``(n, C·kh·kw, oh·ow)`` gathered by stride phase, the same values.

    The padded image is split into its ``sh·sw`` stride phases (rows ``≡ a`` mod ``sh``, columns ``≡ b`` mod
    ``sw``; a reshape and two unbinds), and tap ``(i, j)`` is cropped from phase ``(i·dh mod sh, j·dw mod sw)`` at
    offset ``(i·dh // sh, j·dw // sw)`` by a negative ``F.pad``. Autograd's backward of these ops — the fold — is
    then per phase a sum of zero-padded tap maps (stride 1, no index arithmetic) and one stack interleaving the
    phases, which Inductor compiles to vectorised loops (measured ~5× faster than the backward of
    :func:`strided_columns` for the cnn's first layer). Its forward is slower than :func:`strided_columns`'s, so
    only the layer that reads the images uses it (see :meth:`UnfoldConv2d._compiled`).
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = kernel, stride, padding, dilation, out
    n, c, H, W = x.shape
    hq, wq = -(-(H + 2 * ph) // sh), -(-(W + 2 * pw) // sw)
    grid = F.pad(x, (pw, wq * sw - W - pw, ph, hq * sh - H - ph)).reshape(n, c, hq, sh, wq, sw)
    phases = [r.unbind(-1) for r in grid.unbind(-3)]  # phases[a][b]: (n, c, hq, wq)
    taps = []
    for i in range(kh):
        for j in range(kw):
            di, dj = (i * dh) // sh, (j * dw) // sw
            taps.append(F.pad(phases[(i * dh) % sh][(j * dw) % sw], (-dj, -(wq - ow - dj), -di, -(hq - oh - di))))
    return torch.stack(taps, 2).reshape(n, c * kh * kw, oh * ow)


def channels_last_columns(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                          dilation: tuple[int, int], out: tuple[int, int]) -> Tensor:
    """``F.unfold(x)`` transposed and in channels-last order: ``(n, oh·ow, kh·kw·C)``, column ``(i, j, c)`` (``c``
    fastest), gathered by strided slices of the zero-padded ``(n, H, W, C)`` input. It pairs with the weight
    permuted to ``(C_out, kh, kw, C)``."""
    (ph, pw), (oh, ow) = padding, out
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph))
    taps = [xp[:, rows, cols, :] for rows, cols in _tap_slices(kernel, stride, dilation, out)]
    return torch.stack(taps, 3).reshape(x.shape[0], oh * ow, -1)


def _eligible(conv: nn.Module) -> bool:
    # 'same'/'valid' padding strings and non-zero padding modes keep the native layer
    return (type(conv) is nn.Conv2d and conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


def _columns(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[int, bool]] | None:
    """Per eligible convolution, C_in·k_h·k_w·H_out·W_out for one ``input_shape`` image and whether it reads the
    model's input (a forward pass of a zero image in eval mode), or None when the model does not run on it."""
    sizes: dict[str, tuple[int, bool]] = {}
    hooks = []
    image = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    for name, m in model.named_modules():
        if _eligible(m):
            def hook(mod: nn.Conv2d, args: tuple, result: Tensor, name: str = name) -> None:
                size = mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1] * result[0, 0].numel()
                sizes[name] = (size, args[0] is image)
            hooks.append(m.register_forward_hook(hook))
    if not hooks:
        return sizes
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(image)
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
        if _eligible(m) and (sizes is None or sizes.get(name, (max_columns + 1, False))[0] <= max_columns):
            m.__class__ = UnfoldConv2d  # same attributes, parameters and hooks; only forward changes
            if sizes is not None and sizes[name][1]:
                m.takes_input = True
    return out
