"""The HTML report: figures only for what the results contain, the summary from the numbers, and the page as
headless Chromium renders it."""

from __future__ import annotations

import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gradleak.report import build_report
from gradleak.report.data import band
from gradleak.study import parse_config, run_study
from gradleak.study.results import read_table
from tests.study._helpers import tiny

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("study")
    run_study(parse_config(tiny(out)), progress=False)
    return out


def _images(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html)


def test_report_figures_load_and_the_summary_follows_the_numbers(study: Path) -> None:
    report = build_report(study)
    html = report.html.read_text()
    sources = _images(html)
    assert len(sources) == len(report.figures) >= 8
    for src in sources:
        with Image.open(study / src) as img:
            img.load()
            assert img.size[0] > 100 and np.asarray(img.convert("L")).std() > 5
    names = {Path(s).name for s in sources}
    assert {"ssim-accuracy-vs-sigma0-a0.png", "rdlv-vs-sigma0-a0.png", "iip-cosine-vs-sigma0-a0.png",
            "ssim-vs-batch_size-a0.png", "tsne-a0.png"} <= names
    assert "ssim-vs-local_steps-a0.png" not in names  # every attacked update took one local step: no curve
    assert sum(n.startswith("recon-") for n in names) == 4  # 2 clients x 2 settings
    assert {"accuracy-per-round.png", "leaks-vs-sigma0-a0.png"} <= names
    rows = read_table(study / "results.csv")
    for client in (0, 2):
        leaked = sum(_record(study, r)["n_leaks"] for r in rows if r["client"] == client)
        sentence = next(line for line in report.verdicts if line.startswith(f"Client {client} "))
        assert ("no leak found" in sentence and "3 iterations" in sentence) == (leaked == 0)
    accuracy = read_table(study / "settings.csv")[0]["final_test_accuracy"]
    assert any(f"{accuracy:.3f}" in line for line in report.summary)
    assert report.recommendation in unescape(html)


def _record(study: Path, row: dict) -> dict:
    import json

    return json.loads((study / "units" / f"{row['unit']}.json").read_text())


def test_a_curve_needs_two_x_values() -> None:
    rows = [{"x": 1.0, "v": [0.2, 0.4]}, {"x": 1.0, "v": [0.3]}]
    assert band(rows, lambda r: r["x"], lambda r: r["v"], resamples=50, confidence=0.95) is None
    rows.append({"x": 2.0, "v": [0.9, 0.7]})
    b = band(rows, lambda r: r["x"], lambda r: r["v"], resamples=50, confidence=0.95)
    assert b is not None and b.x == [1.0, 2.0] and b.mean == pytest.approx([0.3, 0.8]) and b.n == [3, 2]
    assert b.low[0] <= 0.3 <= b.high[0]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium, Debian package "
                    "'chromium') is not installed: apt-get install -y chromium")
def test_report_renders_in_headless_chromium(study: Path, tmp_path: Path) -> None:
    report = build_report(study)
    shutil.copytree(study, tmp_path / "site", ignore=shutil.ignore_patterns("settings", "units"))
    site = tmp_path / "site"
    # a probe page loads the report in a frame and writes, for every <img>, whether Chromium decoded it
    probe = site / "probe.html"
    probe.write_text("""<html><body><iframe id="f" src="report.html" width="1200" height="800"></iframe>
<pre id="out">pending</pre><script>
document.getElementById('f').onload = () => { const d = document.getElementById('f').contentDocument;
  const imgs = Array.from(d.images);
  Promise.all(imgs.map(i => i.complete ? 0 : new Promise(r => { i.onload = r; i.onerror = r; }))).then(() => {
    document.getElementById('out').textContent = 'images ' + imgs.length + ' loaded ' +
      imgs.filter(i => i.naturalWidth > 0).length; }); };
</script></body></html>""")
    profile = tmp_path / "profile"
    dom = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "--allow-file-access-from-files",
                          "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    counts = re.search(r"images (\d+) loaded (\d+)", dom.stdout)
    assert counts, dom.stderr[-2000:]
    assert int(counts.group(1)) == len(report.figures) == int(counts.group(2))
    shot = tmp_path / "report.png"
    subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}",
                    "--window-size=1200,1600", "--virtual-time-budget=5000", (site / "report.html").as_uri()],
                   capture_output=True, text=True, timeout=120)
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("L"), dtype=float)
    assert pixels.shape == (1600, 1200)
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.01  # text, tables and figures, not a blank page
    shutil.copy(shot, study / "report-screenshot.png")
