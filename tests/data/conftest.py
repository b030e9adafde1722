"""Fixtures for the data tests: the shared offline datasets (skipped, with the reason, when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradleak.data import ImageDataset, load_dataset

#: ``<repo>/../shared/datasets``: where development machines and CI keep the public datasets.
SHARED_DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"shared datasets folder {SHARED_DATASETS} does not exist (see its README for the files)")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def mnist_train(shared_datasets: Path) -> ImageDataset:
    return load_dataset("mnist", "train", root=shared_datasets)


@pytest.fixture(scope="session")
def pneumonia_train(shared_datasets: Path) -> ImageDataset:
    return load_dataset("pneumoniamnist", "train", root=shared_datasets)
