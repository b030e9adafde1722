"""Run a study: plan the units, run the unfinished ones on an executor, write the tables.

Executors (registered in :data:`EXECUTORS`): ``local`` runs units one after the other in this process;
``ray`` runs them as Ray tasks (``ray.init()`` locally, or on the cluster at ``executor.address``), the
attacks of a setting once its federation is recorded. Units are seeded by their ids and run with
``config.threads`` torch threads, so both executors give the same tables.

Resume: a unit is finished when its result file exists (written atomically, last). Running a study again runs
only the unfinished units; a federation interrupted half-way continues from its recorded rounds (exactly, see
:class:`gradleak.fl.federation.FedAvgSimulation`). A study killed at any point (SIGKILL included) and run
again gives the same tables as an uninterrupted run.

Examples
--------
>>> result = run_study(load_config("study.yaml"))           # doctest: +SKIP
>>> result.results_csv                                       # doctest: +SKIP
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gradleak.errors import GradleakError
from gradleak.fl.federation import FederationHook
from gradleak.fl.safefile import atomic_write_bytes
from gradleak.registry import Registry
from gradleak.study.config import StudyConfig
from gradleak.study.grid import AttackUnit, FLUnit, Plan, fl_unit_id, plan_study
from gradleak.study.results import RESULT_COLUMNS, SETTING_COLUMNS, load_unit, unit_done, write_table
from gradleak.study.units import run_attack_unit, run_fl_unit

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "RayExecutor", "StudyResult", "run_study", "write_tables"]

#: ``(unit, record)`` callback run in the driver when a unit finishes.
Done = Callable[[Any, dict[str, Any]], None]


@dataclass(frozen=True)
class StudyResult:
    """Where a study's outputs went, and how many units ran now or were already finished."""

    out: Path
    results_csv: Path
    results_parquet: Path
    settings_csv: Path
    settings_parquet: Path
    ran: int
    skipped: int


class Executor(ABC):
    """Runs units; ``run(config, out, fl_units, attack_units, fl_done, attack_done)``."""

    @abstractmethod
    def run(self, config: StudyConfig, out: Path, fl_units: Sequence[FLUnit], attack_units: Sequence[AttackUnit],
            fl_done: Done, attack_done: Done, round_hook: FederationHook | None = None) -> None:
        """Run every unit, calling ``fl_done``/``attack_done`` with each finished unit's record."""


EXECUTORS: Registry[Executor] = Registry("executor")


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """In-process: federations first, then attacks, one unit at a time."""

    def run(self, config: StudyConfig, out: Path, fl_units: Sequence[FLUnit], attack_units: Sequence[AttackUnit],
            fl_done: Done, attack_done: Done, round_hook: FederationHook | None = None) -> None:
        for fl_unit in fl_units:
            fl_done(fl_unit, run_fl_unit(config, fl_unit, out, hooks=[round_hook] if round_hook else []))
        for attack_unit in attack_units:
            attack_done(attack_unit, run_attack_unit(config, attack_unit, out))


def _remote_fl(config: StudyConfig, unit: FLUnit, out: str) -> dict[str, Any]:
    return run_fl_unit(config, unit, Path(out))


def _remote_attack(config: StudyConfig, unit: AttackUnit, out: str, _after: Any = None) -> dict[str, Any]:
    return run_attack_unit(config, unit, Path(out))


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Ray tasks: one per unit, each attack after its setting's federation. Connects to ``address`` (or starts
    a local Ray with ``num_cpus``) unless Ray is already initialised; shuts down only what it started."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        self.address, self.num_cpus = address, num_cpus

    def run(self, config: StudyConfig, out: Path, fl_units: Sequence[FLUnit], attack_units: Sequence[AttackUnit],
            fl_done: Done, attack_done: Done, round_hook: FederationHook | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise GradleakError("the ray executor needs Ray: pip install 'gradleak[flower]' (or ray)") from None
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, num_cpus=self.num_cpus, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        try:
            fl_task = ray.remote(num_cpus=1, max_retries=0)(_remote_fl)
            attack_task = ray.remote(num_cpus=1, max_retries=0)(_remote_attack)
            pending: dict[Any, tuple[Done, Any]] = {}
            fl_refs: dict[str, Any] = {}
            for unit in fl_units:
                ref = fl_task.remote(config, unit, str(out))
                if unit.replicate == 0:  # the recorded federation: the one the setting's attacks read
                    fl_refs[unit.setting.key] = ref
                pending[ref] = (fl_done, unit)
            for attack_unit in attack_units:  # a pending federation's ref as argument: Ray runs the attack after it
                ref = attack_task.remote(config, attack_unit, str(out), fl_refs.get(attack_unit.setting.key))
                pending[ref] = (attack_done, attack_unit)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    callback, unit = pending.pop(ref)
                    callback(unit, ray.get(ref))
        finally:
            if started:
                ray.shutdown()


def _progress(enabled: bool, console: Any = None) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not enabled, console=console)


class _RoundBar(FederationHook):
    """Advances the rounds bar of the federation being simulated (in-process executor)."""

    def __init__(self, bar: Any, task: Any) -> None:
        self.bar, self.task = bar, task

    def on_round_end(self, round: int, state: Any, metrics: Any) -> None:
        self.bar.update(self.task, advance=1)


