"""FedAvg aggregation against a weighted numpy average; the simulator's recording and exact resumption."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gradleak.fl import LocalData, LocalRecipe
from gradleak.fl.aggregation import fedavg
from gradleak.fl.federation import FedAvgSimulation, FederationHook, FLClient
from gradleak.fl.recorder import Recorder
from gradleak.fl.store import UpdateStore
from gradleak.records import ClientUpdate, GlobalState


def tiny_bn_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 2))


def make_clients(sizes=(4, 8, 12), seed: int = 0) -> tuple[list[FLClient], LocalData]:
    g = torch.Generator().manual_seed(seed)
    # two separable classes: class 1 images are brighter
    def draw(n: int) -> LocalData:
        y = torch.arange(n) % 2
        x = torch.randn(n, 1, 8, 8, generator=g) * 0.5 + y.view(-1, 1, 1, 1).float()
        return LocalData(x, y)
    clients = [FLClient(i, draw(n), LocalRecipe(lr=0.1, batch_size=4), val=draw(6)) for i, n in enumerate(sizes)]
    return clients, draw(20)


def test_fedavg_equals_weighted_numpy_average() -> None:
    torch.manual_seed(0)
    model = tiny_bn_net()
    g = GlobalState(round=0, params={k: v.detach().clone() for k, v in model.named_parameters()},
                    buffers={k: v.detach().clone() for k, v in model.named_buffers()})
    weights = [3, 17, 80]
    ups = []
    for i, n in enumerate(weights):
        delta = {k: torch.randn_like(v) for k, v in g.params.items()}
        bufs = {k: (torch.rand_like(v) if v.is_floating_point() else v + i + 1) for k, v in g.buffers.items()}
        ups.append(ClientUpdate(client=i, round=0, delta=delta, buffers=bufs, num_examples=n))
    new = fedavg(g, ups)
    w = np.array(weights, dtype=np.float64) / sum(weights)
    for k, v in g.params.items():
        expected = v.numpy().astype(np.float64) + sum(wi * u.delta[k].numpy() for wi, u in zip(w, ups, strict=True))
        np.testing.assert_allclose(new.params[k].numpy(), expected, rtol=1e-6, atol=1e-7)
    for k, v in g.buffers.items():
        expected = sum(wi * u.buffers[k].numpy().astype(np.float64) for wi, u in zip(w, ups, strict=True))
        if v.is_floating_point():
            np.testing.assert_allclose(new.buffers[k].numpy(), expected, rtol=1e-6)
        else:  # num_batches_tracked: weighted average, rounded, dtype kept
            assert new.buffers[k].dtype == v.dtype and int(new.buffers[k]) == round(float(expected))
    assert new.round == 1


def test_fedavg_withheld_tensors_average_over_senders() -> None:
    g = GlobalState(round=0, params={"a": torch.zeros(2), "b": torch.ones(2)}, buffers={"m": torch.zeros(1)})
    u1 = ClientUpdate(0, 0, delta={"a": torch.ones(2)}, buffers={}, num_examples=1)
    u2 = ClientUpdate(1, 0, delta={"a": 3 * torch.ones(2)}, buffers={"m": torch.ones(1)}, num_examples=3)
    new = fedavg(g, [u1, u2])
    assert torch.equal(new.params["a"], torch.full((2,), 2.5))
    assert torch.equal(new.params["b"], torch.ones(2))  # nobody sent it: unchanged
    assert torch.equal(new.buffers["m"], torch.ones(1))  # only client 1 sent buffers


class _Kill(FederationHook):
    """Simulates the process dying after a given round has been recorded."""

    def __init__(self, after: int) -> None:
        self.after = after

    def on_round_end(self, round, state, metrics) -> None:
        if round == self.after:
            raise KeyboardInterrupt


def test_records_every_update_and_resumes_exactly(tmp_path) -> None:
    clients, test = make_clients()
    sim = FedAvgSimulation(tiny_bn_net, clients, rounds=4, seed=7, test=test)
    full = sim.run(hooks=[Recorder(UpdateStore(tmp_path / "full"))])

    store = UpdateStore(tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        FedAvgSimulation(tiny_bn_net, clients, rounds=4, seed=7, test=test).run(
            hooks=[Recorder(store), _Kill(after=1)])  # dies after round 2 of 4 (rounds 0 and 1 done)
    assert store.global_rounds() == [0, 1, 2]
    resumed = FedAvgSimulation(tiny_bn_net, clients, rounds=4, seed=7, test=test).run(
        hooks=[Recorder(store)], resume_from=store)

    for k, v in full.final.params.items():
        assert torch.equal(resumed.final.params[k], v)
    for k, v in full.final.buffers.items():
        assert torch.equal(resumed.final.buffers[k], v)
    assert [m.to_json() for m in resumed.history] == [m.to_json() for m in full.history]
    assert resumed.best_round == full.best_round
    for k, v in full.best.params.items():
        assert torch.equal(resumed.best.params[k], v)

    model = tiny_bn_net()
    for s in (UpdateStore(tmp_path / "full"), store):
        assert s.rounds() == [0, 1, 2, 3] and s.global_rounds() == [0, 1, 2, 3, 4]
        for r in range(4):
            ups = s.updates(round=r, model=model)
            assert [u.client for u in ups] == [0, 1, 2]
            assert [u.num_examples for u in ups] == [4, 8, 12]
            assert all(u.metadata["local_steps"] == n // 4 for u, n in zip(ups, (4, 8, 12), strict=True))
        # the recorded global of round r+1 is FedAvg of round r's recorded updates on global r
        g1 = fedavg(s.load_global(round=1, model=model), s.updates(round=1, model=model))
        g2 = s.load_global(round=2, model=model)
        for k in g2.params:
            torch.testing.assert_close(g1.params[k], g2.params[k], rtol=0, atol=0)


def test_training_improves_accuracy_and_sampling_is_seeded() -> None:
    clients, test = make_clients(sizes=(16, 16, 16, 16))
    sim = FedAvgSimulation(tiny_bn_net, clients, rounds=3, seed=1, test=test, fraction=0.5)
    result = sim.run()
    assert all(len(m.clients) == 2 for m in result.history)
    assert [sim.sample_clients(r) for r in range(3)] == [sim.sample_clients(r) for r in range(3)]
    assert result.history[-1].test_accuracy > 0.8  # separable toy task, chance is 0.5


def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path) -> None:
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    store_dir = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-m", "tests.fl._killed_run", str(store_dir), "1",
                           str(torch.get_num_threads())], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = UpdateStore(store_dir)
    assert store.global_rounds() == [0, 1, 2]  # killed after round 2 of 4
    clients, test = make_clients()
    resumed = FedAvgSimulation(tiny_bn_net, clients, rounds=4, seed=7, test=test).run(
        hooks=[Recorder(store)], resume_from=store)
    full = FedAvgSimulation(tiny_bn_net, clients, rounds=4, seed=7, test=test).run()
    for k, v in full.final.params.items():
        assert torch.equal(resumed.final.params[k], v)
    assert store.global_rounds() == [0, 1, 2, 3, 4] and store.rounds() == [0, 1, 2, 3]
