"""File-format readers: IDX per its spec, MedMNIST / plain npz without pickle, ImageFolder round trips."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gradleak.data import (
    DataFormatError,
    ImageDataset,
    load_dataset,
    read_idx,
    read_image_folder,
    read_medmnist_npz,
    read_npz,
    write_idx,
    write_image_folder,
)
from gradleak.errors import DatasetNotFoundError, GradleakError


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", "<i4", "f4", ">f8"])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path: Path, dtype: str, compress: bool) -> None:
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    path = write_idx(arr, tmp_path / "a.idx", compress=compress)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    back = read_idx(path)
    assert back.shape == (3, 4, 5) and back.dtype == arr.dtype.newbyteorder("=")
    assert np.array_equal(back, arr)


def test_idx_header_per_spec(tmp_path: Path) -> None:
    # hand-written: magic 0x00000803 (ubyte, 3 dims), dims 2x2x3, then 12 bytes
    raw = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2, 2, 3) + bytes(range(12))
    (tmp_path / "x").write_bytes(raw)
    assert read_idx(tmp_path / "x").tolist() == np.arange(12).reshape(2, 2, 3).tolist()
    # gzip is detected by the magic bytes, not by the name
    (tmp_path / "x.idx").write_bytes(gzip.compress(raw))
    (tmp_path / "y.gz").write_bytes(raw)
    assert np.array_equal(read_idx(tmp_path / "x.idx"), read_idx(tmp_path / "y.gz"))
    # int32 big-endian values
    raw32 = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) + struct.pack(">2i", -7, 1 << 20)
    (tmp_path / "z").write_bytes(raw32)
    assert read_idx(tmp_path / "z").tolist() == [-7, 1 << 20]


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\x50\x4b\x03\x04" + bytes(16), "bad IDX magic"),
        (bytes([0, 0, 0x07, 1]) + struct.pack(">I", 1) + b"\x00", "bad IDX magic"),  # unknown type code
        (bytes([0, 0, 0x08]), "too short"),
        (bytes([0, 0, 0x08, 3]) + struct.pack(">I", 10), "truncated IDX header"),
        (bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10) + bytes(9), "truncated: shape"),
        (bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10) + bytes(11), "trailing bytes"),
    ],
)
def test_corrupt_idx_raises(tmp_path: Path, payload: bytes, match: str) -> None:
    (tmp_path / "bad").write_bytes(payload)
    with pytest.raises(DataFormatError, match=match) as info:
        read_idx(tmp_path / "bad")
    assert isinstance(info.value, GradleakError) and str(tmp_path / "bad") in str(info.value)


def test_truncated_gzip_idx(tmp_path: Path) -> None:
    data = gzip.compress(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 1000) + bytes(range(256)) * 4)
    (tmp_path / "cut.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="gzip"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(DatasetNotFoundError):
        read_idx(tmp_path / "missing.gz")


def test_medmnist_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    np.savez(
        tmp_path / "m.npz", train_images=imgs, train_labels=np.array([[0], [1], [1], [0], [2], [1]], np.uint8)
    )
    images, labels, classes = read_medmnist_npz(tmp_path / "m.npz", "train")
    assert images.shape == (6, 28, 28, 1) and np.array_equal(images[..., 0], imgs)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 1, 0, 2, 1] and classes is None
    with pytest.raises(DataFormatError, match=r"no split 'test'.*train_images"):
        read_medmnist_npz(tmp_path / "m.npz", "test")
    np.savez(
        tmp_path / "vol.npz", train_images=np.zeros((2, 28, 28, 28), np.uint8), train_labels=np.zeros((2, 1))
    )
    with pytest.raises(DataFormatError, match="3-D volumes"):
        read_medmnist_npz(tmp_path / "vol.npz", "train")


def test_npz_never_unpickles(tmp_path: Path) -> None:
    np.savez(tmp_path / "evil.npz", images=np.array([object()], dtype=object), labels=np.zeros(1, np.int64))
    with pytest.raises(DataFormatError, match="unpickle"):
        read_npz(tmp_path / "evil.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataFormatError, match="not a readable npz"):
        read_npz(tmp_path / "junk.npz")
    np.savez(tmp_path / "keys.npz", x=np.zeros(3))
    with pytest.raises(DataFormatError, match=r"'images' and 'labels'.*\['x'\]"):
        read_npz(tmp_path / "keys.npz")


def _toy(channels: int, n_per_class: int = 3, size: tuple[int, int] = (9, 7)) -> ImageDataset:
    rng = np.random.default_rng(channels)
    n = 3 * n_per_class
    return ImageDataset(
        images=rng.integers(0, 256, (n, *size, channels), dtype=np.uint8),
        labels=np.repeat(np.arange(3), n_per_class),
        classes=("cat", "dog", "fox"),
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        name="toy",
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_round_trip_is_pixel_exact(tmp_path: Path, channels: int) -> None:
    ds = _toy(channels)
    write_image_folder(ds, tmp_path / "tree")
    assert sorted(p.name for p in (tmp_path / "tree").iterdir()) == ["cat", "dog", "fox"]
    with Image.open(next((tmp_path / "tree" / "cat").iterdir())) as im:
        assert im.mode == ("L" if channels == 1 else "RGB") and im.format == "PNG"
    images, labels, classes = read_image_folder(tmp_path / "tree")
    assert images.shape == ds.images.shape and images.dtype == np.uint8
    assert np.array_equal(images, ds.images)
    assert np.array_equal(labels, ds.labels) and classes == ds.classes
    loaded = load_dataset(f"imagefolder:{tmp_path / 'tree'}")
    assert np.array_equal(loaded.images, ds.images) and loaded.image_shape == (channels, 9, 7)
    with pytest.raises(DataFormatError, match="non-empty"):
        write_image_folder(ds, tmp_path / "tree")


def test_image_folder_split_subfolder_and_mixed_modes(tmp_path: Path) -> None:
    grey, rgb = _toy(1, 1), _toy(3, 1)
    write_image_folder(grey, tmp_path / "data" / "test")
    Image.fromarray(rgb.images[0]).save(tmp_path / "data" / "test" / "dog" / "colour.jpg", quality=95)
    ds = load_dataset(f"imagefolder:{tmp_path / 'data'}", split="test")
    assert len(ds) == 4 and ds.image_shape == (3, 9, 7)  # one colour image makes every image RGB
    assert ds.class_counts().tolist() == [1, 2, 1]
    # grey images are repeated over the three channels, exactly
    assert np.array_equal(ds.images[0], np.repeat(grey.images[0], 3, axis=2))


def test_image_folder_size_mismatch_names_the_file(tmp_path: Path) -> None:
    write_image_folder(_toy(1, 1), tmp_path / "t")
    odd = tmp_path / "t" / "fox" / "odd.png"
    Image.fromarray(np.zeros((10, 7), np.uint8)).save(odd)
    with pytest.raises(DataFormatError, match=r"odd\.png: image is 7x10") as info:
        read_image_folder(tmp_path / "t")
    assert "9" in str(info.value)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataFormatError, match="no images"):
        read_image_folder(tmp_path / "empty")
    with pytest.raises(DatasetNotFoundError):
        read_image_folder(tmp_path / "nowhere")
