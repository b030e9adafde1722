"""Injectable randomness and extra loss terms for stochastic defenses (dropout, VB epsilon, DP noise).

A stochastic module never calls the global RNG inside local training. It asks :func:`draw` for its noise by
name; :func:`gradleak.fl.local_update` sets up a :class:`NoiseContext` per call, which either returns the
tensor the caller injected under that name (an attacker optimising the noise, or a well-informed attacker
handed the client's) or samples it with the client's ``torch.Generator`` and records it. The recorded noise
is returned in ``LocalResult.noise``.

Keys are ``"<name>@<step>"``; an injected key without ``@`` applies to every step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["NoiseContext", "add_loss", "current", "draw", "noise_context"]

Sampler = Callable[[torch.Generator | None], Tensor]

# the active contexts, innermost last: a plain list rather than a ContextVar, so that torch.compile can trace
# local training (Dynamo cannot trace ContextVar.set); local training runs one call at a time per process
_ACTIVE: list[NoiseContext] = []


class NoiseContext:
    """Noise for one local-training call.

    Parameters
    ----------
    injected
        Tensors to use instead of sampling, by key.
    generator
        Generator for everything not injected.
    """

    def __init__(self, injected: Mapping[str, Tensor] | None = None, generator: torch.Generator | None = None):
        self.injected = dict(injected or {})
        self.generator = generator
        self.drawn: dict[str, Tensor] = {}
        self.step = 0
        self.losses: list[Tensor] = []
        self.override: dict[str, Tensor] = {}

    def draw(self, name: str, sampler: Sampler) -> Tensor:
        """The noise called ``name`` at the current step: injected if given, else sampled and recorded."""
        key = f"{name}@{self.step}"
        if key in self.override:  # one example's slice of this step's noise (per-sample gradients)
            return self.override[key]
        if key in self.injected:
            value = self.injected[key]
        elif name in self.injected:
            value = self.injected[name]
        else:
            value = sampler(self.generator)
        self.drawn[key] = value
        return value


def current() -> NoiseContext | None:
    """The active noise context, if local training is running."""
    return _ACTIVE[-1] if _ACTIVE else None


def draw(name: str, sampler: Sampler) -> Tensor:
    """Noise for ``name`` from the active context; outside local training, sampled from the global RNG."""
    return _ACTIVE[-1].draw(name, sampler) if _ACTIVE else sampler(None)


def add_loss(value: Tensor) -> None:
    """Add a term to the training loss of the current step (e.g. a variational bottleneck's KL term).

    Outside local training (plain inference) the term is dropped.
    """
    if _ACTIVE:
        _ACTIVE[-1].losses.append(value)


@contextmanager
def noise_context(ctx: NoiseContext) -> Iterator[NoiseContext]:
    """Make ``ctx`` the active context for the duration of the block."""
    _ACTIVE.append(ctx)
    try:
        yield ctx
    finally:
        _ACTIVE.pop()
