"""Update-stage defenses: applied by the client to its update before sending. ``(update, generator) -> update``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from gradleak.defenses.base import DEFENSES, UpdateDefense
from gradleak.defenses.functional import gaussian_like, laplace_like, percentile_scale, prune_by_magnitude
from gradleak.records import ClientUpdate, in_layer

__all__ = ["Laplace", "LocalGaussian", "PruneUpdate", "WithholdBN", "WithholdLayers"]


def _with_delta(update: ClientUpdate, delta: dict) -> ClientUpdate:
    return dataclasses.replace(update, delta=delta, metadata=dict(update.metadata))


@DEFENSES.register("local-gaussian")
@dataclass(frozen=True)
class LocalGaussian(UpdateDefense):
    """Local Gaussian noise of Hatamizadeh et al. (2023), Sec. II-C: σ = σ0 × the ``percentile``-th
    percentile of |ΔW|, and N(0, σ²) noise added to every value of ΔW.

    Which tensors: the percentile is taken over *all parameter deltas together* (every trainable weight and
    bias, one scale for the whole update), and noise is added to those deltas only. BatchNorm running
    statistics are buffers, not gradient information, and their scale differs by orders of magnitude; they
    are sent unchanged (withhold them with ``withhold-bn``). Defaults σ0 = 1, 95th percentile.
    σ0 = 0 returns the update bit-identical.
    """

    sigma0: float = 1.0
    percentile: float = 95.0

    def __post_init__(self) -> None:
        if self.sigma0 < 0:
            raise ValueError(f"local-gaussian: sigma0 must be >= 0, got {self.sigma0}")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"local-gaussian: percentile must be in (0, 100], got {self.percentile}")

    @property
    def noop(self) -> bool:
        return self.sigma0 == 0

    def noise_std(self, update: ClientUpdate) -> float:
        """σ for this update."""
        return float(self.sigma0 * percentile_scale(update.delta, self.percentile))

    def __call__(self, update: ClientUpdate, generator: torch.Generator | None = None) -> ClientUpdate:
        if self.sigma0 == 0:
            return dataclasses.replace(update)
        std = self.noise_std(update)
        return _with_delta(update, {k: v + gaussian_like(v, std, generator) for k, v in update.delta.items()})


@DEFENSES.register("laplace")
@dataclass(frozen=True)
class Laplace(UpdateDefense):
    """Local Laplace noise with scale b = ``b0`` × the ``percentile``-th percentile of |ΔW| (same tensors as
    ``local-gaussian``). b0 = 0 returns the update unchanged."""

    b0: float = 1.0
    percentile: float = 95.0

    def __post_init__(self) -> None:
        if self.b0 < 0:
            raise ValueError(f"laplace: b0 must be >= 0, got {self.b0}")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"laplace: percentile must be in (0, 100], got {self.percentile}")

    @property
    def noop(self) -> bool:
        return self.b0 == 0

    def __call__(self, update: ClientUpdate, generator: torch.Generator | None = None) -> ClientUpdate:
        if self.b0 == 0:
            return dataclasses.replace(update)
        scale = float(self.b0 * percentile_scale(update.delta, self.percentile))
        return _with_delta(update, {k: v + laplace_like(v, scale, generator) for k, v in update.delta.items()})


@DEFENSES.register("prune-update")
@dataclass(frozen=True)
class PruneUpdate(UpdateDefense):
    """Top-k sparsification of the sent update: per tensor, zero the ``rate`` share of smallest |ΔW|."""

    rate: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"prune-update: rate must be in [0, 1), got {self.rate}")

    def __call__(self, update: ClientUpdate, generator: torch.Generator | None = None) -> ClientUpdate:
        return _with_delta(update, prune_by_magnitude(update.delta, self.rate)[0])


def _withheld(update: ClientUpdate, names: list[str]) -> dict:
    meta = dict(update.metadata)
    meta["withheld"] = sorted(set(meta.get("withheld", [])) | set(names))
    return meta


@DEFENSES.register("withhold-bn")
@dataclass(frozen=True)
class WithholdBN(UpdateDefense):
    """Send no BatchNorm buffers (FedBN-style, Li et al. 2021); Hatamizadeh et al. show the BN-aware attack
    then fails. The names of the withheld buffers are listed in ``metadata["withheld"]``."""

    def __call__(self, update: ClientUpdate, generator: torch.Generator | None = None) -> ClientUpdate:
        return dataclasses.replace(update, buffers={}, metadata=_withheld(update, list(update.buffers)))


@DEFENSES.register("withhold-layers")
@dataclass(frozen=True)
class WithholdLayers(UpdateDefense):
    """Do not send the deltas of the named layers (prefixes of parameter names), modelling encryption of
    the most important layers (Hatamizadeh et al., Sec. IV). Default: the first convolution (``conv1``)."""

    layers: tuple[str, ...] = ("conv1",)

    def __post_init__(self) -> None:
        if not self.layers or not all(isinstance(n, str) and n for n in self.layers):
            raise ValueError(f"withhold-layers: layers must be non-empty names, got {self.layers!r}")

    def __call__(self, update: ClientUpdate, generator: torch.Generator | None = None) -> ClientUpdate:
        def hit(name: str) -> bool:
            return any(in_layer(name, p) for p in self.layers)

        dropped = [k for k in update.delta if hit(k)]
        missing = [p for p in self.layers if not any(in_layer(k, p) for k in update.delta)]
        if missing:
            raise ValueError(f"withhold-layers: no parameter of layer(s) {missing} in the update "
                             f"(parameters: {sorted(update.delta)[:8]}...)")
        delta = {k: v for k, v in update.delta.items() if not hit(k)}
        return dataclasses.replace(update, delta=delta, metadata=_withheld(update, dropped))
