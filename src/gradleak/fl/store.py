"""UpdateStore: a directory of client updates and global states, saved as safetensors + JSON.

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
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from gradleak.errors import GradleakError, UpdateFileError
from gradleak.fl.safefile import (
    atomic_write_bytes,
    check_against_model,
    encode_safetensors,
    load_safetensors_bytes,
    read_bytes,
    read_json_object,
    read_safetensors_strict,
    sha256_hex,
)
from gradleak.models import ModelSpec
from gradleak.records import ClientUpdate, GlobalState

__all__ = ["FORMAT_VERSION", "RecordExistsError", "RunMismatchError", "UpdateStore", "read_safetensors_strict"]

FORMAT_VERSION = 1
STORE_KIND = "gradleak-update-store"
_SECTIONS = {"update": ("delta", "buffers"), "global": ("params", "buffers")}
_COMMON_KEYS = {"format_version", "kind", "round", "metadata", "tensors", "sha256", "nbytes"}
_SIDECAR_KEYS = {"update": _COMMON_KEYS | {"client", "num_examples"}, "global": _COMMON_KEYS}
_STORE_KEYS = {"format_version", "kind", "created", "model_spec"}
_OPTIONAL_STORE_KEYS = {"run", "server"}
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_MAX_SIDECAR_BYTES = 16 * 1024 * 1024


class RecordExistsError(GradleakError, FileExistsError):
    """A record is already saved and ``overwrite=True`` was not given."""


class RunMismatchError(GradleakError):
    """A record of another run: the store holds one run, identified by its round-0 global model."""


def _index(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value}")
    return value


def _ids(directory: Path, prefix: str, suffix: str) -> list[int]:
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


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_name_list(value: object) -> bool:
    return (isinstance(value, list) and all(isinstance(v, str) for v in value)
            and len(set(value)) == len(value))


def _validate_sidecar(side: dict[str, Any], kind: str, expected: dict[str, int], path: Path) -> None:
    """Check a parsed sidecar's keys, types and ids; raise :class:`UpdateFileError` on the first problem."""
    keys = _SIDECAR_KEYS[kind]
    if side.get("kind") != kind:
        raise UpdateFileError(path, f"sidecar kind is {side.get('kind')!r}; expected {kind!r}")
    if not _is_int(side.get("format_version")):
        raise UpdateFileError(path, "sidecar format_version must be an integer")
    if side["format_version"] != FORMAT_VERSION:
        raise UpdateFileError(path, f"sidecar has format_version {side['format_version']}; this version of "
                                    f"gradleak reads format {FORMAT_VERSION}")
    if missing := sorted(keys - set(side)):
        raise UpdateFileError(path, f"sidecar lacks keys {missing}")
    if unknown := sorted(set(side) - keys):
        raise UpdateFileError(path, f"sidecar has unknown keys {unknown}")
    for key, value in expected.items():
        if not _is_int(side[key]):
            raise UpdateFileError(path, f"sidecar {key} must be an integer, got {side[key]!r}")
        if side[key] != value:
            raise UpdateFileError(path, f"sidecar says {key} {side[key]} but the file name says {value}")
    if "num_examples" in keys and not (_is_int(side["num_examples"]) and side["num_examples"] >= 0):
        raise UpdateFileError(path, f"sidecar num_examples must be a non-negative integer, "
                                    f"got {side['num_examples']!r}")
    if not isinstance(side["metadata"], dict):
        raise UpdateFileError(path, "sidecar metadata must be a JSON object")
    if "withheld" in side["metadata"] and not _is_name_list(side["metadata"]["withheld"]):
        raise UpdateFileError(path, "sidecar metadata 'withheld' must be a list of distinct tensor names")
    tensors = side["tensors"]
    if not isinstance(tensors, dict) or set(tensors) != set(_SECTIONS[kind]):
        raise UpdateFileError(path, f"sidecar tensors must be an object with keys {list(_SECTIONS[kind])}")
    for section, names in tensors.items():
        if not _is_name_list(names):
            raise UpdateFileError(path, f"sidecar tensors.{section} must be a list of distinct names")
    if not (isinstance(side["sha256"], str) and _SHA_RE.fullmatch(side["sha256"])):
        raise UpdateFileError(path, "sidecar sha256 must be 64 lowercase hex digits")
    if not (_is_int(side["nbytes"]) and side["nbytes"] >= 0):
        raise UpdateFileError(path, "sidecar nbytes must be a non-negative integer")


