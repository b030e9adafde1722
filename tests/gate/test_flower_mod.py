"""The leakage gate as a Flower mod: in a Flower simulation (Ray backend) it decides as the in-process gate does,
and the server receives exactly the update the gate let out (or nothing, when it blocks)."""

from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is an optional extra: pip install 'gradleak[flower]'")

from gradleak.fl.flower import run_flower_simulation
from gradleak.fl.flower_mods import LeakageGateMod
from gradleak.fl.store import UpdateStore
from gradleak.gate import LeakageGate

ATTACK = {"fedavg-inversion": {"iterations": 120}}


def _descendants() -> set[int]:
    psutil = pytest.importorskip("psutil")
    return {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}


def test_the_flower_mod_decides_as_the_in_process_gate(hospital, tmp_path) -> None:
    before = _descendants()
    fed, sim = hospital["fed"], hospital["sim"]
    clients = [fed.clients[8], fed.clients[1]]  # partition 0: the one-image client; 1: sixteen images
    images = [fed.client_images(c.id) for c in clients]

    def gate() -> LeakageGate:
        return LeakageGate(ATTACK, restarts=1, ladder=(0.3, 3.0), noise_seed=5)

    mod = LeakageGateMod(
        gate(), model=sim.model, prior=hospital["prior"], mean=hospital["mean"], std=hospital["std"],
        data=lambda ctx: (images[int(ctx.node_config["partition-id"])],
                          clients[int(ctx.node_config["partition-id"])].train.y),
        recipe=lambda msg, ctx: clients[int(ctx.node_config["partition-id"])].recipe,
        evidence_dir=tmp_path / "evidence")
    store = UpdateStore(tmp_path / "store")
    state = hospital["state"].__class__(round=0, params=hospital["state"].params, buffers=hospital["state"].buffers)
    run_flower_simulation(sim.model_spec, clients, rounds=1, store=store, seed=sim.seed, mods=[mod], initial=state)

    initial = store.load_global(0, model=sim.model)
    for pid, client in enumerate(clients):
        update = sim.client_update(client, initial)
        expected = gate().check(sim.model, initial, update, images[pid], client.train.y, recipe=client.recipe,
                                prior=hospital["prior"], mean=hospital["mean"], std=hospital["std"])
        seen = json.loads((tmp_path / "evidence" / f"partition_{pid}" / "round_00000.json").read_text())
        assert (seen["action"], seen["sigma0"]) == (expected.action, expected.sigma0)
        assert [s["leaks"] for s in seen["steps"]] == [s.leaks for s in expected.steps]
        if expected.action == "block":
            assert not store.has_update(0, client.id)
            continue
        got = store.load_update(0, client.id, model=sim.model)
        for k, v in expected.update.delta.items():
            torch.testing.assert_close(got.delta[k], v, atol=1e-6, rtol=0)
    # the one-image client leaked without noise; its update left noised or not at all
    one = json.loads((tmp_path / "evidence" / "partition_0" / "round_00000.json").read_text())
    assert one["steps"][0]["leaks"] == 1 and one["action"] in ("escalate", "block")
    leftover = _descendants() - before
    assert not leftover, f"Flower/Ray left processes running: {sorted(leftover)}"
