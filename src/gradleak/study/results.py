"""A study's output folder: one result file per unit (written atomically), and the tables built from them.

Layout::

    OUT/study.json                      the validated config and the plan (settings, units)
    OUT/settings/<setting>/store/       the recorded updates of that setting's federation (an UpdateStore)
    OUT/units/<unit>.json               one finished unit (its presence is what "finished" means)
    OUT/units/<unit>.npz                an attack unit's images: truth, reconstruction, prior, embeddings
    OUT/results.csv, results.parquet    one row per attack unit, in plan order
    OUT/settings.csv, settings.parquet  one row per setting: utility (accuracy) and privacy (epsilon) of the FL run

A unit's arrays are written before its JSON; both through :func:`gradleak.fl.safefile.atomic_write_bytes`, so a
unit killed half-way leaves no JSON and is simply run again. The tables are rebuilt from the unit files at the
end of every run, so an interrupted-then-resumed study gives the same tables as an uninterrupted one. Timings
stay in the unit files, out of the tables.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradleak.errors import GradleakError
from gradleak.fl.safefile import atomic_write_bytes

__all__ = [
    "RESULT_COLUMNS",
    "SETTING_COLUMNS",
    "load_unit",
    "load_unit_arrays",
    "read_table",
    "unit_done",
    "write_table",
    "write_unit",
]

#: Leading columns of ``results.csv`` (grid parameters follow as ``defense.<name>`` / ``scenario.<name>``).
RESULT_COLUMNS = (
    "unit", "setting", "setting_label", "arm", "attack", "attack_label", "round", "client", "num_images",
    "batch_size", "local_steps", "n_reconstructions", "n_matched", "ssim_mean", "psnr_mean", "mse_mean", "asr",
    "label_accuracy", "ssim_prior_mean", "rdlv_mean", "leak_rule", "n_leaks", "n_verbatim", "iip", "iip_fl",
    "embedding_cosine", "expected_recovery", "iterations", "restarts",
)
#: Leading columns of ``settings.csv``.
SETTING_COLUMNS = (
    "setting", "setting_label", "arm", "rounds", "clients", "final_test_accuracy", "accuracy_mean", "accuracy_sd",
    "seeds", "majority_rate", "best_round", "best_test_accuracy", "final_mean_val_accuracy", "epsilon", "delta",
)


def units_dir(out: Path) -> Path:
    return Path(out) / "units"


def unit_done(out: Path, unit_id: str) -> bool:
    """Whether ``unit_id`` finished (its JSON exists)."""
    return (units_dir(out) / f"{unit_id}.json").is_file()


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become ``None``, numpy scalars become Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_unit(out: Path, unit_id: str, record: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None
               ) -> Path:
    """Write a finished unit: its arrays (``.npz``) first, then its JSON record, each atomically."""
    folder = units_dir(out)
    if arrays:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, allow_pickle=False, **{k: np.asarray(v) for k, v in arrays.items()})
        atomic_write_bytes(folder / f"{unit_id}.npz", buffer.getvalue())
    path = folder / f"{unit_id}.json"
    atomic_write_bytes(path, json.dumps(_clean(dict(record)), indent=1, sort_keys=True).encode())
    return path


def load_unit(out: Path, unit_id: str) -> dict[str, Any]:
    """The JSON record of a finished unit."""
    path = units_dir(out) / f"{unit_id}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise GradleakError(f"{path}: unit {unit_id} has not finished (no result file)") from None
    except json.JSONDecodeError as exc:
        raise GradleakError(f"{path}: not valid JSON ({exc}); delete it to run the unit again") from None


def load_unit_arrays(out: Path, unit_id: str) -> dict[str, np.ndarray]:
    """The arrays of a finished attack unit (empty when it has none)."""
    path = units_dir(out) / f"{unit_id}.npz"
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _columns(rows: Sequence[Mapping[str, Any]], leading: Sequence[str]) -> list[str]:
    extra = sorted({k for r in rows for k in r} - set(leading))
    return [*leading, *extra]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_table(rows: Sequence[Mapping[str, Any]], stem: Path, leading: Sequence[str]) -> tuple[Path, Path]:
    """Write ``rows`` as ``stem.csv`` and ``stem.parquet`` (atomically); columns: ``leading`` then the rest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = _columns(rows, leading)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    csv_path, parquet_path = stem.with_suffix(".csv"), stem.with_suffix(".parquet")
    atomic_write_bytes(csv_path, text.getvalue().encode())
    table = pa.table({c: pa.array([_clean(row.get(c)) for row in rows]) if rows else pa.array([], pa.null())
                      for c in columns})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(parquet_path, sink.getvalue().to_pybytes())
    return csv_path, parquet_path


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a results/settings Parquet (or CSV) file as dicts (CSV cells parsed back to numbers)."""
    path = Path(path)
    if not path.is_file():
        raise GradleakError(f"{path}: no such table; run the study first (gradleak run CONFIG)")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with path.open(newline="") as fh:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _parse(cell: str) -> Any:
    if cell == "":
        return None
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(cell, cell)


def records(out: Path, unit_ids: Iterable[str]) -> list[dict[str, Any]]:
    """The JSON records of ``unit_ids`` (all must be finished), in that order."""
    return [load_unit(out, u) for u in unit_ids]
