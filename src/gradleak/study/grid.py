"""Expand a study config into units of work: one FL run per setting, one attack per (setting, attack, round,
client). Every unit has a content-derived id, so a re-run finds the units it already finished and a changed
config re-runs only what changed.

A *setting* is one combination of the scenario grid and one defense arm's grid (e.g. ``local-gaussian
sigma0=10``). Its federation is simulated once and every attack reads its recorded updates.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradleak.errors import DatasetNotFoundError, GradleakError
from gradleak.study.config import AttackConfig, ConfigError, DefenseItem, ScenarioConfig, StudyConfig

__all__ = ["AttackUnit", "FLUnit", "Plan", "Setting", "build_scenario", "check_config", "fl_unit_id", "plan_study"]


def content_key(data: Any, length: int = 10) -> str:
    """A short stable hash of JSON-serialisable ``data``."""
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()[:48] or "x"


@dataclass(frozen=True)
class Setting:
    """One federation to simulate: the scenario (after its grid values) and the defenses in use."""

    key: str
    label: str
    arm: str
    scenario_values: dict[str, Any]
    defense_values: dict[str, Any]
    scenario_config: ScenarioConfig
    defenses: tuple[DefenseItem, ...]

    @property
    def slug(self) -> str:
        return f"{_slug(self.label)}-{self.key}"

    def defense_json(self) -> list[dict[str, Any]]:
        return [d.model_dump() for d in self.defenses]

    def scenario(self, name: str) -> Any:
        """The :class:`~gradleak.fl.presets.Scenario` with this setting's defenses."""
        return build_scenario(self.scenario_config, name).replace(defenses=tuple(self.defense_json()))


@dataclass(frozen=True)
class FLUnit:
    """Simulate one setting's federation: replicate 0 records every update (the attacks read it); replicates
    ``1 .. utility.seeds - 1`` retrain it with other training seeds to measure run-to-run variation."""

    id: str
    setting: Setting
    replicate: int = 0


@dataclass(frozen=True)
class AttackUnit:
    """Attack one client's recorded update of one round of one setting, and grade it."""

    id: str
    setting: Setting
    attack_index: int
    attack: AttackConfig
    round: int
    client: int


@dataclass(frozen=True)
class Plan:
    """Every unit of a study, FL units first."""

    config: StudyConfig
    settings: tuple[Setting, ...]
    fl_units: tuple[FLUnit, ...]
    attack_units: tuple[AttackUnit, ...]
    num_clients: int
    rounds: dict[str, int] = field(default_factory=dict)


def scenario_variants(sc: ScenarioConfig, where: str = "scenario") -> list[tuple[dict[str, Any], ScenarioConfig]]:
    """Every combination of the scenario grid, as ``(grid values, ScenarioConfig without grid)``."""
    import itertools

    keys = list(sc.grid)
    base = sc.model_dump(exclude={"grid"})
    out = []
    for values in itertools.product(*(sc.grid[k] for k in keys)):
        data = json.loads(json.dumps(base))
        for key, value in zip(keys, values, strict=True):
            head, _, rest = key.partition(".")
            if head == "recipe" and rest:
                data["recipe"][rest] = value
            elif head in ScenarioConfig.model_fields and not rest and head not in ("grid", "preset"):
                data[head] = value
            else:
                raise ConfigError(f"{where}.grid.{key}: not a scenario field; use a field of the scenario "
                                  "(rounds, sizes, image_size, ...) or recipe.<field> (recipe.epochs, ...)")
        try:
            variant = ScenarioConfig.model_validate(data)
        except Exception as exc:  # pydantic ValidationError: report the grid key
            raise ConfigError(f"{where}.grid: {_first_error(exc)}") from None
        out.append((dict(zip(keys, values, strict=True)), variant))
    return out


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        err = errors()[0]
        return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    return str(exc)


def build_scenario(sc: ScenarioConfig, name: str = "study") -> Any:
    """The :class:`~gradleak.fl.presets.Scenario` a scenario config describes (grid not applied)."""
    from gradleak.fl.presets import SCENARIOS, Scenario
    from gradleak.fl.recipe import LocalRecipe
    from gradleak.models import ModelSpec

    given = sc.overrides()
    recipe_changes = given.pop("recipe", {})
    if "model" in given:
        given["model"] = ModelSpec(given["model"]["name"], dict(given["model"].get("options", {})))
    for key in ("sizes", "batch_sizes"):
        if key in given:
            given[key] = tuple(given[key])
    if sc.preset is not None:
        try:
            scenario = SCENARIOS.create(sc.preset, **given)
        except GradleakError as exc:
            raise ConfigError(f"scenario.preset: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"scenario: {exc}") from None
        try:
            return scenario.replace(recipe=scenario.recipe.replace(**recipe_changes))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"scenario.recipe: {exc}") from None
    missing = [k for k in ("dataset", "model", "rounds") if k not in given] + ([] if recipe_changes else ["recipe"])
    if missing:
        raise ConfigError(f"scenario: without a preset, give {', '.join(missing)} (or name a preset: "
                          f"{', '.join(SCENARIOS.names())})")
    try:
        recipe = LocalRecipe(**recipe_changes)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"scenario.recipe: {exc}") from None
    return Scenario(name=name, recipe=recipe, **given)


