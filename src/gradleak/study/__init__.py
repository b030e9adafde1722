"""Studies: a YAML config in, tables of leakage and utility out (see :mod:`gradleak.study.config`).

- :mod:`~gradleak.study.config`: the pydantic schema and :class:`ConfigError`.
- :mod:`~gradleak.study.parse`: :func:`load_config`, :func:`parse_config` (YAML, schema, then the checks).
- :mod:`~gradleak.study.grid`: settings and units of work.
- :mod:`~gradleak.study.views`: server views of recorded updates.
- :mod:`~gradleak.study.runner`: :func:`run_study` with the ``local`` and ``ray`` executors, resume.
- :mod:`~gradleak.study.results`: unit files and the results tables (CSV, Parquet).
"""

from gradleak.study.config import ConfigError, StudyConfig
from gradleak.study.parse import load_config, parse_config
from gradleak.study.runner import EXECUTORS, StudyResult, run_study

__all__ = ["EXECUTORS", "ConfigError", "StudyConfig", "StudyResult", "demo_config_path", "load_config",
           "parse_config", "run_study"]


def demo_config_path() -> str:
    """Path of the bundled demo audit config (``gradleak demo`` runs it)."""
    from importlib.resources import files

    return str(files("gradleak.study") / "configs" / "demo.yaml")
