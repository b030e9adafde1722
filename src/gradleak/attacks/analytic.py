"""Analytic inversion of a fully connected layer with bias (Phong et al. 2017; Fowl et al. 2022, Eqs. 2–3).

For ``y = W x + b`` the gradient of row ``i`` is ``∂L/∂y_i · x`` and the bias gradient is ``∂L/∂y_i``, so one
input is read off exactly as ``x = ∇W_i ⊘ ∂L/∂b_i`` from any row with a non-zero bias gradient (Eq. 2). For a
batch, each row holds the ``∂L/∂y_i``-weighted *mean* of the inputs; when the layer is the classifier of a
multinomial logistic regression and the labels of the batch are distinct, row ``i`` is dominated by the one
example of class ``i`` (Eq. 3 — exact only when the other examples' softmax mass on class ``i`` vanishes, e.g.
many classes). :class:`AnalyticLinear` optionally removes that residual mass by a fixed-point least-squares
solve (``refine``), which is exact for a pure logistic regression.

The update of a FedSGD client is ``delta = -lr · grad``: ratios of gradient entries are invariant to the
positive factor ``lr``, so the attack uses ``-delta`` and never needs the learning rate. The inversion assumes
plain SGD without weight decay (Adam's per-coordinate scaling breaks the ratios).

Example
-------
>>> attack = AnalyticLinear()                       # first nn.Linear of the model, batch of one
>>> reconstruction = attack(view)                    # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradleak.attacks.base import ATTACKS, Attack, AttackError
from gradleak.records import ClientUpdate, Reconstruction, ServerView

__all__ = ["AnalyticLinear", "find_linear", "invert_linear", "to_pixels"]


def invert_linear(weight_grad: Tensor, bias_grad: Tensor, *, rows: Tensor | None = None, rtol: float = 1e-6
                  ) -> tuple[Tensor, Tensor]:
    """Eq. 2 per row: ``x_i = ∇W_i ⊘ ∂b_i`` for the rows whose bias gradient is not (numerically) zero.

    Parameters
    ----------
    weight_grad, bias_grad
        Gradient (or any common non-zero multiple of it, such as a FedSGD update) of the weight ``(out, in)``
        and bias ``(out,)`` of one linear layer.
    rows
        Rows to invert (default: every row).
    rtol
        Rows with ``|∂b_i| <= rtol · max|∂b|`` carry no input and are skipped.

    Returns
    -------
    inputs, used_rows
        ``(R, in)`` inputs (float64) and the ``(R,)`` row indices they came from.
    """
    if weight_grad.dim() != 2 or bias_grad.shape != weight_grad.shape[:1]:
        raise AttackError(f"need a (out, in) weight gradient and an (out,) bias gradient, got "
                          f"{tuple(weight_grad.shape)} and {tuple(bias_grad.shape)}")
    gw, gb = weight_grad.double(), bias_grad.double()
    idx = torch.arange(gb.numel()) if rows is None else torch.as_tensor(rows, dtype=torch.long).flatten()
    scale = gb.abs().max()
    keep = gb[idx].abs() > rtol * scale if scale > 0 else torch.zeros(idx.numel(), dtype=torch.bool)
    idx = idx[keep]
    return gw[idx] / gb[idx, None], idx


def find_linear(model: nn.Module, layer: str | None) -> tuple[str, nn.Linear]:
    """The named ``nn.Linear`` (default: the first one in module order); raises when there is none."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and (layer is None or name == layer):
            if module.bias is None:
                raise AttackError(f"linear layer {name!r} has no bias; the analytic inversion needs one")
            return name, module
    where = "no nn.Linear" if layer is None else f"no nn.Linear named {layer!r}"
    raise AttackError(f"the model has {where}; pass layer= the name of a linear layer with bias")


def to_pixels(features: Tensor, view: ServerView) -> Tensor:
    """Flattened normalised model inputs ``(N, C·H·W)`` → images ``(N, C, H, W)`` in ``[0, 1]``."""
    c, h, w = view.image_shape
    x = features.reshape(-1, c, h, w).to(torch.float32)
    mean = torch.as_tensor(view.mean, dtype=x.dtype).reshape(-1, 1, 1)
    std = torch.as_tensor(view.std, dtype=x.dtype).reshape(-1, 1, 1)
    return (x * std + mean).clamp(0.0, 1.0)


def _gradient(update: ClientUpdate, name: str) -> Tensor:
    if name not in update.delta:
        raise AttackError(f"the update withholds {name!r}, which the attack inverts")
    return -update.delta[name].detach().double()  # delta = -lr·grad: a positive multiple of the gradient


