"""load_weights / save_weights: round trips, mismatch messages, and refusing hostile pickles."""

from __future__ import annotations

import pathlib

import pytest
import torch
from torch import nn

from gradleak.errors import GradleakError
from gradleak.models import WeightsFileError, create_model, load_weights, read_state_dict, save_weights


def trained_convnet(seed: int) -> nn.Module:
    """A ConvNet whose BatchNorm running statistics differ from their initial values."""
    torch.manual_seed(seed)
    model = create_model("convnet", width=8, image_size=16)
    model.train()
    model(torch.rand(4, 3, 16, 16))
    return model


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_safetensors_round_trip(tmp_path: pathlib.Path) -> None:
    source, target = trained_convnet(0), trained_convnet(1)
    path = save_weights(source, tmp_path / "convnet.safetensors")
    assert path.read_bytes()[8:9] == b"{"
    assert load_weights(target, path) is target
    assert_same_state(source, target)  # parameters and buffers (running stats, num_batches_tracked)


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_state_dict_round_trip(tmp_path: pathlib.Path, legacy: bool) -> None:
    source, target = trained_convnet(0), trained_convnet(1)
    path = tmp_path / "convnet.pt"
    torch.save(source.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    load_weights(target, path)
    assert_same_state(source, target)


def test_checkpoint_wrappers_are_unwrapped(tmp_path: pathlib.Path) -> None:
    source, target = trained_convnet(0), trained_convnet(1)
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}
    torch.save(wrapped, tmp_path / "checkpoint.pth")
    load_weights(target, tmp_path / "checkpoint.pth")
    assert_same_state(source, target)


def test_create_model_weights_path_option(tmp_path: pathlib.Path) -> None:
    source = create_model("cnn", in_channels=1)
    path = save_weights(source, tmp_path / "cnn.safetensors")
    loaded = create_model("cnn", in_channels=1, weights_path=str(path))
    assert_same_state(source, loaded)
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(source(x), loaded(x))


def test_shape_mismatch_names_the_key(tmp_path: pathlib.Path) -> None:
    path = save_weights(create_model("cnn", in_channels=1, num_classes=10), tmp_path / "ten.safetensors")
    for strict in (True, False):
        with pytest.raises(WeightsFileError) as info:
            load_weights(create_model("cnn", in_channels=1, num_classes=5), path, strict=strict)
        message = str(info.value)
        assert "ten.safetensors" in message
        assert "classifier.weight: file (10, 64) vs model (5, 64)" in message
        assert "classifier.bias: file (10,) vs model (5,)" in message
    with pytest.raises(WeightsFileError, match=r"classifier\.weight"):
        create_model("cnn", in_channels=1, num_classes=5, weights_path=path)


def test_missing_and_unexpected_keys(tmp_path: pathlib.Path) -> None:
    model = create_model("mlp", in_channels=1, image_size=28)
    state = model.state_dict()
    state.pop("classifier.bias")
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "partial.pt")
    target = create_model("mlp", in_channels=1, image_size=28)
    with pytest.raises(WeightsFileError) as info:
        load_weights(target, tmp_path / "partial.pt")
    message = str(info.value)
    assert "missing keys (1): classifier.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "strict=False" in message
    with pytest.warns(UserWarning, match="classifier.bias"):
        load_weights(target, tmp_path / "partial.pt", strict=False)
    assert torch.equal(target.classifier.weight, model.classifier.weight)


class Payload:
    """Unpickling this runs ``pathlib.Path.touch(marker)``: what a hostile weights file would do."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_refuses_pickle_with_arbitrary_object(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pt"
    torch.save({"classifier.weight": torch.zeros(10, 64), "payload": Payload(marker)}, path)
    with pytest.raises(WeightsFileError, match="refusing to unpickle") as info:
        load_weights(create_model("cnn", in_channels=1), path)
    assert "hostile.pt" in str(info.value)
    assert isinstance(info.value, GradleakError)
    assert not marker.exists()  # the payload never ran


def test_unreadable_files(tmp_path: pathlib.Path) -> None:
    model = create_model("lenet")
    with pytest.raises(WeightsFileError, match="no such weights file"):
        load_weights(model, tmp_path / "absent.safetensors")
    (tmp_path / "junk.bin").write_bytes(b"hello, not weights")
    with pytest.raises(WeightsFileError, match="unrecognised"):
        load_weights(model, tmp_path / "junk.bin")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(WeightsFileError, match="corrupt safetensors"):
        load_weights(model, tmp_path / "bad.safetensors")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(WeightsFileError, match="expected a state dict"):
        read_state_dict(tmp_path / "list.pt")


def test_rejects_non_finite_weights(tmp_path: pathlib.Path) -> None:
    model = create_model("lenet")
    state = model.state_dict()
    state["classifier.bias"] = torch.full_like(state["classifier.bias"], float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(WeightsFileError, match=r"non-finite.*classifier.bias"):
        load_weights(model, tmp_path / "nan.pt")
