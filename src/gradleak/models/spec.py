"""A model as data: a registry name and its options (:class:`ModelSpec`), saved with every record so a run's
model can be rebuilt anywhere; ``model_defenses`` in its options apply model-stage defenses when it is built."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from gradleak.defenses import ModelDefense, resolve_defenses
from gradleak.models.zoo import create_model

__all__ = ["ModelSpec"]


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model: a registry name (or ``package.module:factory``) and its options.

    Records carry a spec rather than a module so they can be saved as JSON and rebuilt anywhere.
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        """Instantiate the model (fresh random weights; load a state to use it).

        ``options["model_defenses"]`` (a list of defense names or ``{"name", "options"}`` dicts) applies
        model-stage defenses (dropout rate, PRECODE, CVB) to the built architecture.
        """
        options = dict(self.options)
        defenses = options.pop("model_defenses", [])
        model = create_model(self.name, **options)
        if defenses:
            for defense in resolve_defenses(defenses):
                if not isinstance(defense, ModelDefense):
                    raise ValueError(f"model_defenses holds {defense.name!r}, a {defense.stage}-stage defense")
                model = defense.apply(model)
        return model

    def __call__(self) -> nn.Module:
        """:meth:`build`: a spec is a model factory (``ServerView.model``, ``Federation.model_spec``)."""
        return self.build()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelSpec:
        return cls(name=str(data["name"]), options=dict(data.get("options", {})))
