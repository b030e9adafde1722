"""UpdateStore: bit-exact round trips of real updates, listing, overwrite refusal and crash-safe saves."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import Tensor, nn

from gradleak.errors import GradleakError, UpdateFileError
from gradleak.fl.store import RecordExistsError, UpdateStore, read_safetensors_strict
from gradleak.models import ModelSpec
from gradleak.records import ClientUpdate, GlobalState


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 10))


def sgd_update(model: nn.Module, *, client: int = 3, round: int = 1, seed: int = 0) -> ClientUpdate:
    """One real SGD step on random data: delta = after - before, buffers after (BN stats, int64 counter)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    delta = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    meta = {"lr": 0.1, "batch_size": 8, "defenses": ["none"], "nested": {"a": [1, 2.5, None, True]}}
    return ClientUpdate(client=client, round=round, delta=delta, buffers=buffers, num_examples=8,
                        metadata=meta)


def assert_tensors_identical(got: dict[str, Tensor], want: dict[str, Tensor]) -> None:
    assert list(got) == list(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, name
        assert got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor.detach().cpu()), name


def files_in(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def model() -> nn.Module:
    return tiny_cnn()


def test_update_round_trip_is_bit_exact(tmp_path: Path, model: nn.Module) -> None:
    update = sgd_update(model)
    assert any(bool(d.abs().max() > 0) for d in update.delta.values())  # a real step happened
    assert update.buffers["1.num_batches_tracked"].dtype == torch.int64
    store = UpdateStore(tmp_path / "s")
    path = store.save_update(update)
    assert path == tmp_path / "s" / "updates" / "round_00001" / "client_00003.safetensors"
    for check_model in (None, model):
        got = store.load_update(round=1, client=3, model=check_model)
        assert (got.client, got.round, got.num_examples) == (3, 1, 8)
        assert got.metadata == update.metadata
        assert_tensors_identical(got.delta, update.delta)
        assert_tensors_identical(got.buffers, update.buffers)
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["kind"] == "update" and side["tensors"]["delta"] == list(update.delta)
    assert set(read_safetensors_strict(path)) == {f"delta/{n}" for n in update.delta} | {
        f"buffers/{n}" for n in update.buffers}


def test_global_round_trip_is_bit_exact(tmp_path: Path, model: nn.Module) -> None:
    sgd_update(model)  # non-trivial running statistics
    state = GlobalState(round=4, params={n: p.detach().clone() for n, p in model.named_parameters()},
                        buffers={n: b.clone() for n, b in model.named_buffers()}, metadata={"acc": 0.25})
    store = UpdateStore(tmp_path / "s")
    store.save_global(state)
    got = store.load_global(round=4, model=tiny_cnn())
    assert got.round == 4 and got.metadata == {"acc": 0.25}
    assert_tensors_identical(got.params, state.params)
    assert_tensors_identical(got.buffers, state.buffers)
    fresh = tiny_cnn()
    fresh.load_state_dict(got.state_dict(), strict=True)
    assert torch.equal(fresh[1].running_var, model[1].running_var)


def test_odd_tensors_round_trip(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    delta = {
        "t": base.t().requires_grad_(False),  # non-contiguous
        "g": torch.ones(2, requires_grad=True) * 3,  # part of a graph
        "h": torch.tensor([1.5, -2.0], dtype=torch.float16),
        "b": torch.tensor([0.25], dtype=torch.bfloat16),
        "e": torch.zeros(0, 5),
        "s": torch.tensor(7.0),
        "m": torch.tensor([True, False]),
    }
    store = UpdateStore(tmp_path)
    store.save_update(ClientUpdate(client=0, round=0, delta=delta))
    got = store.load_update(round=0, client=0)
    assert_tensors_identical(got.delta, delta)
    assert all(t.is_contiguous() and not t.requires_grad for t in got.delta.values())


def test_listing(tmp_path: Path, model: nn.Module) -> None:
    store = UpdateStore(tmp_path / "s", model_spec=ModelSpec("tiny", {"width": 4}))
    assert store.rounds() == store.global_rounds() == store.clients(0) == []
    assert store.last_complete_round() is None
    for r in (1, 0):
        for c in (7, 0, 3):
            store.save_update(sgd_update(model, client=c, round=r, seed=10 * r + c))
        state = GlobalState(round=r, params={n: p.detach() for n, p in model.named_parameters()})
        store.save_global(state)
    store.save_update(sgd_update(model, client=2, round=5))
    reopened = UpdateStore(tmp_path / "s", create=False)
    assert reopened.model_spec == ModelSpec("tiny", {"width": 4})
    assert reopened.rounds() == [0, 1, 5]
    assert reopened.clients(round=0) == [0, 3, 7] and reopened.clients(round=2) == []
    assert reopened.global_rounds() == [0, 1] and reopened.last_complete_round() == 1
    assert [u.client for u in reopened.updates(round=1, model=model)] == [0, 3, 7]
    assert reopened.has_update(1, 3) and not reopened.has_update(1, 4)
    assert reopened.has_global(0) and not reopened.has_global(5)
    # a name that is not the canonical spelling is ignored
    (tmp_path / "s" / "updates" / "round_00001" / "client_0003.json").write_text("{}")
    assert reopened.clients(round=1) == [0, 3, 7]


def test_store_json_checks(tmp_path: Path) -> None:
    with pytest.raises(UpdateFileError, match=r"store\.json is missing"):
        UpdateStore(tmp_path / "none", create=False)
    UpdateStore(tmp_path / "s", model_spec=ModelSpec("a"))
    with pytest.raises(UpdateFileError, match="created for model"):
        UpdateStore(tmp_path / "s", model_spec=ModelSpec("b"))
    (tmp_path / "s" / "store.json").write_text('{"kind": "gradleak-update-store", "format_version": 9}')
    with pytest.raises(UpdateFileError, match="format_version 9"):
        UpdateStore(tmp_path / "s")


def test_overwrite_needs_flag(tmp_path: Path, model: nn.Module) -> None:
    store = UpdateStore(tmp_path)
    first, second = sgd_update(model, seed=1), sgd_update(model, seed=2)
    store.save_update(first)
    with pytest.raises(RecordExistsError, match="overwrite=True"):
        store.save_update(second)
    assert isinstance(RecordExistsError("x"), GradleakError)
    assert_tensors_identical(store.load_update(round=1, client=3).delta, first.delta)
    store.save_update(second, overwrite=True)
    assert_tensors_identical(store.load_update(round=1, client=3).delta, second.delta)
    store.save_global(GlobalState(round=0, params={"w": torch.ones(2)}))
    with pytest.raises(RecordExistsError):
        store.save_global(GlobalState(round=0, params={"w": torch.zeros(2)}))


def test_saves_leave_no_temp_files(tmp_path: Path, model: nn.Module) -> None:
    store = UpdateStore(tmp_path)
    store.save_update(sgd_update(model))
    store.save_update(sgd_update(model), overwrite=True)
    store.save_global(GlobalState(round=1, params={"w": torch.ones(2)}))
    assert files_in(tmp_path) == ["globals/round_00001.json", "globals/round_00001.safetensors", "store.json",
                                  "updates/round_00001/client_00003.json",
                                  "updates/round_00001/client_00003.safetensors"]


class Crash(RuntimeError):
    pass


def crash_on_call(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make the ``n``-th ``os.replace`` call (1-based) raise, as a power cut between two writes would."""
    real, calls = os.replace, [0]

    def replace(src: object, dst: object) -> None:
        calls[0] += 1
        if calls[0] == n:
            raise Crash("simulated crash")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("overwrite", [False, True])
def test_crash_between_tensor_file_and_sidecar_leaves_record_absent(
        tmp_path: Path, model: nn.Module, monkeypatch: pytest.MonkeyPatch, overwrite: bool) -> None:
    store = UpdateStore(tmp_path)
    if overwrite:
        store.save_update(sgd_update(model, seed=5))
    update = sgd_update(model)
    with monkeypatch.context() as patch:
        crash_on_call(patch, 2)  # call 1 puts the tensor file in place, call 2 (the sidecar) fails
        with pytest.raises(Crash):
            store.save_update(update, overwrite=overwrite)
    tensor_file = store.update_path(1, 3)
    assert tensor_file.is_file() and not tensor_file.with_suffix(".json").exists()
    assert not store.has_update(1, 3) and store.clients(1) == [] and store.rounds() == []
    with pytest.raises(UpdateFileError, match="missing sidecar") as err:
        store.load_update(round=1, client=3)
    assert "interrupted save" in str(err.value)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # temp files cleaned up
    store.save_update(update)  # resumption can redo the record without overwrite=True
    assert_tensors_identical(store.load_update(round=1, client=3, model=model).delta, update.delta)


def test_crash_on_tensor_file_writes_nothing(tmp_path: Path, model: nn.Module,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store = UpdateStore(tmp_path)
    with monkeypatch.context() as patch:
        crash_on_call(patch, 1)
        with pytest.raises(Crash):
            store.save_update(sgd_update(model))
    assert files_in(tmp_path) == ["store.json"]


def test_save_refuses_bad_input(tmp_path: Path) -> None:
    store = UpdateStore(tmp_path)
    with pytest.raises(ValueError, match=r"delta/w.*NaN/inf"):
        store.save_update(ClientUpdate(client=0, round=0, delta={"w": torch.tensor([1.0, float("nan")])}))
    with pytest.raises(ValueError, match=r"buffers/rv.*NaN/inf"):
        store.save_global(GlobalState(round=0, params={}, buffers={"rv": torch.tensor(float("-inf"))}))
    with pytest.raises(ValueError, match="complex64"):
        store.save_update(ClientUpdate(client=0, round=0, delta={"w": torch.zeros(2, dtype=torch.complex64)}))
    with pytest.raises(TypeError, match="JSON-serialisable"):
        store.save_update(ClientUpdate(client=0, round=0, delta={}, metadata={"x": object()}))
    with pytest.raises(ValueError, match="withheld"):
        store.save_update(ClientUpdate(client=0, round=0, delta={}, metadata={"withheld": "w"}))
    with pytest.raises(ValueError, match="round must be >= 0"):
        store.save_update(ClientUpdate(client=0, round=-1, delta={}))
    with pytest.raises(TypeError, match="client must be an int"):
        store.load_update(round=0, client=True)
    assert files_in(tmp_path) == ["store.json"]


def test_withheld_and_model_checks(tmp_path: Path, model: nn.Module) -> None:
    store = UpdateStore(tmp_path)
    update = sgd_update(model)
    kept = {n: d for n, d in update.delta.items() if n != "4.weight"}
    store.save_update(ClientUpdate(client=0, round=0, delta=kept, metadata={"withheld": ["4.weight"]}))
    assert set(store.load_update(round=0, client=0, model=model).delta) == set(kept)
    store.save_update(ClientUpdate(client=1, round=0, delta=kept, buffers=update.buffers))
    with pytest.raises(UpdateFileError, match=r"missing tensor 'delta/4\.weight'"):
        store.load_update(round=0, client=1, model=model)
    store.save_update(ClientUpdate(client=2, round=0, delta=update.delta))  # buffers withheld as a whole
    assert store.load_update(round=0, client=2, model=model).buffers == {}
    bad = dict(update.delta, **{"4.weight": torch.zeros(3, 4)})
    store.save_update(ClientUpdate(client=3, round=0, delta=bad))
    with pytest.raises(UpdateFileError) as err:
        store.load_update(round=0, client=3, model=model)
    assert str(err.value) == (f"{store.update_path(0, 3)}: tensor 'delta/4.weight' has shape (3, 4); "
                              "the model expects (10, 144)")
    store.save_global(GlobalState(round=0, params=kept, metadata={"withheld": ["4.weight"]}))
    with pytest.raises(UpdateFileError, match="missing tensor"):  # globals must be complete
        store.load_global(round=0, model=model)


def test_read_safetensors_strict_reads_library_files(tmp_path: Path) -> None:
    tensors = {"a": torch.randn(3, 2), "b": torch.arange(4), "c": torch.zeros(0)}
    safetensors.torch.save_file(tensors, tmp_path / "w.safetensors", metadata={"format": "pt"})
    got = read_safetensors_strict(tmp_path / "w.safetensors")
    assert all(torch.equal(got[k], v) and got[k].dtype == v.dtype for k, v in tensors.items())
    with pytest.raises(UpdateFileError, match="missing tensor file"):
        read_safetensors_strict(tmp_path / "nope.safetensors")


def test_a_store_holds_one_run(tmp_path: Path, model: nn.Module) -> None:
    """The round-0 model fixes the run: saving it again is fine, another round-0 model is refused, and check()
    finds a chain that lost a global model or gained a stray tensor file."""
    from gradleak.fl.store import RunMismatchError

    store = UpdateStore(tmp_path / "s")
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    store.save_global(GlobalState(0, params, buffers))
    run = store.run_id
    assert run is not None and run == json.loads((tmp_path / "s" / "store.json").read_text())["run"]
    store.save_global(GlobalState(0, params, buffers, metadata={"note": "resumed"}), overwrite=True)  # same run
    other = {k: v + 1 for k, v in params.items()}
    with pytest.raises(RunMismatchError, match="holds another run"):
        store.save_global(GlobalState(0, other, buffers), overwrite=True)
    assert store.run_id == run and UpdateStore(tmp_path / "s", create=False).check(model=model) == []
    store.save_update(sgd_update(model, client=2, round=1))
    assert store.check(model=model) == [
        f"{store.global_path(1).with_suffix('.json')}: round 1 has updates but no global model (the model its "
        "updates are deltas against)"]
    store.save_global(GlobalState(1, params, buffers))
    (tmp_path / "s" / "updates" / "round_00001" / "client_00009.safetensors").write_bytes(b"half a copy")
    problems = store.check(model=model)
    assert len(problems) == 1 and "client_00009.safetensors: tensor file without its sidecar" in problems[0]
    store.update_server_info(input={"size": 8, "channels": 1}, clients={"123": 0})
    store.update_server_info(clients={"123": 0, "456": 1})
    assert UpdateStore(tmp_path / "s", create=False).server_info == {"input": {"size": 8, "channels": 1},
                                                                      "clients": {"123": 0, "456": 1}}
