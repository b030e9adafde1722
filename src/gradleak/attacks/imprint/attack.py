"""The reading side of the imprint attack: bins out of the measuring layer's gradient (Eq. 4), validity checks,
and undoing the linearised path's BatchNorm."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gradleak.attacks.base import ATTACKS, Attack, AttackError
from gradleak.attacks.imprint.module import ImprintBlock, insert_imprint
from gradleak.attacks.imprint.secrets import BNStage, ImprintSecrets
from gradleak.records import ClientUpdate, GlobalState, Reconstruction, ServerView

__all__ = ["ImprintAttack", "recover_bins"]


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

    Needs ``view.secrets`` (:class:`~gradleak.attacks.imprint.ImprintSecrets`). Each update of
    the view is attacked separately (pass a securely aggregated update as one). Images come in bin order,
    ``valid`` marks single inputs; a deeper placement returns downsampled images (compare with
    :func:`~gradleak.attacks.imprint.reference_features`).

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
        The module :meth:`modify_model` inserts (an :class:`~gradleak.attacks.imprint.ImprintBlock` or
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
        if self.block is None:
            object.__setattr__(self, "block", ImprintBlock())
        elif isinstance(self.block, Mapping):
            object.__setattr__(self, "block", ImprintBlock(**self.block))
        elif not isinstance(self.block, ImprintBlock):
            raise AttackError(f"imprint: block must be an ImprintBlock or a dict of its options, got {self.block!r}")

    def modify_model(self, model: nn.Module, image_shape: tuple[int, int, int], *, public: Tensor | None = None,
                     generator: torch.Generator | None = None) -> tuple[nn.Module, ImprintSecrets]:
        """Insert the imprint module (:func:`~gradleak.attacks.imprint.insert_imprint`); bins from the
        empirical CDF of ``public`` (normalised images the server holds) when the block's distribution asks."""
        if public is None and self.block.distribution == "empirical":
            raise AttackError("imprint: the empirical bin distribution needs public data the server holds "
                              "(simulate_and_attack(public=...)), or use block={'distribution': 'gaussian'}")
        modified, secrets = insert_imprint(model, self.block, image_shape, position=self.position, public=public,
                                           generator=generator)
        return modified, secrets

    def validate(self, view: ServerView) -> None:
        super().validate(view)
        if not isinstance(view.secrets, ImprintSecrets):
            raise AttackError("the imprint attack needs the server's secrets: ServerView(secrets=ImprintSecrets) as "
                              "returned by insert_imprint")

    def reconstruct(self, view: ServerView, generator: torch.Generator) -> Reconstruction:
        secrets = view.secrets
        assert secrets is not None  # validate() checked it
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
