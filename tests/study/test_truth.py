"""The audit tells the truth on cases it was not tuned for: one grading path for every entry point, an undefended
baseline next to a grid, utility over training seeds, and a 10-class RGB dataset in the hospital preset."""

from __future__ import annotations

import json
from html import unescape
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from typer.testing import CliRunner

from gradleak.audit import simulate_and_attack
from gradleak.cli import app
from gradleak.data import load_dataset
from gradleak.models import create_model
from gradleak.report import build_report
from gradleak.study import parse_config, run_study
from gradleak.study.config import MetricsConfig
from gradleak.study.measure import measure
from gradleak.study.results import load_unit, read_table
from tests.study._helpers import TINY, tiny, write_config

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_simulate_and_attack_and_the_study_runner_grade_alike() -> None:
    """The same reconstruction graded by simulate_and_attack and by the study runner's measure: the same SSIM,
    RDLV and verdicts, and the SSIM is scikit-image's default."""
    torch.manual_seed(0)
    ds = load_dataset("sample-mnist", split="test")
    x, y = ds.tensors([0, 1, 2], size=32)
    prior = ds.tensors(list(range(10, 42)), size=32)[0].mean(0)
    result = simulate_and_attack(create_model("cnn", in_channels=1), x, y, recipe="fedsgd",
                                 attack="inverting-gradients", attack_options={"iterations": 20},
                                 mean=ds.mean, std=ds.std, prior=prior)
    numbers, arrays = measure(result.reconstruction, x, y, prior=prior, metrics=MetricsConfig(iip=False),
                              pool=x, owners=torch.zeros(3), true_index=torch.arange(3), client=0,
                              iip_space="pixel", embedding_space="pixel")
    assert numbers["ssim_per_image"] == result.metrics["ssim_per_image"]
    assert numbers["rdlv_per_image"] == result.metrics["rdlv_per_image"]
    assert numbers["leak_per_image"] == result.metrics["leak_per_image"]
    assert numbers["n_leaks"] == result.metrics["leaks"] and numbers["leak_rule"] == result.metrics["leak_rule"]
    reference = [structural_similarity(arrays["paired"][i, 0].astype(np.float64), x[i, 0].double().numpy(),
                                       data_range=1.0) for i in range(3)]
    np.testing.assert_allclose(result.metrics["ssim_per_image"], reference, atol=1e-6)


def _baseline_and_grid(out: Path) -> dict:
    config = tiny(out)
    config["scenario"] = {**config["scenario"], "sizes": [2, 8, 1]}
    config["defenses"] = [{"stack": [], "label": "undefended"},
                          {"name": "local-gaussian", "grid": {"sigma0": [1, 10]}}]
    config["attacks"] = [
        {"name": "fedavg-inversion", "options": {"iterations": 2}, "clients": [0, 2], "rounds": [-1],
         "prior": {"images": 16}},
        # the malicious server's imprint module reads client 1's images verbatim, unless noise blurs them
        {"name": "imprint", "options": {"block": {"num_bins": 32, "variant": "sparse"}}, "clients": [1],
         "rounds": [-1], "prior": {"kind": "none"}, "public": {"images": 64}},
    ]
    config["utility"] = {"seeds": 2}
    return config


