"""Study configs: bad ones fail before anything runs, with one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradleak.cli import app
from gradleak.study import ConfigError, load_config, parse_config
from gradleak.study.grid import plan_study
from tests.study._helpers import tiny, write_config


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_attack_names_the_field_and_the_valid_attacks(tmp_path: Path) -> None:
    data = tiny(tmp_path)
    data["attacks"][0]["name"] = "fedavg-inverson"
    message = _error(data)
    assert "attacks[0].name" in message and "Did you mean 'fedavg-inversion'" in message
    assert "inverting-gradients" in message and "imprint" in message


def test_wrong_type_names_the_field(tmp_path: Path) -> None:
    data = tiny(tmp_path)
    data["scenario"]["rounds"] = "many"
    assert "scenario.rounds" in _error(data) and "integer" in _error(data)
    data = tiny(tmp_path)
    data["attacks"][0]["clients"] = "first"
    assert "attacks[0].clients" in _error(data)
    data = tiny(tmp_path, surprise=1)
    assert "surprise" in _error(data) and "Extra inputs are not permitted" in _error(data)


def test_missing_dataset_path_names_the_field_and_the_file(tmp_path: Path) -> None:
    data = tiny(tmp_path)
    data["scenario"]["dataset"] = f"npz:{tmp_path / 'nowhere' / 'xrays.npz'}"
    message = _error(data)
    assert message.startswith("config: scenario.dataset:") and "xrays.npz" in message
    data = tiny(tmp_path)
    data["scenario"]["data_root"] = str(tmp_path / "no-such-folder")
    assert "scenario.data_root" in _error(data) and "no-such-folder" in _error(data)


def test_defense_grid_and_attack_rounds_are_checked(tmp_path: Path) -> None:
    data = tiny(tmp_path)
    data["defenses"][0]["grid"] = {"sigma0": [0, -1]}
    message = _error(data)
    assert "defenses[0].grid" in message and "sigma0 must be >= 0" in message
    data = tiny(tmp_path)
    data["defenses"][0]["name"] = "gaussian"
    assert "defenses[0].name" in _error(data) and "local-gaussian" in _error(data)
    data = tiny(tmp_path)
    data["attacks"][0]["rounds"] = [5]
    assert "attacks[0].rounds: round 5 is outside the 2 rounds" in _error(data)
    data = tiny(tmp_path)
    data["attacks"][0]["options"] = {"iterations": 3, "tvv": 1.0}
    assert "attacks[0].options" in _error(data) and "tvv" in _error(data)


def test_grid_expands_settings_and_units_with_stable_ids(tmp_path: Path) -> None:
    data = tiny(tmp_path)
    data["scenario"]["grid"] = {"recipe.epochs": [1, 2]}
    plan = plan_study(parse_config(data))
    assert [s.label for s in plan.settings] == [
        "local-gaussian sigma0=0 recipe.epochs=1", "local-gaussian sigma0=10 recipe.epochs=1",
        "local-gaussian sigma0=0 recipe.epochs=2", "local-gaussian sigma0=10 recipe.epochs=2"]
    assert len({s.key for s in plan.settings}) == 4 and len(plan.attack_units) == 4 * 2
    assert [u.id for u in plan_study(parse_config(data)).attack_units] == [u.id for u in plan.attack_units]
    assert plan.settings[2].scenario("tiny").recipe.epochs == 2


def test_cli_run_reports_a_bad_config_in_one_line(tmp_path: Path) -> None:
    data = tiny(tmp_path / "out")
    data["attacks"][0]["name"] = "nope"
    path = write_config(tmp_path / "bad.yaml", data)
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "attacks[0].name" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing ran
    missing = CliRunner().invoke(app, ["run", str(tmp_path / "absent.yaml")])
    assert missing.exit_code == 2 and "absent.yaml not found" in missing.output


def test_bundled_demo_config_is_valid() -> None:
    from gradleak.study import demo_config_path

    config = load_config(demo_config_path())
    plan = plan_study(config)
    assert [s.label for s in plan.settings] == ["undefended", "local-gaussian sigma0=0.1", "local-gaussian sigma0=0.3",
                                                "local-gaussian sigma0=1"]
    assert len(plan.fl_units) == 4 * 3  # three training seeds per setting measure the accuracy
    fedavg = [u for u in plan.attack_units if u.attack.name == "fedavg-inversion"]
    assert sorted({u.client for u in fedavg}) == [0, 4, 8] and sorted({u.round for u in fedavg}) == [19]
    assert {u.attack.name for u in plan.attack_units} == {"fedavg-inversion", "imprint"}