def _defense_objects(arm_index: int, items: list[DefenseItem], grid_keys: list[str]) -> list[Any]:
    from gradleak.defenses import DEFENSES

    objects = []
    for item in items:
        where = f"defenses[{arm_index}]"
        try:
            factory = DEFENSES.get(item.name)
        except GradleakError as exc:
            raise ConfigError(f"{where}.name: {exc}") from None
        try:
            objects.append(factory(**item.options))
        except (TypeError, ValueError) as exc:
            part = "grid" if any(k.rpartition(".")[2] in item.options for k in grid_keys) else "options"
            raise ConfigError(f"{where}.{part}: {item.name}: {exc}") from None
    return objects


def _settings(config: StudyConfig) -> list[Setting]:
    variants = scenario_variants(config.scenario)
    arms = config.defenses or []
    expanded: list[tuple[str, dict[str, Any], list[DefenseItem]]] = []
    for i, arm in enumerate(arms):
        for values, items in arm.expand():
            _defense_objects(i, items, list(arm.grid))
            name = arm.label or arm.name or ("+".join(d.name for d in items) or "none")
            expanded.append((name, values, items))
    if not arms:
        expanded.append(("none", {}, []))
    settings = []
    for scenario_values, variant in variants:
        for arm_name, values, items in expanded:
            parts = [arm_name, *(f"{k}={v}" for k, v in values.items()),
                     *(f"{k}={v}" for k, v in scenario_values.items())]
            key = content_key({"scenario": variant.model_dump(), "defenses": [d.model_dump() for d in items],
                               "seed": config.seed, "name": config.name})
            settings.append(Setting(key=key, label=" ".join(parts), arm=arm_name, scenario_values=scenario_values,
                                    defense_values=values, scenario_config=variant, defenses=tuple(items)))
    return settings


