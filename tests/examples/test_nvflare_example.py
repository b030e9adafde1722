"""examples/nvflare: the hospital job as NVFlare users write it (their own Net, a hello-pt training script with
the Client API, the FedAvg recipe), run offline in NVFlare's simulator with gradleak's recorder on the server and
the leakage gate on the one-image site. The store must hold what the server received, and match gradleak's own
simulator and in-process gate. Every process the run starts is ended by PID."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nvflare", reason="NVFlare is an optional extra: pip install 'gradleak[nvflare]'")
psutil = pytest.importorskip("psutil")

from gradleak.attacks import ATTACKS  # noqa: E402
from gradleak.fl import LocalData, LocalRecipe  # noqa: E402
from gradleak.fl.federation import FedAvgSimulation, FLClient  # noqa: E402
from gradleak.fl.store import UpdateStore  # noqa: E402
from gradleak.gate import LeakageGate  # noqa: E402
from gradleak.metrics import grade  # noqa: E402
from gradleak.models import ModelSpec  # noqa: E402
from gradleak.records import ServerView  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "nvflare"
DATA = str(files("gradleak.data").joinpath("sample", "pneumoniamnist_sample.npz"))
ROUNDS, GATE_ITERATIONS, NOISE_SEED = 2, 100, 7
GATE_ATTACK = "inverting-gradients"


def _ours(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline", "cwd", "status"]):
        try:
            text = " ".join(p.info["cmdline"] or []) + " " + (p.info["cwd"] or "")
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        if marker in text and p.info["status"] != psutil.STATUS_ZOMBIE and p.pid != os.getpid():
            out.append(p)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("nvflare")
    store, workspace, evidence = tmp / "store", tmp / "workspace", tmp / "gate"
    command = [sys.executable, "job.py", "--data", DATA, "--store", str(store), "--workspace", str(workspace),
               "--evidence", str(evidence), "--rounds", str(ROUNDS), "--gate-iterations", str(GATE_ITERATIONS),
               "--gate-attacks", GATE_ATTACK, "--gate-noise-seed", str(NOISE_SEED)]
    proc = subprocess.Popen(command, cwd=EXAMPLE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = set()
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        for p in _ours(str(workspace)):  # end what the simulator left, by PID
            started.add(p.pid)
            p.kill()
        if proc.poll() is None:
            proc.kill()
    psutil.wait_procs([psutil.Process(pid) for pid in started if psutil.pid_exists(pid)], timeout=10)
    sys.path.insert(0, str(EXAMPLE))
    os.environ["HOSPITAL_DATA"], os.environ["HOSPITAL_SIZES"] = DATA, "1,16,64"
    try:
        yield {"rc": proc.returncode, "out": out, "store": store, "evidence": evidence, "workspace": workspace,
               "left": sorted(started)}
    finally:
        sys.path.remove(str(EXAMPLE))
        for name in ("model", "data"):
            sys.modules.pop(name, None)


def test_the_job_runs_and_leaves_no_process(run: dict) -> None:
    assert run["rc"] == 0, run["out"][-4000:]
    assert not _ours(str(run["workspace"])), "an NVFlare process of the run is still running"


def test_every_update_and_global_is_recorded(run: dict) -> None:
    store = UpdateStore(run["store"], create=False)
    model = store.model_spec.build()
    assert store.model_spec.name == "model:Net" and store.check(model=model) == []
    assert store.global_rounds() == list(range(ROUNDS)) and store.rounds() == list(range(ROUNDS))
    info = store.server_info
    assert info["engine"] == "nvflare" and info["clients"] == {"site-1": 0, "site-2": 1, "site-3": 2}
    assert info["input"]["mean"] == [0.5] and info["recipe"]["optimizer"] == "sgd"
    for r in range(ROUNDS):
        assert store.clients(r) == [0, 1, 2]
        assert [u.num_examples for u in store.updates(r, model=model)] == [1, 16, 64]
    torch.manual_seed(0)
    from model import Net

    seeded = Net().state_dict()
    g0 = store.load_global(0, model=model).state_dict()
    assert all(torch.equal(seeded[k].to(g0[k].dtype), g0[k]) for k in g0)


def test_the_next_global_is_nvflares_weighted_average_of_the_recorded_updates(run: dict) -> None:
    """NVFlare's FedAvg weights by NUM_STEPS_CURRENT_ROUND (1, 2 and 8 local steps here), not by examples."""
    store = UpdateStore(run["store"], create=False)
    model = store.model_spec.build()
    g0, g1 = store.load_global(0, model=model), store.load_global(1, model=model)
    updates = store.updates(0, model=model)
    steps = np.array([1.0, 2.0, 8.0])
    for name, before in g0.params.items():
        expected = sum(w * (before + u.delta[name]).double() for w, u in zip(steps, updates, strict=True))
        assert torch.allclose(g1.params[name].double(), expected / steps.sum(), atol=1e-6), name


