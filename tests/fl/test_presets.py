"""Scenario presets build the papers' federations; a short hospital run records what the server sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gradleak.data import load_dataset
from gradleak.fl.presets import SCENARIOS
from gradleak.fl.recorder import Recorder
from gradleak.fl.store import UpdateStore
from gradleak.models import ModelSpec

SHARED_DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
pytestmark = pytest.mark.skipif(not SHARED_DATASETS.exists(), reason="needs ../shared/datasets")


def test_hospital_preset_reproduces_table_one() -> None:
    scenario = SCENARIOS.create("hospital", data_root=str(SHARED_DATASETS))
    fed = scenario.build()
    assert [len(c.train) for c in fed.clients] == [8, 32, 128, 512, 8, 32, 128, 512, 1]
    assert [c.recipe.batch_size for c in fed.clients] == [4, 4, 4, 4, 8, 8, 8, 8, 1]
    for c in fed.clients[:8]:
        assert np.bincount(c.train.y.numpy(), minlength=2).tolist() == [len(c.train) // 2] * 2
    assert int(fed.clients[8].train.y) == 0  # a normal case
    assert fed.train_indices[8][0] in set(fed.train_indices[0].tolist())  # taken from client 1
    assert len({int(i) for p in fed.train_indices for i in p}) == 1360
    assert fed.val_indices[8] is fed.val_indices[0]  # client 9 shares client 1's validation set
    assert len({int(i) for p in fed.val_indices[:8] for i in p}) == 8 * 32
    assert len(fed.test) == 468
    r = scenario.recipe
    assert (r.optimizer, r.momentum, r.epochs, r.bn_mode, r.lr_schedule) == ("sgd", 0.0, 1, "train", "step")
    assert scenario.model.name == "resnet18" and scenario.model.options["norm"] == "batch"


def test_hospital_round_records_nine_updates(tmp_path) -> None:
    scenario = SCENARIOS.create(
        "hospital", data_root=str(SHARED_DATASETS), rounds=1,
        model=ModelSpec("convnet", {"num_classes": 2, "in_channels": 1, "image_size": 28, "width": 4}),
    )
    store = UpdateStore(tmp_path / "store", model_spec=scenario.model)
    result = scenario.simulation().run(hooks=[Recorder(store)])
    model = scenario.model.build()
    ups = store.updates(round=0, model=model)
    assert [u.client for u in ups] == list(range(9))
    assert [u.num_examples for u in ups] == [8, 32, 128, 512, 8, 32, 128, 512, 1]
    assert [u.metadata["recipe"]["batch_size"] for u in ups] == [4, 4, 4, 4, 8, 8, 8, 8, 1]
    assert [u.metadata["local_steps"] for u in ups] == [2, 8, 32, 128, 1, 4, 16, 64, 1]
    assert all(any("running_mean" in k for k in u.buffers) for u in ups)  # BN statistics are sent
    assert store.global_rounds() == [0, 1]
    assert result.history[0].test_accuracy is not None and len(result.history[0].val_accuracy) == 9


def test_combined_defenses_preset_on_mnist_and_cifar() -> None:
    mnist = SCENARIOS.create("combined-defenses", data_root=str(SHARED_DATASETS)).build()
    assert [len(c.train) for c in mnist.clients] == [6000] * 10
    assert mnist.clients[0].train.x.shape[1:] == (1, 32, 32) and len(mnist.test) == 10000
    assert all(c.recipe.optimizer == "adam" and c.recipe.lr == 1e-3 and c.recipe.batch_size == 64
               for c in mnist.clients)
    cifar = SCENARIOS.create("combined-defenses", dataset="cifar10", data_root=str(SHARED_DATASETS)).build()
    assert sum(len(c.train) for c in cifar.clients) == 8000 and len(cifar.test) == 2000
    assert cifar.clients[0].train.x.shape[1:] == (3, 32, 32)
    model = cifar.scenario.model.build()
    assert model(cifar.clients[0].train.x[:2]).shape == (2, 10)
    # the 2,000-image hold-out and the clients' pool are disjoint
    pool = {tuple(x.flatten()[:64].tolist()) for x in cifar.test.x[:200]}
    assert not any(tuple(x.flatten()[:64].tolist()) in pool for x in cifar.clients[0].train.x)


def test_same_seed_same_federation() -> None:
    a = SCENARIOS.create("hospital", data_root=str(SHARED_DATASETS)).build()
    b = SCENARIOS.create("hospital", data_root=str(SHARED_DATASETS)).build()
    c = SCENARIOS.create("hospital", data_root=str(SHARED_DATASETS), seed=1).build()
    assert all(np.array_equal(x, y) for x, y in zip(a.train_indices, b.train_indices, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a.train_indices, c.train_indices, strict=True))
    assert torch.equal(a.client_images(3), load_dataset("pneumoniamnist", root=str(SHARED_DATASETS))
                       .tensors(a.train_indices[3])[0])
