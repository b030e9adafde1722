"""Client partitions: Table I of Hatamizadeh et al. (2022), IID and Dirichlet splits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from gradleak.data import (
    HOSPITAL_BATCH_SIZES,
    HOSPITAL_SIZES,
    HOSPITAL_TABLE,
    ImageDataset,
    PartitionError,
    hospital_partition,
    partition_by_sizes,
    partition_dirichlet,
    partition_iid,
)


def _disjoint(parts: list[np.ndarray]) -> bool:
    return all(len(np.intersect1d(a, b)) == 0 for a, b in itertools.combinations(parts, 2))


def _covers(parts: list[np.ndarray], n: int) -> bool:
    allidx = np.concatenate(parts)
    return len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))


def test_hospital_table_constants() -> None:
    # Table I: batch sizes 4,4,4,4,8,8,8,8,1; training images 8,32,128,512 (twice) and 1; "Sum" 1360 distinct
    assert HOSPITAL_BATCH_SIZES == (4, 4, 4, 4, 8, 8, 8, 8, 1)
    assert HOSPITAL_SIZES == (8, 32, 128, 512, 8, 32, 128, 512, 1)
    assert sum(HOSPITAL_SIZES) - 1 == 1360
    assert [c.client for c in HOSPITAL_TABLE] == list(range(1, 10))
    assert all(c.num_val == 200 for c in HOSPITAL_TABLE) and HOSPITAL_TABLE[8].shares_with == 1


@pytest.mark.parametrize("seed", [0, 7])
def test_hospital_partition_reproduces_table_1(pneumonia_train: ImageDataset, seed: int) -> None:
    labels = pneumonia_train.labels
    parts = hospital_partition(labels, seed)
    assert [len(p) for p in parts] == list(HOSPITAL_SIZES)
    for size, part in zip(HOSPITAL_SIZES[:8], parts[:8], strict=True):
        assert np.bincount(labels[part], minlength=2).tolist() == [size // 2, size // 2]
        assert len(np.unique(part)) == size
    assert _disjoint(parts[:8])
    (only,) = parts[8]
    assert labels[only] == 0  # a normal image ...
    assert only in parts[0]  # ... that client 1 also trains on
    assert all(only not in p for p in parts[1:8])
    assert len(np.unique(np.concatenate(parts))) == 1360
    # same seed, same split; another seed, another split
    again = hospital_partition(labels, seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = hospital_partition(labels, seed + 1)
    assert not np.array_equal(parts[3], other[3])


def test_hospital_partition_needs_680_per_class() -> None:
    labels = np.repeat([0, 1], 600)
    with pytest.raises(
        PartitionError, match="ask for 680 distinct images of class 0 but the dataset has 600"
    ):
        hospital_partition(labels, 0)


def test_partition_by_sizes_options() -> None:
    labels = np.repeat(np.arange(4), 25)  # 4 classes x 25
    parts = partition_by_sizes(labels, [8, 12, 1, 1], balanced=True, seed=3, single_class=2)
    assert [np.bincount(labels[p], minlength=4).tolist() for p in parts[:2]] == [[2, 2, 2, 2], [3, 3, 3, 3]]
    assert labels[parts[2]].tolist() == [2] and labels[parts[3]].tolist() == [2] and _disjoint(parts)
    free = partition_by_sizes(labels, [30, 30, 40], seed=3)
    assert [len(p) for p in free] == [30, 30, 40] and _covers(free, 100)
    shared = partition_by_sizes(labels, [10, 10, 5], seed=3, shared={2: (0, 3)})
    assert len(np.intersect1d(shared[2], shared[0])) == 3 and len(np.intersect1d(shared[2], shared[1])) == 0
    assert len(np.unique(np.concatenate(shared))) == 22
    gen = torch.Generator().manual_seed(5)
    again = torch.Generator().manual_seed(5)
    assert np.array_equal(
        partition_by_sizes(labels, [7], seed=gen)[0], partition_by_sizes(labels, [7], seed=again)[0]
    )


def test_balanced_sizes_that_are_not_multiples_of_the_classes() -> None:
    """As balanced as the size allows: size // K of every class, one more of size % K distinct classes."""
    labels = np.repeat(np.arange(10), 30)  # 10 classes, as CIFAR-10
    for seed in range(5):
        parts = partition_by_sizes(labels, [8, 12, 25, 1], balanced=True, seed=seed, single_class=0,
                                   shared={3: (0, 1)})
        counts = [np.bincount(labels[p], minlength=10) for p in parts[:3]]
        for size, c in zip([8, 12, 25], counts, strict=True):
            assert c.sum() == size and c.max() - c.min() <= 1 and (c >= size // 10).all()
        # the hospital table's one-image client reuses an image of class 0 of client 0: client 0 must hold one
        assert counts[0][0] == 1 and labels[parts[3]].tolist() == [0] and parts[3][0] in parts[0]
        assert _disjoint(parts[:3])
    # sizes that are multiples draw exactly as before (the same partition for the same seed)
    four = np.repeat(np.arange(4), 25)
    a = partition_by_sizes(four, [8, 12], balanced=True, seed=3)
    assert [p.tolist() for p in a] == [[76, 44, 12, 43, 13, 50, 65, 92],  # from the code before this change
                                       [83, 23, 99, 46, 15, 71, 55, 66, 79, 0, 48, 29]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"sizes": [60, 48], "balanced": True},
            "ask for 27 distinct images of class 0 but the dataset has 25",
        ),
        ({"sizes": [60, 41]}, "ask for 101 distinct images but the dataset has 100"),
        ({"sizes": [4, 4], "shared": {1: (1, 1)}}, "clients must be distinct"),
        ({"sizes": [4, 4], "shared": {1: (0, 5)}}, "cannot reuse 5 images of client 0"),
        ({"sizes": [4, 4], "shared": {0: (1, 1), 1: (0, 1)}}, "cycle"),
        ({"sizes": [-1]}, "non-negative"),
    ],
)
def test_partition_by_sizes_errors(kwargs: dict[str, object], match: str) -> None:
    labels = np.repeat(np.arange(4), 25)
    with pytest.raises(PartitionError, match=match):
        partition_by_sizes(labels, seed=0, **kwargs)  # type: ignore[arg-type]


