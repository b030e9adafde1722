"""Rebuild the bundled offline samples from the full datasets (run once; the outputs are committed).

Usage::

    python src/gradleak/data/sample/build_sample.py [DATA_ROOT]

``DATA_ROOT`` (default: found as by :func:`gradleak.data.find_data_root`) holds ``mnist/`` and
``pneumoniamnist.npz``. Each split of the sample is a class-balanced random subset of the same split of the
full dataset, drawn with :func:`gradleak.data.partition_by_sizes` (``balanced=True``) from a fixed seed, with
the chosen indices sorted so the sample keeps the original order. The source indices are stored next to the
images (``{split}_source_indices``), so anyone can check the selection against the full files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from gradleak.data import load_dataset, partition_by_sizes

SEED = 20240601
#: name in the registry, output file, {split: number of images (a multiple of the number of classes)}
SAMPLES: dict[str, tuple[str, dict[str, int]]] = {
    "pneumoniamnist": ("pneumoniamnist_sample.npz", {"train": 600, "val": 100, "test": 200}),
    "mnist": ("mnist_sample.npz", {"train": 1000, "test": 200}),
}


def build(name: str, root: str | Path | None = None) -> dict[str, np.ndarray]:
    """The arrays of the sample of dataset ``name``, in the MedMNIST npz layout.

    Returns
    -------
    dict
        ``{split}_images`` ``(n, 28, 28)`` uint8, ``{split}_labels`` (``(n, 1)`` uint8 for PneumoniaMNIST as
        in MedMNIST, ``(n,)`` uint8 for MNIST) and ``{split}_source_indices`` ``(n,)`` int32 for every split.
    """
    _, splits = SAMPLES[name]
    arrays: dict[str, np.ndarray] = {}
    for offset, (split, n) in enumerate(splits.items()):
        ds = load_dataset(name, split=split, root=root)
        (idx,) = partition_by_sizes(ds.labels, [n], balanced=True, seed=SEED + offset)
        idx = np.sort(idx)
        labels = ds.labels[idx].astype(np.uint8)
        arrays[f"{split}_images"] = ds.images[idx, :, :, 0]
        arrays[f"{split}_labels"] = labels[:, None] if name == "pneumoniamnist" else labels
        arrays[f"{split}_source_indices"] = idx.astype(np.int32)
    return arrays


def main(root: str | None = None) -> None:
    """Write both samples next to this script and print their sizes."""
    here = Path(__file__).resolve().parent
    for name, (filename, _) in SAMPLES.items():
        out = here / filename
        np.savez_compressed(out, allow_pickle=False, **build(name, root))
        print(f"{out.name}: {out.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
