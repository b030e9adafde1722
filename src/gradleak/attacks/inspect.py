"""Client-side inspection of a received model for imprint-like layers (Fowl et al. 2022, Sec. 5).

An imprint module repeats one measurement across many rows of a linear layer and spreads the biases over its
range; its ``up`` projection repeats one column. :func:`inspect_model` looks at every ``nn.Linear`` and
``nn.Conv*`` weight (as a ``(out, in·k…)`` matrix) for

- **collinear rows**: groups of rows (or columns) whose directions agree to ``|cos| ≥ cos_threshold``; checked
  only for vectors of at least ``min_dim`` entries, where independent (randomly initialised) rows essentially
  never agree (``P(|cos| ≥ 0.95) < 1e-30`` for 64 entries);
- **spectral concentration**: the share of ``‖W‖²_F`` in the largest singular value (≈ 1 for a rank-one
  imprint, ≤ 0.25 for a randomly initialised layer with at least 8 rows and columns);
- **bias pattern** (reported, not needed for a flag): the thresholds ``−b_i / ‖w_i‖`` of a collinear group are
  distinct, and monotone in row order unless the server permuted the bins.

The paper's evasions — extra random rows and permuted bins — keep the bin rows collinear and are caught;
perturbing every bin row by a large random vector escapes these checks but also breaks the attack's bins.
Model analysis cannot rule out every malicious construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["InspectionReport", "LayerFinding", "inspect_model"]


@dataclass(frozen=True)
class LayerFinding:
    """What the inspection found in one layer.

    Attributes
    ----------
    name, shape
        Module name and the ``(out, in)`` shape of its weight matrix.
    collinear_rows, collinear_columns
        Size of the largest group of (anti)collinear rows / columns (1: none).
    top_energy
        Share of the squared Frobenius norm in the largest singular value.
    distinct_thresholds, monotone
        Distinct thresholds ``−b_i/‖w_i‖`` in the largest collinear row group, and whether they are monotone in
        row order.
    reasons
        Why the layer is flagged (empty: not flagged).
    """

    name: str
    shape: tuple[int, int]
    collinear_rows: int
    collinear_columns: int
    top_energy: float
    distinct_thresholds: int
    monotone: bool
    reasons: tuple[str, ...] = field(default=())

    @property
    def flagged(self) -> bool:
        return bool(self.reasons)


@dataclass(frozen=True)
class InspectionReport:
    """Per-layer findings; ``flagged`` when any layer looks like an imprint module."""

    layers: tuple[LayerFinding, ...]

    @property
    def flagged(self) -> bool:
        return any(f.flagged for f in self.layers)

    @property
    def flagged_layers(self) -> tuple[LayerFinding, ...]:
        return tuple(f for f in self.layers if f.flagged)

    def summary(self) -> str:
        """One line per flagged layer, or a line saying nothing was found."""
        if not self.flagged:
            return f"no imprint-like layer among {len(self.layers)} inspected"
        return "\n".join(f"{f.name} {f.shape}: " + "; ".join(f.reasons) for f in self.flagged_layers)


def _largest_collinear_group(vectors: Tensor, threshold: float, limit: int, generator: torch.Generator
                             ) -> tuple[int, Tensor]:
    """Size of the largest group of vectors within ``|cos| >= threshold`` of one of them, and its members."""
    norms = vectors.norm(dim=1)
    idx = torch.nonzero(norms > 0).flatten()
    if idx.numel() > limit:
        idx = idx[torch.randperm(idx.numel(), generator=generator)[:limit]]
    if idx.numel() < 2:
        return 1, idx[:1]
    unit = (vectors[idx] / norms[idx, None]).float()  # float32 is ample for a cosine threshold
    close = (unit @ unit.T).abs() >= threshold
    counts = close.sum(1)
    best = int(counts.argmax())
    return int(counts[best]), idx[close[best]]


def inspect_model(model: nn.Module, *, cos_threshold: float = 0.95, min_dim: int = 64, min_group: int = 2,
                  energy_threshold: float = 0.5, min_rank_dim: int = 8, sample_rows: int = 2048,
                  generator: torch.Generator | None = None) -> InspectionReport:
    """Flag imprint-like layers of a received model (static weight analysis; no data needed).

    Parameters
    ----------
    model
        The model as the server sent it.
    cos_threshold, min_dim, min_group
        A layer is flagged when ``min_group`` or more of its rows (or columns) with at least ``min_dim`` entries
        are pairwise collinear to ``|cos| ≥ cos_threshold``.
    energy_threshold, min_rank_dim
        A layer with at least ``min_rank_dim`` rows and columns is flagged when its largest singular value holds
        more than ``energy_threshold`` of ``‖W‖²_F``.
    sample_rows
        Rows compared per layer at most (a random sample of larger layers; big groups still show).
    generator
        Randomness of that sample.

    Returns
    -------
    InspectionReport
        One :class:`LayerFinding` per linear or convolutional layer with a non-zero weight.
    """
    generator = generator or torch.Generator().manual_seed(0)
    findings = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
            continue
        w = module.weight.detach().double().flatten(1)
        if not bool(w.abs().sum() > 0):
            continue
        out, fan_in = w.shape
        reasons = []
        rows, members = (1, torch.zeros(0, dtype=torch.long))
        if fan_in >= min_dim:
            rows, members = _largest_collinear_group(w, cos_threshold, sample_rows, generator)
            if rows >= min_group:
                reasons.append(f"{rows} collinear rows (|cos| >= {cos_threshold})")
        cols = 1
        if out >= min_dim:
            cols, _ = _largest_collinear_group(w.T, cos_threshold, sample_rows, generator)
            if cols >= min_group:
                reasons.append(f"{cols} collinear columns (|cos| >= {cos_threshold})")
        energy = _top_energy(w)
        if min(out, fan_in) >= min_rank_dim and energy > energy_threshold:
            reasons.append(f"largest singular value holds {energy:.0%} of the weight's energy")
        distinct, monotone = _threshold_pattern(w, module.bias, members)
        findings.append(LayerFinding(name=name, shape=(out, fan_in), collinear_rows=rows, collinear_columns=cols,
                                     top_energy=energy, distinct_thresholds=distinct, monotone=monotone,
                                     reasons=tuple(reasons)))
    return InspectionReport(tuple(findings))


def _top_energy(w: Tensor, iterations: int = 50) -> float:
    """``σ_max² / ‖W‖²_F`` by power iteration on the smaller Gram matrix (matrix products only; LAPACK's
    threaded eigen-solvers stall on busy machines). Power iteration approaches ``σ_max`` from below."""
    w = w.float()
    gram = (w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w).double()
    v = torch.ones(gram.shape[0], dtype=gram.dtype) + torch.linspace(0, 1, gram.shape[0], dtype=gram.dtype)
    for _ in range(iterations):
        v = gram @ v
        v = v / v.norm()
    return float((v @ gram @ v) / gram.trace())


def _threshold_pattern(w: Tensor, bias: Tensor | None, members: Tensor) -> tuple[int, bool]:
    if bias is None or members.numel() < 2:
        return 0, False
    members = torch.sort(members).values
    ref = w[members[0]]
    sign = torch.sign(w[members] @ ref)
    thresholds = -bias.detach().double()[members] * sign / w[members].norm(dim=1)
    distinct = int(torch.unique(thresholds.round(decimals=9)).numel())
    diffs = thresholds[1:] - thresholds[:-1]
    return distinct, bool((diffs > 0).all() or (diffs < 0).all())
