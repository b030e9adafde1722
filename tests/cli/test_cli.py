"""The command line: the offline demo audit, attack, imprint-calc, listings, and clear errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradleak.cli import app
from gradleak.fl.store import UpdateStore
from gradleak.study.results import read_table

runner = CliRunner()


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo audit at its smallest (1 round, 1 attack iteration): the same config and code path as make demo."""
    out = tmp_path_factory.mktemp("demo")
    result = runner.invoke(app, ["demo", "--out", str(out), "--rounds", "1", "--iterations", "1"])
    assert result.exit_code == 0, result.output
    assert "demo output written to" in result.output and "report.html" in result.output
    return out


def test_demo_runs_the_study_and_writes_the_report(demo_out: Path) -> None:
    summary = json.loads((demo_out / "summary.json").read_text())
    # 4 settings × 3 training seeds; per setting clients 0, 4, 8 and one imprint run
    assert summary["units_run"] == 4 * 3 + 4 * (3 + 1)
    rows = read_table(demo_out / "results.parquet")
    assert sorted({r["setting_label"] for r in rows}) == ["local-gaussian sigma0=0.1", "local-gaussian sigma0=0.3",
                                                          "local-gaussian sigma0=1", "undefended"]
    assert sorted({(r["attack"], r["client"]) for r in rows}) == [("fedavg-inversion", 0), ("fedavg-inversion", 4),
                                                                   ("fedavg-inversion", 8), ("imprint", 2)]
    imprint = {r["setting_label"]: r for r in rows if r["attack"] == "imprint"}
    assert all(r["expected_recovery"] == pytest.approx(32 * (63 / 64) ** 31) for r in imprint.values())
    # without noise the imprint module reads about as many inputs verbatim as are alone in their bin (19.6 of 32)
    assert imprint["undefended"]["n_verbatim"] >= 12 and imprint["undefended"]["n_leaks"] >= 12
    assert imprint["local-gaussian sigma0=1"]["n_verbatim"] == 0  # noise leaves nothing verbatim
    settings = read_table(demo_out / "settings.parquet")
    assert all(s["seeds"] == 3 and s["majority_rate"] == 0.5 for s in settings)
    assert (demo_out / "report.html").is_file()


def test_attack_command_reads_a_recorded_store(demo_out: Path, tmp_path: Path) -> None:
    store = next((demo_out / "settings").glob("*/store"))
    result = runner.invoke(app, ["attack", "--store", str(store), "--round", "0", "--client", "8", "--attack",
                                 "fedavg-inversion", "--option", "iterations=2", "--dataset", "sample-pneumoniamnist",
                                 "--image-size", "32", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "reconstruction.npz")["images"].shape == (1, 1, 32, 32)
    assert "iterations ran eager: 2 iterations (< 200): too short to repay compiling" in result.output
    missing = runner.invoke(app, ["attack", "--store", str(store), "--round", "0", "--client", "42", "--attack",
                                  "dlg", "--dataset", "sample-pneumoniamnist", "--out", str(tmp_path)])
    assert missing.exit_code == 2 and "no update of client 42 in round 0" in missing.output
    unknown = runner.invoke(app, ["attack", "--store", str(store), "--round", "0", "--client", "8", "--attack",
                                  "dgl", "--dataset", "sample-pneumoniamnist"])
    assert unknown.exit_code == 2 and "Did you mean 'dlg'" in unknown.output


def test_attack_command_reads_a_store_recorded_as_flower_records_it(demo_out: Path, tmp_path: Path) -> None:
    """RecordingStrategy stores: no model spec in store.json, no recipe in the update metadata."""
    source = UpdateStore(next((demo_out / "settings").glob("*/store")), create=False)
    flower = UpdateStore(tmp_path / "flower")
    flower.save_global(source.load_global(0))
    update = source.load_update(0, 8)
    flower.save_update(dataclasses.replace(update, metadata={"flower_node_id": 123, "train_loss": 0.5}))
    args = ["attack", "--store", str(tmp_path / "flower"), "--round", "0", "--client", "8", "--attack",
            "fedavg-inversion", "--option", "iterations=2", "--dataset", "sample-pneumoniamnist", "--batch-size", "1",
            "--lr", "0.01", "--out", str(tmp_path / "out")]
    no_model = runner.invoke(app, args)
    assert no_model.exit_code == 2 and "--model NAME" in no_model.output
    options = [f"--model-option={k}={v}" for k, v in source.model_spec.options.items()]
    result = runner.invoke(app, [*args, "--model", source.model_spec.name, *options])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "reconstruction.png").is_file()


