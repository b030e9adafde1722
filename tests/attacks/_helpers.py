"""Shared helpers of the optimisation-attack tests: tiny models and views built from a real client step."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from gradleak.data import load_dataset
from gradleak.fl import LocalData, LocalRecipe, local_update, model_state
from gradleak.records import ClientUpdate, GlobalState, ServerView


class Factory:
    """Zero-argument factory of copies of a module (one object, so views built from it compare equal)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self) -> nn.Module:
        return copy.deepcopy(self.module)


def mnist(n: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
    """``n`` bundled MNIST test images padded to 32×32 in [0, 1], labels, mean, std."""
    ds = load_dataset("sample-mnist", split="test")
    x, y = ds.tensors(list(range(offset, offset + n)), size=32)
    return x, y, ds.mean, ds.std


def tiny_bn_net(seed: int = 0, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, classes))


def client_view(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: LocalRecipe, *,
                mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,), factory: Factory | None = None,
                state: GlobalState | None = None, attack_state: GlobalState | None = None,
                prior: torch.Tensor | None = None, labels: bool = False, num_classes: int = 10) -> ServerView:
    """The view of a client that trained ``recipe`` on pixels ``x`` from ``state`` (default: the model's);
    the attacker is given ``attack_state`` (default: the same, i.e. the right checkpoint)."""
    if state is None:
        params, buffers = model_state(model)
        state = GlobalState(round=0, params=params, buffers=buffers)
    xn = (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    out = local_update(model, state.params, state.buffers, LocalData(xn, y), recipe)
    update = ClientUpdate(client=0, round=state.round, delta=out.delta(state.params), buffers=out.buffers,
                          num_examples=len(x))
    return ServerView(model=factory or Factory(model), global_state=attack_state or state, updates=(update,),
                      image_shape=tuple(x.shape[1:]), num_classes=num_classes, mean=tuple(mean), std=tuple(std),
                      labels=y if labels else None, num_images=len(x), batch_size=recipe.batch_size,
                      recipe=recipe, prior=prior)


