"""One client step: local training from the global model, the update it sends (after its update-stage defenses),
and the randomness it drew. :class:`~gradleak.fl.federation.FedAvgSimulation`,
:func:`gradleak.audit.simulate_and_attack` and a study's malicious server all produce client updates through
:func:`client_step`, so what an attack sees is what a simulated client sends.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gradleak.fl.local import LocalData, local_update
from gradleak.fl.recipe import LocalRecipe
from gradleak.records import ClientUpdate, GlobalState

__all__ = ["ClientStep", "ModuleCopies", "UpdateTransform", "client_step"]

#: an update-stage defense: ``(update, generator) -> update``
UpdateTransform = Callable[[ClientUpdate, torch.Generator], ClientUpdate]


@dataclass(frozen=True)
class ClientStep:
    """What one client step produced: the update it sends and the noise its modules drew (dropout masks,
    bottleneck ε, DP noise; a well-informed attacker is given it)."""

    update: ClientUpdate
    noise: dict[str, Tensor]


def client_step(model: nn.Module, state: GlobalState, data: LocalData, recipe: LocalRecipe, *, client: int,
                defenses: Sequence[UpdateTransform] = (), generator: torch.Generator | None = None) -> ClientStep:
    """Train ``model``'s architecture from ``state`` on ``data`` with ``recipe`` (drawing from ``generator``),
    then apply the update-stage ``defenses`` in order (same generator).

    The update's metadata records the recipe, the number of local steps and the mean training loss.
    """
    out = local_update(model, state.params, state.buffers, data, recipe, generator=generator)
    update = ClientUpdate(
        client=client,
        round=state.round,
        delta=out.delta(state.params),
        buffers=out.buffers,
        num_examples=len(data),
        metadata={
            "recipe": recipe.to_json(),
            "local_steps": len(out.per_step),
            "train_loss": float(torch.stack([s.loss for s in out.per_step]).mean()),
        },
    )
    for defense in defenses:
        update = defense(update, generator)  # type: ignore[arg-type]
    return ClientStep(update=update, noise=dict(out.noise))


class ModuleCopies:
    """A zero-argument factory of copies of one module (``ServerView.model`` for an architecture given as a
    module: the model a defense or a malicious server changed)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self) -> nn.Module:
        return copy.deepcopy(self.module)