@ATTACKS.register("analytic")
@dataclass(frozen=True)
class AnalyticLinear(Attack):
    """Analytic inversion of a linear layer with bias (Fowl et al. 2022, Eqs. 2–3; Phong et al. 2017).

    Parameters
    ----------
    layer
        Name of the ``nn.Linear`` to invert (default: the first one, e.g. ``features.fc1`` of ``mlp``). Its input
        must be the flattened image (``C·H·W`` features).
    mode
        ``"single"``: one input from the row with the largest ``|∂b|`` (exact for a batch of one).
        ``"per-row"``: one input per row (Eq. 3): the rows of ``view.labels`` when known, else the rows with a
        negative bias gradient (the classes present under cross-entropy), at most ``view.batch_size`` of them.
        ``"auto"``: ``single`` when the update is over one example, else ``per-row``.
    refine
        Fixed-point least-squares steps removing the other examples' softmax mass from each row (exact for a
        multinomial logistic regression, i.e. when the layer's output is the logits; checked).
    rtol
        Relative threshold under which a bias gradient counts as zero.
    """

    layer: str | None = None
    mode: Literal["auto", "single", "per-row"] = "auto"
    refine: int = 0
    rtol: float = 1e-6

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "single", "per-row"):
            raise ValueError(f"mode must be 'auto', 'single' or 'per-row', got {self.mode!r}")
        if self.refine < 0:
            raise ValueError(f"refine must be >= 0, got {self.refine}")

    def reconstruct(self, view: ServerView, generator: torch.Generator) -> Reconstruction:
        model = view.build_model()
        name, linear = find_linear(model, self.layer)
        if linear.in_features != math.prod(view.image_shape):
            raise AttackError(f"layer {name!r} takes {linear.in_features} features, not the flattened image "
                              f"{view.image_shape}; choose the model's first linear layer")
        prefix = f"{name}." if name else ""
        gw, gb = _gradient(view.update, prefix + "weight"), _gradient(view.update, prefix + "bias")
        n = view.batch_size or view.update.num_examples
        mode = self.mode if self.mode != "auto" else ("single" if n == 1 else "per-row")
        if mode == "single":
            x, rows = invert_linear(gw, gb, rows=gb.abs().argmax().reshape(1), rtol=self.rtol)
            if not len(rows):
                raise AttackError(f"every bias gradient of {name!r} is zero: the update carries no input")
            return Reconstruction(images=to_pixels(x, view), valid=torch.ones(1, dtype=torch.bool))
        rows = self._rows(view, gb, n)
        x, rows = invert_linear(gw, gb, rows=rows, rtol=self.rtol)
        if self.refine:
            x = self._refine(model, linear, view.image_shape, x, rows, gw, gb)
        return Reconstruction(images=to_pixels(x, view), labels=rows.clone())

    @staticmethod
    def _rows(view: ServerView, gb: Tensor, n: int) -> Tensor:
        if view.labels is not None:
            return torch.unique(view.labels.flatten().long())
        negative = torch.nonzero(gb < 0).flatten()
        order = negative[torch.argsort(gb[negative])][:n]
        return torch.sort(order).values

    def _refine(self, model: nn.Module, linear: nn.Linear, image_shape: tuple[int, int, int], x: Tensor,
                rows: Tensor, gw: Tensor, gb: Tensor) -> Tensor:
        """Solve ``[∇W, ∂b] = Gᵀ [X, 1]·s`` for ``X`` with ``G = softmax(XWᵀ + b) − onehot`` re-estimated."""
        probe = torch.randn(2, *image_shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            logits, direct = model.eval()(probe), linear(probe.flatten(1))
            if logits.shape != direct.shape or not torch.allclose(logits, direct, atol=1e-5):
                raise AttackError("refine needs the inverted layer to produce the logits from the image "
                                  "(a multinomial logistic regression); use refine=0")
        w, b = linear.weight.detach().double(), linear.bias.detach().double()
        target = torch.cat([gw, gb[:, None]], dim=1)                        # (K, m+1)
        onehot = F.one_hot(rows, w.shape[0]).double()                        # (n, K)
        for _ in range(self.refine):
            g = torch.softmax(x @ w.T + b, dim=1) - onehot                   # (n, K), up to a common scale
            z = torch.linalg.lstsq(g.T, target).solution                     # (n, m+1) = s_t·[x_t, 1]
            x = z[:, :-1] / z[:, -1:]
        return x
