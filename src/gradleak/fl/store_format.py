"""The on-disk format of an :class:`~gradleak.fl.store.UpdateStore`: safetensors + JSON sidecars.

On-disk format (``FORMAT_VERSION = 1``)
---------------------------------------
::

    root/
      store.json                                   {"format_version": 1, "kind": "gradleak-update-store",
                                                    "created": ISO-8601 UTC time, "model_spec": {...} | null,
                                                    "run": sha256 of the round-0 global's tensor file | null,
                                                    "server": {...}}  (the last two optional)
      globals/round_00003.safetensors              tensors "params/<name>", "buffers/<name>"
      globals/round_00003.json                     sidecar (below)
      updates/round_00003/client_00007.safetensors tensors "delta/<name>", "buffers/<name>"
      updates/round_00003/client_00007.json        sidecar (below)

``<name>`` is the ``named_parameters`` / ``named_buffers`` name (e.g. ``delta/0.weight``,
``buffers/1.num_batches_tracked``). The sidecar of an update is a JSON object with exactly these keys::

    {"format_version": 1, "kind": "update", "round": 3, "client": 7, "num_examples": 32,
     "metadata": {...},                                   # ClientUpdate.metadata, round-tripped through JSON
     "tensors": {"delta": [names...], "buffers": [names...]},
     "sha256": "<hex digest of the .safetensors file>", "nbytes": <size of the .safetensors file>}

A global sidecar has ``"kind": "global"``, no ``client`` / ``num_examples``, and
``"tensors": {"params": [...], "buffers": [...]}``. An update's ``metadata`` may hold ``"withheld"``: the
names of parameters (or buffers) a defense kept back, which may then be missing when checking against a model.

One store, one run
------------------
A store holds the records of one federated run. Its identity is the SHA-256 of the round-0 global model's tensor
file, fixed when that model is first saved (``store.json`` ``"run"``); saving another round-0 global model
raises :class:`RunMismatchError`, so a second run can never add its updates beside the first run's (a resumed
simulation starts from the same round-0 model and continues). :meth:`UpdateStore.check` verifies the chain:
every record loads, no tensor file lacks its sidecar, every round from 0 to the last has its global model, and
the round-0 model is the run's.

``"server"`` holds what the server knows besides the records, as the recorder was told or saw it (free-form
JSON, written by :meth:`UpdateStore.update_server_info`): the input the model takes (``"input"``: size,
channels, resize, mean, std), the clients' declared recipe (``"recipe"``), the engine's client ids mapped to the
store's small ids (``"clients"``).

Guarantees
----------
* Saves are atomic and ordered: the tensor file is written first, the sidecar last, each via a temporary file
  in the same directory, ``fsync`` and :func:`os.replace`. A present sidecar therefore means a complete
  record; a tensor file without a sidecar is an interrupted save and the record counts as absent.
  Overwriting needs ``overwrite=True`` (it first removes the old sidecar, so a crash leaves the record
  absent, never mixed).
* Loading never unpickles (see :mod:`gradleak.fl.safefile`). Every problem — missing or malformed sidecar,
  checksum mismatch, hostile header, NaN/inf, names/shapes/dtypes that do not fit the model — raises
  :class:`gradleak.errors.UpdateFileError` naming the file and what is wrong.

Examples
--------
>>> store = UpdateStore("runs/study1")  # doctest: +SKIP
>>> store.save_update(update)  # doctest: +SKIP
>>> store.load_update(round=0, client=3, model=model)  # doctest: +SKIP

This module holds the format's constants and the checks of a sidecar; :class:`gradleak.fl.store.UpdateStore`
reads and writes it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gradleak.errors import UpdateFileError

__all__ = ["FORMAT_VERSION", "MAX_SIDECAR_BYTES", "OPTIONAL_STORE_KEYS", "SECTIONS", "SHA_RE", "STORE_KEYS",
           "STORE_KIND", "check_index", "is_int", "record_ids", "validate_sidecar"]

FORMAT_VERSION = 1
STORE_KIND = "gradleak-update-store"
SECTIONS = {"update": ("delta", "buffers"), "global": ("params", "buffers")}
_COMMON_KEYS = {"format_version", "kind", "round", "metadata", "tensors", "sha256", "nbytes"}
_SIDECAR_KEYS = {"update": _COMMON_KEYS | {"client", "num_examples"}, "global": _COMMON_KEYS}
STORE_KEYS = {"format_version", "kind", "created", "model_spec"}
OPTIONAL_STORE_KEYS = {"run", "server"}
SHA_RE = re.compile(r"[0-9a-f]{64}")
MAX_SIDECAR_BYTES = 16 * 1024 * 1024


def check_index(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value}")
    return value


def record_ids(directory: Path, prefix: str, suffix: str) -> list[int]:
    """Ids ``n`` of entries named ``{prefix}{n:05d}{suffix}`` (canonical spelling only), sorted."""
    pattern = re.compile(rf"{re.escape(prefix)}(\d+){re.escape(suffix)}")
    if not directory.is_dir():
        return []
    out = []
    for entry in directory.iterdir():
        match = pattern.fullmatch(entry.name)
        if match and entry.name == f"{prefix}{int(match.group(1)):05d}{suffix}":
            out.append(int(match.group(1)))
    return sorted(out)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_name_list(value: object) -> bool:
    return (isinstance(value, list) and all(isinstance(v, str) for v in value)
            and len(set(value)) == len(value))


def validate_sidecar(side: dict[str, Any], kind: str, expected: dict[str, int], path: Path) -> None:
    """Check a parsed sidecar's keys, types and ids; raise :class:`UpdateFileError` on the first problem."""
    keys = _SIDECAR_KEYS[kind]
    if side.get("kind") != kind:
        raise UpdateFileError(path, f"sidecar kind is {side.get('kind')!r}; expected {kind!r}")
    if not is_int(side.get("format_version")):
        raise UpdateFileError(path, "sidecar format_version must be an integer")
    if side["format_version"] != FORMAT_VERSION:
        raise UpdateFileError(path, f"sidecar has format_version {side['format_version']}; this version of "
                                    f"gradleak reads format {FORMAT_VERSION}")
    if missing := sorted(keys - set(side)):
        raise UpdateFileError(path, f"sidecar lacks keys {missing}")
    if unknown := sorted(set(side) - keys):
        raise UpdateFileError(path, f"sidecar has unknown keys {unknown}")
    for key, value in expected.items():
        if not is_int(side[key]):
            raise UpdateFileError(path, f"sidecar {key} must be an integer, got {side[key]!r}")
        if side[key] != value:
            raise UpdateFileError(path, f"sidecar says {key} {side[key]} but the file name says {value}")
    if "num_examples" in keys and not (is_int(side["num_examples"]) and side["num_examples"] >= 0):
        raise UpdateFileError(path, f"sidecar num_examples must be a non-negative integer, "
                                    f"got {side['num_examples']!r}")
    if not isinstance(side["metadata"], dict):
        raise UpdateFileError(path, "sidecar metadata must be a JSON object")
    if "withheld" in side["metadata"] and not _is_name_list(side["metadata"]["withheld"]):
        raise UpdateFileError(path, "sidecar metadata 'withheld' must be a list of distinct tensor names")
    tensors = side["tensors"]
    if not isinstance(tensors, dict) or set(tensors) != set(SECTIONS[kind]):
        raise UpdateFileError(path, f"sidecar tensors must be an object with keys {list(SECTIONS[kind])}")
    for section, names in tensors.items():
        if not _is_name_list(names):
            raise UpdateFileError(path, f"sidecar tensors.{section} must be a list of distinct names")
    if not (isinstance(side["sha256"], str) and SHA_RE.fullmatch(side["sha256"])):
        raise UpdateFileError(path, "sidecar sha256 must be 64 lowercase hex digits")
    if not (is_int(side["nbytes"]) and side["nbytes"] >= 0):
        raise UpdateFileError(path, "sidecar nbytes must be a non-negative integer")
