"""The imprint attack of "Robbing the Fed" (Fowl, Geiping, Czaja, Goldblum, Goldstein, ICLR 2022).

A malicious server inserts an imprint module (:func:`~gradleak.attacks.imprint_model.insert_imprint`) whose rows
all measure one linear function ``h`` with biases at the quantiles of ``h``. In the update, the difference of
two successive rows of ``∇W`` divided by the difference of the bias gradients is the sum over the inputs whose
``h`` falls into that bin (Eq. 4): a bin hit by exactly one input yields it verbatim, with no optimisation, from
one client's update or from a securely aggregated sum of thousands. The sparse variant needs no difference (each
row only sees its own bin), which keeps it exact under FedAvg's several local steps.

Collisions (bins hit by several inputs) are detected and returned with ``Reconstruction.valid = False``: a
single input's ``h`` lies in its bin, its pixels lie in ``[0, 1]`` and, for 8-bit data (``grid=255``), on the
``k/255`` grid; a weighted mixture of several inputs fails these checks except when one input dominates it to
within a fraction of a grey level. Identical recoveries from several rows (bins drifting under FedAvg) are
kept once.

How many inputs to expect: :func:`expected_recovery` (``"iid"``: independent inputs, the measured quantity;
``"paper"``: Proposition 1 as printed) and :func:`one_shot_success`.

Example
-------
>>> model, secrets = insert_imprint(resnet, ImprintBlock(num_bins=128), (3, 32, 32), public=public)  # doctest: +SKIP
>>> view = ServerView(..., secrets={"imprint": secrets})                                   # doctest: +SKIP
>>> reconstruction = ImprintAttack()(view)        # images in bin order, valid marks single inputs  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import torch
from torch import Tensor, nn

from gradleak.attacks.base import ATTACKS, Attack, AttackError
from gradleak.records import ClientUpdate, GlobalState, Reconstruction, ServerView

__all__ = [
    "BNStage",
    "ImprintAttack",
    "ImprintSecrets",
    "expected_recovery",
    "one_shot_success",
    "recover_bins",
    "reference_features",
    "simulate_recovery",
]

Variant = Literal["cumulative", "sparse", "one-shot"]


@dataclass(frozen=True)
class BNStage:
    """A BatchNorm on the linearised path: its name, momentum, eps and the spatial size it normalises."""

    name: str
    momentum: float | None
    eps: float
    spatial: tuple[int, int]


@dataclass(frozen=True, eq=False)
class ImprintSecrets:
    """What the server keeps to itself and passes to the attack in ``ServerView.secrets["imprint"]``.

    Attributes
    ----------
    weight, bias
        Parameter names of the imprint's measuring layer (``down``).
    variant
        ``"cumulative"``, ``"sparse"`` or ``"one-shot"``.
    rows
        Row of ``down`` holding bin ``i``, bins in increasing order of ``h`` (extra decoy rows are not listed).
    edges
        ``k + 1`` bin edges in ``h`` units: bin ``i`` is ``[edges[i], edges[i+1])``.
    targets
        Per bin, whether it is meant to hold one input (the one-shot attack's large rest bin is not).
    measurement
        ``h``'s weights on the flattened features ``(m,)``.
    feature_shape
        Shape of one input of the module ``(C', H', W')``.
    position
        Where the module sits (``None``: before the model).
    image_channels
        Feature channels carrying image channels (deeper placement).
    offset
        Shift BatchNorm adds on the linearised path.
    stages, spatial
        BatchNorm layers on the linearised path, and spatial operations (``("subsample", s)``,
        ``("maxpool", kernel, stride, padding)``) between the image and the module (see :func:`reference_features`).
    """

    weight: str
    bias: str
    variant: Variant
    rows: tuple[int, ...]
    edges: tuple[float, ...]
    targets: tuple[bool, ...]
    measurement: Tensor
    feature_shape: tuple[int, ...]
    position: str | None = None
    image_channels: int = 0
    offset: float = 0.0
    stages: tuple[BNStage, ...] = ()
    spatial: tuple[tuple[object, ...], ...] = ()

    @property
    def num_bins(self) -> int:
        return len(self.rows)


def reference_features(images: Tensor, secrets: ImprintSecrets) -> Tensor:
    """The originals ``(N, C, H, W)`` in ``[0, 1]`` downsampled exactly as the linearised path downsamples them.

    BatchNorm acts per channel and increasingly, so it commutes with strided subsampling and max-pooling: the
    attack's de-normalised recovery of a deeper placement is compared with this.
    """
    x = images
    for op in secrets.spatial:
        if op[0] == "subsample":
            x = x[..., :: int(op[1]), :: int(op[1])]  # type: ignore[call-overload]
        else:
            x = nn.functional.max_pool2d(x, op[1], op[2], op[3])  # type: ignore[arg-type]
    return x


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


def recover_bins(weight_grad: Tensor, bias_grad: Tensor, secrets: ImprintSecrets, *, rtol: float = 1e-6
                 ) -> tuple[Tensor, Tensor]:
    """Per non-empty target bin, the ``∂b``-weighted mean of its inputs (the input itself when alone).

    Cumulative and one-shot modules: successive row differences (Eq. 4). Sparse modules: each row alone.
    Returns the features ``(B, m)`` (float64) and the bin indices ``(B,)``; bins whose bias-gradient
    difference is below ``rtol`` of the largest are empty.
    """
    rows = torch.as_tensor(secrets.rows, dtype=torch.long)
    gw, gb = weight_grad.double()[rows], bias_grad.double()[rows]
    if secrets.variant != "sparse":
        gw = gw - torch.cat([gw[1:], torch.zeros_like(gw[:1])])
        gb = gb - torch.cat([gb[1:], torch.zeros_like(gb[:1])])
    scale = gb.abs().max()
    keep = (gb.abs() > rtol * scale) & torch.as_tensor(secrets.targets) if scale > 0 else torch.zeros_like(gb) > 0
    bins = torch.nonzero(keep).flatten()
    return gw[bins] / gb[bins, None], bins


@ATTACKS.register("imprint")
@dataclass(frozen=True)
class ImprintAttack(Attack):
    """Read inputs out of an imprint module's gradient (Fowl et al. 2022, Eq. 4; sparse and one-shot variants).

    Needs ``view.secrets["imprint"]`` (:class:`~gradleak.attacks.imprint_model.ImprintSecrets`). Each update of
    the view is attacked separately (pass a securely aggregated update as one). Images come in bin order,
    ``valid`` marks single inputs; a deeper placement returns downsampled images (compare with
    :func:`~gradleak.attacks.imprint_model.reference_features`).

    Parameters
    ----------
    grid
        Quantisation levels of the clients' pixels (255 for 8-bit images; ``None``: not quantised). A single
        input lies on the grid within ``grid_tol`` levels; a mixture does not.
    grid_tol
        Largest distance (in levels) of a pixel from the grid for a valid recovery.
    range_tol
        Largest excursion of a valid recovery outside ``[0, 1]``.
    bin_tol
        Largest distance of a valid recovery's ``h`` outside its bin, in bin widths (bins drift under FedAvg).
    rtol
        Relative threshold under which a bin's bias gradient counts as zero (an empty bin).
    include_collisions
        Return collisions too (``valid = False``, clamped to ``[0, 1]``); otherwise only valid recoveries.
    block, position
        The module :meth:`modify_model` inserts (an :class:`~gradleak.attacks.imprint_model.ImprintBlock` or
        its options as a dict; default ``ImprintBlock()``: 128 brightness bins) and where
        (``None``: before the model; ``"layer1"``..``"layer4"`` of a ResNet). Only used by the malicious
        server's modification (``threat="malicious-model"``); the reading side needs only the secrets.
    """

    grid: int | None = 255
    grid_tol: float = 0.25
    range_tol: float = 2e-3
    bin_tol: float = 0.5
    rtol: float = 1e-6
    include_collisions: bool = True
    block: Any = None
    position: str | None = None

    max_updates = None
    modifies_model = True

    def __post_init__(self) -> None:
        from gradleak.attacks.imprint_model import ImprintBlock

        if self.block is None:
            object.__setattr__(self, "block", ImprintBlock())
        elif isinstance(self.block, Mapping):
            object.__setattr__(self, "block", ImprintBlock(**self.block))
        elif not isinstance(self.block, ImprintBlock):
            raise AttackError(f"imprint: block must be an ImprintBlock or a dict of its options, got {self.block!r}")

    def modify_model(self, model: nn.Module, image_shape: tuple[int, int, int], *, public: Tensor | None = None,
                     generator: torch.Generator | None = None) -> tuple[nn.Module, dict[str, Any]]:
        """Insert the imprint module (:func:`~gradleak.attacks.imprint_model.insert_imprint`); bins from the
        empirical CDF of ``public`` (normalised images the server holds) when the block's distribution asks."""
        from gradleak.attacks.imprint_model import insert_imprint

        if public is None and self.block.distribution == "empirical":
            raise AttackError("imprint: the empirical bin distribution needs public data the server holds "
                              "(simulate_and_attack(public=...)), or use block={'distribution': 'gaussian'}")
        modified, secrets = insert_imprint(model, self.block, image_shape, position=self.position, public=public,
                                           generator=generator)
        return modified, {"imprint": secrets}

    def validate(self, view: ServerView) -> None:
        super().validate(view)
        if not isinstance(view.secrets.get("imprint"), ImprintSecrets):
            raise AttackError("the imprint attack needs the server's secrets: ServerView(secrets={'imprint': "
                              "ImprintSecrets}) as returned by insert_imprint")

    def reconstruct(self, view: ServerView, generator: torch.Generator) -> Reconstruction:
        secrets: ImprintSecrets = view.secrets["imprint"]
        images, valid = [], []
        for update in view.updates:
            pixels, ok = self._attack_update(view, update, secrets)
            images.append(pixels)
            valid.append(ok)
        all_images, all_valid = torch.cat(images), torch.cat(valid)
        if not self.include_collisions:
            all_images, all_valid = all_images[all_valid], all_valid[all_valid]
        return Reconstruction(images=all_images.clamp(0.0, 1.0).float(), valid=all_valid)

    def _attack_update(self, view: ServerView, update: ClientUpdate, secrets: ImprintSecrets
                       ) -> tuple[Tensor, Tensor]:
        for name in (secrets.weight, secrets.bias):
            if name not in update.delta:
                raise AttackError(f"the update withholds {name!r}, the imprint module's {name.rsplit('.', 1)[1]}")
        features, bins = recover_bins(-update.delta[secrets.weight], -update.delta[secrets.bias], secrets,
                                      rtol=self.rtol)
        edges = torch.as_tensor(secrets.edges, dtype=torch.float64)
        h = features @ secrets.measurement.double()
        width = edges[bins + 1] - edges[bins]
        in_bin = (h >= edges[bins] - self.bin_tol * width) & (h <= edges[bins + 1] + self.bin_tol * width)
        pixels = self._pixels(features, view, update, secrets)
        ok = torch.isfinite(pixels).flatten(1).all(1) & in_bin
        flat = pixels.flatten(1).nan_to_num(nan=-1.0, posinf=-1.0, neginf=-1.0)
        ok &= ((flat >= -self.range_tol) & (flat <= 1 + self.range_tol)).all(1)
        if self.grid is not None:
            levels = flat * self.grid
            ok &= ((levels - levels.round()).abs() <= self.grid_tol).all(1)
        keep = torch.ones_like(ok)
        for i in torch.nonzero(ok).flatten().tolist():  # one copy of an input recovered from several rows
            if keep[i]:
                same = ok & ((flat - flat[i]).abs().max(1).values <= 0.5 / (self.grid or 255))
                same[: i + 1] = False
                keep &= ~same
        return pixels[keep].nan_to_num(nan=0.0, posinf=1.0, neginf=0.0), ok[keep]

    @staticmethod
    def _pixels(features: Tensor, view: ServerView, update: ClientUpdate, secrets: ImprintSecrets) -> Tensor:
        if secrets.position is None:
            return _denormalize(features.reshape(-1, *view.image_shape), view)
        c = secrets.image_channels
        x = features.reshape(-1, *secrets.feature_shape)[:, :c]
        bn_eval = view.recipe is not None and getattr(view.recipe, "bn_mode", "train") == "eval"
        for stage in reversed(secrets.stages):
            gamma, beta, mean, var = _bn_state(view.global_state, update, stage, c, bn_eval)
            x = (x - beta) / gamma * torch.sqrt(var + stage.eps) + mean
        return _denormalize(x, view)


def _denormalize(x: Tensor, view: ServerView) -> Tensor:
    mean = torch.as_tensor(view.mean, dtype=torch.float64).reshape(-1, 1, 1)
    std = torch.as_tensor(view.std, dtype=torch.float64).reshape(-1, 1, 1)
    return x.double() * std + mean


def _bn_state(state: GlobalState, update: ClientUpdate, stage: BNStage, c: int, bn_eval: bool
              ) -> tuple[Tensor, ...]:
    """Per-channel ``gamma, beta`` and the statistics the client's BatchNorm normalised with, shaped (c, 1, 1)."""
    name = stage.name
    p, b = state.params, state.buffers

    def get(key: str, source: Mapping[str, Tensor]) -> Tensor:
        return source[f"{name}.{key}"].double()[:c].reshape(c, 1, 1)

    gamma, beta = get("weight", p), get("bias", p)
    mean0, var0 = get("running_mean", b), get("running_var", b)
    if bn_eval:
        return gamma, beta, mean0, var0
    if f"{name}.running_mean" not in update.buffers:
        raise AttackError(f"the imprint sits behind BatchNorm {name!r} in training mode; undoing its batch "
                          "statistics needs the client's BatchNorm buffers, which this update withholds")
    mean1, var1 = get("running_mean", update.buffers), get("running_var", update.buffers)
    momentum = stage.momentum
    if momentum is None:
        momentum = 1.0 / float(update.buffers[f"{name}.num_batches_tracked"])
    count = update.num_examples * math.prod(stage.spatial)
    mean = (mean1 - (1 - momentum) * mean0) / momentum
    unbiased = (var1 - (1 - momentum) * var0) / momentum
    return gamma, beta, mean, unbiased * (count - 1) / count
