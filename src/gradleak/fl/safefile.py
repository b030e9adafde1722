"""Strict, pickle-free reading and atomic writing of safetensors and JSON files.

Everything here treats file content as hostile. Tensors are read only by :func:`safetensors.torch.load` on
bytes this module read itself, and only after the safetensors header was parsed and checked here (dtype in
an allowed set, shapes of non-negative ints, data offsets inside the buffer, consistent with shape × dtype,
non-overlapping and covering the data section exactly). Nothing is ever unpickled: ``torch.load``,
:mod:`pickle` and ``np.load(allow_pickle=True)`` are not used, so a pickle placed where a ``.safetensors``
file should be fails the header parse and its payload never runs.

Writes are atomic: the bytes go to a temporary file in the destination directory, are flushed and
``fsync``-ed, then :func:`os.replace`-d over the destination, so a reader sees either the old file or the
complete new one, never a partial write.

Every failure raises :class:`gradleak.errors.UpdateFileError` naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

from gradleak.errors import UpdateFileError

__all__ = [
    "DTYPES",
    "MAX_HEADER_BYTES",
    "atomic_write_bytes",
    "check_against_model",
    "check_finite",
    "dtype_name",
    "encode_safetensors",
    "parse_safetensors",
    "read_bytes",
    "read_json_object",
    "read_safetensors_strict",
    "sha256_hex",
]

#: safetensors dtype codes this project reads and writes, with the torch dtype and the item size in bytes.
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
_CODE_OF_DTYPE = {dtype: code for code, (dtype, _) in DTYPES.items()}

#: Largest safetensors header accepted (the JSON part); real headers are a few kB.
MAX_HEADER_BYTES = 100_000_000
#: Largest tensor file read by default.
MAX_FILE_BYTES = 16 * 1024**3
#: Largest number of dimensions accepted for one tensor.
MAX_DIMS = 32
_HEADER_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


def dtype_name(dtype: torch.dtype) -> str:
    """Short name of a torch dtype for messages (``torch.float32`` → ``float32``)."""
    return str(dtype).removeprefix("torch.")


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` as 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: Path, *, max_bytes: int = MAX_FILE_BYTES, what: str = "file") -> bytes:
    """Read a whole regular file, refusing missing files, directories and files over ``max_bytes``."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise UpdateFileError(path, f"{what} is not a regular file")
        if size > max_bytes:
            raise UpdateFileError(path, f"{what} is {size} bytes, more than the {max_bytes} bytes allowed")
        with open(path, "rb") as fh:
            return fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise UpdateFileError(path, f"missing {what}") from None
    except OSError as exc:
        raise UpdateFileError(path, f"cannot read {what}: {exc.strerror or exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_json_object(data: bytes, path: Path, *, what: str) -> dict[str, Any]:
    """Decode strict JSON (UTF-8, no NaN/Infinity, no duplicate keys) that must be an object."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UpdateFileError(path, f"{what} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise UpdateFileError(path, f"{what} is not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise UpdateFileError(path, f"{what} is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise UpdateFileError(path, f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def read_json_object(path: Path, *, max_bytes: int = 16 * 1024 * 1024,
                     what: str = "JSON file") -> dict[str, Any]:
    """Read a JSON file whose top level must be an object (see :func:`parse_json_object`)."""
    return parse_json_object(read_bytes(path, max_bytes=max_bytes, what=what), path, what=what)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_entry(name: str, entry: object, data_len: int, path: Path) -> tuple[int, int]:
    """Validate one header entry; return its ``(begin, end)`` offsets."""
    where = f"safetensors header entry {name!r}"
    if not isinstance(entry, dict):
        raise UpdateFileError(path, f"not a safetensors file: {where} is not an object")
    if set(entry) != _HEADER_ENTRY_KEYS:
        raise UpdateFileError(path, f"not a safetensors file: {where} has keys {sorted(entry)}; "
                                    f"expected {sorted(_HEADER_ENTRY_KEYS)}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise UpdateFileError(path, f"{where} has unsupported dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_int(d) and d >= 0 for d in shape):
        raise UpdateFileError(path, f"{where} has invalid shape {shape!r} "
                                    f"(expected a list of at most {MAX_DIMS} non-negative integers)")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len):
        raise UpdateFileError(path, f"{where} has data_offsets {offsets!r} outside the {data_len}-byte data "
                                    "section (file truncated or corrupt)")
    nbytes = math.prod(shape) * DTYPES[dtype][1]  # Python ints: no overflow for huge shapes
    if offsets[1] - offsets[0] != nbytes:
        raise UpdateFileError(path, f"{where}: shape {shape} of {dtype} needs {nbytes} bytes but "
                                    f"data_offsets {offsets} span {offsets[1] - offsets[0]}")
    return offsets[0], offsets[1]


def parse_safetensors(data: bytes, path: Path) -> dict[str, Any]:
    """Parse and check a safetensors header without trusting anything in it.

    Parameters
    ----------
    data
        The whole file.
    path
        The file's path (for error messages).

    Returns
    -------
    dict
        The header's tensor entries by name (``__metadata__`` removed).

    Raises
    ------
    UpdateFileError
        When the bytes are not a well-formed safetensors file this module accepts.
    """
    if len(data) < 8:
        raise UpdateFileError(path, f"not a safetensors file: {len(data)} bytes, shorter than the 8-byte "
                                    "header length")
    header_len = int.from_bytes(data[:8], "little", signed=False)
    if header_len > MAX_HEADER_BYTES:
        raise UpdateFileError(path, f"not a safetensors file: header length field says {header_len} bytes, "
                                    f"more than the {MAX_HEADER_BYTES} allowed")
    if header_len > len(data) - 8:
        raise UpdateFileError(path, f"not a safetensors file: header length field says {header_len} bytes "
                                    f"but only {len(data) - 8} follow (file truncated?)")
    raw = data[8 : 8 + header_len]
    if not raw.startswith(b"{"):
        raise UpdateFileError(path, "not a safetensors file: the header does not start with '{'")
    header = parse_json_object(raw, path, what="safetensors header")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise UpdateFileError(path, "not a safetensors file: __metadata__ must map strings to strings")
    data_len = len(data) - 8 - header_len
    spans = sorted((_check_entry(name, entry, data_len, path), name) for name, entry in header.items())
    position = 0
    for (begin, end), name in spans:
        if begin != position:
            problem = "overlaps the previous tensor" if begin < position else f"leaves a gap at {position}"
            raise UpdateFileError(path, f"not a safetensors file: tensor {name!r} at {begin}..{end} "
                                        f"{problem}")
        position = end
    if position != data_len:
        raise UpdateFileError(path, f"size mismatch: tensors cover {position} bytes but the data section has "
                                    f"{data_len} (file truncated or padded)")
    return header


def check_finite(tensors: Mapping[str, Tensor], path: Path) -> None:
    """Raise unless every floating tensor is free of NaN and inf and every bool tensor holds 0/1 bytes."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UpdateFileError(path, f"tensor {name!r} contains NaN/inf")
        if tensor.dtype == torch.bool and tensor.numel() and int(tensor.view(torch.uint8).max()) > 1:
            raise UpdateFileError(path, f"tensor {name!r} is bool but holds bytes other than 0 and 1")


def load_safetensors_bytes(data: bytes, path: Path, *, require_finite: bool = True) -> dict[str, Tensor]:
    """Check ``data`` with :func:`parse_safetensors`, then decode it with ``safetensors.torch.load``."""
    header = parse_safetensors(data, path)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # the library's own checks, as a second line of defence
        raise UpdateFileError(path, f"not a safetensors file: {exc}") from None
    if set(tensors) != set(header):
        raise UpdateFileError(path, "not a safetensors file: decoded tensors differ from the header")
    for name, tensor in tensors.items():
        entry = header[name]
        if list(tensor.shape) != entry["shape"] or tensor.dtype != DTYPES[entry["dtype"]][0]:
            raise UpdateFileError(path, f"not a safetensors file: tensor {name!r} decoded inconsistently")
    if require_finite:
        check_finite(tensors, path)
    return tensors


def read_safetensors_strict(path: str | os.PathLike[str], *, require_finite: bool = True,
                            max_bytes: int = MAX_FILE_BYTES) -> dict[str, Tensor]:
    """Read a safetensors file defensively (never unpickles; see the module docstring).

    Parameters
    ----------
    path
        The ``.safetensors`` file.
    require_finite
        Reject floating tensors holding NaN or inf.
    max_bytes
        Refuse larger files.

    Returns
    -------
    dict[str, Tensor]
        CPU tensors by name, owning their memory.

    Raises
    ------
    UpdateFileError
        When the file is missing, unreadable, not a well-formed safetensors file, or holds non-finite values.

    Examples
    --------
    >>> weights = read_safetensors_strict("model.safetensors")  # doctest: +SKIP
    """
    path = Path(path)
    return load_safetensors_bytes(read_bytes(path, max_bytes=max_bytes, what="tensor file"), path,
                                  require_finite=require_finite)


def check_against_model(path: Path, sections: Mapping[str, Mapping[str, Tensor]], model: nn.Module, *,
                        param_section: str = "params", allow_missing: Collection[str] = (),
                        buffers_optional: bool = False) -> None:
    """Check tensors against a model's parameters and buffers.

    Parameters
    ----------
    path
        The file the tensors came from (for error messages).
    sections
        ``{param_section: parameters by name, "buffers": buffers by name}``; messages name a tensor
        ``"<section>/<name>"``.
    model
        The reference: names from ``named_parameters`` / ``named_buffers``, shapes and dtypes must match.
    param_section
        The key of ``sections`` holding parameters (``"params"`` or ``"delta"``).
    allow_missing
        Names that may be absent (withheld by a defense).
    buffers_optional
        Accept an empty buffers section (all buffers withheld).

    Raises
    ------
    UpdateFileError
        On an unknown name, a shape or dtype mismatch, or a missing parameter / persistent buffer.
    """
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    refs: dict[str, tuple[Mapping[str, Tensor], str]] = {param_section: (params, "parameter"),
                                                         "buffers": (buffers, "buffer")}
    for section, tensors in sections.items():
        ref, noun = refs[section]
        for name, tensor in tensors.items():
            key = f"{section}/{name}"
            if name not in ref:
                raise UpdateFileError(path, f"unknown tensor {key!r}: the model has no {noun} named {name!r}")
            want = ref[name]
            if tensor.shape != want.shape:
                raise UpdateFileError(path, f"tensor {key!r} has shape {tuple(tensor.shape)}; the model "
                                            f"expects {tuple(want.shape)}")
            if tensor.dtype != want.dtype:
                raise UpdateFileError(path, f"tensor {key!r} has dtype {dtype_name(tensor.dtype)} where the "
                                            f"model has {dtype_name(want.dtype)}")
    required = {param_section: set(params), "buffers": set(model.state_dict()) & set(buffers)}
    for section, names in required.items():
        present = sections.get(section, {})
        if section == "buffers" and buffers_optional and not present:
            continue
        if missing := sorted(names - set(present) - set(allow_missing)):
            raise UpdateFileError(path, f"missing tensor '{section}/{missing[0]}' ({len(missing)} missing in "
                                        "all); the model has it and the record does not list it as withheld")


def encode_safetensors(tensors: Mapping[str, Tensor], *, what: str = "tensor") -> bytes:
    """Serialise tensors (detached, contiguous CPU copies) to safetensors bytes; refuses non-finite values.

    Raises
    ------
    ValueError
        When a tensor holds NaN/inf or has a dtype outside :data:`DTYPES`.
    TypeError
        When a value is not a tensor.
    """
    prepared: dict[str, Tensor] = {}
    for name, tensor in tensors.items():
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{what} {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        if tensor.dtype not in _CODE_OF_DTYPE:
            raise ValueError(f"{what} {name!r} has dtype {dtype_name(tensor.dtype)}, which cannot be stored; "
                             f"supported: {', '.join(dtype_name(d) for d in _CODE_OF_DTYPE)}")
        copy = tensor.detach().to("cpu", copy=True).contiguous()
        if copy.is_floating_point() and not bool(torch.isfinite(copy).all()):
            raise ValueError(f"{what} {name!r} contains NaN/inf; refusing to save it")
        prepared[name] = copy
    return safetensors.torch.save(prepared)


def _fsync_dir(directory: Path) -> None:
    """Flush a directory entry to disk (best effort: not every platform lets a directory be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, :func:`os.replace`), with the
    permissions a plain ``open(path, "w")`` would give (``0o666`` less the user's umask; temporary files are
    created ``0o600``).

    On any failure the temporary file is removed and ``path`` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = tempfile.NamedTemporaryFile(delete=False, dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(fh.name)
    try:
        with fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
