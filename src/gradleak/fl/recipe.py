"""The client's local training recipe and the batch schedule it implies."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

__all__ = ["LocalRecipe", "StepTransform", "batch_schedule"]


@runtime_checkable
class StepTransform(Protocol):
    """A transform of the gradient inside local training (DP-SGD clip+noise, per-step pruning, ...).

    ``per_sample`` transforms receive per-example gradients (leading batch dimension) and must reduce them
    to one batch gradient; the others receive the batch gradient. ``draw`` gives access to the step's
    injectable randomness (see :func:`gradleak.fl.noise.draw`), so an attacker can replay or optimise it.
    """

    per_sample: bool

    def __call__(self, grads: dict[str, Tensor], *, step: int, batch_size: int) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class LocalRecipe:
    """How a client trains locally; the attacker replays the same recipe.

    Parameters
    ----------
    optimizer
        ``"sgd"`` (optional momentum, dampening 0, Nesterov, weight decay — as ``torch.optim.SGD``) or
        ``"adam"`` (as ``torch.optim.Adam``, L2 weight decay, optional AMSGrad off).
    lr
        Learning rate at the first local step.
    lr_schedule
        ``"constant"``, ``"step"`` (multiply by ``lr_gamma`` every ``lr_step_size`` local steps, as
        ``StepLR`` stepped once per optimiser step) or ``"cosine"`` (cosine decay to 0 over the local steps).
    epochs
        Local epochs over the client's data; ignored when ``steps`` is set.
    steps
        Fixed number of local steps (cycling through epochs as needed).
    batch_size
        Examples per step; the last partial batch is kept unless ``drop_last``.
    shuffle, seed
        Reshuffle each epoch with a generator seeded by ``seed``; without shuffling batches follow data order.
    bn_mode
        ``"train"``: BatchNorm normalises with batch statistics and updates running statistics exactly as
        PyTorch (biased variance to normalise, unbiased for the running update, ``num_batches_tracked``);
        ``"eval"``: frozen running statistics, nothing updated.
    loss
        ``"cross_entropy"`` (hard labels or probability targets).
    step_transforms
        Gradient transforms applied at every step, in order (defenses of the ``step`` stage).
    """

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lr_schedule: Literal["constant", "step", "cosine"] = "constant"
    lr_step_size: int = 1
    lr_gamma: float = 1.0
    epochs: int = 1
    steps: int | None = None
    batch_size: int = 32
    shuffle: bool = True
    drop_last: bool = False
    seed: int = 0
    bn_mode: Literal["train", "eval"] = "train"
    loss: Literal["cross_entropy"] = "cross_entropy"
    step_transforms: tuple[Any, ...] = field(default=())

    def __post_init__(self) -> None:
        problems = []
        if self.optimizer not in ("sgd", "adam"):
            problems.append(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr must be a positive finite number, got {self.lr}")
        if self.momentum < 0 or self.weight_decay < 0:
            problems.append("momentum and weight_decay must be >= 0")
        if self.nesterov and self.momentum <= 0:
            problems.append("nesterov needs momentum > 0")
        if self.lr_schedule not in ("constant", "step", "cosine"):
            problems.append(f"lr_schedule must be constant, step or cosine, got {self.lr_schedule!r}")
        if self.lr_step_size < 1:
            problems.append("lr_step_size must be >= 1")
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            problems.append(f"steps must be >= 1 or None, got {self.steps}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.bn_mode not in ("train", "eval"):
            problems.append(f"bn_mode must be 'train' or 'eval', got {self.bn_mode!r}")
        if self.loss != "cross_entropy":
            problems.append(f"loss must be 'cross_entropy', got {self.loss!r}")
        if problems:
            raise ValueError("invalid LocalRecipe: " + "; ".join(problems))

    def replace(self, **changes: Any) -> LocalRecipe:
        """A copy with ``changes`` (e.g. the federation's per-round seed or learning rate)."""
        return dataclasses.replace(self, **changes)

    def lr_at(self, step: int, total_steps: int) -> float:
        """Learning rate used at local step ``step`` (0-based)."""
        if self.lr_schedule == "step":
            return self.lr * self.lr_gamma ** (step // self.lr_step_size)
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))
        return self.lr

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable fields (step transforms by their ``repr``), e.g. for update metadata."""
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        data["step_transforms"] = [repr(t) for t in self.step_transforms]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LocalRecipe:
        """Inverse of :meth:`to_json` for recipes without step transforms."""
        data = dict(data)
        if data.pop("step_transforms", []):
            raise ValueError("recipes with step transforms cannot be rebuilt from JSON; pass the transforms")
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)


def batch_schedule(num_examples: int, recipe: LocalRecipe) -> list[Tensor]:
    """Index tensors of the examples used at each local step.

    Epoch ``e`` is the ``e``-th permutation drawn from ``numpy.random.default_rng(recipe.seed)`` (numpy, so
    that the schedule can be built inside ``torch.func.vmap``, which forbids torch random ops), cut into
    batches of ``recipe.batch_size``. A client and an attacker with the same recipe get the same schedule.
    """
    if num_examples < 1:
        raise ValueError("a client needs at least one example to train")
    rng = np.random.default_rng(recipe.seed) if recipe.shuffle else None
    per_epoch = num_examples // recipe.batch_size if recipe.drop_last else -(-num_examples // recipe.batch_size)
    if per_epoch == 0:
        raise ValueError(
            f"drop_last with batch_size {recipe.batch_size} > {num_examples} examples leaves no batch"
        )
    total = recipe.steps if recipe.steps is not None else per_epoch * recipe.epochs
    schedule: list[Tensor] = []
    while len(schedule) < total:
        order = torch.from_numpy(rng.permutation(num_examples) if rng is not None else np.arange(num_examples))
        chunks: Sequence[Tensor] = order.split(recipe.batch_size)
        if recipe.drop_last and chunks[-1].numel() < recipe.batch_size:
            chunks = chunks[:-1]
        schedule.extend(chunks[: total - len(schedule)])
    return schedule