class UpdateStore:
    """The client updates and global states of one study, in one directory (format: module docstring).

    Parameters
    ----------
    path
        The store's directory.
    create
        Create the directory and ``store.json`` when missing; with ``False`` a missing store is an error.
    model_spec
        The architecture the records belong to. Recorded in ``store.json``; opening an existing store with a
        different spec is an error.

    Raises
    ------
    UpdateFileError
        When the store is missing (``create=False``), its ``store.json`` is malformed, or the specs disagree.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True,
                 model_spec: ModelSpec | None = None) -> None:
        self.path = Path(path)
        self._meta_path = self.path / "store.json"
        spec_json = None
        if model_spec is not None:
            try:
                spec_json = json.loads(json.dumps(model_spec.to_json(), allow_nan=False))
            except (TypeError, ValueError) as exc:
                raise TypeError(f"model_spec options must be JSON-serialisable: {exc}") from None
        if not self._meta_path.exists():
            if not create:
                raise UpdateFileError(self._meta_path, "no update store here (store.json is missing); pass "
                                                       "create=True to create one")
            self._write_meta({"format_version": FORMAT_VERSION, "kind": STORE_KIND,
                              "created": datetime.now(UTC).isoformat(timespec="seconds"),
                              "model_spec": spec_json})
        meta = self._read_meta()
        if spec_json is not None and meta["model_spec"] is None:
            self._write_meta({**meta, "model_spec": spec_json})
        elif spec_json is not None and meta["model_spec"] != spec_json:
            raise UpdateFileError(self._meta_path, f"store was created for model {meta['model_spec']}, not "
                                                   f"{spec_json}; use another directory")
        stored = spec_json if spec_json is not None else meta["model_spec"]
        self.model_spec: ModelSpec | None = ModelSpec.from_json(stored) if stored is not None else None

    def __repr__(self) -> str:
        return f"UpdateStore({str(self.path)!r}, model_spec={self.model_spec!r})"

    # -- paths -------------------------------------------------------------------------------------------
    def update_path(self, round: int, client: int) -> Path:
        """The ``.safetensors`` file of an update (its sidecar is ``.with_suffix('.json')``)."""
        r, c = _index(round, "round"), _index(client, "client")
        return self.path / "updates" / f"round_{r:05d}" / f"client_{c:05d}.safetensors"

    def global_path(self, round: int) -> Path:
        """The ``.safetensors`` file of a global state (its sidecar is ``.with_suffix('.json')``)."""
        return self.path / "globals" / f"round_{_index(round, 'round'):05d}.safetensors"

    # -- saving ------------------------------------------------------------------------------------------
    def save_update(self, update: ClientUpdate, *, overwrite: bool = False) -> Path:
        """Save a client update atomically; return its ``.safetensors`` path.

        Raises
        ------
        RecordExistsError
            When the update is already saved and ``overwrite`` is false.
        ValueError, TypeError
            On NaN/inf tensors, unsupported dtypes or metadata that is not JSON-serialisable.
        """
        path = self.update_path(update.round, update.client)
        side = {"kind": "update", "round": update.round, "client": update.client,
                "num_examples": _index(update.num_examples, "num_examples"), "metadata": update.metadata}
        expected = {"round": update.round, "client": update.client}
        self._write_record(path, "update", {"delta": update.delta, "buffers": update.buffers}, side, expected,
                           overwrite)
        return path

    def save_global(self, state: GlobalState, *, overwrite: bool = False) -> Path:
        """Save a global state atomically; return its ``.safetensors`` path (see :meth:`save_update`).

        The round-0 model fixes the store's run (see the module docstring).

        Raises
        ------
        RunMismatchError
            A round-0 model that is not the one this store's run started from.
        """
        path = self.global_path(state.round)
        side = {"kind": "global", "round": state.round, "metadata": state.metadata}
        self._write_record(path, "global", {"params": state.params, "buffers": state.buffers}, side,
                           {"round": state.round}, overwrite, run=state.round == 0)
        return path

    @property
    def run_id(self) -> str | None:
        """The run this store holds: the SHA-256 of its round-0 global model's tensor file (``None`` before)."""
        return self._read_meta().get("run")

    @property
    def server_info(self) -> dict[str, Any]:
        """What the server knows besides the records (``store.json`` ``"server"``; see the module docstring)."""
        return dict(self._read_meta().get("server") or {})

    def update_server_info(self, **fields: Any) -> None:
        """Merge ``fields`` into ``store.json``'s ``"server"`` object (JSON-serialisable values)."""
        meta = self._read_meta()
        server = {**(meta.get("server") or {}), **fields}
        try:
            json.dumps(server, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"server info must be JSON-serialisable (no NaN/inf): {exc}") from None
        self._write_meta({**meta, "server": server})

    def _write_record(self, path: Path, kind: str, sections: dict[str, dict[str, Tensor]],
                      side: dict[str, Any], expected: dict[str, int], overwrite: bool, run: bool = False) -> None:
        sidecar = path.with_suffix(".json")
        if sidecar.exists() and not overwrite:
            raise RecordExistsError(f"{sidecar}: a {kind} record for {expected} is already saved; pass "
                                    "overwrite=True to replace it")
        flat: dict[str, Tensor] = {}
        for section, tensors in sections.items():
            for name, tensor in tensors.items():
                if not isinstance(name, str) or not name:
                    raise TypeError(f"{kind} {section} names must be non-empty strings, got {name!r}")
                flat[f"{section}/{name}"] = tensor
        data = encode_safetensors(flat, what=f"{kind} tensor")
        side = {"format_version": FORMAT_VERSION, **side,
                "tensors": {section: list(tensors) for section, tensors in sections.items()},
                "sha256": sha256_hex(data), "nbytes": len(data)}
        try:
            text = json.dumps(side, indent=1, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{kind} metadata must be JSON-serialisable (no NaN/inf): {exc}") from None
        try:
            _validate_sidecar(json.loads(text), kind, expected, sidecar)
        except UpdateFileError as exc:
            raise ValueError(f"cannot save this {kind}: {exc.problem}") from None
        if run:
            meta = self._read_meta()
            if meta.get("run") not in (None, side["sha256"]):
                raise RunMismatchError(
                    f"{self.path}: this store holds another run (its round-0 global model has SHA-256 "
                    f"{meta['run'][:12]}…, this one {side['sha256'][:12]}…); a store holds one run: record this "
                    "one in another folder")
            if meta.get("run") is None:
                self._write_meta({**meta, "run": side["sha256"]})
        sidecar.unlink(missing_ok=True)  # overwrite: make the record absent first, never half-old/half-new
        atomic_write_bytes(path, data)
        atomic_write_bytes(sidecar, text.encode("utf-8"))

    # -- loading -----------------------------------------------------------------------------------------
    def load_update(self, round: int, client: int, *, model: nn.Module | None = None) -> ClientUpdate:
        """Load and validate one client update.

        Parameters
        ----------
        round, client
            Which update.
        model
            When given, tensor names, shapes and dtypes must match its parameters and buffers; parameters
            may be missing only when ``metadata["withheld"]`` lists them, buffers also when all are absent.

        Raises
        ------
        UpdateFileError
            When the record is absent, incomplete, corrupt, hostile or does not fit ``model``.
        """
        path = self.update_path(round, client)
        side, sections = self._read_record(path, "update", {"round": round, "client": client}, model)
        return ClientUpdate(client=client, round=round, delta=sections["delta"], buffers=sections["buffers"],
                            num_examples=side["num_examples"], metadata=side["metadata"])

    def load_global(self, round: int, *, model: nn.Module | None = None) -> GlobalState:
        """Load and validate the global state of ``round``; with ``model`` every parameter and persistent
        buffer must be present with the model's shape and dtype (errors as :meth:`load_update`)."""
        path = self.global_path(round)
        side, sections = self._read_record(path, "global", {"round": round}, model)
        return GlobalState(round=round, params=sections["params"], buffers=sections["buffers"],
                           metadata=side["metadata"])

    def _read_record(self, path: Path, kind: str, expected: dict[str, int], model: nn.Module | None,
                     ) -> tuple[dict[str, Any], dict[str, dict[str, Tensor]]]:
        sidecar = path.with_suffix(".json")
        if not sidecar.exists():
            ids = ", ".join(f"{k} {v}" for k, v in expected.items())
            state = ("an interrupted save left only the tensor file" if path.exists()
                     else "nothing was saved")
            raise UpdateFileError(sidecar, f"no {kind} saved for {ids}: missing sidecar ({state})")
        side = read_json_object(sidecar, max_bytes=_MAX_SIDECAR_BYTES, what="sidecar")
        _validate_sidecar(side, kind, expected, sidecar)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise UpdateFileError(path, "missing tensor file (its sidecar exists)") from None
        except OSError as exc:
            raise UpdateFileError(path, f"cannot read tensor file: {exc.strerror or exc}") from None
        if not path.is_file():
            raise UpdateFileError(path, "tensor file is not a regular file")
        if size != side["nbytes"]:
            raise UpdateFileError(path, f"file has {size} bytes, the sidecar recorded {side['nbytes']} "
                                        "(file truncated or modified)")
        data = read_bytes(path, max_bytes=size, what="tensor file")
        if sha256_hex(data) != side["sha256"]:
            raise UpdateFileError(path, "checksum mismatch (file truncated or modified)")
        flat = load_safetensors_bytes(data, path)
        listed = {f"{section}/{name}" for section, names in side["tensors"].items() for name in names}
        if unknown := sorted(set(flat) - listed):
            raise UpdateFileError(path, f"unknown tensor {unknown[0]!r} (not listed in the sidecar)")
        if missing := sorted(listed - set(flat)):
            raise UpdateFileError(path, f"missing tensor {missing[0]!r} (listed in the sidecar)")
        sections: dict[str, dict[str, Tensor]] = {
            section: {name: flat[f"{section}/{name}"] for name in names}
            for section, names in side["tensors"].items()
        }
        if model is not None:
            withheld = side["metadata"].get("withheld", []) if kind == "update" else ()
            check_against_model(path, sections, model, param_section=_SECTIONS[kind][0],
                                allow_missing=withheld, buffers_optional=kind == "update")
        return side, sections

    # -- listing -----------------------------------------------------------------------------------------
    def has_update(self, round: int, client: int) -> bool:
        """Whether a complete update record (sidecar present) exists; says nothing about its validity."""
        return self.update_path(round, client).with_suffix(".json").is_file()

    def has_global(self, round: int) -> bool:
        """Whether a complete global-state record exists."""
        return self.global_path(round).with_suffix(".json").is_file()

    def clients(self, round: int) -> list[int]:
        """Clients with a complete update in ``round``, sorted."""
        return _ids(self.path / "updates" / f"round_{_index(round, 'round'):05d}", "client_", ".json")

    def rounds(self) -> list[int]:
        """Rounds with at least one complete update, sorted."""
        return [r for r in _ids(self.path / "updates", "round_", "") if self.clients(r)]

    def global_rounds(self) -> list[int]:
        """Rounds with a saved global state, sorted."""
        return _ids(self.path / "globals", "round_", ".json")

    def last_complete_round(self) -> int | None:
        """The highest round with a saved global state, or ``None`` (where a resumed run picks up)."""
        rounds = self.global_rounds()
        return rounds[-1] if rounds else None

    def updates(self, round: int, *, model: nn.Module | None = None) -> list[ClientUpdate]:
        """All complete updates of ``round``, sorted by client, each validated as in :meth:`load_update`."""
        return [self.load_update(round, c, model=model) for c in self.clients(round)]

    def check(self, *, model: nn.Module | None = None) -> list[str]:
        """Every problem of the store's chain, one line each (empty: the store is sound).

        Checks that every update and global record loads and validates (against ``model`` when given), that
        no tensor file lacks its sidecar and no stray file sits among the records, that every round from 0
        to the last recorded one has its global model (the one its updates are deltas against), and that
        the round-0 model is the run's.
        """
        problems: list[str] = []
        for folder in (self.path / "globals", *sorted((self.path / "updates").glob("round_*"))):
            if not folder.is_dir():
                continue
            for entry in sorted(folder.iterdir()):
                if entry.suffix == ".safetensors" and not entry.with_suffix(".json").exists():
                    problems.append(f"{entry}: tensor file without its sidecar (an interrupted or partial copy)")
                elif entry.suffix not in (".safetensors", ".json") or not entry.is_file():
                    problems.append(f"{entry}: not a record of this store")
        for r in self.global_rounds():
            try:
                self.load_global(r, model=model)
            except UpdateFileError as exc:
                problems.append(str(exc))
        for r in self.rounds():
            for c in self.clients(r):
                try:
                    self.load_update(r, c, model=model)
                except UpdateFileError as exc:
                    problems.append(str(exc))
        have = set(self.global_rounds())
        for r in range(max(self.rounds(), default=-1) + 1):
            if r not in have:
                what = "has updates but no global model (the model its updates are deltas against)" if \
                    r in self.rounds() else "has no global model, though later rounds were recorded"
                problems.append(f"{self.global_path(r).with_suffix('.json')}: round {r} {what}")
        run = self.run_id
        if run is not None and self.has_global(0):
            side = read_json_object(self.global_path(0).with_suffix(".json"), max_bytes=_MAX_SIDECAR_BYTES,
                                    what="sidecar")
            if side.get("sha256") != run:
                problems.append(f"{self.global_path(0)}: the round-0 global model is not the one this store's run "
                                "started from (store.json run)")
        return problems

    # -- store.json --------------------------------------------------------------------------------------
    def _write_meta(self, meta: dict[str, Any]) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise UpdateFileError(self.path, "exists and is not a directory; choose another store path")
        atomic_write_bytes(self._meta_path, json.dumps(meta, indent=1).encode("utf-8"))

    def _read_meta(self) -> dict[str, Any]:
        path = self._meta_path
        meta = read_json_object(path, max_bytes=1024 * 1024, what="store.json")
        if meta.get("kind") != STORE_KIND:
            raise UpdateFileError(path, f"not an update store (kind {meta.get('kind')!r})")
        if not _is_int(meta.get("format_version")) or meta["format_version"] != FORMAT_VERSION:
            raise UpdateFileError(path, f"store format_version {meta.get('format_version')!r}; this version "
                                        f"of gradleak reads format {FORMAT_VERSION}")
        if not _STORE_KEYS <= set(meta) <= _STORE_KEYS | _OPTIONAL_STORE_KEYS:
            raise UpdateFileError(path, f"store.json must have the keys {sorted(_STORE_KEYS)} and may have "
                                        f"{sorted(_OPTIONAL_STORE_KEYS)}")
        run = meta.get("run")
        if run is not None and not (isinstance(run, str) and _SHA_RE.fullmatch(run)):
            raise UpdateFileError(path, "store.json run must be null or 64 lowercase hex digits")
        if not isinstance(meta.get("server") or {}, dict):
            raise UpdateFileError(path, "store.json server must be an object")
        spec = meta["model_spec"]
        if spec is not None and not (isinstance(spec, dict) and set(spec) == {"name", "options"}
                                     and isinstance(spec["name"], str) and isinstance(spec["options"], dict)):
            raise UpdateFileError(path, 'store.json model_spec must be null or {"name": str, "options": {}}')
        return meta
