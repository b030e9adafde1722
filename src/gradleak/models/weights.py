"""Load and save model weights without ever unpickling arbitrary objects.

Two formats are read: safetensors (``safetensors.torch.load_file``) and a PyTorch state dict written by
``torch.save`` (read with ``torch.load(..., weights_only=True)``, which refuses any object that is not a
tensor or a plain container). The format is detected from the file's first bytes, then its extension.
Every error names the file and, for a mismatch, the missing / unexpected keys and the mismatched shapes.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from gradleak.models._common import WeightsFileError

__all__ = ["load_weights", "read_state_dict", "save_weights"]

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
_MAX_LISTED = 10


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model.state_dict()`` (parameters and buffers) to a safetensors file.

    Parameters
    ----------
    model
        The module to save.
    path
        Destination file (conventionally ``*.safetensors``).

    Returns
    -------
    Path
        The written file.
    """
    from safetensors.torch import save_file

    path = Path(path)
    # clone: safetensors refuses tensors that share storage (tied weights) or are non-contiguous
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    return path


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from a safetensors or ``torch.save`` file, never unpickling arbitrary objects.

    A ``torch.save`` checkpoint holding the state dict under ``"state_dict"``, ``"model_state_dict"`` or
    ``"model"`` is unwrapped, and a ``"module."`` prefix on every key (``nn.DataParallel``) is removed.

    Raises
    ------
    WeightsFileError
        The file is missing, not a recognised format, corrupt, or holds something other than tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(path, "no such weights file")
    with path.open("rb") as handle:
        head = handle.read(16)
    if _looks_like_safetensors(head, path.stat().st_size) or (
        path.suffix == ".safetensors" and not head.startswith(_ZIP_MAGIC)
    ):
        state = _read_safetensors(path)
    elif head.startswith(_ZIP_MAGIC) or (head[:1] and head[0] == _PICKLE_PROTO):
        state = _read_torch(path)
    else:
        raise WeightsFileError(path, "not a safetensors file or a torch.save state dict (unrecognised first bytes)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True) -> nn.Module:
    """Load the weights in ``path`` into ``model`` (in place) after checking names and shapes.

    Parameters
    ----------
    model
        The module to fill; its parameters and buffers are overwritten.
    path
        A safetensors file or a ``torch.save`` state dict (see :func:`read_state_dict`).
    strict
        When true, the file must hold exactly the model's keys. When false, missing and unexpected keys
        are skipped with a warning. A shape mismatch or a non-finite value is always an error.

    Returns
    -------
    nn.Module
        ``model``, for chaining.

    Raises
    ------
    WeightsFileError
        Naming the file and the offending keys: missing, unexpected, shape mismatch, non-finite values.
    """
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    if mismatched:
        problems.append(_listing("shape mismatch", mismatched))
    if strict and missing:
        problems.append(_listing("missing keys", missing))
    if strict and unexpected:
        problems.append(_listing("unexpected keys", unexpected))
    if problems:
        hint = "" if mismatched else " (pass strict=False to skip missing/unexpected keys)"
        raise WeightsFileError(path, f"weights do not match the model: {'; '.join(problems)}{hint}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsFileError(path, _listing("non-finite values (NaN or inf) in", bad))
    if missing or unexpected:
        skipped = [_listing(what, keys) for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        warnings.warn(f"{path}: strict=False skipped {'; '.join(skipped)}", stacklevel=2)
        state = {k: v for k, v in state.items() if k in expected}
    model.load_state_dict(state, strict=strict)
    return model


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file starts with a little-endian u64 header length followed by a JSON object."""
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < header_len <= size - 8


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:  # safetensors raises its own SafetensorError and OSError
        raise WeightsFileError(path, f"corrupt safetensors file ({_first_line(exc)})") from exc


def _read_torch(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsFileError(
            path,
            "refusing to unpickle: the file holds objects other than tensors and plain containers "
            "(torch.load(weights_only=True) rejected it; gradleak never runs pickled code). Re-save it with "
            f"torch.save(model.state_dict(), ...) or as safetensors. Detail: {_first_line(exc)}",
        ) from exc
    except Exception as exc:
        raise WeightsFileError(path, f"could not read as a torch.save file ({_first_line(exc)})") from exc
    return _as_state_dict(path, obj)


def _as_state_dict(path: Path, obj: object) -> dict[str, Tensor]:
    if isinstance(obj, Mapping) and not _all_tensors(obj):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), Mapping) and _all_tensors(obj[key]):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise WeightsFileError(path, f"expected a state dict (name → tensor), found {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise WeightsFileError(path, _listing("expected a state dict of tensors; entries that are not", bad))
    return dict(obj)


def _all_tensors(obj: Mapping[object, object]) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _listing(what: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f", ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return f"{what} ({len(keys)}): {shown}{more}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
