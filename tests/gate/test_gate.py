"""The leakage gate (gradleak.gate): it attacks the update as the server sees it, grades with the one grading
function, and passes, noises until nothing leaks, or blocks — with its evidence."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from gradleak.attacks import ATTACKS
from gradleak.defenses import LocalGaussian
from gradleak.errors import GradleakError
from gradleak.gate import LeakageGate
from gradleak.metrics import grade
from gradleak.records import ServerView

from .conftest import check, client_case

FAST = {"fedavg-inversion": {"iterations": 120}}
ONE, MANY = 8, 1  # the one-image client and a 16-image one


@pytest.fixture(scope="module")
def escalated(hospital):
    """The one-image client's check with escalation (computed once for the tests that read it)."""
    return check(LeakageGate(FAST, restarts=2, ladder=(0.1, 1.0, 3.0), noise_seed=3), hospital, ONE)


def test_the_one_image_update_leaks_and_the_gate_escalates_until_it_does_not(escalated, tmp_path) -> None:
    decision, update = escalated
    first = decision.steps[0]
    assert first.sigma0 is None and first.leaks == 1
    assert first.attacks["fedavg-inversion"]["rdlv"][0] > 0 and first.attacks["fedavg-inversion"]["ssim"][0] > 0.5
    assert decision.action == "escalate" and decision.steps[-1].leaks == 0
    assert decision.sigma0 == decision.steps[-1].sigma0 and all(s.leaks for s in decision.steps[:-1])
    # the update sent is the one attacked last: local Gaussian noise at that sigma0, from the noise seed
    expected = update
    gen = torch.Generator().manual_seed(3)
    for sigma0 in (s.sigma0 for s in decision.steps[1:]):
        expected = LocalGaussian(sigma0=sigma0)(update, gen)
    for k, v in expected.delta.items():
        assert torch.equal(decision.update.delta[k], v), k
    assert all(torch.equal(decision.update.buffers[k], v) for k, v in update.buffers.items())
    # the evidence: JSON with the budget of every step, and the reconstructions
    path = decision.save(tmp_path, name="round_1")
    saved = json.loads(path.read_text())
    assert saved["action"] == "escalate" and saved["config"]["restarts"] == 2
    assert [s["sigma0"] for s in saved["steps"]] == [s.sigma0 for s in decision.steps]
    assert saved["steps"][0]["attacks"]["fedavg-inversion"]["iterations"] == 120
    assert (tmp_path / "round_1.npz").is_file()


def test_an_independent_attack_on_the_escalated_update_finds_no_leak(hospital, escalated) -> None:
    decision, _ = escalated
    model, state, _, images, labels, recipe = client_case(hospital, ONE)
    base = copy.deepcopy(model)
    base.load_state_dict(state.state_dict())
    view = ServerView(model=lambda: copy.deepcopy(base), global_state=state, updates=(decision.update,),
                      image_shape=tuple(images.shape[1:]), num_classes=2, mean=hospital["mean"], std=hospital["std"],
                      batch_size=1, num_images=1, recipe=recipe, prior=hospital["prior"],
                      defenses=(LocalGaussian(sigma0=decision.sigma0),))
    for seed in (21, 22):
        recon = ATTACKS.create("fedavg-inversion", iterations=120)(view, generator=torch.Generator().manual_seed(seed))
        g = grade(recon, images, labels, prior=hospital["prior"])
        assert g["n_leaks"] == 0 and float(g["rdlv"].max()) <= 0


def test_block_on_leak_and_when_the_ladder_or_the_time_runs_out(hospital) -> None:
    blocked, _ = check(LeakageGate(FAST, on_leak="block", restarts=1), hospital, ONE)
    assert blocked.action == "block" and blocked.update is None and len(blocked.steps) == 1
    assert "on_leak='block'" in blocked.reason and "120 iterations" in blocked.reason
    short, _ = check(LeakageGate(FAST, ladder=(0.01,), restarts=1, noise_seed=0), hospital, ONE)
    assert short.action == "block" and "top of the ladder" in short.reason and len(short.steps) == 2
    timed, _ = check(LeakageGate(FAST, restarts=1, max_seconds=1e-3, noise_seed=0), hospital, ONE)
    assert timed.action == "block" and "wall-time budget" in timed.reason and len(timed.steps) == 1


def test_a_pass_sends_the_update_unchanged_and_states_the_budget(hospital) -> None:
    """Sixteen X-rays in four local steps of four, at a small budget: nothing recognisable beyond the prior."""
    decision, update = check(LeakageGate({"fedavg-inversion": {"iterations": 30}}, restarts=1), hospital, MANY)
    assert decision.action == "pass" and decision.sigma0 is None and len(decision.steps) == 1
    assert decision.update is update
    assert "fedavg-inversion (30 iterations × 1 restart(s))" in decision.reason
    assert len(decision.steps[0].attacks["fedavg-inversion"]["rdlv"]) == 16


def test_several_attacks_an_image_leaks_if_any_recovers_it(hospital) -> None:
    gate = LeakageGate({"fedavg-inversion": {"iterations": 120}, "inverting-gradients": {"iterations": 5}},
                       restarts=1, on_leak="block")
    decision, _ = check(gate, hospital, ONE)
    attacks = decision.steps[0].attacks
    assert set(attacks) == {"fedavg-inversion", "inverting-gradients"}
    assert attacks["fedavg-inversion"]["leak"] == [True] and attacks["inverting-gradients"]["leak"] == [False]
    assert decision.action == "block"


def test_bad_settings_fail_with_one_clear_line(hospital) -> None:
    with pytest.raises(GradleakError, match="increasing"):
        LeakageGate(FAST, ladder=(1.0, 0.3))
    with pytest.raises(GradleakError, match="malicious-server"):
        LeakageGate("imprint")
    with pytest.raises(GradleakError, match="on_leak"):
        LeakageGate(FAST, on_leak="drop")  # type: ignore[arg-type]
    with pytest.raises(Exception, match="Valid attacks"):
        LeakageGate("fedavg-inversoin")
    model, state, update, images, labels, recipe = client_case(hospital, MANY)
    with pytest.raises(GradleakError, match="16 examples but 1 images"):
        LeakageGate(FAST).check(model, state, update, images[:1], labels[:1], recipe=recipe, prior=hospital["prior"])
