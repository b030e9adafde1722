"""FedAvg aggregation (McMahan et al. 2017) of client updates into the next global state. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gradleak.records import ClientUpdate, GlobalState

__all__ = ["fedavg"]


def _weighted_mean(values: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    total = float(sum(weights))
    acc = torch.zeros_like(values[0], dtype=torch.float64)
    for value, w in zip(values, weights, strict=True):
        acc = acc + value.to(torch.float64) * (w / total)
    if values[0].is_floating_point():
        return acc.to(values[0].dtype)
    return acc.round().to(values[0].dtype)


def _average_into(
    global_values: dict[str, Tensor], updates: Sequence[ClientUpdate], field: str, *, add_to_global: bool
) -> dict[str, Tensor]:
    """Per tensor: the weighted mean over the clients that sent it (added to the global value for deltas)."""
    out: dict[str, Tensor] = {}
    for name, value in global_values.items():
        senders = [u for u in updates if name in getattr(u, field) and u.num_examples > 0]
        if not senders:
            out[name] = value.clone()
            continue
        mean = _weighted_mean([getattr(u, field)[name] for u in senders], [u.num_examples for u in senders])
        out[name] = (value.to(torch.float64) + mean.to(torch.float64)).to(value.dtype) if add_to_global else mean
    return out


def fedavg(global_state: GlobalState, updates: Sequence[ClientUpdate], *, next_round: int | None = None) -> GlobalState:
    """Average client updates weighted by their example counts and apply them to the global state.

    Parameters: ``w_{t+1} = w_t + sum_k n_k Δ_k / sum_k n_k``. Buffers (BatchNorm statistics): the weighted
    average of the clients' buffers; integer buffers (``num_batches_tracked``) are averaged the same way and
    rounded, keeping their dtype. A tensor that some clients withheld is averaged over the clients that sent
    it; one that nobody sent keeps its global value. Accumulation is in float64.

    Parameters
    ----------
    global_state
        The state the clients started from.
    updates
        The received updates (at least one, with positive total weight).
    next_round
        Round index of the result; defaults to ``global_state.round + 1``.
    """
    if not updates:
        raise ValueError("FedAvg needs at least one client update")
    if sum(u.num_examples for u in updates) <= 0:
        raise ValueError("FedAvg needs a positive total number of examples")
    params = _average_into(global_state.params, updates, "delta", add_to_global=True)
    buffers = _average_into(global_state.buffers, updates, "buffers", add_to_global=False)
    round_ = global_state.round + 1 if next_round is None else next_round
    return GlobalState(round=round_, params=params, buffers=buffers, metadata={})
