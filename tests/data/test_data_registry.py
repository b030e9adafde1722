"""load_dataset on the real offline datasets: sizes and class counts from the datasets' documentation."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from gradleak.data import (
    CIFAR10_MEAN,
    DATASETS,
    ENV_VAR,
    MNIST_MEAN,
    MNIST_STD,
    ImageDataset,
    InvalidSplitError,
    channel_stats,
    check_dataset_name,
    find_data_root,
    load_dataset,
)
from gradleak.data.formats import DataFormatError
from gradleak.errors import DatasetNotFoundError, GradleakError, UnknownNameError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_mnist_train(mnist_train: ImageDataset) -> None:
    assert len(mnist_train) == 60_000
    assert mnist_train.class_counts().tolist() == MNIST_TRAIN_COUNTS
    assert mnist_train.image_shape == (1, 28, 28)
    assert mnist_train.images.dtype == np.uint8
    assert mnist_train.classes == tuple(str(i) for i in range(10))
    assert mnist_train.labels[:5].tolist() == [5, 0, 4, 1, 9]  # the famous first digits of MNIST
    assert (mnist_train.mean, mnist_train.std) == (MNIST_MEAN, MNIST_STD)


def test_mnist_standard_stats_are_the_data_stats(mnist_train: ImageDataset) -> None:
    mean, std = channel_stats(mnist_train.images)
    assert mean[0] == pytest.approx(0.1307, abs=5e-5)
    assert std[0] == pytest.approx(0.3081, abs=5e-5)


def test_mnist_test_and_uncompressed_idx(shared_datasets: Path, tmp_path: Path) -> None:
    gz = load_dataset("mnist", "test", root=shared_datasets)
    assert len(gz) == 10_000
    assert gz.class_counts().tolist() == MNIST_TEST_COUNTS
    assert gz.labels[:3].tolist() == [7, 2, 1]
    # the same files, decompressed, directly in the root (no mnist/ sub-folder)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        raw = gzip.decompress((shared_datasets / "mnist" / f"{stem}.gz").read_bytes())
        (tmp_path / stem).write_bytes(raw)
    plain = load_dataset("mnist", "test", root=tmp_path)
    assert np.array_equal(plain.images, gz.images)
    assert np.array_equal(plain.labels, gz.labels)


def test_pneumoniamnist_splits(shared_datasets: Path) -> None:
    sizes = {}
    means = set()
    for split in ("train", "val", "test"):
        ds = load_dataset("pneumoniamnist", split, root=shared_datasets)
        sizes[split] = len(ds)
        assert ds.class_counts().tolist() == [len(ds) // 2, len(ds) // 2]
        assert ds.classes == ("normal", "pneumonia")
        assert ds.image_shape == (1, 28, 28)
        means.add(ds.mean)
    assert sizes == {"train": 2428, "val": 270, "test": 468}
    assert len(means) == 1  # every split is normalised with the train-split statistics


def test_cifar10_test(shared_datasets: Path) -> None:
    ds = load_dataset("cifar10", "test", root=shared_datasets)
    assert len(ds) == 10_000
    assert ds.class_counts().tolist() == [1000] * 10
    assert ds.classes == CIFAR10_CLASSES
    assert ds.image_shape == (3, 32, 32)
    assert ds.mean == CIFAR10_MEAN
    mean, _ = channel_stats(ds.images)
    assert np.allclose(mean, CIFAR10_MEAN, atol=0.01)  # a JPEG re-encoding of the same images


def test_cifar10_train_names_the_missing_file(shared_datasets: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", "train", root=shared_datasets)
    assert "cifar10_train.npz" in str(info.value)
    assert str(shared_datasets) in str(info.value)


def test_missing_files_message_lists_every_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", "train", root=tmp_path)
    msg = str(info.value)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        assert f"{name}.gz" in msg and f"or {name}" in msg
    assert f"Searched: {tmp_path / 'mnist'}, {tmp_path} (data root from the root argument)" in msg
    assert ENV_VAR in msg
    with pytest.raises(DatasetNotFoundError, match=r"pneumoniamnist\.npz"):
        load_dataset("pneumoniamnist", root=tmp_path)


def test_root_resolution_order(
    shared_datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(repo)
    root, how = find_data_root()
    assert root == shared_datasets.resolve() and "shared/datasets" in how
    assert len(load_dataset("pneumoniamnist", "val")) == 270  # found from the repository root
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert find_data_root() == (tmp_path, f"${ENV_VAR}")
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(tmp_path))):
        load_dataset("pneumoniamnist", "val")
    assert len(load_dataset("pneumoniamnist", "val", root=shared_datasets)) == 270  # argument beats env


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        load_dataset("mnsit")
    msg = str(info.value)
    assert isinstance(info.value, GradleakError)
    for name in ("mnist", "pneumoniamnist", "cifar10", "imagefolder:<path>", "npz:<path>", "sample-mnist"):
        assert name in msg
    assert "Did you mean 'mnist'?" in msg
    assert len(DATASETS) == 7
    with pytest.raises(UnknownNameError):
        load_dataset("folder:/tmp")
    with pytest.raises(UnknownNameError):
        check_dataset_name("cifar100")
    check_dataset_name("imagefolder:/any/path")  # valid without touching the disk


def test_invalid_split_lists_valid_splits(shared_datasets: Path) -> None:
    with pytest.raises(InvalidSplitError, match="Valid splits: train, val, test"):
        load_dataset("pneumoniamnist", "validation", root=shared_datasets)
    with pytest.raises(InvalidSplitError, match="Valid splits: train, test"):
        load_dataset("sample-mnist", "val")


def test_npz_prefix_reads_any_medmnist_and_plain_npz(shared_datasets: Path, tmp_path: Path) -> None:
    val = load_dataset(f"npz:{shared_datasets / 'pneumoniamnist.npz'}", "val")
    assert len(val) == 270 and val.classes == ("0", "1")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 28, 28, 3), dtype=np.uint8)
    np.savez(tmp_path / "bloodlike.npz", train_images=rgb, train_labels=np.arange(12).reshape(12, 1) % 8)
    ds = load_dataset(f"npz:{tmp_path / 'bloodlike.npz'}", "train")
    assert ds.image_shape == (3, 28, 28) and ds.num_classes == 8 and np.array_equal(ds.images, rgb)
    np.savez(tmp_path / "multi.npz", train_images=rgb, train_labels=np.zeros((12, 14), dtype=np.uint8))
    with pytest.raises(DataFormatError, match="multi-label"):
        load_dataset(f"npz:{tmp_path / 'multi.npz'}")
    grey = rng.random((5, 8, 8)).astype(np.float32)
    np.savez(
        tmp_path / "plain.npz",
        images=grey,
        labels=np.array([0, 1, 2, 1, 0]),
        classes=np.array(["a", "b", "c"]),
    )
    plain = load_dataset(f"npz:{tmp_path / 'plain.npz'}", "anything")
    assert plain.classes == ("a", "b", "c") and plain.images.dtype == np.float32
    assert np.array_equal(plain.images[..., 0], grey)
    assert plain.mean[0] == pytest.approx(float(grey.mean()), rel=1e-6)
    assert plain.std[0] == pytest.approx(float(grey.std()), rel=1e-5)
