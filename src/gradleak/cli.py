"""The ``gradleak`` command line: ``demo``, ``simulate``, ``inspect``, ``list``."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from gradleak.errors import GradleakError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="gradleak: how much of FL clients' data can the server reconstruct from their updates?")
console = Console()

DEMO_SIZES = (2, 8, 32, 128, 2, 8, 32, 128, 1)  # Table I scaled by 1/4 (client 9 keeps its single image)


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=2) from exc


@app.command("list")
def list_(what: str = typer.Argument(..., help="models | datasets | scenarios")) -> None:
    """List the registered models (with parameter counts), datasets or scenario presets."""
    from gradleak.data import DATASETS
    from gradleak.fl.presets import SCENARIOS
    from gradleak.models import describe_models

    table = Table()
    if what == "models":
        for col in ("model", "input (C×H×W)", "benchmark dataset", "parameters", "description"):
            table.add_column(col)
        for row in describe_models():
            shape = "×".join(str(s) for s in row["input_shape"])
            table.add_row(row["name"], shape, row["dataset"], f"{row['parameters']:,}", row["description"])
    elif what in ("datasets", "scenarios"):
        registry = DATASETS if what == "datasets" else SCENARIOS
        table.add_column(what[:-1])
        table.add_column("description")
        for name in registry.names():
            table.add_row(name, registry.describe(name))
    else:
        _fail(GradleakError(f"unknown list {what!r}; choose models, datasets or scenarios"))
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
    from gradleak.records import ModelSpec

    try:
        scenario = SCENARIOS.create(scenario_name)
        changes: dict = {k: v for k, v in {"dataset": dataset, "rounds": rounds, "seed": seed,
                                           "data_root": data_root}.items() if v is not None}
        if model is not None:
            changes["model"] = ModelSpec(model, scenario.model.options)
        scenario = scenario.replace(**changes)
        store, _, _, result = _simulate(scenario, out, device, resume)
    except GradleakError as exc:
        _fail(exc)
        return
    console.print(_history_table(result.history))
    json_path, csv_path = _write_history(out, result.history)
    console.print(f"updates recorded in [bold]{store.path}[/]; history in {json_path} and {csv_path}")


@app.command()
def inspect(store_dir: Path = typer.Argument(..., help="an UpdateStore directory")) -> None:
    """Validate every record of an update store (against its model spec when it has one) and summarise it."""
    from gradleak.fl.store import UpdateStore

    try:
        store = UpdateStore(store_dir, create=False)
        model = store.model_spec.build() if store.model_spec is not None else None
        table = Table(title=f"{store_dir}")
        for col in ("round", "global", "clients", "examples"):
            table.add_column(col, justify="right")
        for r in sorted(set(store.rounds()) | set(store.global_rounds())):
            ups = store.updates(round=r, model=model) if r in store.rounds() else []
            if store.has_global(r):
                store.load_global(round=r, model=model)
            table.add_row(str(r), "yes" if store.has_global(r) else "–",
                          ",".join(str(u.client) for u in ups) or "–", str(sum(u.num_examples for u in ups)))
    except GradleakError as exc:
        _fail(exc)
        return
    console.print(table)
    console.print("every record loaded and validated" + (" against the model" if model is not None else ""))


@app.command()
def demo(
    out: Path = typer.Option(Path("gradleak-out/demo"), help="output directory"),
    rounds: int = typer.Option(3, min=1),
) -> None:
    """Offline end-to-end smoke on the bundled PneumoniaMNIST sample: the hospital federation (Table I scaled
    by 1/4, BatchNorm ConvNet for CPU speed), every update recorded, reloaded and validated."""
    from gradleak.fl.presets import SCENARIOS
    from gradleak.records import ModelSpec

    started = time.perf_counter()
    scenario = SCENARIOS.create(
        "hospital", dataset="sample-pneumoniamnist", sizes=DEMO_SIZES, val_per_client=12, rounds=rounds,
        model=ModelSpec("convnet", {"num_classes": 2, "in_channels": 1, "image_size": 28, "width": 16}),
    )
    console.print(f"[bold]gradleak demo[/]: {scenario.num_participants} hospitals on the bundled "
                  f"PneumoniaMNIST sample, sizes {list(DEMO_SIZES)}, {rounds} FedAvg rounds")
    try:
        if (out / "store").exists():  # the demo always starts from scratch
            shutil.rmtree(out / "store")
        store, federation, _, result = _simulate(scenario, out, "cpu", resume=False)
        model = scenario.model.build()
        n_updates = sum(len(store.updates(round=r, model=model)) for r in store.rounds())
    except GradleakError as exc:
        _fail(exc)
        return
    console.print(_history_table(result.history))
    _write_history(out, result.history)
    majority = max(federation.test.y.bincount().tolist()) / len(federation.test)
    summary = {
        "rounds": rounds,
        "clients": scenario.num_participants,
        "updates_recorded_and_validated": n_updates,
        "final_test_accuracy": result.history[-1].test_accuracy,
        "best_round": result.best_round,
        "majority_class_rate": majority,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"{n_updates} client updates recorded and re-validated in [bold]{store.path}[/]")
    console.print(f"demo output written to [bold]{out.resolve()}[/] (summary.json, history.json, store/)")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
