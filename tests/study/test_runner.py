"""The study runner: a two-setting grid, resume after SIGKILL, and the Ray executor give the same tables."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from gradleak.defenses import LocalGaussian
from gradleak.fl.store import UpdateStore
from gradleak.study import parse_config, run_study
from gradleak.study.grid import plan_study
from gradleak.study.results import load_unit, load_unit_arrays, read_table
from gradleak.study.units import setting_store
from tests.study._helpers import tiny, write_config

ROOT = Path(__file__).resolve().parents[2]
TABLES = ("results.csv", "settings.csv")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny study run once, uninterrupted, in-process."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference")
    result = run_study(parse_config(tiny(out)), progress=False)
    assert result.ran == 6 and result.skipped == 0  # 2 federations + 2 settings × 2 clients × 1 round
    return out


def _tables(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in TABLES}


def test_two_setting_grid_grades_every_unit_against_scikit_image(reference: Path) -> None:
    rows = read_table(reference / "results.parquet")
    assert rows == read_table(reference / "results.csv")  # the CSV and Parquet tables hold the same numbers
    assert [(r["defense.sigma0"], r["client"], r["round"]) for r in rows] == [(0, 0, 1), (0, 2, 1), (10, 0, 1),
                                                                             (10, 2, 1)]
    for row in rows:
        arrays = load_unit_arrays(reference, row["unit"])
        record = load_unit(reference, row["unit"])
        assert row["n_matched"] == row["num_images"] == len(arrays["truth"]) == {0: 2, 2: 1}[row["client"]]
        # the table's SSIM is scikit-image's default on the paired images stored with the unit
        ref = [structural_similarity(t[0].astype(np.float64), p[0].astype(np.float64), data_range=1.0)
               for t, p in zip(arrays["truth"], arrays["paired"], strict=True)]
        assert record["ssim_per_image"] == pytest.approx(ref, abs=1e-5)
        assert row["ssim_mean"] == pytest.approx(float(np.mean(ref)), abs=1e-5)
        assert row["asr"] == pytest.approx(float(np.mean(np.asarray(ref) > 0.5)))
        assert row["local_steps"] == 1 and row["batch_size"] == row["num_images"]
        # the leak verdict: above τ, closer to the original than the prior is, and closer to it than to the prior
        prior = arrays["prior"][0].astype(np.float64)
        prior_ssim = [structural_similarity(t[0].astype(np.float64), prior, data_range=1.0) for t in arrays["truth"]]
        to_prior = [structural_similarity(p[0].astype(np.float64), prior, data_range=1.0) for p in arrays["paired"]]
        leaks = [s > 0.5 and s > p and s > q for s, p, q in zip(ref, prior_ssim, to_prior, strict=True)]
        assert record["leak_rule"] == "prior" and record["leak_per_image"] == leaks
        assert row["n_leaks"] == sum(leaks) and row["iterations"] == 3 and row["restarts"] == 1
    settings = read_table(reference / "settings.csv")
    assert [s["defense.sigma0"] for s in settings] == [0, 10] and all(s["epsilon"] is None for s in settings)


def test_sigma0_zero_records_the_undefended_updates(reference: Path) -> None:
    plan = plan_study(parse_config(tiny(reference)))
    plain, noisy = (UpdateStore(setting_store(reference, s), create=False) for s in plan.settings)
    a, b = plain.load_update(0, 0), noisy.load_update(0, 0)  # round 0 starts from the same global model
    weight = "classifier.weight"
    assert torch.equal(plain.load_global(0).params[weight], noisy.load_global(0).params[weight])
    noise = torch.cat([(b.delta[k] - a.delta[k]).flatten() for k in a.delta])
    # the sigma0=10 setting sends the same update plus N(0, sigma^2), sigma = 10 x the 95th percentile of |delta|
    assert float(noise.std()) == pytest.approx(LocalGaussian(sigma0=10).noise_std(a), rel=0.1)
    assert all(torch.equal(a.buffers[k], b.buffers[k]) for k in a.buffers)


def test_rerun_skips_finished_units_and_keeps_the_tables(reference: Path) -> None:
    before = _tables(reference)
    result = run_study(parse_config(tiny(reference)), progress=False)
    assert (result.ran, result.skipped) == (0, 6)
    assert _tables(reference) == before


@pytest.mark.parametrize("where", ["federation", "attack"])
def test_sigkill_then_resume_gives_the_same_tables(reference: Path, tmp_path: Path, where: str) -> None:
    out = tmp_path / "killed"
    config = write_config(tmp_path / "tiny.yaml", tiny(out))
    proc = subprocess.run([sys.executable, "-m", "tests.study._killed_study", str(config), where], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    finished = sorted(p.stem for p in (out / "units").glob("*.json"))
    assert len(finished) == (1 if where == "federation" else 3)  # killed part-way, as arranged
    result = run_study(parse_config(tiny(out)), progress=False)
    assert result.skipped == len(finished) and result.ran == 6 - len(finished)
    assert _tables(out) == _tables(reference)
    units = [r["unit"] for r in read_table(out / "results.csv")]
    assert len(units) == len(set(units)) == 4  # nothing lost, nothing duplicated
    assert json.loads((out / "study.json").read_text())["config"]["name"] == "tiny"


def test_ray_executor_gives_the_same_tables(reference: Path, tmp_path: Path) -> None:
    """The sigma0 = 0 half of the grid on Ray: the same units, with the same rows, as in-process."""
    ray = pytest.importorskip("ray")
    from gradleak.study.runner import RayExecutor

    data = tiny(tmp_path / "ray")
    data["defenses"][0]["grid"] = {"sigma0": [0]}
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        result = run_study(parse_config(data), executor=RayExecutor(), progress=False)
    finally:
        ray.shutdown()
    assert result.ran == 3
    on_ray = read_table(tmp_path / "ray" / "results.csv")
    in_process = [r for r in read_table(reference / "results.csv") if r["defense.sigma0"] == 0]
    assert len(on_ray) == 2 and on_ray == in_process
    assert read_table(tmp_path / "ray" / "settings.csv") == read_table(reference / "settings.csv")[:1]