def test_iid() -> None:
    labels = np.random.default_rng(0).integers(0, 10, 1003)
    parts = partition_iid(labels, 10, seed=1)
    assert sorted(len(p) for p in parts) == [100] * 7 + [101] * 3
    assert _covers(parts, 1003) and _disjoint(parts)
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition_iid(labels, 10, seed=1), strict=True))
    assert not np.array_equal(parts[0], partition_iid(labels, 10, seed=2)[0])
    dropped = partition_iid(labels, 10, seed=1, drop_remainder=True)
    assert [len(p) for p in dropped] == [100] * 10 and _disjoint(dropped)
    with pytest.raises(PartitionError, match=r"1\.\.1003"):
        partition_iid(labels, 2000, seed=0)


def test_dirichlet() -> None:
    labels = np.repeat(np.arange(10), 1000)
    prior = np.full(10, 0.1)

    def skew(parts: list[np.ndarray]) -> float:  # mean total-variation distance to the global label mix
        return float(
            np.mean(
                [0.5 * np.abs(np.bincount(labels[p], minlength=10) / len(p) - prior).sum() for p in parts]
            )
        )

    parts = partition_dirichlet(labels, 20, 0.5, seed=4, min_size=10)
    assert _covers(parts, 10_000) and _disjoint(parts) and min(len(p) for p in parts) >= 10
    same = partition_dirichlet(labels, 20, 0.5, seed=4, min_size=10)
    assert all(np.array_equal(a, b) for a, b in zip(parts, same, strict=True))
    assert not np.array_equal(parts[0], partition_dirichlet(labels, 20, 0.5, seed=5, min_size=10)[0])
    # small alpha: clients see few classes; large alpha: close to IID
    assert skew(partition_dirichlet(labels, 20, 0.1, seed=0)) > 0.55
    assert skew(partition_dirichlet(labels, 20, 100.0, seed=0)) < 0.08
    with pytest.raises(PartitionError, match="at least 600 images each from 10000"):
        partition_dirichlet(labels, 20, 0.5, seed=0, min_size=600)
    with pytest.raises(PartitionError, match="alpha must be positive"):
        partition_dirichlet(labels, 20, 0.0, seed=0)
