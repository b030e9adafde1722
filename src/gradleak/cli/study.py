"""``gradleak demo``, ``run`` and ``report``: studies from a YAML config to an HTML report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from gradleak.cli.app import app, console, fail
from gradleak.errors import GradleakError

if TYPE_CHECKING:
    pass

def _demo_config(out: Path, rounds: int | None, iterations: int | None, executor: str | None):
    """The bundled demo config with the command's overrides."""
    import yaml

    from gradleak.study import demo_config_path, parse_config

    data = yaml.safe_load(Path(demo_config_path()).read_text())
    data["output"] = str(out)
    if rounds is not None:
        data["scenario"]["rounds"] = rounds
    if iterations is not None:
        for attack in data["attacks"]:
            if "iterations" in attack.get("options", {}):
                attack["options"]["iterations"] = iterations
    if executor is not None:
        data["executor"] = {"kind": executor}
    return parse_config(data, source="demo.yaml")


@app.command()
def demo(
    out: Path = typer.Option(Path("gradleak-out/demo"), help="output directory"),
    rounds: int | None = typer.Option(None, min=1, help="FedAvg rounds (default: the demo config's)"),
    iterations: int | None = typer.Option(None, min=1, help="attack iterations (default: the demo config's)"),
    executor: str | None = typer.Option(None, help="local (default) or ray"),
) -> None:
    """The offline demo audit: the hospital federation on the bundled PneumoniaMNIST sample, the BN-aware FedAvg
    inversion on clients 1, 5 and 9 (ids 0, 4, 8) at the last round, undefended and under local Gaussian noise
    sigma0 in {0.1, 0.3, 1}, one imprint (malicious server) run on client 3, and the HTML report. Runs the bundled
    study config (``gradleak/study/configs/demo.yaml``) through the study runner; a re-run resumes."""
    from gradleak.report import build_report
    from gradleak.study import run_study

    started = time.perf_counter()
    try:
        config = _demo_config(out, rounds, iterations, executor)
        arms = ", ".join(a.label or a.name or "undefended" for a in config.defenses) or "undefended"
        console.print(f"[bold]gradleak demo[/]: {config.scenario.preset} scenario on the bundled sample, "
                      f"{config.scenario.rounds} rounds, defenses: {arms}; {len(config.attacks)} attacks")
        result = run_study(config, console=console)
        report = build_report(result.out)
    except GradleakError as exc:
        fail(exc)
        return
    seconds = round(time.perf_counter() - started, 1)
    summary = {"seconds": seconds, "units_run": result.ran, "units_skipped": result.skipped,
               "results": str(result.results_csv), "report": str(report.html)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_report(report)
    console.print(f"results table: {result.results_csv} (and .parquet)")
    console.print(f"demo output written to [bold]{out.resolve()}[/] in {seconds} s; report: [bold]{report.html}[/]")


@app.command()
def run(
    config_path: Path = typer.Argument(..., metavar="CONFIG", help="a study config (YAML)"),
    out: Path | None = typer.Option(None, help="output directory (default: the config's output)"),
    executor: str | None = typer.Option(None, help="local or ray (default: the config's executor)"),
    address: str | None = typer.Option(None, help="Ray cluster address (default: start Ray locally)"),
    report: bool = typer.Option(True, help="write the HTML report when the study is done"),
    progress: bool = typer.Option(True, help="show progress bars"),
) -> None:
    """Run a study: simulate each defense setting's federation, attack the recorded updates, grade them, and
    write OUT/results.{csv,parquet}, OUT/settings.{csv,parquet} and the report. Finished units are skipped."""
    from gradleak.report import build_report
    from gradleak.study import load_config, run_study
    from gradleak.study.parse import replace_config

    try:
        config = load_config(config_path)
        changes: dict = {}
        if out is not None:
            changes["output"] = str(out)
        if executor is not None or address is not None:
            kind = executor or config.executor.kind
            changes["executor"] = {**config.executor.model_dump(), "kind": kind, "address": address}
        if changes:
            config = replace_config(config, **changes)
        result = run_study(config, progress=progress, console=console)
        html = build_report(result.out).html if report else None
    except GradleakError as exc:
        fail(exc)
        return
    console.print(f"{result.ran} units run, {result.skipped} already finished; results in "
                  f"[bold]{result.results_csv}[/] and {result.results_parquet.name}")
    if html is not None:
        console.print(f"report: [bold]{html}[/]")


@app.command("report")
def report_(out: Path = typer.Argument(..., metavar="DIR", help="a study's output directory")) -> None:
    """Write DIR/report.html and its figures (DIR/report/*.png) from a study's results."""
    from gradleak.report import build_report

    try:
        report = build_report(out)
    except GradleakError as exc:
        fail(exc)
        return
    _print_report(report)
    console.print(f"report: [bold]{report.html}[/] ({len(report.figures)} figures)")


def _print_report(report) -> None:
    """The report's recommendation and verdicts, then its detail sentences."""
    from rich.markup import escape

    console.print(f"[bold]{escape(report.recommendation)}[/]")
    for line in report.verdicts:
        console.print(f"• {escape(line)}")
    for line in report.summary:
        console.print(f"  {escape(line)}", style="dim")