def _check_data(scenario: Any) -> int:
    """Build the federation once (loads the data, cuts the partition); return the number of clients."""
    from gradleak.data.errors import PartitionError

    if scenario.data_root is not None and not Path(scenario.data_root).is_dir():
        raise ConfigError(f"scenario.data_root: folder {scenario.data_root} does not exist")
    if scenario.partition == "sizes" and scenario.batch_sizes and len(scenario.batch_sizes) != len(scenario.sizes):
        raise ConfigError(f"scenario.batch_sizes: {len(scenario.batch_sizes)} batch sizes for "
                          f"{len(scenario.sizes)} clients (sizes)")
    try:
        return len(federation_of(scenario).clients)
    except DatasetNotFoundError as exc:
        raise ConfigError(f"scenario.dataset: {exc}") from None
    except PartitionError as exc:
        raise ConfigError(f"scenario.sizes: {exc}") from None
    except GradleakError as exc:
        raise ConfigError(f"scenario.dataset: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"scenario: {exc}") from None


def _check_model(model_spec: Any, federation: Any) -> int:
    """Build the model and run it once on one client sample: it must take the data's input and return one logit
    per class. Returns the number of logits."""
    from gradleak.study.views import output_classes

    where = f"scenario.model: {model_spec.name!r}"
    try:
        model = model_spec.build()
    except GradleakError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {type(exc).__name__}: {exc}") from None
    shape = tuple(federation.clients[0].train.x.shape[1:])
    try:
        classes = output_classes(model, shape)
    except GradleakError as exc:
        raise ConfigError(f"{where} does not fit the data ({federation.scenario.dataset}, inputs "
                          f"{'×'.join(map(str, shape))}): {exc}") from None
    parts = [c.train.y for c in federation.clients] + [c.val.y for c in federation.clients if c.val is not None]
    parts.append(federation.test.y)
    labels = [int(y.max()) for y in parts if len(y)]
    top = max(labels) if labels else 0
    if classes <= top:
        raise ConfigError(f"{where} returns {classes} logits but the data has labels up to {top}; set the model's "
                          f"num_classes to at least {top + 1}")
    return classes


_FEDERATIONS: dict[str, Any] = {}


def federation_of(scenario: Any) -> Any:
    """The built federation of ``scenario`` (cached per process: the partition does not depend on defenses)."""
    import dataclasses

    key = content_key(repr(dataclasses.replace(scenario, defenses=())), 16)
    if key not in _FEDERATIONS:
        _FEDERATIONS[key] = scenario.replace(defenses=()).build()
    return _FEDERATIONS[key]


def _check_attack(index: int, attack: AttackConfig, num_clients: int, rounds: int) -> None:
    from gradleak.attacks.base import ATTACKS

    where = f"attacks[{index}]"
    try:
        ATTACKS.get(attack.name)
    except GradleakError as exc:
        raise ConfigError(f"{where}.name: {exc}") from None
    try:
        built = ATTACKS.create(attack.name, **attack.options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.options: {attack.name}: {exc}") from None
    iterations = getattr(built, "iterations", None)
    if iterations is not None and not (isinstance(iterations, int) and iterations >= 1):
        raise ConfigError(f"{where}.options.iterations: must be an integer >= 1, got {iterations!r} (an attack "
                          "that never optimises reports the prior, not the update)")
    if attack.clients != "all":
        bad = [c for c in attack.clients if c >= num_clients]
        if bad:
            raise ConfigError(f"{where}.clients: no client {bad[0]}; the scenario has clients 0..{num_clients - 1}")
    bad_rounds = [r for r in attack.rounds if not -rounds <= r < rounds]
    if bad_rounds:
        raise ConfigError(f"{where}.rounds: round {bad_rounds[0]} is outside the {rounds} rounds "
                          f"(0..{rounds - 1}, or -{rounds}..-1 from the end)")


def check_config(config: StudyConfig, *, source: str = "config") -> None:
    """Check names against the registries, options by constructing every object, rounds/clients against the
    scenario, and the dataset by loading it. Raises :class:`ConfigError` naming the field."""
    try:
        plan_study(config)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _resolve_clients(attack: AttackConfig, num_clients: int, seed: int) -> list[int]:
    clients = list(range(num_clients)) if attack.clients == "all" else sorted(set(attack.clients))
    if attack.victims is not None and attack.victims < len(clients):
        rng = np.random.default_rng([seed, 0x71C7])
        clients = sorted(int(c) for c in rng.choice(clients, size=attack.victims, replace=False))
    return clients


def plan_study(config: StudyConfig) -> Plan:
    """Expand ``config`` into its settings and units (validating everything on the way)."""
    settings = _settings(config)
    counts: dict[str, int] = {}
    rounds: dict[str, int] = {}
    checked: dict[str, int] = {}
    for s in settings:
        scenario = s.scenario(config.name)
        data_key = content_key(repr(scenario.replace(defenses=())), 16)
        if data_key not in checked:
            checked[data_key] = _check_data(scenario)
        counts[s.key], rounds[s.key] = checked[data_key], scenario.rounds
        model_spec, _, stages = _stages_or_fail(scenario)
        model_key = content_key([data_key, model_spec.to_json()], 16)
        if model_key not in checked:
            checked[model_key] = _check_model(model_spec, federation_of(scenario))
        if stages["aggregate"] and config.attacks:
            raise ConfigError(f"defenses: setting {s.label!r} uses secure aggregation; the server then sees no "
                              "client's own update, so the study's per-client attacks cannot run on it")
    fl_units = tuple(FLUnit(id=fl_unit_id(s, r), setting=s, replicate=r)
                     for s in settings for r in range(config.utility.seeds))
    units = []
    for i, attack in enumerate(config.attacks):
        for s in settings:
            _check_attack(i, attack, counts[s.key], rounds[s.key])
            for r in sorted({r % rounds[s.key] for r in attack.rounds}):
                for c in _resolve_clients(attack, counts[s.key], config.seed):
                    key = content_key({"setting": s.key, "attack": attack.model_dump(exclude={"label"}), "round": r,
                                       "client": c, "metrics": config.metrics.model_dump()})
                    uid = f"{s.slug}.a{i}-{_slug(attack.name)}-r{r:03d}-c{c:03d}-{key[:6]}"
                    units.append(AttackUnit(id=uid, setting=s, attack_index=i, attack=attack, round=r, client=c))
    num_clients = max(counts.values()) if counts else 0
    return Plan(config=config, settings=tuple(settings), fl_units=fl_units, attack_units=tuple(units),
                num_clients=num_clients, rounds=rounds)


def fl_unit_id(setting: Setting, replicate: int = 0) -> str:
    """The id of a setting's federation unit (replicate 0: the recorded one)."""
    return f"fl-{setting.slug}" + (f"-seed{replicate}" if replicate else "")


def _stages_or_fail(scenario: Any) -> tuple[Any, Any, dict[str, list[Any]]]:
    try:
        return scenario.defended()
    except (GradleakError, TypeError, ValueError) as exc:
        raise ConfigError(f"defenses: {exc}") from None
