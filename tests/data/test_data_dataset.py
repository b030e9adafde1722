"""ImageDataset: validation, subset, counts, tensors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gradleak.data import ImageDataset, InvalidDatasetError
from gradleak.errors import GradleakError


def _make(**overrides: object) -> ImageDataset:
    fields: dict[str, object] = {
        "images": np.arange(6 * 4 * 5 * 1, dtype=np.uint8).reshape(6, 4, 5, 1),
        "labels": np.array([0, 1, 2, 1, 1, 0], dtype=np.uint8),
        "classes": ("a", "b", "c"),
        "mean": (0.5,),
        "std": (0.25,),
        "name": "toy",
    }
    fields.update(overrides)
    return ImageDataset(**fields)  # type: ignore[arg-type]


def test_basic_properties() -> None:
    ds = _make()
    assert len(ds) == 6 and ds.num_classes == 3 and ds.image_shape == (1, 4, 5)
    assert ds.labels.dtype == np.int64  # integer labels are stored as int64
    assert ds.class_counts().tolist() == [2, 3, 1]
    assert "n=6" in repr(ds) and "image_shape=(1, 4, 5)" in repr(ds)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"  # type: ignore[misc]


def test_subset_keeps_metadata_and_order() -> None:
    ds = _make()
    sub = ds.subset([5, 1, 1])
    assert sub.labels.tolist() == [0, 1, 1] and np.array_equal(sub.images[0], ds.images[5])
    assert (sub.classes, sub.mean, sub.std, sub.name) == (ds.classes, ds.mean, ds.std, ds.name)
    assert sub.class_counts().tolist() == [1, 2, 0]
    assert len(ds.subset([])) == 0
    with pytest.raises(InvalidDatasetError, match="out of range"):
        ds.subset([6])


def test_tensors() -> None:
    ds = _make()
    x, y = ds.tensors([0, 2], size=8)
    assert tuple(x.shape) == (2, 1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == [0, 2]
    assert torch.equal(x[:, :, 2:6, 1:6], torch.from_numpy(ds.images[[0, 2]]).permute(0, 3, 1, 2) / 255.0)
    xa, ya = ds.tensors()
    assert tuple(xa.shape) == (6, 1, 4, 5) and len(ya) == 6
    assert torch.allclose(ds.denormalize(ds.normalize(xa)), xa, atol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"images": np.zeros((6, 4, 5), np.uint8)}, r"\(N, H, W, C\)"),
        ({"images": np.zeros((6, 4, 5, 1), np.int16)}, "uint8 or float32"),
        ({"images": np.full((6, 4, 5, 1), 1.5, np.float32)}, r"within \[0, 1\]"),
        ({"labels": np.array([0, 1, 2])}, "6 images but 3 labels"),
        ({"labels": np.array([0, 1, 3, 0, 0, 0])}, "label 3 is out of range for 3 classes"),
        ({"labels": np.zeros(6, np.float32)}, "integer"),
        ({"classes": ("a", "a", "b")}, "unique"),
        ({"mean": (0.5, 0.5, 0.5)}, "1 channel"),
        ({"std": (0.0,)}, "positive"),
    ],
)
def test_validation_errors(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidDatasetError, match=match) as info:
        _make(**overrides)
    assert isinstance(info.value, GradleakError) and isinstance(info.value, ValueError)
