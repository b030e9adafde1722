"""Hostile and corrupted records: every one must raise UpdateFileError naming the file, and nothing may run.

The cases are generated deterministically (seeded) at import time: random bytes, truncations, bit flips,
crafted safetensors headers, pickles whose payload would write a file, wrong shapes/dtypes, NaN/inf,
unknown or missing tensors, and broken sidecars. All loads run in this process: the interpreter must survive.
"""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import pickle
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import Tensor, nn

from gradleak.errors import GradleakError, UpdateFileError
from gradleak.fl.store import UpdateStore, read_safetensors_strict

ROUND, CLIENT = 2, 5
SEED = 20240601
DIRECTORY = b"<make a directory here>"


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def _valid_sections() -> dict[str, dict[str, dict[str, Tensor]]]:
    g = torch.Generator().manual_seed(SEED)
    model = tiny_model()
    params = {n: torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
    buffers = {"1.running_mean": torch.randn(3, generator=g),
               "1.running_var": torch.rand(3, generator=g) + 0.5,
               "1.num_batches_tracked": torch.tensor(4)}
    return {"update": {"delta": params, "buffers": buffers}, "global": {"params": params, "buffers": buffers}}


SECTIONS = _valid_sections()


def flat(kind: str = "update", **replace: Tensor | None) -> dict[str, Tensor]:
    """The valid record's tensors as file keys; ``replace={"delta/0.weight": t}`` swaps (None drops) one."""
    out = {f"{s}/{n}": t for s, tensors in SECTIONS[kind].items() for n, t in tensors.items()} | replace
    return {k: v for k, v in out.items() if v is not None}


encode = safetensors.torch.save


def names_of(keys: list[str], kind: str) -> dict[str, list[str]]:
    sections = ("delta", "buffers") if kind == "update" else ("params", "buffers")
    out: dict[str, list[str]] = {s: [] for s in sections}
    for key in keys:
        section, _, name = key.partition("/")
        out.setdefault(section, []).append(name)
    return out


def sidecar(data: bytes | None, kind: str = "update", keys: list[str] | None = None) -> dict[str, Any]:
    data = data or b""
    side: dict[str, Any] = {"format_version": 1, "kind": kind, "round": ROUND}
    if kind == "update":
        side |= {"client": CLIENT, "num_examples": 16}
    listed = names_of(keys if keys is not None else list(flat(kind)), kind)
    side |= {"metadata": {"lr": 0.1}, "tensors": listed, "sha256": hashlib.sha256(data).hexdigest(),
             "nbytes": len(data)}
    return side


VALID = {kind: encode(flat(kind)) for kind in ("update", "global")}


class Evil:
    """Unpickling this writes ``target``: the proof that a payload ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.write_text, (self.target, "x"))


Payload = bytes | Callable[[Path], bytes] | None
SidecarSpec = str | bytes | dict[str, Any] | Callable[[dict[str, Any], Path], dict[str, Any] | bytes] | None


@dataclass
class Case:
    id: str
    tensor: Payload
    side: SidecarSpec = "match"  # "match": a valid sidecar for the payload; "orig": the valid file's
    kind: str = "update"
    model: bool = True
    keys: list[str] | None = None  # tensor keys the sidecar lists (default: the valid record's)
    strict_fails: bool = False  # read_safetensors_strict alone must reject the payload too


CASES: list[Case] = []


def add(id: str, tensor: Payload, side: SidecarSpec = "match", **kw: Any) -> None:
    CASES.append(Case(f"{len(CASES):03d}-{id}", tensor, side, **kw))


def craft(header: Any, data: bytes = b"", *, raw: bytes | None = None) -> bytes:
    body = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


def dumped(dump: Callable[[Any, io.BytesIO], Any], obj: Callable[[Path], Any]) -> Callable[[Path], bytes]:
    """A payload builder: ``dump(obj(pwned), buffer)``, e.g. ``torch.save`` of an :class:`Evil`."""
    def build(pwned: Path) -> bytes:
        buf = io.BytesIO()
        dump(obj(pwned), buf)
        return buf.getvalue()
    return build


def _build_cases() -> None:
    rng = random.Random(SEED)
    valid = VALID["update"]
    hlen = struct.unpack("<Q", valid[:8])[0]

    # 1. random bytes, with and without a plausible header-length prefix
    for n in (0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 64, 100, 255, 256, 1000, 4096, 65536):
        add(f"random-{n}", rng.randbytes(n), strict_fails=True)
    for i in range(10):
        body = rng.randbytes(rng.randrange(1, 600))
        prefix = struct.pack("<Q", rng.randrange(0, len(body) + 1))
        add(f"random-prefixed-{i}", prefix + body, strict_fails=True)
    for i in range(6):
        body = b"{" + rng.randbytes(rng.randrange(0, 300))
        add(f"random-brace-{i}", struct.pack("<Q", len(body)) + body, strict_fails=True)

    # 2. truncations (checksum re-computed so the parser is what must catch them, then the original sidecar)
    offsets = sorted({0, 1, 4, 7, 8, 9, hlen, hlen + 7, hlen + 8, hlen + 9, len(valid) - 1,
                      *rng.sample(range(len(valid)), 30)})
    for off in offsets:
        add(f"truncate-{off}", valid[:off], strict_fails=True)
    for off in rng.sample(range(len(valid)), 6):
        add(f"truncate-orig-sidecar-{off}", valid[:off], "orig", strict_fails=False)

    # 3. bit flips: in the header (parser must catch), in the data (checksum must catch)
    for i in range(40):
        pos, bit = rng.randrange(0, 8 + hlen), rng.randrange(8)
        flipped = bytearray(valid)
        flipped[pos] ^= 1 << bit
        add(f"flip-header-{i}-{pos}.{bit}", bytes(flipped))
    for i in range(30):
        pos, bit = rng.randrange(8 + hlen, len(valid)), rng.randrange(8)
        flipped = bytearray(valid)
        flipped[pos] ^= 1 << bit
        add(f"flip-data-{i}-{pos}.{bit}", bytes(flipped), "orig")

    # 4. the header-length field
    for value in (0, 1, 2, hlen - 1, hlen + 1, len(valid) - 7, len(valid), 100_000_001, 2**31 - 1, 2**32,
                  2**63, 2**64 - 1):
        add(f"hlen-{value}", struct.pack("<Q", value) + valid[8:], strict_fails=True)

    # 5. crafted headers
    def entry(dtype: Any = "F32", shape: Any = (3,), offsets: Any = (0, 12)) -> dict[str, Any]:
        return {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape,
                "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets}

    twelve = bytes(12)
    for dtype in ("F128", "f32", "", None, 5, "C64", "F8_E4M3", "U16", "STR", ["F32"]):
        add(f"dtype-{dtype}", craft({"delta/0.bias": entry(dtype=dtype)}, twelve), strict_fails=True)
    for shape in ([-1], [3, -4], [1.5], ["3"], [True], None, "3", [[3]], [2**40], [2**40, 2**40], [2**64],
                  [1] * 33, [0] * 40):
        add(f"shape-{str(shape)[:20]}", craft({"delta/0.bias": entry(shape=shape)}, twelve),
            strict_fails=True)
    for offsets in ([0], [0, 6, 12], [-1, 11], [12, 0], [0, 10**20], ["0", "12"], None, [0.0, 12.0],
                    [0, 13], [1, 13], [True, 12]):
        add(f"offsets-{offsets}", craft({"delta/0.bias": entry(offsets=offsets)}, twelve), strict_fails=True)
    for name, second, size in (("overlap", (6, 18), 18), ("gap", (16, 28), 28), ("same", (0, 12), 12)):
        two = {"delta/0.bias": entry(), "buffers/1.running_mean": entry(offsets=second)}
        add(f"offsets-{name}", craft(two, bytes(size)), strict_fails=True)
    add("data-trailing-garbage", craft({"delta/0.bias": entry()}, bytes(13)), strict_fails=True)
    add("data-short", craft({"delta/0.bias": entry()}, bytes(11)), strict_fails=True)
    add("data-huge-claim", craft({"delta/0.bias": entry(shape=[2**40], offsets=[0, 2**42])}, twelve),
        strict_fails=True)
    for name, header in (("entry-list", {"x": [1]}), ("entry-str", {"x": "F32"}), ("entry-null", {"x": None}),
                         ("entry-no-dtype", {"x": {"shape": [3], "data_offsets": [0, 12]}}),
                         ("entry-extra-key", {"x": {**entry(), "evil": 1}}),
                         ("header-list", [entry()]), ("header-str", "x"), ("header-num", 3),
                         ("header-null", None),
                         ("metadata-int", {"__metadata__": {"a": 1}, "x": entry()}),
                         ("metadata-list", {"__metadata__": ["a"], "x": entry()})):
        add(name, craft(header, twelve), strict_fails=True)
    for name, raw in (("header-empty", b""), ("header-unterminated", b'{"x": {"dtype": "F32"'),
                      ("header-dup-keys", b'{"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},'
                                          b' "x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}}'),
                      ("header-nan", b'{"x": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 12]}}'),
                      ("header-not-utf8", b'{"\xff\xfe": 1}'), ("header-deep", b'{"a":' + b"[" * 100000),
                      ("header-deep-objects", b'{"a":' * 50000 + b"1" + b"}" * 50000),
                      ("header-bom", b"\xef\xbb\xbf{}"), ("header-nul-padding", b"{}" + bytes(6)),
                      ("header-no-brace", b'  {"x": 1}')):
        add(name, craft(None, twelve, raw=raw), strict_fails=True)

    # 6. pickles where a .safetensors file should be (the payload would create the "pwned" file)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        for side in ("match", "orig"):
            add(f"pickle-p{protocol}-{side}", lambda p, pr=protocol: pickle.dumps(Evil(p), protocol=pr), side,
                strict_fails=True)

    for zipfile in (True, False):
        def save(obj: Any, buf: io.BytesIO, z: bool = zipfile) -> None:
            torch.save(obj, buf, _use_new_zipfile_serialization=z)

        for side in ("match", "orig"):
            add(f"torch-save-evil-zip{zipfile}-{side}", dumped(save, Evil), side, strict_fails=True)
        evil_dict = dumped(save, lambda p: {"delta/0.bias": torch.zeros(3), "x": Evil(p)})
        add(f"torch-save-dict-zip{zipfile}", evil_dict, strict_fails=True)
        add(f"torch-save-state-zip{zipfile}", dumped(save, lambda p: flat()), strict_fails=True)
    add("numpy-object-array", dumped(lambda obj, buf: np.save(buf, obj, allow_pickle=True),
                                     lambda p: np.array([Evil(p)], dtype=object)), strict_fails=True)
    for protocol in (0, 5):  # a plausible header length, then the pickle
        body = dumped(lambda obj, buf, pr=protocol: buf.write(pickle.dumps(obj, protocol=pr)), Evil)
        add(f"length-prefixed-pickle-p{protocol}", lambda p, b=body: struct.pack("<Q", len(b(p))) + b(p),
            strict_fails=True)

    def pickle_in_u8(pwned: Path) -> bytes:  # well-formed file whose bytes are a pickle: data, never code
        payload = bytearray(pickle.dumps(Evil(pwned)))
        return encode({"delta/0.bias": torch.frombuffer(payload, dtype=torch.uint8)})

    add("pickle-as-u8-tensor-model", pickle_in_u8, keys=["delta/0.bias"])
    add("pickle-as-u8-tensor-unlisted", pickle_in_u8, model=False)
    add("pickle-as-sidecar-p0", valid, lambda s, p: pickle.dumps(Evil(p), protocol=0))
    add("pickle-as-sidecar-p5", valid, lambda s, p: pickle.dumps(Evil(p), protocol=5))

    # 7. well-formed safetensors that do not fit the record or the model
    def semantic(id: str, tensors: dict[str, Tensor], *, kind: str = "update", model: bool = True,
                 keys: list[str] | None = None, strict_fails: bool = False) -> None:
        add(id, encode(tensors), kind=kind, model=model, keys=keys if keys is not None else list(tensors),
            strict_fails=strict_fails)

    for key, shape in (("delta/0.weight", (4, 3)), ("delta/0.weight", (3, 4, 1)), ("delta/0.bias", (4,)),
                       ("delta/1.weight", ()), ("buffers/1.running_mean", (2,)),
                       ("buffers/1.running_var", (3, 1)),
                       ("buffers/1.num_batches_tracked", (1,))):
        dtype = torch.int64 if key.endswith("tracked") else torch.float32
        semantic(f"shape-{key}-{shape}", flat(**{key: torch.zeros(shape, dtype=dtype)}))
    for key, dtype in (("delta/0.weight", torch.float64), ("delta/0.weight", torch.int64),
                       ("delta/0.bias", torch.float16), ("delta/1.bias", torch.bfloat16),
                       ("buffers/1.num_batches_tracked", torch.int32),
                       ("buffers/1.num_batches_tracked", torch.float32),
                       ("buffers/1.running_var", torch.uint8),
                       ("delta/1.weight", torch.bool)):
        semantic(f"dtype-{key}-{dtype}", flat(**{key: flat()[key].to(dtype)}))
    for key in ("delta/0.weight", "delta/1.bias", "buffers/1.running_var"):
        for value in (float("nan"), float("inf"), float("-inf")):
            bad = flat()[key].clone().flatten()
            bad[rng.randrange(bad.numel())] = value
            for model in (True, False):
                tensors = flat(**{key: bad.reshape(flat()[key].shape)})
                semantic(f"nonfinite-{key}-{value}-model{model}", tensors, model=model, strict_fails=True)
    semantic("nonfinite-f16", flat(**{"delta/0.bias": torch.tensor([1.0, float("nan"), 2.0]).half()}),
             model=False, strict_fails=True)
    semantic("bool-byte-2", {"delta/m": torch.tensor([2], dtype=torch.uint8).view(torch.bool)}, model=False,
             strict_fails=True)
    semantic("unknown-delta-listed", flat(**{"delta/evil": torch.zeros(3)}))
    semantic("unknown-buffer-listed", flat(**{"buffers/evil": torch.zeros(3)}))
    semantic("param-as-buffer", flat(**{"buffers/0.bias": torch.zeros(3)}))
    semantic("buffer-as-delta", flat(**{"delta/1.running_mean": torch.zeros(3)}))
    semantic("unknown-not-listed", flat(**{"delta/evil": torch.zeros(3)}), model=False, keys=list(flat()))
    semantic("unknown-section", flat(**{"params/0.bias": torch.zeros(3)}), model=False, keys=list(flat()))
    semantic("unprefixed-key", flat(**{"0.bias": torch.zeros(3)}), model=False, keys=list(flat()))
    semantic("listed-but-absent", flat(**{"delta/0.bias": None}), model=False, keys=list(flat()))
    semantic("missing-param-not-withheld", flat(**{"delta/0.bias": None}))
    semantic("missing-some-buffers", flat(**{"buffers/1.running_var": None}))
    semantic("global-missing-param", flat("global", **{"params/1.weight": None}), kind="global")
    semantic("global-missing-buffers", {k: v for k, v in flat("global").items() if k.startswith("params/")},
             kind="global")
    semantic("global-wrong-shape", flat("global", **{"params/0.bias": torch.zeros(5)}), kind="global")
    semantic("global-nan", flat("global", **{"params/0.bias": torch.full((3,), float("nan"))}), kind="global",
             model=False, strict_fails=True)
    semantic("global-delta-section", flat(**{}), kind="global", model=False, keys=list(flat("global")))
    add("global-truncated", VALID["global"][:-5], kind="global", strict_fails=True)
    add("global-pickle", lambda p: pickle.dumps(Evil(p)), kind="global", strict_fails=True)
    add("global-withheld-param", encode(flat("global", **{"params/0.bias": None})), kind="global",
        keys=list(flat("global", **{"params/0.bias": None})),
        side=lambda s, p: s | {"metadata": {"withheld": ["0.bias"]}})

    # 8. sidecar problems (the tensor file is the valid one)
    add("no-sidecar", valid, None)
    add("no-sidecar-no-tensor", None, None)
    add("no-tensor-file", None, "orig")
    add("tensor-file-is-dir", DIRECTORY, "orig")
    add("sidecar-is-dir", valid, DIRECTORY)
    for n in (1, 5, 64, 1000):  # random bytes as the sidecar
        add(f"sidecar-random-{n}", valid, rng.randbytes(n))
    for name, raw in (("empty", b""), ("spaces", b"   \n"), ("not-utf8", b'{"kind": "\xff"}'),
                      ("list", b"[]"), ("string", b'"update"'), ("number", b"1"), ("null", b"null"),
                      ("deep", b"[" * 100000), ("nan", b'{"round": NaN}'), ("truncated", b'{"kind": "upd'),
                      ("dup-keys", b'{"kind": "update", "kind": "update"}')):
        add(f"sidecar-{name}", valid, raw)
    base = sidecar(valid)
    for key in base:
        add(f"sidecar-without-{key}", valid, {k: v for k, v in base.items() if k != key})
    bad_values: dict[str, list[Any]] = {
        "format_version": ["1", 1.0, True, 2, 0, None],
        "kind": ["global", "UPDATE", None, ["update"]],
        "round": ["2", 2.0, True, -1, ROUND + 1, None],
        "client": ["5", CLIENT + 1, 5.0, None],
        "num_examples": [-1, 1.5, "3", None, True],
        "metadata": [[], "x", None, {"withheld": "0.bias"}, {"withheld": [1]}, {"withheld": ["a", "a"]}],
        "tensors": [[], "x", {"delta": list(flat())}, {**base["tensors"], "params": []},
                    {"delta": "0.weight", "buffers": []}, {"delta": [1], "buffers": []},
                    {"delta": ["0.bias", "0.bias"], "buffers": []}],
        "sha256": ["abc", base["sha256"].upper(), "g" * 64, 0, None, "0" * 64],
        "nbytes": [-1, "10", None, len(valid) + 1, len(valid) - 1, 0],
    }
    for key, values in bad_values.items():
        for value in values:
            add(f"sidecar-{key}-{str(value)[:16]}", valid, base | {key: value})
    add("sidecar-unknown-key", valid, base | {"evil": 1})
    add("sidecar-global-kind-for-update", valid, sidecar(valid, "global"))
    add("sidecar-update-for-global", VALID["global"], sidecar(VALID["global"], "update"), kind="global")
    add("sidecar-global-with-client", VALID["global"], sidecar(VALID["global"], "global") | {"client": 1},
        kind="global")
    add("sidecar-huge", valid, b"[" + b"0," * (9 * 1024 * 1024) + b"0]")


_build_cases()


def _write(target: Path, payload: bytes | None) -> None:
    if payload is None:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if payload == DIRECTORY:
        target.mkdir()
    else:
        target.write_bytes(payload)


def _load(store: UpdateStore, case: Case, model: nn.Module | None) -> Any:
    if case.kind == "global":
        return store.load_global(round=ROUND, model=model)
    return store.load_update(round=ROUND, client=CLIENT, model=model)


@pytest.fixture(scope="module")
def pwned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("canary") / "pwned"


def test_enough_cases() -> None:
    assert len(CASES) >= 200, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES)


def test_payloads_are_live(tmp_path: Path) -> None:
    """The pickles used below really run their payload when unpickled (so the fuzz cases prove something)."""
    canary = tmp_path / "canary"
    pickle.loads(pickle.dumps(Evil(canary)))
    assert canary.read_text() == "x"


def _place(case: Case, store: UpdateStore, pwned: Path) -> Path:
    """Write the case's tensor file and sidecar where the store expects the record; return the tensor path."""
    path = store.global_path(ROUND) if case.kind == "global" else store.update_path(ROUND, CLIENT)
    data = case.tensor(pwned) if callable(case.tensor) else case.tensor
    side = case.side
    if side == "match":
        side = sidecar(data, case.kind, case.keys)
    elif side == "orig":
        side = sidecar(VALID[case.kind], case.kind)
    elif callable(side):
        side = side(sidecar(data, case.kind, case.keys), pwned)
    _write(path, data)
    _write(path.with_suffix(".json"), json.dumps(side).encode() if isinstance(side, dict) else side)
    return path


def test_valid_record_loads(tmp_path: Path, pwned: Path) -> None:
    """The base record the cases corrupt is itself accepted (so each failure comes from the corruption)."""
    store = UpdateStore(tmp_path)
    for kind in ("update", "global"):
        case = Case("valid", VALID[kind], kind=kind)
        _place(case, store, pwned)
        assert _load(store, case, tiny_model()).round == ROUND


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_record_is_rejected(case: Case, tmp_path: Path, pwned: Path) -> None:
    store = UpdateStore(tmp_path / "store")
    path = _place(case, store, pwned)

    with pytest.raises(UpdateFileError) as err:
        _load(store, case, tiny_model() if case.model else None)
    assert isinstance(err.value, GradleakError)
    assert err.value.path in (str(path), str(path.with_suffix(".json")))
    assert str(err.value).startswith(err.value.path) and err.value.problem
    if case.strict_fails:
        with pytest.raises(UpdateFileError, match=r"safetensors|NaN/inf|bool|shorter|header"):
            read_safetensors_strict(path)
    assert not pwned.exists(), "a pickle payload ran"


def test_no_payload_ran(pwned: Path) -> None:
    assert not pwned.exists()  # after all cases (module order), the canary is still absent
