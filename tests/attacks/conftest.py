"""Shared fixtures of the attack tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread: on a shared, loaded CPU several threads spin against each other and make the
    small double-backward computations of these tests many times slower (measured: 3 s vs 136 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