def test_attack_asks_for_the_number_of_images_when_the_client_reported_none(demo_out: Path, tmp_path: Path) -> None:
    """NVFlare's hello-pt client reports steps, not images: the store records 0 examples."""
    source = UpdateStore(next((demo_out / "settings").glob("*/store")), create=False)
    store = UpdateStore(tmp_path / "nvflare", model_spec=source.model_spec)
    store.save_global(source.load_global(0))
    store.save_update(dataclasses.replace(source.load_update(0, 8), num_examples=0))
    args = ["attack", "--store", str(tmp_path / "nvflare"), "--round", "0", "--client", "8", "--attack",
            "fedavg-inversion", "--option", "iterations=2", "--dataset", "sample-pneumoniamnist", "--lr", "0.01",
            "--batch-size", "1", "--out", str(tmp_path / "out")]
    missing = runner.invoke(app, args)
    assert missing.exit_code == 2 and "--num-images N" in missing.output
    given = runner.invoke(app, [*args, "--num-images", "1"])
    assert given.exit_code == 0, given.output
    assert "1 image(s)" in given.output and (tmp_path / "out" / "reconstruction.png").is_file()


def test_imprint_calc_prints_the_expectations() -> None:
    result = runner.invoke(app, ["imprint-calc", "--batch", "64", "--bins", "128", "--draws", "2000"])
    assert result.exit_code == 0, result.output
    assert "39.05" in result.output and "28.17" in result.output  # iid and Proposition 1 (Fowl et al. Fig. 2a)


@pytest.mark.parametrize(("what", "expected"), [("attacks", "fedavg-inversion"), ("defenses", "local-gaussian"),
                                                 ("datasets", "sample-pneumoniamnist"), ("scenarios", "hospital")])
def test_list_prints_the_registries(what: str, expected: str) -> None:
    result = runner.invoke(app, ["list", what])
    assert result.exit_code == 0 and expected in result.output


def test_list_models_reports_parameter_counts() -> None:
    result = runner.invoke(app, ["list", "models"])
    assert result.exit_code == 0
    assert "65,162" in result.output and "11,173,962" in result.output


def test_inspect_rejects_a_tampered_store(demo_out: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(next((demo_out / "settings").glob("*/store")), store)
    ok = runner.invoke(app, ["inspect", str(store)])
    assert ok.exit_code == 0 and "validated against the model" in ok.output
    victim = store / "updates" / "round_00000" / "client_00003.safetensors"
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF
    victim.write_bytes(bytes(data))
    bad = runner.invoke(app, ["inspect", str(store)])
    assert bad.exit_code == 2
    assert "client_00003" in bad.output and "checksum" in bad.output


@pytest.mark.parametrize("damage", ["missing sidecar", "orphan tensor", "missing global", "another run"])
def test_inspect_fails_on_a_broken_chain(demo_out: Path, tmp_path: Path, damage: str) -> None:
    store = tmp_path / "store"
    shutil.copytree(next((demo_out / "settings").glob("*/store")), store)
    update = store / "updates" / "round_00000" / "client_00003"
    if damage == "missing sidecar":  # the update's JSON is gone: its tensor file is left alone
        update.with_suffix(".json").unlink()
        expected = "client_00003.safetensors: tensor file without its sidecar"
    elif damage == "orphan tensor":
        (update.parent / "client_00042.safetensors").write_bytes(update.with_suffix(".safetensors").read_bytes())
        expected = "client_00042.safetensors: tensor file without its sidecar"
    elif damage == "missing global":
        for suffix in (".json", ".safetensors"):
            (store / "globals" / f"round_00000{suffix}").unlink()
        expected = "round 0 has updates but no global model"
    else:  # the round-0 model of another run copied over this one's
        other = UpdateStore(tmp_path / "other")
        state = UpdateStore(store, create=False).load_global(0)
        other.save_global(dataclasses.replace(state, params={k: v + 1 for k, v in state.params.items()}))
        for suffix in (".json", ".safetensors"):
            shutil.copy(tmp_path / "other" / "globals" / f"round_00000{suffix}", store / "globals")
        expected = "not the one this store's run started from"
    result = runner.invoke(app, ["inspect", str(store)])
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split()) and "cannot be trusted" in result.output


def test_unknown_scenario_lists_valid_names(tmp_path) -> None:
    result = runner.invoke(app, ["simulate", "hospitl", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "hospital" in result.output and "combined-defenses" in result.output
