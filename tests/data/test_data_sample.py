"""The bundled offline samples: size, balance, provenance and reproducibility."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import gradleak.data
from gradleak.data import load_dataset

SAMPLE_DIR = Path(gradleak.data.__file__).resolve().parent / "sample"


def _build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_sample", SAMPLE_DIR / "build_sample.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_is_small_and_attributed() -> None:
    total = sum(p.stat().st_size for p in SAMPLE_DIR.iterdir() if p.is_file())
    assert total <= 1_000_000, f"bundled sample is {total} bytes"
    sources = (SAMPLE_DIR / "SOURCES.md").read_text()
    for needle in ("CC BY 4.0", "CC BY-SA 3.0", "Kermany", "MedMNIST v2", "LeCun", "seed=20240601"):
        assert needle in sources


@pytest.mark.parametrize(
    ("name", "counts"),
    [
        ("sample-mnist", {"train": [100] * 10, "test": [20] * 10}),
        ("sample-pneumoniamnist", {"train": [300, 300], "val": [50, 50], "test": [100, 100]}),
    ],
)
def test_samples_load_balanced(name: str, counts: dict[str, list[int]]) -> None:
    for split, expected in counts.items():
        ds = load_dataset(name, split)
        assert ds.class_counts().tolist() == expected
        assert ds.image_shape == (1, 28, 28) and ds.images.dtype == np.uint8
        assert ds.name == name and ds.split == split


@pytest.mark.parametrize("name", ["mnist", "pneumoniamnist"])
def test_sample_matches_its_sources_and_rebuilds_identically(shared_datasets: Path, name: str) -> None:
    module = _build_module()
    filename, splits = module.SAMPLES[name]
    rebuilt = module.build(name, shared_datasets)
    with np.load(SAMPLE_DIR / filename, allow_pickle=False) as stored:
        assert sorted(stored.files) == sorted(rebuilt)
        for key in stored.files:
            assert np.array_equal(stored[key], rebuilt[key]), key
        for split in splits:
            full = load_dataset(name, split, root=shared_datasets)
            idx = stored[f"{split}_source_indices"]
            assert np.array_equal(stored[f"{split}_images"], full.images[idx, :, :, 0])
            assert np.array_equal(stored[f"{split}_labels"].reshape(-1), full.labels[idx])
