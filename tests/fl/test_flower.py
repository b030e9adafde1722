"""A real Flower simulation (Ray backend) records into the UpdateStore and equals the in-process simulator."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is an optional extra: pip install 'gradleak[flower]'")

from gradleak.fl.federation import FedAvgSimulation
from gradleak.fl.flower import run_flower_simulation
from gradleak.fl.store import UpdateStore

from .test_federation import make_clients, tiny_bn_net


def _descendants() -> set[int]:
    psutil = pytest.importorskip("psutil")
    return {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}


def test_flower_run_equals_in_process_simulation(tmp_path) -> None:
    before = _descendants()
    clients, test = make_clients()
    store = UpdateStore(tmp_path / "flower")
    flower_final = run_flower_simulation(tiny_bn_net, clients, rounds=2, store=store, seed=11,
                                         num_cpus_per_client=1.0)
    local = FedAvgSimulation(tiny_bn_net, clients, rounds=2, seed=11, test=test).run()

    assert flower_final.round == 2
    for k, v in local.final.params.items():
        torch.testing.assert_close(flower_final.params[k], v, atol=1e-5, rtol=0)
    for k, v in local.final.buffers.items():
        torch.testing.assert_close(flower_final.buffers[k].to(v.dtype), v, atol=1e-5, rtol=0)

    model = tiny_bn_net()
    assert store.rounds() == [0, 1] and store.global_rounds() == [0, 1, 2]
    for r in range(2):
        ups = store.updates(round=r, model=model)
        assert [u.client for u in ups] == [0, 1, 2] and [u.num_examples for u in ups] == [4, 8, 12]
    # the recorded round-0 updates are the in-process clients' updates
    sim = FedAvgSimulation(tiny_bn_net, clients, rounds=2, seed=11)
    g0 = store.load_global(round=0, model=model)
    for client in clients:
        expected = sim.client_update(client, g0)
        got = store.load_update(round=0, client=client.id, model=model)
        for k, v in expected.delta.items():
            torch.testing.assert_close(got.delta[k], v, atol=1e-6, rtol=0)

    leftover = _descendants() - before
    assert not leftover, f"Flower/Ray left processes running: {sorted(leftover)}"
