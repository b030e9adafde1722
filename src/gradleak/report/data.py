"""A study's results as the report reads them: the plan, the per-unit records, and grouped statistics."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradleak.errors import GradleakError
from gradleak.metrics import bootstrap_ci
from gradleak.study.results import load_unit, unit_done

__all__ = ["Band", "StudyData", "band", "load_study"]


@dataclass(frozen=True)
class StudyData:
    """A study folder: its config, settings (with FL records) and finished attack units (records)."""

    out: Path
    config: dict[str, Any]
    settings: list[dict[str, Any]]
    attacks: list[dict[str, Any]]
    missing: int = 0
    attack_labels: dict[int, str] = field(default_factory=dict)
    missing_settings: tuple[str, ...] = ()
    """Keys of the settings with unfinished attack units."""

    @property
    def resamples(self) -> int:
        return int(self.config.get("metrics", {}).get("bootstrap_resamples", 1000))

    @property
    def confidence(self) -> float:
        return float(self.config.get("metrics", {}).get("confidence", 0.95))

    @property
    def tau(self) -> float:
        return float(self.config.get("metrics", {}).get("tau", 0.5))

    def setting(self, key: str) -> dict[str, Any]:
        return next(s for s in self.settings if s["key"] == key)

    def by_attack(self) -> dict[int, list[dict[str, Any]]]:
        groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row in self.attacks:
            groups[int(row["attack_index"])].append(row)
        return dict(groups)

    def numeric_params(self) -> list[str]:
        """Defense/scenario grid parameters (``defense.sigma0``) with at least two numeric values."""
        names: dict[str, set[float]] = defaultdict(set)
        for s in self.settings:
            for prefix, values in (("defense", s["defense_values"]), ("scenario", s["scenario_values"])):
                for k, v in values.items():
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        names[f"{prefix}.{k}"].add(float(v))
        return [n for n, vals in names.items() if len(vals) >= 2]


def load_study(out: str | Path) -> StudyData:
    """Read ``out/study.json`` and every finished unit it lists."""
    out = Path(out)
    plan_path = out / "study.json"
    if not plan_path.is_file():
        raise GradleakError(f"{out}: not a study output folder (no study.json); run a study first "
                            "(gradleak run CONFIG or gradleak demo)")
    plan = json.loads(plan_path.read_text())
    settings = []
    for s in plan["settings"]:
        if unit_done(out, s["unit"]):
            replicates = [load_unit(out, u) for u in s.get("replicates", [s["unit"]]) if unit_done(out, u)]
            settings.append({**s, "fl": load_unit(out, s["unit"]), "replicate_records": replicates})
    attacks, missing, missing_settings = [], 0, set()
    for u in plan["attack_units"]:
        if unit_done(out, u["unit"]):
            attacks.append(load_unit(out, u["unit"]))
        else:
            missing += 1
            missing_settings.add(u.get("setting"))
    if not settings:
        raise GradleakError(f"{out}: no finished federation yet; run the study (gradleak run CONFIG)")
    keys = {s["key"] for s in settings}
    attacks = [a for a in attacks if a.get("setting") in keys]
    labels = {i: a.get("label") or a["name"] for i, a in enumerate(plan["config"].get("attacks", []))}
    return StudyData(out=out, config=plan["config"], settings=settings, attacks=attacks, missing=missing,
                     attack_labels=labels, missing_settings=tuple(sorted(str(k) for k in missing_settings)))


@dataclass(frozen=True)
class Band:
    """Mean and bootstrap confidence band of a quantity at each x."""

    x: list[float]
    mean: list[float]
    low: list[float]
    high: list[float]
    n: list[int]


def finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and isinstance(v, int | float) and math.isfinite(float(v))]


def band(rows: Sequence[dict[str, Any]], x: Callable[[dict[str, Any]], Any], values: Callable[[dict[str, Any]], list],
         *, resamples: int, confidence: float, seed: int = 0, min_x: int = 2) -> Band | None:
    """Group ``rows`` by ``x(row)`` and bootstrap the mean of the pooled ``values(row)`` (a point with one value
    has no band); ``None`` when fewer than ``min_x`` x values have data."""
    groups: dict[float, list[float]] = defaultdict(list)
    for row in rows:
        xv = x(row)
        if xv is None:
            continue
        groups[float(xv)].extend(finite(values(row)))
    xs = sorted(k for k, v in groups.items() if v)
    if len(xs) < max(1, min_x):
        return None
    out = Band([], [], [], [], [])
    for xv in xs:
        ci = bootstrap_ci(np.asarray(groups[xv]), n_resamples=resamples, confidence=confidence, seed=seed)
        out.x.append(xv)
        out.mean.append(ci.estimate)
        out.low.append(ci.low)
        out.high.append(ci.high)
        out.n.append(len(groups[xv]))
    return out


def param_value(data: StudyData, row: dict[str, Any], param: str) -> float | None:
    """The value of grid parameter ``param`` (``defense.sigma0``) in the setting of ``row``."""
    setting = data.setting(row["setting"])
    prefix, _, name = param.partition(".")
    value = setting["defense_values" if prefix == "defense" else "scenario_values"].get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def short(param: str) -> str:
    return param.partition(".")[2] or param
