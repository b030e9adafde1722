"""Reading a study config: YAML, then the pydantic schema (:mod:`gradleak.study.config`), then the checks
against the registries, the options, the grids and the data (:func:`gradleak.study.grid.check_config`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gradleak.study.config import ConfigError, StudyConfig
from gradleak.study.grid import check_config

__all__ = ["load_config", "parse_config", "replace_config"]


def _location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith(("function-", "literal[", "list[", "dict[")):
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def parse_config(data: Any, *, source: str = "config") -> StudyConfig:
    """Validate a parsed config mapping: pydantic types, then registries, options, grids and data paths.

    Raises
    ------
    ConfigError
        One line naming the field and what is wrong (the first problem found).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a study config is a mapping of fields, got {type(data).__name__}")
    try:
        config = StudyConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise ConfigError(f"{source}: {_location(err['loc'])}: {err['msg']}{more}") from None
    check_config(config, source=source)
    return config


def load_config(path: str | Path, **overrides: Any) -> StudyConfig:
    """Read a YAML study config (``overrides`` replace top-level fields, e.g. ``output=...``) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (looked in {path.resolve().parent})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if isinstance(data, dict):
        data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    return parse_config(data, source=str(path))


def replace_config(config: StudyConfig, **changes: Any) -> StudyConfig:
    """A validated copy with top-level ``changes`` (``output``, ``executor``, ...)."""
    data = config.model_dump()
    data.update(changes)
    return parse_config(data)