def _in_process(store: UpdateStore, round_: int):
    """The one-image site's update from gradleak's simulator (from the recorded global), through the same gate."""
    import data

    model = store.model_spec.build()
    state = store.load_global(round_, model=model)
    images, labels = data.site_images("site-1")
    recipe = LocalRecipe(optimizer="sgd", lr=0.01, batch_size=1, epochs=1)
    client = FLClient(id=0, train=LocalData((images - 0.5) / 0.5, labels), recipe=recipe)
    sim = FedAvgSimulation(ModelSpec("model:Net"), [client], rounds=ROUNDS)
    update = sim.client_update(client, state)
    gate = LeakageGate({GATE_ATTACK: {"iterations": GATE_ITERATIONS}}, ladder=(0.1, 0.3, 1.0, 3.0),
                       noise_seed=NOISE_SEED)
    decision = gate.check(model, state, update, images, labels, recipe=recipe, prior=data.prior(), mean=(0.5,),
                          std=(0.5,))
    return model, state, update, decision, images, labels, data.prior()


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_the_gate_in_nvflare_decides_as_the_in_process_gate(run: dict, round_: int) -> None:
    store = UpdateStore(run["store"], create=False)
    evidence = json.loads((run["evidence"] / "site-1" / f"round_{round_:05d}.json").read_text())
    _, _, _, decision, *_ = _in_process(store, round_)
    assert (evidence["action"], evidence["sigma0"]) == (decision.action, decision.sigma0)
    assert evidence["steps"][0]["leaks"] == 1, "the one-image site's update leaks without noise"
    ours = [s["attacks"][GATE_ATTACK]["rdlv"][0] for s in evidence["steps"]]
    theirs = [s.attacks[GATE_ATTACK]["rdlv"][0] for s in decision.steps]
    assert np.allclose(ours, theirs, atol=0.5), (ours, theirs)


def test_attacking_the_recorded_update_equals_attacking_gradleaks_own(run: dict) -> None:
    store = UpdateStore(run["store"], create=False)
    model, state, _, decision, images, labels, prior = _in_process(store, ROUNDS - 1)
    recorded = store.load_update(ROUNDS - 1, 0, model=model)
    assert decision.update is not None
    # the gate's noised update, as sent. The site sends full float32 weights (not differences): the recorded delta
    # (weights - global) is exact to about one float32 step of the weights, eps * |w| (~1e-8 here), no better
    worst = 0.0
    for k, ours in decision.update.delta.items():
        step = torch.finfo(torch.float32).eps * (state.params[k].abs().max() + ours.abs().max())
        assert (recorded.delta[k] - ours).abs().max() <= 2 * step, k
        worst = max(worst, float((recorded.delta[k] - ours).abs().max()))
    base = copy.deepcopy(model)
    base.load_state_dict(state.state_dict())
    recipe = LocalRecipe(optimizer="sgd", lr=0.01, batch_size=1, epochs=1)
    results = []
    for update in (recorded, decision.update):
        view = ServerView(model=lambda: copy.deepcopy(base), global_state=state, updates=(update,),
                          image_shape=(1, 28, 28), num_classes=2, mean=(0.5,), std=(0.5,), batch_size=1,
                          num_images=1, recipe=recipe, prior=prior)
        attack = ATTACKS.create(GATE_ATTACK, iterations=GATE_ITERATIONS)
        recon = attack(view, generator=torch.Generator().manual_seed(3))
        results.append((recon.images, grade(recon, images, labels, prior=prior)))
    # the updates differ by float32 rounding of the sent weights (~1e-8); 100 Adam iterations amplify that to
    # pixel differences of ~1e-2 at most (measured max 0.0075, mean ~1e-4): the same image, the same verdict
    diff = (results[0][0] - results[1][0]).abs()
    (_, ours), (_, theirs) = results
    print(f"\nrecorded vs gradleak update: max |diff| {worst:.2e}; reconstructions: max |diff| "
          f"{float(diff.max()):.4f}, mean {float(diff.mean()):.2e}; RDLV {ours['rdlv_mean']:+.2f} vs "
          f"{theirs['rdlv_mean']:+.2f}; SSIM {ours['ssim_mean']:.4f} vs {theirs['ssim_mean']:.4f}; "
          f"gate {decision.action} sigma0={decision.sigma0}")
    assert (results[0][0] - results[1][0]).abs().max() < 0.02
    assert (results[0][0] - results[1][0]).abs().mean() < 1e-3
    assert abs(results[0][1]["rdlv_mean"] - results[1][1]["rdlv_mean"]) < 0.5
    assert results[0][1]["leak"].tolist() == results[1][1]["leak"].tolist()
