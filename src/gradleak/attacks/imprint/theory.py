"""How many inputs an imprint module of ``k`` bins recovers from ``n`` inputs (Fowl et al. 2022, Proposition 1,
and the independent-inputs count the attack measures)."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal

import torch

__all__ = ["expected_recovery", "one_shot_success", "simulate_recovery"]


def expected_recovery(n: int, k: int, model: Literal["paper", "iid"] = "iid") -> float:
    """Expected number of inputs alone in their bin, for ``n`` inputs and ``k`` bins of equal mass.

    ``"iid"``: inputs fall into bins independently and uniformly, ``n (1 − 1/k)^(n−1)`` — what a batch of
    independent inputs gives, and what :func:`simulate_recovery` and the attack measure.
    ``"paper"``: Proposition 1 of Fowl et al. (2022) exactly as printed, in exact rational arithmetic. It counts
    bin-occupancy configurations as equally likely (stars and bars), which independent inputs do not make
    them, and subtracts an ``n/k`` tail; it is lower (``n=64, k=128``: 28.17 against 39.05) and is only
    stated for ``k > n > 2``.
    """
    if n < 0 or k < 1:
        raise ValueError(f"need n >= 0 and k >= 1, got n={n}, k={k}")
    if model == "iid":
        return n * (1 - 1 / k) ** (n - 1) if n else 0.0
    if model != "paper":
        raise ValueError(f"model must be 'paper' or 'iid', got {model!r}")
    if not k > n > 2:
        raise ValueError(f"Proposition 1 is stated for k > n > 2, got n={n}, k={k}")
    total = 0
    for i in range(1, n - 1):
        inner = sum(math.comb(k - i, j) * math.comb(n - i - j - 1, j - 1) for j in range(1, (n - i) // 2 + 1))
        total += i * math.comb(k, i) * inner
    configurations = math.comb(k + n - 1, k - 1)
    value = Fraction(total, configurations) + Fraction(n * math.comb(k, n), configurations) - Fraction(n, k)
    return float(value)


def one_shot_success(n: int, mass: float) -> float:
    """Probability that exactly one of ``n`` independent inputs falls into a bin of probability ``mass``."""
    return n * mass * (1 - mass) ** (n - 1)


def simulate_recovery(n: int, k: int, draws: int, generator: torch.Generator | None = None
                      ) -> tuple[float, float]:
    """Monte-Carlo of bin occupancy: mean and standard error of the number of singly occupied bins."""
    counts = torch.zeros(draws, k, dtype=torch.int32)
    bins = torch.randint(k, (draws, n), generator=generator)
    counts.scatter_add_(1, bins, torch.ones_like(bins, dtype=torch.int32))
    singles = (counts == 1).sum(1).double()
    return float(singles.mean()), float(singles.std() / math.sqrt(draws))
