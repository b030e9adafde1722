"""The malicious server's side of "Robbing the Fed" (Fowl et al. 2022): building and inserting imprint modules.

An imprint module is an ordinary two-layer bottleneck, ``x + up(act(down(flatten(x))))``, whose ``down`` rows all
measure the same linear function ``h`` of the input (mean brightness, a random projection or a Fourier
coefficient) and whose biases sit at the quantiles of ``h``'s distribution, so that row ``i`` fires for
``h(x) ≥ c_i`` (``act`` = ReLU, the *cumulative* variant of Sec. 3.3) or only for ``c_i ≤ h(x) < c_{i+1}``
(``act`` = Hardtanh(0, c0), the *sparse* variant of Sec. 4.3 for FedAvg, rows scaled by ``c0``). All bin columns
of ``up`` are equal, so every bin row receives the same downstream gradient and Eq. 4 holds exactly; the skip
connection keeps the model's output shape and (with a small ``gain``) its function.

The server calls :func:`insert_imprint`, which returns the modified model — an ordinary ``nn.Module`` built from
``nn.Linear``, ``nn.ReLU``/``nn.Hardtanh`` and ``nn.Sequential``, which is all the clients see — and the
:class:`~gradleak.attacks.imprint.secrets.ImprintSecrets` (layer names, bin edges, row order, shapes) that it hands to
:class:`~gradleak.attacks.imprint.ImprintAttack` through ``ServerView.secrets``.

Placement: before the model (``position=None``), or before ``layer1``..``layer4`` of a torchvision-style ResNet
whose preceding layers are *linearised* (Fig. 11, App. B): ``conv1`` and shortcut convolutions become identity
maps on the image channels, residual branches are switched off by zeroing their last BatchNorm, and BatchNorm
shifts its output by ``offset`` so the ReLUs pass everything. The module then receives the (strided)
downsampled input, affinely rescaled per channel by BatchNorm; the attack undoes that rescaling.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from gradleak.attacks.imprint.linearize import linearize_resnet
from gradleak.attacks.imprint.secrets import BNStage, ImprintSecrets, Variant

__all__ = [
    "ImprintBlock",
    "ImprintBottleneck",
    "bin_edges",
    "insert_imprint",
    "measurement_vector",
]

Measurement = Literal["brightness", "random", "fourier"]
Distribution = Literal["gaussian", "laplace", "empirical"]
_TAIL = 1e-9  # probability mass left outside the outermost edges of a parametric distribution


class ImprintBottleneck(nn.Module):
    """``x + up(act(down(flatten(x))))`` reshaped to ``x``'s shape (no skip: without the ``x +``)."""

    def __init__(self, feature_shape: tuple[int, ...], hidden: int, act: nn.Module, skip: bool = True) -> None:
        super().__init__()
        m = math.prod(feature_shape)
        self.feature_shape = tuple(feature_shape)
        self.down = nn.Linear(m, hidden)
        self.act = act
        self.up = nn.Linear(hidden, m)
        self.skip = skip

    def forward(self, x: Tensor) -> Tensor:
        out = self.up(self.act(self.down(x.flatten(1)))).reshape(x.shape)
        return x + out if self.skip else out


