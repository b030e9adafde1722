"""The command line: the offline demo, listings, and clear errors for bad stores and names."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from gradleak.cli import app

runner = CliRunner()


def test_demo_runs_offline_and_says_where_output_went(tmp_path) -> None:
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--rounds", "1"])
    assert result.exit_code == 0, result.output
    assert "demo output written to" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clients"] == 9 and summary["updates_recorded_and_validated"] == 9
    assert 0.0 <= summary["final_test_accuracy"] <= 1.0
    # a second run starts from scratch instead of failing on the existing store
    again = runner.invoke(app, ["demo", "--out", str(out), "--rounds", "1"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "summary.json").read_text())["final_test_accuracy"] == summary["final_test_accuracy"]


def test_list_models_reports_parameter_counts() -> None:
    result = runner.invoke(app, ["list", "models"])
    assert result.exit_code == 0
    assert "65,162" in result.output and "11,173,962" in result.output


def test_inspect_rejects_a_tampered_store(tmp_path) -> None:
    out = tmp_path / "demo"
    assert runner.invoke(app, ["demo", "--out", str(out), "--rounds", "1"]).exit_code == 0
    ok = runner.invoke(app, ["inspect", str(out / "store")])
    assert ok.exit_code == 0 and "validated against the model" in ok.output
    victim = out / "store" / "updates" / "round_00000" / "client_00003.safetensors"
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF
    victim.write_bytes(bytes(data))
    bad = runner.invoke(app, ["inspect", str(out / "store")])
    assert bad.exit_code == 2
    assert "client_00003" in bad.output and "checksum" in bad.output


def test_unknown_scenario_lists_valid_names(tmp_path) -> None:
    result = runner.invoke(app, ["simulate", "hospitl", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "hospital" in result.output and "combined-defenses" in result.output
