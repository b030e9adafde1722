"""Seeded splits of a dataset into federated clients.

Every function takes the ``labels`` of the dataset and a seed (``int``, :class:`numpy.random.Generator` or
:class:`torch.Generator`) and returns one ``int64`` array of dataset indices per client.
Same seed, same split.

Examples
--------
>>> import numpy as np
>>> labels = np.repeat([0, 1], 50)
>>> parts = partition_iid(labels, 3, seed=0)
>>> [len(p) for p in parts]
[34, 33, 33]
>>> parts = partition_by_sizes(labels, [4, 8], balanced=True, seed=0)
>>> [np.bincount(labels[p]).tolist() for p in parts]
[[2, 2], [4, 4]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gradleak.data.errors import PartitionError

__all__ = [
    "HOSPITAL_BATCH_SIZES",
    "HOSPITAL_SHARED",
    "HOSPITAL_SIZES",
    "HOSPITAL_TABLE",
    "HospitalClient",
    "as_rng",
    "hospital_partition",
    "partition_by_sizes",
    "partition_dirichlet",
    "partition_iid",
]

Seed = int | np.random.Generator | torch.Generator


def as_rng(seed: Seed) -> np.random.Generator:
    """A numpy Generator from an int seed, a numpy Generator (returned as is) or a torch Generator."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, torch.Generator):
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=seed).item()))
    if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
        return np.random.default_rng(int(seed))
    raise TypeError(
        f"seed must be an int, numpy.random.Generator or torch.Generator; got {type(seed).__name__}"
    )