def measurement_vector(kind: Measurement, feature_shape: tuple[int, ...], *, channels: int | None = None,
                       frequency: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Weights ``w`` of the linear measurement ``h(x) = <w, x>`` on flattened features (float64).

    ``brightness``: the mean over the first ``channels`` channels (all by default); ``random``: Gaussian weights
    scaled as a mean; ``fourier``: the cosine coefficient of horizontal frequency ``frequency``.
    """
    shape = tuple(feature_shape)
    c = shape[0] if channels is None else channels
    w = torch.zeros(shape, dtype=torch.float64)
    count = c * math.prod(shape[1:])
    if kind == "brightness":
        w[:c] = 1.0 / count
    elif kind == "random":
        w[:c] = torch.randn((c, *shape[1:]), generator=generator, dtype=torch.float64) / count
    elif kind == "fourier":
        width = shape[-1]
        phase = torch.cos(2 * math.pi * frequency * (torch.arange(width, dtype=torch.float64) + 0.5) / width)
        w[:c] = phase.expand(c, *shape[1:]) / count
    else:
        raise ValueError(f"measurement must be 'brightness', 'random' or 'fourier', got {kind!r}")
    return w.flatten()


def bin_edges(probabilities: Tensor, distribution: Distribution, *, values: Tensor | None = None,
              loc: float | None = None, scale: float | None = None) -> Tensor:
    """Quantiles of ``h`` at ``probabilities`` (float64), with 0 and 1 mapped to finite outer edges.

    ``gaussian``/``laplace`` use ``loc``/``scale`` (estimated from ``values`` by moments when not given: mean
    and standard deviation, or median and mean absolute deviation); ``empirical`` interpolates the quantiles of
    ``values`` (the server's public data), with outer edges one range beyond the extremes.
    """
    p = probabilities.double().clamp(_TAIL, 1 - _TAIL)
    if distribution == "empirical":
        if values is None or values.numel() < 2:
            raise ValueError("an empirical distribution needs the server's public data (public=...)")
        v = values.double().flatten()
        q = torch.quantile(v, probabilities.double().clamp(0, 1))
        span = float(v.max() - v.min())
        q = torch.where(probabilities <= 0, v.min() - span, q)
        return torch.where(probabilities >= 1, v.max() + span, q)
    if distribution not in ("gaussian", "laplace"):
        raise ValueError(f"distribution must be 'gaussian', 'laplace' or 'empirical', got {distribution!r}")
    if loc is None or scale is None:
        if values is None:
            raise ValueError(f"a {distribution} distribution needs loc and scale, or public data to fit them")
        v = values.double().flatten()
        if distribution == "gaussian":
            loc = float(v.mean()) if loc is None else loc
            scale = float(v.std()) if scale is None else scale
        else:
            loc = float(v.median()) if loc is None else loc
            scale = float((v - loc).abs().mean()) if scale is None else scale
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if distribution == "gaussian":
        return loc + scale * math.sqrt(2.0) * torch.erfinv(2 * p - 1)
    return loc - scale * torch.sign(p - 0.5) * torch.log1p(-2 * (p - 0.5).abs())


@dataclass(frozen=True)
class ImprintBlock:
    """Configuration of an imprint module (Fowl et al. 2022, Sec. 3.3 and 4.3).

    Parameters
    ----------
    num_bins
        Number of bins ``k`` (rows of ``down``); the one-shot variant always uses 2.
    measurement
        The linear function ``h``: ``"brightness"``, ``"random"`` or ``"fourier"``.
    distribution
        Where the bin edges come from: ``"gaussian"``, ``"laplace"`` (``loc``/``scale``, or fitted to public
        data) or ``"empirical"`` (quantiles of ``h`` on the server's public data).
    variant
        ``"cumulative"`` (ReLU, differences of successive rows), ``"sparse"`` (Hardtanh window per bin, for
        FedAvg) or ``"one-shot"`` (one bin of mass ``1/aggregate_size`` around the median of ``h``).
    scale
        Scale ``c0`` of the measuring rows: row ``i`` computes ``c0 · (h(x) − c_i)`` (cumulative) or
        ``c0 · (h(x) − c_i) / (c_{i+1} − c_i)`` into a ``Hardtanh(0, c0)`` (sparse), and the ``up`` columns carry
        ``gain / c0``. The client's update is ``params_after − params_before`` in float32, so its relative
        precision on a row is about ``2⁻²⁴ · |params| / |step|`` ∝ ``c0² / gain``, while a local step moves the
        bins by ∝ ``gain / c0²`` bin widths. Default ``1e-4``: exact recovery. The paper raises ``c0`` against
        drift over FedAvg's local steps (Sec. 4.3); with float32 updates that costs more precision than it
        saves: a sparse row hit once drifts out of the data and is simply
        not hit again, so small ``c0`` recovers about one input per *distinct* occupied bin.
    aggregate_size
        One-shot variant: the number of inputs expected in the attacked aggregate.
    extra_rows, permute
        The evasions the paper names: random extra rows that are not bins, and a random order of the rows.
    skip, gain
        Keep ``x +`` in the module; size of its output, ``gain · v · Σ act`` for a random unit vector ``v``
        (small: the model's function is kept).
    frequency
        Fourier measurement: horizontal frequency.
    """

    num_bins: int = 128
    measurement: Measurement = "brightness"
    distribution: Distribution = "empirical"
    variant: Variant = "cumulative"
    loc: float | None = None
    scale: float | None = None
    aggregate_size: int | None = None
    extra_rows: int = 0
    permute: bool = False
    skip: bool = True
    gain: float = 1e-2
    frequency: int = 1

    def __post_init__(self) -> None:
        if self.num_bins < 1 or self.extra_rows < 0:
            raise ValueError("num_bins must be >= 1 and extra_rows >= 0")
        if self.variant not in ("cumulative", "sparse", "one-shot"):
            raise ValueError(f"variant must be 'cumulative', 'sparse' or 'one-shot', got {self.variant!r}")
        if self.variant == "one-shot" and (self.aggregate_size is None or self.aggregate_size < 1):
            raise ValueError("the one-shot variant needs aggregate_size= the expected number of inputs")
        if not (self.gain > 0 and (self.scale is None or self.scale > 0)):
            raise ValueError("scale and gain must be positive")

    @property
    def c0(self) -> float:
        """The row scale in use (``scale``, default ``1e-4``)."""
        return 1e-4 if self.scale is None else self.scale

    def probabilities(self) -> Tensor:
        """CDF values of the ``k + 1`` bin edges (equal mass, or the one-shot bin and its rest)."""
        if self.variant == "one-shot":
            mass = 1.0 / float(self.aggregate_size)  # type: ignore[arg-type]
            return torch.tensor([0.5 - mass / 2, 0.5 + mass / 2, 1.0], dtype=torch.float64)
        return torch.linspace(0.0, 1.0, self.num_bins + 1, dtype=torch.float64)

    def build(self, feature_shape: tuple[int, ...], h_values: Tensor | None, w: Tensor,
              generator: torch.Generator | None = None) -> tuple[ImprintBottleneck, dict[str, object]]:
        """The module for inputs of ``feature_shape`` measured by ``w``, and its secrets (rows, edges)."""
        edges = bin_edges(self.probabilities(), self.distribution, values=h_values, loc=self.loc,
                          scale=self.scale)
        if not bool((edges[1:] > edges[:-1]).all()):
            raise ValueError("bin edges are not increasing: the public data has too few distinct values of h")
        k = edges.numel() - 1
        rows = k if self.variant != "one-shot" else 2
        total = rows + self.extra_rows
        order = torch.randperm(total, generator=generator) if self.permute else torch.arange(total)
        m = w.numel()
        sparse = self.variant == "sparse"
        module = ImprintBottleneck(feature_shape, total, nn.Hardtanh(0.0, self.c0) if sparse else nn.ReLU(),
                                  skip=self.skip)
        c0 = self.c0
        v = torch.randn(m, generator=generator, dtype=torch.float64)
        v = v / v.norm() * self.gain / c0
        bound = 1.0 / math.sqrt(m)  # decoys as nn.Linear initialises them; bin rows overwrite below
        weight = (torch.rand(total, m, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        bias = (torch.rand(total, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        up = torch.randn(m, total, generator=generator, dtype=torch.float64) / math.sqrt(m) * self.gain
        bin_rows = order[:rows]
        for i in range(rows):
            r = int(bin_rows[i])
            a = c0 / float(edges[i + 1] - edges[i]) if sparse else c0
            weight[r], bias[r], up[:, r] = a * w, -a * edges[i], v
        with torch.no_grad():
            module.down.weight.copy_(weight)
            module.down.bias.copy_(bias)
            module.up.weight.copy_(up)
            module.up.bias.zero_()
        targets = tuple(self.variant != "one-shot" or i == 0 for i in range(rows))
        return module, {"rows": tuple(int(r) for r in bin_rows), "edges": tuple(float(e) for e in edges),
                        "targets": targets}


class _Stop(Exception):
    """Raised by a capture hook: the rest of the forward pass is not needed."""


def _capture_h(model: nn.Module, target: str, public: Tensor, w: Tensor, batch_size: int, bn_mode: str
               ) -> tuple[Tensor, tuple[int, ...]]:
    """``h`` of the inputs module ``target`` receives when ``model`` runs on ``public`` in client-like batches,
    and the shape of one such input."""
    values: list[Tensor] = []
    shape: list[tuple[int, ...]] = []

    def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
        shape.append(tuple(args[0].shape[1:]))
        if w.numel():
            values.append(args[0].flatten(1).double() @ w)
        raise _Stop

    probe = copy.deepcopy(model).train(bn_mode == "train")
    handle = probe.get_submodule(target).register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for start in range(0, public.shape[0], batch_size):
                try:
                    probe(public[start:start + batch_size])
                except _Stop:
                    pass
    finally:
        handle.remove()
    return (torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)), shape[0]


def insert_imprint(model: nn.Module, block: ImprintBlock, image_shape: tuple[int, int, int], *,
                   position: str | None = None, public: Tensor | None = None, batch_size: int = 64,
                   bn_mode: Literal["train", "eval"] = "train", offset: float = 20.0,
                   generator: torch.Generator | None = None) -> tuple[nn.Module, ImprintSecrets]:
    """Insert an imprint module into (a copy of) ``model``; the server's one call.

    Parameters
    ----------
    model
        The architecture to modify (not changed; a modified copy is returned).
    block
        The imprint configuration.
    image_shape
        ``(C, H, W)`` of the clients' inputs.
    position
        ``None``: before the model. ``"layer1"``..``"layer4"``: before that stage of a ResNet, whose preceding
        layers are linearised (Fig. 11).
    public
        Normalised images the server holds (never the attacked ones): the empirical CDF of ``h``, or the
        moments of a parametric one, are estimated from them (run through the linearised layers in batches of
        ``batch_size`` and BatchNorm mode ``bn_mode``, as the clients will).
    offset
        Shift that keeps the linearised path positive through the ReLUs.
    generator
        Randomness of the random measurement, the ``up`` projection and the evasions.

    Returns
    -------
    model, secrets
        The modified model (an ordinary ``nn.Module``: what the clients receive) and the server's secrets.
    """
    modified = copy.deepcopy(model)
    stages: tuple[BNStage, ...] = ()
    spatial: list[tuple[object, ...]] = []
    channels = image_shape[0]
    if position is None:
        feature_shape = tuple(image_shape)
        w = measurement_vector(block.measurement, feature_shape, frequency=block.frequency, generator=generator)
        h_values = None if public is None else public.flatten(1).double() @ w
    else:
        bn_names, spatial = linearize_resnet(modified, position, channels, offset)
        _, feature_shape = _capture_h(modified, position, torch.zeros(2, *image_shape), torch.zeros(0), 2, "eval")
        w = measurement_vector(block.measurement, feature_shape, channels=channels, frequency=block.frequency,
                               generator=generator)
        stages = _stages(modified, bn_names, image_shape)
        h_values = None if public is None else _capture_h(modified, position, public, w, batch_size, bn_mode)[0]
    module, found = block.build(feature_shape, h_values, w, generator)
    if position is None:
        modified = nn.Sequential(module, modified)
        prefix = "0"
    else:
        setattr(modified, position, nn.Sequential(module, getattr(modified, position)))
        prefix = f"{position}.0"
    secrets = ImprintSecrets(
        weight=f"{prefix}.down.weight", bias=f"{prefix}.down.bias", variant=block.variant,
        rows=found["rows"], edges=found["edges"], targets=found["targets"],  # type: ignore[arg-type]
        measurement=w, feature_shape=tuple(feature_shape), position=position,
        image_channels=channels if position else 0, offset=offset if position else 0.0, stages=stages,
        spatial=tuple(spatial),
    )
    return modified, secrets


def _stages(model: nn.Module, names: list[str], image_shape: tuple[int, int, int]) -> tuple[BNStage, ...]:
    modules = dict(model.named_modules())
    sizes: dict[str, tuple[int, int]] = {}
    hooks = []
    for name in names:
        def record(_m: nn.Module, args: tuple[Tensor, ...], name: str = name) -> None:
            sizes[name] = (int(args[0].shape[-2]), int(args[0].shape[-1]))
        hooks.append(modules[name].register_forward_pre_hook(record))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *image_shape))
    finally:
        for handle in hooks:
            handle.remove()
        model.train(was_training)
    return tuple(BNStage(n, modules[n].momentum, modules[n].eps, sizes[n]) for n in names)
