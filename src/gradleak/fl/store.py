"""UpdateStore: a directory of client updates and global states, saved as safetensors + JSON (the on-disk format
and its validation: :mod:`gradleak.fl.store_format`). A store holds one run; records are written atomically and
read without unpickling, each checked against its sidecar and, given a model, against the model."""

from __future__ import annotations

import json
import os
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
from gradleak.fl.store_format import (
    FORMAT_VERSION,
    MAX_SIDECAR_BYTES,
    OPTIONAL_STORE_KEYS,
    SECTIONS,
    SHA_RE,
    STORE_KEYS,
    STORE_KIND,
    check_index,
    is_int,
    record_ids,
    validate_sidecar,
)
from gradleak.models import ModelSpec
from gradleak.records import ClientUpdate, GlobalState

__all__ = ["FORMAT_VERSION", "RecordExistsError", "RunMismatchError", "UpdateStore", "read_safetensors_strict"]

class RecordExistsError(GradleakError, FileExistsError):
    """A record is already saved and ``overwrite=True`` was not given."""


class RunMismatchError(GradleakError):
    """A record of another run: the store holds one run, identified by its round-0 global model."""


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
        r, c = check_index(round, "round"), check_index(client, "client")
        return self.path / "updates" / f"round_{r:05d}" / f"client_{c:05d}.safetensors"

    def global_path(self, round: int) -> Path:
        """The ``.safetensors`` file of a global state (its sidecar is ``.with_suffix('.json')``)."""
        return self.path / "globals" / f"round_{check_index(round, 'round'):05d}.safetensors"

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
                "num_examples": check_index(update.num_examples, "num_examples"), "metadata": update.metadata}
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
            validate_sidecar(json.loads(text), kind, expected, sidecar)
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
        side = read_json_object(sidecar, max_bytes=MAX_SIDECAR_BYTES, what="sidecar")
        validate_sidecar(side, kind, expected, sidecar)
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
            check_against_model(path, sections, model, param_section=SECTIONS[kind][0],
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
        return record_ids(self.path / "updates" / f"round_{check_index(round, 'round'):05d}", "client_", ".json")

    def rounds(self) -> list[int]:
        """Rounds with at least one complete update, sorted."""
        return [r for r in record_ids(self.path / "updates", "round_", "") if self.clients(r)]

    def global_rounds(self) -> list[int]:
        """Rounds with a saved global state, sorted."""
        return record_ids(self.path / "globals", "round_", ".json")

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
            side = read_json_object(self.global_path(0).with_suffix(".json"), max_bytes=MAX_SIDECAR_BYTES,
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
        if not is_int(meta.get("format_version")) or meta["format_version"] != FORMAT_VERSION:
            raise UpdateFileError(path, f"store format_version {meta.get('format_version')!r}; this version "
                                        f"of gradleak reads format {FORMAT_VERSION}")
        if not STORE_KEYS <= set(meta) <= STORE_KEYS | OPTIONAL_STORE_KEYS:
            raise UpdateFileError(path, f"store.json must have the keys {sorted(STORE_KEYS)} and may have "
                                        f"{sorted(OPTIONAL_STORE_KEYS)}")
        run = meta.get("run")
        if run is not None and not (isinstance(run, str) and SHA_RE.fullmatch(run)):
            raise UpdateFileError(path, "store.json run must be null or 64 lowercase hex digits")
        if not isinstance(meta.get("server") or {}, dict):
            raise UpdateFileError(path, "store.json server must be an object")
        spec = meta["model_spec"]
        if spec is not None and not (isinstance(spec, dict) and set(spec) == {"name", "options"}
                                     and isinstance(spec["name"], str) and isinstance(spec["options"], dict)):
            raise UpdateFileError(path, 'store.json model_spec must be null or {"name": str, "options": {}}')
        return meta
