"""A tiny study (3 clients of the bundled sample, a 4-wide ConvNet, 2 rounds, 3 attack iterations) for tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "scenario": {
        "dataset": "sample-pneumoniamnist",
        "model": {"name": "convnet", "options": {"num_classes": 2, "in_channels": 1, "image_size": 28, "width": 4}},
        "recipe": {"optimizer": "sgd", "lr": 0.01, "batch_size": 2, "epochs": 1},
        "rounds": 2,
        "partition": "sizes",
        "sizes": [2, 3, 1],
        "val_split": "val",
        "val_per_client": 4,
    },
    "defenses": [{"name": "local-gaussian", "grid": {"sigma0": [0, 10]}}],
    "attacks": [{"name": "fedavg-inversion", "options": {"iterations": 3}, "clients": [0, 2], "rounds": [-1],
                 "prior": {"images": 16}}],
    "metrics": {"bootstrap_resamples": 100},
}


def tiny(out: Path, **changes: Any) -> dict[str, Any]:
    """The tiny config writing to ``out``, with top-level ``changes``."""
    data = copy.deepcopy(TINY)
    data["output"] = str(out)
    data.update(changes)
    return data


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
