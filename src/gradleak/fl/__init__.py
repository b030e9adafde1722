"""Federated learning: the client's local training (shared with the attacker), FedAvg, update records."""

from gradleak.fl.local import LocalData, LocalResult, StepRecord, local_update, model_state
from gradleak.fl.noise import NoiseContext
from gradleak.fl.recipe import LocalRecipe, StepTransform, batch_schedule

__all__ = [
    "LocalData",
    "LocalRecipe",
    "LocalResult",
    "NoiseContext",
    "StepRecord",
    "StepTransform",
    "batch_schedule",
    "local_update",
    "model_state",
]
