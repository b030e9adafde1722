"""A user's mistake is one line and an exit code, never a traceback; the command line's small promises."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradleak import cli
from gradleak.cli import app
from gradleak.cli.attack import _parse_options
from gradleak.fl.safefile import atomic_write_bytes
from tests.study._helpers import tiny, write_config

runner = CliRunner()


def _lines(output: str) -> list[str]:
    return [line for line in output.strip().splitlines() if line.strip()]


def test_a_model_that_does_not_fit_the_data_is_one_line(tmp_path: Path) -> None:
    config = tiny(tmp_path / "out")
    config["scenario"]["model"] = {"name": "cnn", "options": {"num_classes": 2, "in_channels": 1}}  # 32×32 only
    result = runner.invoke(app, ["run", str(write_config(tmp_path / "s.yaml", config))])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "scenario.model: 'cnn' does not fit the data (sample-pneumoniamnist, inputs 1×28×28)" in text
    assert "Traceback" not in result.output and len(_lines(result.output)) <= 4  # one line, wrapped
    config["scenario"]["model"] = {"name": "convnet", "options": {"num_classes": 1, "in_channels": 1}}
    result = runner.invoke(app, ["run", str(write_config(tmp_path / "s.yaml", config))])
    assert result.exit_code == 2 and "returns 1 logits but the data has labels up to 1" in result.output


def test_an_unexpected_error_is_one_line_unless_debug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "badnet.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class BadNet(nn.Module):\n"
        "    def __init__(self, num_classes=2, in_channels=1):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(28 * 28 * in_channels, num_classes)\n\n"
        "    def forward(self, x):\n"
        "        if self.training:\n"
        "            raise RuntimeError('my layer broke on ' + str(torch.zeros(50)))\n"
        "        return self.fc(x.flatten(1))\n")
    monkeypatch.chdir(tmp_path)
    config = tiny(tmp_path / "out")
    config["scenario"]["model"] = {"name": "badnet:BadNet", "options": {"num_classes": 2, "in_channels": 1}}
    path = str(write_config(tmp_path / "s.yaml", config))
    for debug in (False, True):
        monkeypatch.setattr(sys, "argv", ["gradleak", *(["--debug"] if debug else []), "run", path, "--no-progress"])
        monkeypatch.setattr(cli, "_DEBUG", {"on": False})
        with pytest.raises(SystemExit) as stop:
            cli.main()
        assert stop.value.code == 1
        out = capsys.readouterr()
        text = out.out + out.err
        assert "RuntimeError: my layer broke on" in text
        assert ("Traceback" in text) == debug
        if not debug:
            assert "run again with --debug" in text and len(_lines(text)) <= 4
            assert "locals" not in text


def test_attack_options_parse_as_yaml_and_exponent_numbers() -> None:
    assert _parse_options(["tv=1e-2", "iterations=200", "labels=joint", "signed=false", "lr=0.1"]) == {
        "tv": 0.01, "iterations": 200, "labels": "joint", "signed": False, "lr": 0.1}


def test_study_iterations_must_be_positive_and_typos_list_the_options(tmp_path: Path) -> None:
    config = tiny(tmp_path / "out")
    config["attacks"][0]["options"] = {"iterations": 0}
    result = runner.invoke(app, ["run", str(write_config(tmp_path / "s.yaml", config))])
    assert result.exit_code == 2 and "attacks[0].options.iterations: must be an integer >= 1, got 0" in result.output
    config["attacks"][0]["options"] = {"iterations": 3, "tvv": 0.1}
    result = runner.invoke(app, ["run", str(write_config(tmp_path / "s.yaml", config))])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "has no option 'tvv'. Did you mean 'tv'?" in text and "iterations" in text


def test_list_names_its_kinds_and_describes_in_full_sentences() -> None:
    missing = runner.invoke(app, ["list"])
    assert missing.exit_code == 2 and "attacks|defenses|models|datasets|scenarios|metrics|executors" in missing.output
    result = runner.invoke(app, ["list", "defenses"])
    text = " ".join(result.output.replace("│", " ").split())
    assert "Local Gaussian noise of Hatamizadeh et al. (2023), Sec. II-C:" in text and "``" not in text
    assert ":class:" not in runner.invoke(app, ["list", "attacks"]).output


def test_output_files_get_the_users_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "b.json", b"{}")
        assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)
