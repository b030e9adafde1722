"""The study config's schema: pydantic models of a YAML study (parsed and checked by :mod:`gradleak.study.parse`).

A study names a scenario (a preset from :data:`gradleak.fl.presets.SCENARIOS` with overrides, or explicit
parts), the defense settings (arms of an ablation, each expanded over a grid of parameters), the attacks (which
clients, which rounds, how many victims), the metrics and the output directory. Every problem is reported as
one :class:`ConfigError` naming the field (``attacks[0].name: unknown attack 'dgl'. Did you mean 'dlg'? ...``),
before anything runs.

Example
-------
.. code-block:: yaml

    name: sigma-sweep
    output: runs/sigma-sweep
    scenario:
      preset: hospital
      dataset: sample-pneumoniamnist
      rounds: 3
      model: {name: convnet, options: {num_classes: 2, in_channels: 1, image_size: 28, width: 8}}
    defenses:
      - name: local-gaussian
        grid: {sigma0: [0, 10, 30]}
    attacks:
      - name: fedavg-inversion
        options: {iterations: 200}
        clients: [0, 4, 8]
        rounds: [0, -1]          # negative: counted from the last round
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator

from gradleak.errors import GradleakError

__all__ = [
    "AttackConfig",
    "ConfigError",
    "DefenseArm",
    "DefenseItem",
    "ExecutorConfig",
    "MetricsConfig",
    "ModelConfig",
    "PriorConfig",
    "ScenarioConfig",
    "StudyConfig",
    "UtilityConfig",
]


class ConfigError(GradleakError, ValueError):
    """A study config that cannot run; the message names the field (``attacks[0].name: ...``)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """A model by registry name (``gradleak list models``) or ``package.module:factory``, with options."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class ScenarioConfig(_Strict):
    """The federation. ``preset`` names a scenario of ``gradleak list scenarios``; every other field left out
    keeps the preset's value. Without a preset, ``dataset``, ``model``, ``recipe`` and ``rounds`` are required.

    ``recipe`` holds :class:`gradleak.fl.LocalRecipe` fields merged into the preset's recipe. ``grid`` varies
    scenario fields (``rounds``, ``recipe.epochs``, ``recipe.batch_size``, ...) over lists of values; every
    combination is a separate federation.
    """

    preset: str | None = None
    dataset: str | None = None
    data_root: str | None = None
    model: ModelConfig | None = None
    recipe: dict[str, Any] = Field(default_factory=dict)
    rounds: PositiveInt | None = None
    partition: Literal["sizes", "iid", "dirichlet"] | None = None
    num_clients: PositiveInt | None = None
    sizes: list[PositiveInt] | None = None
    batch_sizes: list[PositiveInt] | None = None
    balanced: bool | None = None
    alpha: float | None = Field(default=None, gt=0)
    image_size: PositiveInt | None = None
    train_split: str | None = None
    val_split: str | None = None
    val_per_client: NonNegativeInt | None = None
    test_split: str | None = None
    fraction: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    grid: dict[str, list[Any]] = Field(default_factory=dict)

    def overrides(self) -> dict[str, Any]:
        """The fields given (not ``None``), without ``preset`` and ``grid``."""
        return {k: v for k, v in self.model_dump(exclude={"preset", "grid"}).items() if v not in (None, {})}


class DefenseItem(_Strict):
    """One defense by registry name (``gradleak list defenses``) with options."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class DefenseArm(_Strict):
    """One arm of the defense ablation: a single defense (``name``/``options``) or a ``stack`` applied together
    (``stack: []`` is the undefended baseline). ``grid`` maps an option (``sigma0``; for a stack
    ``local-gaussian.sigma0``) to the values to try; each value is one setting."""

    name: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    stack: list[DefenseItem] | None = None
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    label: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> DefenseArm:
        if (self.name is None) == (self.stack is None):
            raise ValueError("give either name (one defense) or stack (a list of defenses, [] for none)")
        if self.stack is not None and self.options:
            raise ValueError("options belong to the items of a stack")
        return self

    def items(self) -> list[DefenseItem]:
        return [DefenseItem(name=self.name, options=self.options)] if self.name is not None else list(self.stack or [])

    def expand(self) -> list[tuple[dict[str, Any], list[DefenseItem]]]:
        """``(grid values, defenses)`` for every combination of the grid (one entry without a grid)."""
        keys = list(self.grid)
        out = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            chosen = dict(zip(keys, values, strict=True))
            items = []
            for item in self.items():
                options = dict(item.options)
                for key, value in chosen.items():
                    target, _, param = key.rpartition(".")
                    if (self.name is not None and not target) or target == item.name:
                        options[param] = value
                items.append(DefenseItem(name=item.name, options=options))
            out.append((chosen, items))
        return out


class PriorConfig(_Strict):
    """The attacker's domain prior: the mean of ``images`` images of ``split`` (data the server holds, never
    a client's), or ``kind: none``."""

    kind: Literal["mean", "none"] = "mean"
    split: str = "test"
    images: PositiveInt = 64


class AttackConfig(_Strict):
    """An attack (``gradleak list attacks``) with its options, on which clients (store ids, 0-based), which rounds
    (negative counts from the last), and at most ``victims`` of those clients. Attacks that modify the model (a
    malicious server, e.g. ``imprint``) send it to each chosen client in each chosen round."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    clients: list[NonNegativeInt] | Literal["all"] = "all"
    rounds: list[int] = Field(default_factory=lambda: [-1], min_length=1)
    victims: PositiveInt | None = None
    threat: Literal["honest", "informed"] = "honest"
    prior: PriorConfig = Field(default_factory=PriorConfig)
    public: PriorConfig = Field(default_factory=lambda: PriorConfig(images=256))
    label: str | None = None


class MetricsConfig(_Strict):
    """What is measured on every attack: SSIM/PSNR/MSE after optimal pairing, ASR at ``tau`` and label accuracy
    always; RDLV when the attack has a prior; ``iip`` (Yin et al.) and ``iip_fl`` (all clients' images) in
    ``iip_space``; embedding cosine and t-SNE embeddings in ``embedding_space`` (``model``: the round's global
    model's penultimate features). Confidence intervals: ``bootstrap_resamples`` at ``confidence``."""

    tau: float = Field(default=0.5, ge=-1, le=1)
    iip: bool = True
    iip_space: Literal["pixel", "model"] = "pixel"
    embedding_space: Literal["pixel", "model"] = "model"
    bootstrap_resamples: PositiveInt = 1000
    confidence: float = Field(default=0.95, gt=0, lt=1)


class UtilityConfig(_Strict):
    """How a setting's utility is measured: its federation is trained ``seeds`` times (different training seeds:
    initialisation, shuffling, noise; the same clients and data) and the final test accuracy is reported as mean
    and standard deviation over them, so that an accuracy difference between settings can be told apart from
    run-to-run variation. The first run is the recorded one the attacks read; the others are not recorded."""

    seeds: PositiveInt = 1


class ExecutorConfig(_Strict):
    """``local`` (in-process, the default) or ``ray`` (``ray.init(address)``, local when ``address`` is null)."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = None
    num_cpus: PositiveInt | None = None


class StudyConfig(_Strict):
    """A whole study (see the module docstring)."""

    name: str = "study"
    output: str = "gradleak-out/study"
    seed: int = 0
    threads: PositiveInt = 1
    device: str = "cpu"
    scenario: ScenarioConfig
    defenses: list[DefenseArm] = Field(default_factory=list)
    attacks: list[AttackConfig] = Field(default_factory=list)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    utility: UtilityConfig = Field(default_factory=UtilityConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)

