"""``gradleak list``, ``simulate`` and ``inspect``: the registries, a simulated run recorded into a store, and
the check of a store."""

from __future__ import annotations

import csv
import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from gradleak.cli.app import app, console, fail
from gradleak.errors import GradleakError

if TYPE_CHECKING:
    pass

def _registries() -> dict[str, object]:
    """The registries ``gradleak list`` can print, by plural name."""
    import gradleak.attacks  # noqa: F401  (registers every attack)
    from gradleak.attacks.base import ATTACKS
    from gradleak.data import DATASETS
    from gradleak.defenses import DEFENSES
    from gradleak.fl.presets import SCENARIOS
    from gradleak.metrics import METRICS
    from gradleak.study.runner import EXECUTORS

    return {"attacks": ATTACKS, "defenses": DEFENSES, "datasets": DATASETS, "scenarios": SCENARIOS,
            "metrics": METRICS, "executors": EXECUTORS}


class ListKind(StrEnum):
    """What ``gradleak list`` can list."""

    attacks = "attacks"
    defenses = "defenses"
    models = "models"
    datasets = "datasets"
    scenarios = "scenarios"
    metrics = "metrics"
    executors = "executors"


@app.command("list")
def list_(what: ListKind = typer.Argument(..., help="what to list", show_default=False)) -> None:
    """List what is registered: attacks, defenses, models (with parameter counts), datasets, scenario presets,
    per-image metrics or study executors, each with the first sentence of its description."""
    from rich.markup import escape

    from gradleak.models import describe_models

    what = what.value  # type: ignore[assignment]
    registries = _registries()
    table = Table()
    if what == "models":
        for col in ("model", "input (C×H×W)", "benchmark dataset", "parameters", "description"):
            table.add_column(col)
        for row in describe_models():
            shape = "×".join(str(s) for s in row["input_shape"])
            table.add_row(row["name"], shape, row["dataset"], f"{row['parameters']:,}", row["description"])
    elif what in registries:
        registry = registries[what]
        table.add_column(what[:-1])
        if what == "defenses":
            table.add_column("stage")
        table.add_column("description")
        for name in registry.names():  # type: ignore[attr-defined]
            extra = [str(getattr(registry.get(name), "stage", ""))] if what == "defenses" else []  # type: ignore[attr-defined]
            table.add_row(name, *extra, escape(registry.describe(name)))  # type: ignore[attr-defined]
    else:
        fail(GradleakError(f"unknown list {what!r}; choose one of models, {', '.join(registries)}"))
    console.print(table)


def _write_history(out: Path, history: list) -> tuple[Path, Path]:
    rows = [m.to_json() for m in history]
    json_path, csv_path = out / "history.json", out / "history.csv"
    json_path.write_text(json.dumps(rows, indent=2))
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["round", "mean_val_accuracy", "test_accuracy", "test_loss", "train_loss"])
        for m in history:
            writer.writerow([m.round, m.mean_val_accuracy, m.test_accuracy, m.test_loss, m.train_loss])
    return json_path, csv_path


def _history_table(history: list) -> Table:
    table = Table(title="global model after each round")
    for col in ("round", "mean val acc", "test acc", "test loss", "mean client train loss"):
        table.add_column(col, justify="right")

    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    for m in history:
        table.add_row(str(m.round), fmt(m.mean_val_accuracy), fmt(m.test_accuracy), fmt(m.test_loss),
                      fmt(m.train_loss))
    return table


def _simulate(scenario, out: Path, device: str, resume: bool):
    from gradleak.fl.recorder import Recorder
    from gradleak.fl.store import UpdateStore

    out.mkdir(parents=True, exist_ok=True)
    store = UpdateStore(out / "store", model_spec=scenario.model)
    federation = scenario.build()
    store.update_server_info(engine="gradleak", input=scenario.input_spec(federation).to_json())
    sim = scenario.simulation(federation=federation, progress=True, device=device)
    result = sim.run(hooks=[Recorder(store)], resume_from=store if resume else None)
    return store, federation, sim, result


@app.command()
def simulate(
    scenario_name: str = typer.Argument(..., metavar="SCENARIO", help="a preset: see `gradleak list scenarios`"),
    out: Path = typer.Option(Path("gradleak-out/simulate"), help="output directory"),
    dataset: str | None = typer.Option(None, help="dataset name (see `gradleak list datasets`)"),
    model: str | None = typer.Option(None, help="model name (keeps the preset's options)"),
    rounds: int | None = typer.Option(None, min=1),
    seed: int | None = typer.Option(None),
    data_root: str | None = typer.Option(None, help="folder with the dataset files (else $GRADLEAK_DATA)"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    resume: bool = typer.Option(True, help="continue an interrupted run recorded in OUT/store"),
) -> None:
    """Run FedAvg for a scenario preset, recording every update the server receives."""
    from gradleak.fl.presets import SCENARIOS
    from gradleak.models import ModelSpec

    try:
        scenario = SCENARIOS.create(scenario_name)
        changes: dict = {k: v for k, v in {"dataset": dataset, "rounds": rounds, "seed": seed,
                                           "data_root": data_root}.items() if v is not None}
        if model is not None:
            changes["model"] = ModelSpec(model, scenario.model.options)
        scenario = scenario.replace(**changes)
        store, _, _, result = _simulate(scenario, out, device, resume)
    except GradleakError as exc:
        fail(exc)
        return
    console.print(_history_table(result.history))
    json_path, csv_path = _write_history(out, result.history)
    console.print(f"updates recorded in [bold]{store.path}[/]; history in {json_path} and {csv_path}")


@app.command()
def inspect(store_dir: Path = typer.Argument(..., help="an UpdateStore directory")) -> None:
    """Check a store's whole chain and summarise it: every record loads and validates (against the store's model
    when it records one), no tensor file lacks its sidecar, every round has the global model its updates are
    deltas against, and the round-0 model is the run's. Any problem: one line each, exit code 2."""
    from gradleak.fl.store import UpdateStore

    try:
        store = UpdateStore(store_dir, create=False)
        model = store.model_spec.build() if store.model_spec is not None else None
        problems = store.check(model=model)
    except GradleakError as exc:
        fail(exc)
        return
    if problems:
        for line in problems:
            console.print(f"[bold red]problem:[/] {line}", soft_wrap=True, highlight=False)
        fail(GradleakError(f"{store_dir}: {len(problems)} problem(s); the store cannot be trusted as one run"))
    table = Table(title=f"{store_dir}")
    for col in ("round", "global", "client: examples"):
        table.add_column(col, justify="right")
    for r in sorted(set(store.rounds()) | set(store.global_rounds())):
        ups = store.updates(round=r) if r in store.rounds() else []
        table.add_row(str(r), "yes" if store.has_global(r) else "–",
                      ", ".join(f"{u.client}: {u.num_examples}" for u in ups) or "–")
    console.print(table)
    info = store.server_info
    known = [k for k in ("input", "recipe", "clients") if k in info]
    run = (store.run_id[:12] if store.run_id else "(recorded before stores held a run id)" if store.has_global(0)
           else "(no round-0 model yet)")
    console.print(f"run {run}: every record loaded and validated" + (" against the model" if model is not None else "")
                  + (f"; the store records the clients' {', '.join(known)}" if known else ""))