def _check_labels(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise PartitionError(f"labels must be a 1-D integer array; got shape {arr.shape}, dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise PartitionError(f"labels must be non-negative; found {int(arr.min())}")
    return arr


# ------------------------------------------------------------------------------------------- explicit sizes
def partition_by_sizes(
    labels: np.ndarray,
    sizes: Sequence[int],
    *,
    balanced: bool = False,
    seed: Seed,
    shared: Mapping[int, tuple[int, int]] | None = None,
    single_class: int | None = None,
) -> list[np.ndarray]:
    """Give client ``i`` exactly ``sizes[i]`` images, disjoint across clients except as ``shared`` says.

    Parameters
    ----------
    labels
        ``(N,)`` class labels of the dataset.
    sizes
        Number of images of each client.
    balanced
        Each client gets the same number of images of every class present in ``labels`` — as nearly as its size
        allows: ``size // K`` of each of the ``K`` classes, and one more of ``size % K`` classes drawn at random
        (a client whose images another client reuses through ``shared`` gets the classes that client needs
        first). Size 1 is one image of ``single_class`` (or of a random class).
    seed
        Randomness for the selection and the order within each client.
    shared
        ``{client: (source_client, k)}``: ``client`` reuses ``k`` images of ``source_client`` (chosen at
        random, respecting ``client``'s class plan when ``balanced``) instead of ``k`` new ones. Example: the
        hospital table's client 9 reuses a normal image of client 1: ``{8: (0, 1)}`` with ``single_class=0``.
    single_class
        The class of balanced clients of size 1 (default: random).

    Returns
    -------
    list of np.ndarray
        ``int64`` indices per client, in random order.

    Raises
    ------
    PartitionError
        Negative sizes, more images of a class (or in total) than the dataset has, or an impossible sharing
        request; the message gives the numbers.
    """
    labels = _check_labels(labels)
    rng = as_rng(seed)
    sizes = [int(s) for s in sizes]
    if not sizes or min(sizes) < 0:
        raise PartitionError(f"sizes must be a non-empty list of non-negative integers; got {sizes}")
    if labels.size == 0:
        raise PartitionError("cannot partition an empty dataset")
    shared = {int(c): (int(s), int(k)) for c, (s, k) in (shared or {}).items()}
    present = np.unique(labels)
    _check_shared(shared, sizes)

    # class plan per client: {class: count} when balanced, None otherwise
    plans: list[dict[int, int] | None] = []
    for client, size in enumerate(sizes):
        if not balanced:
            plans.append(None)
        elif size == 1:
            if single_class is not None:
                if single_class not in present:
                    raise PartitionError(
                        f"single_class={single_class} has no images; classes present: {present.tolist()}"
                    )
                plans.append({int(single_class): 1})
            else:
                plans.append({})  # class drawn later (from the source's classes when shared)
        else:
            plans.append(_balanced_plan(size, present, _needed_classes(client, shared, sizes, single_class), rng))

    _check_demand(labels, sizes, plans, shared)

    # balanced: a shuffled queue of unused indices per class, consumed from the front; otherwise a used-mask
    queues = {int(c): rng.permutation(np.flatnonzero(labels == c)).tolist() for c in present}
    used = np.zeros(len(labels), dtype=bool)
    parts: list[np.ndarray | None] = [None] * len(sizes)

    def take_class(client: int, c: int, k: int) -> list[int]:
        queue = queues[c]
        if len(queue) < k:
            total = int((labels == c).sum())
            raise PartitionError(
                f"client {client} needs {k} new images of class {c} but only {len(queue)} of the {total} "
                f"images of that class remain after the other clients (sizes {sizes}, balanced)"
            )
        queues[c] = queue[k:]
        return queue[:k]

    def build(client: int) -> np.ndarray:
        size, plan = sizes[client], plans[client]
        chosen: list[int] = []
        if client in shared:
            source, k = shared[client]
            pool = rng.permutation(parts[source])  # type: ignore[arg-type]
            if plan == {}:  # balanced size 1, random class: any of the source's images will do
                plan = {int(labels[pool[0]]): 1}
            if plan is None:
                chosen = pool[:k].tolist()
            else:
                remaining = dict(plan)
                for i in pool:
                    if len(chosen) == k:
                        break
                    if remaining.get(int(labels[i]), 0) > 0:
                        remaining[int(labels[i])] -= 1
                        chosen.append(int(i))
                if len(chosen) < k:
                    raise PartitionError(
                        f"client {client} should reuse {k} images of client {source} matching its class plan "
                        f"{plan}, but client {source} only has {len(chosen)} suitable ones"
                    )
                plan = remaining
        if plan == {}:
            plan = {int(rng.choice(present)): 1}
        if plan is None:
            need = size - len(chosen)
            free = np.flatnonzero(~used)
            if len(free) < need:
                raise PartitionError(
                    f"client {client} needs {need} new images but only {len(free)} of {len(labels)} remain "
                    f"(sizes {sizes} ask for {sum(sizes)} in total)"
                )
            new = rng.choice(free, size=need, replace=False)
            used[new] = True
            chosen += new.tolist()
        else:
            for c, k in sorted(plan.items()):
                chosen += take_class(client, c, k)
        return rng.permutation(np.asarray(chosen, dtype=np.int64))

    # clients that reuse images wait until their source has been built
    pending = list(range(len(sizes)))
    while pending:
        for c in pending:
            if c not in shared or parts[shared[c][0]] is not None:
                parts[c] = build(c)
        pending = [c for c in pending if parts[c] is None]
    return [p for p in parts if p is not None]


def _needed_classes(client: int, shared: Mapping[int, tuple[int, int]], sizes: Sequence[int],
                    single_class: int | None) -> list[int]:
    """Classes ``client`` must hold because a size-1 client of ``single_class`` reuses one of its images."""
    if single_class is None:
        return []
    return [int(single_class) for c, (source, _) in shared.items() if source == client and sizes[c] == 1]


def _balanced_plan(size: int, present: np.ndarray, needed: Sequence[int], rng: np.random.Generator) -> dict[int, int]:
    """``size // K`` images of each of the ``K`` classes, plus one of ``size % K`` classes (``needed`` ones first,
    the rest at random). Sizes that are multiples of ``K`` draw nothing from ``rng``."""
    k = len(present)
    plan = {int(c): size // k for c in present}
    extra = size % k
    if extra:
        first = [c for c in dict.fromkeys(int(c) for c in needed) if c in plan and plan[c] == 0][:extra]
        others = [int(c) for c in present if int(c) not in first]
        chosen = first + [int(c) for c in rng.choice(others, size=extra - len(first), replace=False)]
        for c in chosen:
            plan[c] += 1
    return {c: n for c, n in plan.items() if n}


def _check_demand(
    labels: np.ndarray,
    sizes: list[int],
    plans: list[dict[int, int] | None],
    shared: dict[int, tuple[int, int]],
) -> None:
    """Fail early, with the totals, when the sizes ask for more new images than the dataset has."""
    reused = sum(k for _, k in shared.values())
    if plans and plans[0] is None:
        if sum(sizes) - reused > len(labels):
            raise PartitionError(
                f"sizes {sizes} ask for {sum(sizes) - reused} distinct images but the dataset has "
                f"{len(labels)}"
            )
        return
    counts = np.bincount(labels)
    demand = np.zeros_like(counts)
    for client, plan in enumerate(plans):
        if plan and client not in shared:
            for c, k in plan.items():
                demand[c] += k
    for c in np.flatnonzero(demand > counts).tolist():
        raise PartitionError(
            f"balanced sizes {sizes} ask for {int(demand[c])} distinct images of class {int(c)} but the "
            f"dataset has {int(counts[c])}"
        )


def _check_shared(shared: dict[int, tuple[int, int]], sizes: list[int]) -> None:
    n = len(sizes)
    for client, (source, k) in shared.items():
        if not (0 <= client < n and 0 <= source < n) or client == source:
            raise PartitionError(
                f"shared={{{client}: ({source}, {k})}}: clients must be distinct, in 0..{n - 1}"
            )
        if not 1 <= k <= min(sizes[client], sizes[source]):
            raise PartitionError(
                f"client {client} cannot reuse {k} images of client {source}: sizes are {sizes[client]} and "
                f"{sizes[source]}"
            )
    seen: set[int] = set()
    for client in shared:  # reject cycles such as {0: (1, 1), 1: (0, 1)}
        chain, c = {client}, client
        while c in shared and c not in seen:
            c = shared[c][0]
            if c in chain:
                raise PartitionError(f"shared has a cycle through clients {sorted(chain)}")
            chain.add(c)
        seen |= chain


# ------------------------------------------------------------------------------------------- IID / Dirichlet
def partition_iid(
    labels: np.ndarray, num_clients: int, *, seed: Seed, drop_remainder: bool = False
) -> list[np.ndarray]:
    """Shuffle and split into ``num_clients`` near-equal parts (sizes differ by at most one).

    With ``drop_remainder`` every client gets exactly ``N // num_clients`` images and the rest are unused.
    """
    labels = _check_labels(labels)
    n = len(labels)
    if num_clients < 1 or num_clients > n:
        raise PartitionError(f"num_clients must be in 1..{n} (the number of images); got {num_clients}")
    perm = as_rng(seed).permutation(n).astype(np.int64)
    if drop_remainder:
        perm = perm[: n - n % num_clients]
    return [np.asarray(p) for p in np.array_split(perm, num_clients)]


def partition_dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    *,
    seed: Seed,
    min_size: int = 1,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Label-skewed split: each class is divided among clients in Dirichlet(``alpha``) proportions.

    The scheme of Hsu, Qi and Brown (2019), as implemented in NIID-Bench (Li et al., 2022): for every class,
    draw ``p ~ Dir(alpha · 1)`` over clients and cut the shuffled class indices at ``cumsum(p)``; redraw
    everything until each client has at least ``min_size`` images. Small ``alpha`` → few classes per client;
    large ``alpha`` → close to IID. Disjoint and covering every index.

    Raises
    ------
    PartitionError
        ``alpha <= 0``, ``num_clients * min_size > N``, or no valid draw within ``max_tries``.
    """
    labels = _check_labels(labels)
    n = len(labels)
    if not alpha > 0:
        raise PartitionError(f"alpha must be positive; got {alpha}")
    if num_clients < 1 or min_size < 0 or num_clients * min_size > n:
        raise PartitionError(
            f"cannot give {num_clients} clients at least {min_size} images each from {n} images"
        )
    rng = as_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(max_tries):
        chunks: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(num_clients, float(alpha)))
            if not np.isfinite(p).all():
                p = np.zeros(num_clients)
                p[rng.integers(num_clients)] = 1.0
            cuts = np.floor(np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for client, chunk in enumerate(np.split(idx, cuts)):
                chunks[client].append(chunk)
        sizes = [sum(len(c) for c in cs) for cs in chunks]
        if min(sizes) >= min_size:
            return [rng.permutation(np.concatenate(cs)).astype(np.int64) for cs in chunks]
    raise PartitionError(
        f"no Dirichlet(alpha={alpha}) split of {n} images into {num_clients} clients gave every client at "
        f"least {min_size} images in {max_tries} draws; raise alpha, lower min_size or use fewer clients"
    )


# ------------------------------------------------------------------------------------ the hospital table
@dataclass(frozen=True)
class HospitalClient:
    """One row of Table I of Hatamizadeh et al. (2022), "Do gradient inversion attacks make federated learning
    unsafe?": local batch size and number of training and validation images of a client."""

    client: int  # the paper's 1-based number
    batch_size: int
    num_train: int
    num_val: int = 200
    shares_with: int | None = None  # paper number of the client whose training image it reuses


#: Table I: eight class-balanced clients and the "high-risk" client 9 (one normal image of client 1).
HOSPITAL_TABLE: tuple[HospitalClient, ...] = (
    HospitalClient(1, 4, 8),
    HospitalClient(2, 4, 32),
    HospitalClient(3, 4, 128),
    HospitalClient(4, 4, 512),
    HospitalClient(5, 8, 8),
    HospitalClient(6, 8, 32),
    HospitalClient(7, 8, 128),
    HospitalClient(8, 8, 512),
    HospitalClient(9, 1, 1, shares_with=1),
)
HOSPITAL_SIZES: tuple[int, ...] = tuple(c.num_train for c in HOSPITAL_TABLE)
HOSPITAL_BATCH_SIZES: tuple[int, ...] = tuple(c.batch_size for c in HOSPITAL_TABLE)
#: ``shared`` argument of :func:`partition_by_sizes` (0-based): client index 8 reuses one image of client 0.
HOSPITAL_SHARED: dict[int, tuple[int, int]] = {8: (0, 1)}
HOSPITAL_NORMAL_CLASS = 0


def hospital_partition(labels: np.ndarray, seed: Seed) -> list[np.ndarray]:
    """The training split of Table I of Hatamizadeh et al. (2022) over binary labels (0 = normal).

    Clients 1–8 (indices 0–7) get 8, 32, 128, 512, 8, 32, 128, 512 images, half of each class, pairwise
    disjoint; client 9 (index 8) gets one normal (class 0) image of client 1. 1360 distinct images in all, as
    the table's "Sum" row. Use :data:`HOSPITAL_BATCH_SIZES` for the local batch sizes.
    """
    return partition_by_sizes(
        labels,
        HOSPITAL_SIZES,
        balanced=True,
        seed=seed,
        shared=HOSPITAL_SHARED,
        single_class=HOSPITAL_NORMAL_CLASS,
    )
