"""Fixtures of the metrics tests."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20220415)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """These tests use tiny tensors; on a shared 2-core machine torch's second intra-op thread made them 10-30x
    slower (OpenMP oversubscription). Restored after each test, so other test packages are unaffected."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
