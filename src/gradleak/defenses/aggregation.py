"""Aggregate-stage defense: secure aggregation (Bonawitz et al. 2017) — the server sees only the sum."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gradleak.defenses.base import DEFENSES, AggregateDefense
from gradleak.records import AGGREGATE_CLIENT, ClientUpdate

__all__ = ["SecureAggregation", "secure_sum"]


def secure_sum(updates: Sequence[ClientUpdate]) -> ClientUpdate:
    """What a secure-aggregation server learns of a round: Σ n_k·Δ_k and Σ n_k (and the buffers likewise),
    presented as one update whose delta is their quotient — FedAvg's aggregate — with client id
    :data:`~gradleak.records.AGGREGATE_CLIENT`.

    The result holds fresh tensors only; no client's own tensor is referenced.
    """
    if not updates:
        raise ValueError("secure aggregation needs at least one update")
    total = sum(u.num_examples for u in updates)
    if total <= 0:
        raise ValueError("secure aggregation needs a positive total number of examples")

    def weighted(field: str) -> dict[str, torch.Tensor]:
        names = set.intersection(*(set(getattr(u, field)) for u in updates))
        out = {}
        for name in sorted(names):
            acc = sum(getattr(u, field)[name].to(torch.float64) * u.num_examples for u in updates) / total
            like = getattr(updates[0], field)[name]
            out[name] = acc.to(like.dtype) if like.is_floating_point() else acc.round().to(like.dtype)
        return out

    return ClientUpdate(client=AGGREGATE_CLIENT, round=updates[0].round, delta=weighted("delta"),
                        buffers=weighted("buffers"), num_examples=total,
                        metadata={"secure_aggregate_of": len(updates)})


@DEFENSES.register("secure-aggregation")
@dataclass(frozen=True)
class SecureAggregation(AggregateDefense):
    """The server receives only the aggregate of the sampled clients' updates (see :func:`secure_sum`)."""

    def __call__(self, updates: Sequence[ClientUpdate]) -> ClientUpdate:
        return secure_sum(updates)