def utility_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation of the final test accuracy over a setting's replicate federations."""
    values = [float(r["final_test_accuracy"]) for r in records if r.get("final_test_accuracy") is not None]
    mean = sum(values) / len(values) if values else None
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if mean is not None and len(values) > 1 \
        else None
    return {"accuracy_mean": mean, "accuracy_sd": sd, "seeds": len(values)}


def write_tables(plan: Plan, out: Path) -> tuple[Path, Path, Path, Path]:
    """Rebuild ``results.{csv,parquet}`` and ``settings.{csv,parquet}`` from the finished units, in plan order
    (``settings``: one row per setting, its recorded federation's numbers and the utility over its replicates)."""
    keep = ("history", "defenses", "seconds", "kind", "attack_config", "attack_index")
    settings = []
    for setting in plan.settings:
        replicates = [load_unit(out, u.id) for u in plan.fl_units if u.setting.key == setting.key
                      and unit_done(out, u.id)]
        recorded = next((r for r in replicates if r.get("replicate", 0) == 0), None)
        if recorded is None:
            continue
        row = {k: v for k, v in recorded.items() if k not in keep and k not in ("unit", "replicate", "training_seed")}
        settings.append({**row, **utility_summary(replicates)})
    rows = []
    for unit in plan.attack_units:
        if unit_done(out, unit.id):
            record = load_unit(out, unit.id)
            rows.append({k: v for k, v in record.items() if k not in keep and not k.endswith("_per_image")
                         and k != "labels"})
    results = write_table(rows, out / "results", RESULT_COLUMNS)
    setting_paths = write_table(settings, out / "settings", SETTING_COLUMNS)
    return (*results, *setting_paths)


def _write_plan(plan: Plan, out: Path) -> None:
    config = plan.config
    data = {
        "config": config.model_dump(mode="json"),
        "settings": [{"key": s.key, "slug": s.slug, "label": s.label, "arm": s.arm,
                      "defense_values": s.defense_values, "scenario_values": s.scenario_values,
                      "defenses": s.defense_json(), "unit": fl_unit_id(s),
                      "replicates": [u.id for u in plan.fl_units if u.setting.key == s.key]} for s in plan.settings],
        "attack_units": [{"unit": u.id, "setting": u.setting.key, "attack": u.attack.name, "round": u.round,
                          "client": u.client} for u in plan.attack_units],
    }
    atomic_write_bytes(out / "study.json", json.dumps(data, indent=1, default=str).encode())


def run_study(config: StudyConfig, *, out: Path | None = None, executor: Executor | None = None,
              progress: bool = True, console: Any = None) -> StudyResult:
    """Run every unfinished unit of ``config`` and write the tables (see the module docstring).

    Parameters
    ----------
    config
        A validated study config.
    out
        Output folder (default ``config.output``).
    executor
        Default: the one ``config.executor`` names.
    progress
        Show Rich progress bars (federations, rounds, attacks).
    """
    out = Path(out if out is not None else config.output)
    plan = plan_study(config)
    out.mkdir(parents=True, exist_ok=True)
    _write_plan(plan, out)
    if executor is None:
        kind = config.executor.kind
        executor = (RayExecutor(config.executor.address, config.executor.num_cpus) if kind == "ray"
                    else EXECUTORS.create(kind))
    fl_todo = [u for u in plan.fl_units if not unit_done(out, u.id)]
    attack_todo = [u for u in plan.attack_units if not unit_done(out, u.id)]
    skipped = len(plan.fl_units) + len(plan.attack_units) - len(fl_todo) - len(attack_todo)
    bar = _progress(progress, console)
    with bar:
        fl_task = bar.add_task("federations", total=len(plan.fl_units), completed=len(plan.fl_units) - len(fl_todo))
        rounds_total = sum(plan.rounds[u.setting.key] for u in fl_todo)
        rounds_task = bar.add_task("  FedAvg rounds", total=rounds_total, visible=bool(fl_todo))
        attack_task = bar.add_task("attacks", total=len(plan.attack_units),
                                   completed=len(plan.attack_units) - len(attack_todo))

        def fl_done(unit: FLUnit, record: dict[str, Any]) -> None:
            bar.update(fl_task, advance=1, description=f"federations (last: {unit.setting.label})")

        def attack_done(unit: AttackUnit, record: dict[str, Any]) -> None:
            ssim = record.get("ssim_mean")
            text = "–" if ssim is None else f"{ssim:.3f}"
            bar.update(attack_task, advance=1, description=f"attacks (last: {unit.attack.name} client {unit.client} "
                                                           f"round {unit.round}: SSIM {text})")

        threads = torch.get_num_threads()  # units set config.threads; the caller's setting comes back after
        try:
            executor.run(config, out, fl_todo, attack_todo, fl_done, attack_done,
                         round_hook=_RoundBar(bar, rounds_task))
        finally:
            torch.set_num_threads(threads)
    paths = write_tables(plan, out)
    return StudyResult(out, *paths, ran=len(fl_todo) + len(attack_todo), skipped=skipped)
