"""The functional BatchNorm and dropout forwards of :func:`gradleak.fl.local.local_update`.

During a local-training call (or for good on an attacker's private copy, :func:`bind_functional`) BatchNorm
normalises with the batch's biased statistics and hands them to the call, which computes the new running
statistics out of place with PyTorch's exact rule (:func:`running_update`); dropout draws its mask from
:mod:`gradleak.fl.noise`. Both stay differentiable and compose with :func:`torch.func.vmap`.
"""

from __future__ import annotations

import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradleak.fl import noise as noise_mod

__all__ = ["StatCollector", "bind_functional", "functional_modules", "running_update"]

TensorDict = dict[str, Tensor]


class StatCollector(dict):
    """BatchNorm layer name -> (batch mean, biased batch variance, elements per channel) of one forward."""


# the active local-training call's BatchNorm mode, statistics sink and differentiability, innermost last (read
# by the functional forwards below; a list, not a ContextVar, so that torch.compile can trace local training)
_CALLS: list[tuple[str, StatCollector, bool]] = []
_MARK = "_gradleak_functional"  # set on modules whose functional forward stays installed (bind_functional)


def _bn_forward(module: nn.modules.batchnorm._BatchNorm, name: str):
    def forward(self: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
        if not _CALLS:  # outside local training (a bound module used for inference)
            return type(self).forward(self, x)
        mode, sink, differentiable = _CALLS[-1]
        use_batch = mode == "train" or not self.track_running_stats
        if not use_batch:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        # native kernel, batch statistics, no running-stat writes (vmap- and double-backward-safe)
        out = F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        if self.track_running_stats and mode == "train":
            dims = [0, *range(2, x.dim())]
            with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
                var, mean = torch.var_mean(x, dims, correction=0)
            sink[name] = (mean, var, x.numel() // x.shape[1])
        return out

    # a method of the module, not a closure over it: a deep copy of a bound module calls its own copy
    return types.MethodType(forward, module)


def _dropout_forward(module: nn.Dropout, name: str):
    def forward(self: nn.Dropout, x: Tensor) -> Tensor:
        p = self.p
        if p == 0.0 or not _CALLS:
            return type(self).forward(self, x)
        keep = 1.0 - p
        mask = noise_mod.draw(
            name, lambda g: torch.bernoulli(torch.full(x.shape, keep, dtype=x.dtype, device=x.device), generator=g)
        )
        return x * mask / keep

    return types.MethodType(forward, module)


def _functional_forward(name: str, module: nn.Module):
    """The functional forward ``module`` needs inside local training, or ``None``."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return _bn_forward(module, name)
    if isinstance(module, nn.Dropout) and module.p > 0:  # p = 0 draws nothing: left alone
        return _dropout_forward(module, name)
    return None


def bind_functional(model: nn.Module) -> nn.Module:
    """Install the functional BatchNorm and dropout forwards of :func:`local_update` in ``model`` for good.

    :func:`local_update` otherwise installs them for the duration of each call and removes them afterwards;
    an attacker that replays training thousands of times on its own copy of the model binds them once, and
    ``torch.compile`` can then trace the replay (it cannot trace the per-call patching). Outside local training
    the bound modules behave as before. Returns ``model`` (modified in place: use it on a private copy).
    """
    for name, module in model.named_modules():
        forward = _functional_forward(name, module)
        if forward is not None:
            module.forward = forward
            setattr(module, _MARK, True)
    return model


@contextmanager
def functional_modules(named: Sequence[tuple[str, nn.Module]], bn_mode: str, sink: StatCollector,
                        differentiable: bool) -> Iterator[None]:
    """Give BatchNorm and dropout modules (of a model's ``named_modules()``) functional forwards for the
    duration of the block (modules bound by :func:`bind_functional` keep theirs)."""
    patched: list[nn.Module] = []
    _CALLS.append((bn_mode, sink, differentiable))
    try:
        for name, module in named:
            if getattr(module, _MARK, False):
                continue
            forward = _functional_forward(name, module)
            if forward is not None:
                module.forward = forward
                patched.append(module)
        yield
    finally:
        _CALLS.pop()
        for module in patched:
            del module.forward


def running_update(
    modules: Mapping[str, nn.Module], buffers: TensorDict, stats: Mapping[str, tuple[Tensor, Tensor, int]]
) -> TensorDict:
    new = dict(buffers)
    for name, (mean, var, n) in stats.items():
        module = modules[name]
        prefix = f"{name}." if name else ""
        tracked = new[prefix + "num_batches_tracked"] + 1
        new[prefix + "num_batches_tracked"] = tracked
        if module.momentum is None:  # cumulative moving average, as PyTorch
            factor: Tensor | float = 1.0 / tracked.to(mean.dtype)
        else:
            factor = float(module.momentum)  # type: ignore[arg-type]
        unbiased = var * (n / (n - 1)) if n > 1 else var
        new[prefix + "running_mean"] = (1 - factor) * new[prefix + "running_mean"] + factor * mean
        new[prefix + "running_var"] = (1 - factor) * new[prefix + "running_var"] + factor * unbiased
    return new