def test_baseline_next_to_a_grid_runs_through_the_report(tmp_path: Path) -> None:
    """An undefended arm beside a local-gaussian grid, a client that leaks only without defense: the report
    runs, puts the baseline first in the verdict, the table and the plots, and recommends a setting that stops
    every attack, with its accuracy cost measured over two training seeds."""
    out = tmp_path / "study"
    path = write_config(tmp_path / "study.yaml", _baseline_and_grid(out))
    result = runner.invoke(app, ["run", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = read_table(out / "results.csv")
    imprint = {r["setting_label"]: r for r in rows if r["attack"] == "imprint"}
    assert imprint["undefended"]["n_leaks"] >= 3 and imprint["undefended"]["n_verbatim"] >= 3
    assert imprint["local-gaussian sigma0=10"]["n_leaks"] == 0  # the noise leaves nothing verbatim
    report = runner.invoke(app, ["report", str(out)])
    assert report.exit_code == 0, report.output
    built = build_report(out)
    sentence = next(v for v in built.verdicts if v.startswith("Client 1 "))
    k = imprint["undefended"]["n_leaks"]
    assert f"without defense {k} of 8 attacked images leak" in sentence
    assert ("with local-gaussian: no leak found at any tested sigma0 (1, 10)" in sentence
            or "with local-gaussian: leaks at sigma0 ≤ 1, no leak found at sigma0 ≥ 10" in sentence)
    assert "(imprint, analytic (no optimisation))" in sentence  # the budget behind the "no leak found"
    html = unescape(built.html.read_text())
    table = html[html.index("Privacy–utility table"):]
    assert table.index("<td>undefended<") < table.index("<td>local-gaussian sigma0=1<")
    assert "leaks-vs-sigma0-a1.png" in html and "accuracy-per-round.png" in html
    settings = read_table(out / "settings.csv")
    assert [s["seeds"] for s in settings] == [2, 2, 2] and all(s["accuracy_sd"] is not None for s in settings)
    advice = built.recommendation
    assert advice.startswith("Deploy local-gaussian sigma0=") or advice.startswith("No tested setting")
    if advice.startswith("Deploy"):
        chosen = advice.split("Deploy ")[1].split(":")[0]
        assert all(r["n_leaks"] == 0 for r in rows if r["setting_label"] == chosen)
        assert "run-to-run variation" in advice and "2 and 2 seeds" in advice


def test_utility_replicates_keep_the_clients_and_change_the_training(tmp_path: Path) -> None:
    config = parse_config(tiny(tmp_path / "u", utility={"seeds": 3}, attacks=[]))
    run_study(config, progress=False)
    units = sorted((tmp_path / "u" / "units").glob("fl-*.json"))
    assert len(units) == 2 * 3
    records = [json.loads(p.read_text()) for p in units]
    recorded = [r for r in records if r["replicate"] == 0]
    assert len(recorded) == 2 and all(r["training_seed"] == TINY["seed"] for r in recorded)
    assert len({r["training_seed"] for r in records}) == 3
    histories = {r["training_seed"]: [m["train_loss"] for m in r["history"]] for r in records
                 if r["setting"] == recorded[0]["setting"]}
    assert len({tuple(h) for h in histories.values()}) == 3  # other initialisation and shuffling
    settings = read_table(tmp_path / "u" / "settings.csv")
    for s in settings:
        accs = [r["final_test_accuracy"] for r in records if r["setting"] == s["setting"]]
        assert s["seeds"] == 3 and s["accuracy_mean"] == pytest.approx(np.mean(accs))
        assert s["accuracy_sd"] == pytest.approx(np.std(accs, ddof=1))
        assert s["majority_rate"] == pytest.approx(0.5)  # the bundled test split is class-balanced


def test_hospital_preset_on_a_ten_class_rgb_medmnist_npz(tmp_path: Path) -> None:
    """CIFAR-10 test images in the MedMNIST layout, the hospital preset with a 10-class model: the FedAvg
    inversion runs on the one-image and an eight-image client, through gradleak run and gradleak report."""
    source = np.load(ROOT.parent / "shared" / "datasets" / "cifar10_test.npz")
    images, labels = source["images"], source["labels"].astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    parts = {"train": order[:2000], "val": order[2000:2400], "test": order[2400:2600]}
    npz = tmp_path / "cifar10_medmnist.npz"
    np.savez(npz, **{f"{k}_images": images[v] for k, v in parts.items()},
             **{f"{k}_labels": labels[v][:, None] for k, v in parts.items()})
    out = tmp_path / "out"
    config = {"name": "cifar-hospital", "output": str(out), "scenario": {
        "preset": "hospital", "dataset": f"npz:{npz}", "rounds": 1,
        "model": {"name": "resnet8", "options": {"num_classes": 10, "in_channels": 3, "width": 4}}},
        "attacks": [{"name": "fedavg-inversion", "options": {"iterations": 2}, "clients": [0, 8], "rounds": [-1],
                     "prior": {"images": 16}}],
        "metrics": {"bootstrap_resamples": 50, "iip": False, "embedding_space": "pixel"}}
    path = write_config(tmp_path / "study.yaml", config)
    result = runner.invoke(app, ["run", str(path), "--no-progress", "--no-report"])
    assert result.exit_code == 0, result.output
    rows = read_table(out / "results.csv")
    assert sorted((r["client"], r["num_images"]) for r in rows) == [(0, 8), (8, 1)]
    for row in rows:
        record = load_unit(out, row["unit"])
        assert len(record["ssim_per_image"]) == row["num_images"] and record["leak_rule"] == "prior"
        assert row["n_reconstructions"] == row["num_images"]
    report = runner.invoke(app, ["report", str(out)])
    assert report.exit_code == 0, report.output
    assert (out / "report.html").is_file()
