"""The shared optimisation loop: vectorised equals looped, Adam and L-BFGS equal torch.optim's, best-iterate
tracking, schedules."""

from __future__ import annotations

import math

import pytest
import torch

from gradleak.attacks.optimize import OptimizerConfig, minimize


def logistic_problem(trials: int, dim: int = 6, seed: int = 0):
    """Per-trial convex objective: sum softplus(A x - b) + |x|^2 / 2 with its own A, b per trial."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(trials, 10, dim, generator=g, dtype=torch.float64)
    b = torch.randn(trials, 10, generator=g, dtype=torch.float64)

    def objective(v: dict) -> torch.Tensor:
        x = v["x"]
        z = torch.einsum("tnd,td->tn", a, x) - b
        return torch.nn.functional.softplus(z).sum(1) + 0.5 * x.pow(2).sum(1)

    def objective_of(t: int):
        def f(v: dict) -> torch.Tensor:
            z = torch.einsum("nd,td->tn", a[t], v["x"]) - b[t]
            return torch.nn.functional.softplus(z).sum(1) + 0.5 * v["x"].pow(2).sum(1)
        return f

    x0 = torch.randn(trials, dim, generator=g, dtype=torch.float64)
    return objective, objective_of, x0


@pytest.mark.parametrize("config", [
    OptimizerConfig(name="adam", lr=0.05, schedule="step"),
    OptimizerConfig(name="adam", lr=0.05, signed=True, schedule="cosine", warmup=3),
    OptimizerConfig(name="sgd", lr=0.1),
    OptimizerConfig(name="lbfgs", lr=1.0, history=5),
], ids=["adam-step", "signed-adam-cosine", "sgd", "lbfgs"])
def test_vectorised_trials_equal_looped_trials(config: OptimizerConfig) -> None:
    objective, objective_of, x0 = logistic_problem(trials=4)
    together = minimize(objective, {"x": x0}, iterations=25, optimizer=config, trace_every=5)
    for t in range(4):
        alone = minimize(objective_of(t), {"x": x0[t:t + 1]}, iterations=25, optimizer=config, trace_every=5)
        # float64; batched and single reductions may round differently (L-BFGS: ~1e-8 after 25 steps)
        torch.testing.assert_close(together.variables["x"][t], alone.variables["x"][0], atol=1e-7, rtol=0)
        torch.testing.assert_close(together.trace[:, t], alone.trace[:, 0], atol=1e-7, rtol=0)
    assert together.trace.shape == (5, 4) and together.trace_iterations.tolist() == [0, 5, 10, 15, 20]


def test_lbfgs_equals_torch_lbfgs() -> None:
    _, objective_of, x0 = logistic_problem(trials=1, seed=3)
    f = objective_of(0)
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=12, max_eval=1000, tolerance_grad=0.0, tolerance_change=0.0,
                            history_size=100)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = f({"x": x}).sum()
        loss.backward()
        return loss

    opt.step(closure)
    ours = minimize(f, {"x": x0}, iterations=12, optimizer=OptimizerConfig(name="lbfgs", lr=1.0))
    # ours returns the best iterate; L-BFGS on this convex problem decreases monotonically, so it is the last
    torch.testing.assert_close(ours.variables["x"], x.detach(), atol=1e-9, rtol=0)


def test_adam_equals_torch_adam() -> None:
    _, objective_of, x0 = logistic_problem(trials=1, seed=4)
    f = objective_of(0)
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.01, foreach=False)
    iterates = []
    for _ in range(25):
        opt.zero_grad()
        f({"x": x}).sum().backward()
        opt.step()
        iterates.append(x.detach().clone())
    # the objective decreases along these steps; minimize scores the iterate after its last step too, so its best
    # iterate is the 25th
    ours = minimize(f, {"x": x0}, iterations=25, optimizer=OptimizerConfig(name="adam", lr=0.01))
    torch.testing.assert_close(ours.variables["x"], iterates[-1], atol=1e-12, rtol=0)


def test_converges_and_keeps_the_best_iterate() -> None:
    target = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    out = minimize(lambda v: (v["x"] - target).pow(2).sum(1), {"x": torch.zeros(2, 2)}, iterations=300,
                   optimizer=OptimizerConfig(name="adam", lr=0.1, schedule="cosine"))
    torch.testing.assert_close(out.variables["x"], target, atol=1e-3, rtol=0)
    # plain SGD with a step that makes the iterates diverge: the best iterate is the start
    out = minimize(lambda v: v["x"].pow(2).sum(1), {"x": torch.ones(1, 3)}, iterations=20,
                   optimizer=OptimizerConfig(name="sgd", lr=5.0))
    assert torch.equal(out.variables["x"], torch.ones(1, 3)) and float(out.objective[0]) == 3.0
    assert bool(torch.isfinite(out.objective).all())


def test_projection_and_early_stop() -> None:
    out = minimize(lambda v: (v["x"] - 5).pow(2).sum(1), {"x": torch.zeros(3, 2)}, iterations=200,
                   optimizer=OptimizerConfig(lr=0.5), project=lambda v: {"x": v["x"].clamp(-1, 1)})
    assert torch.equal(out.variables["x"], torch.ones(3, 2))
    out = minimize(lambda v: v["x"].pow(2).sum(1), {"x": torch.ones(2, 2)}, iterations=5000,
                   optimizer=OptimizerConfig(name="sgd", lr=0.25), tolerance=1e-6, check_every=10)
    assert out.iterations == 20


def test_schedules() -> None:
    step = OptimizerConfig(lr=1.0, schedule="step")
    assert [step.lr_at(i, 80) for i in (0, 29, 30, 50, 70)] == pytest.approx([1, 1, 0.1, 0.01, 0.001])
    cos = OptimizerConfig(lr=1.0, schedule="cosine", warmup=10)
    assert cos.lr_at(0, 110) == pytest.approx(0.1) and cos.lr_at(9, 110) == pytest.approx(1.0)
    assert cos.lr_at(60, 110) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    with pytest.raises(ValueError, match="optimizer"):
        OptimizerConfig(name="rmsprop")  # type: ignore[arg-type]


def test_report_progress_sees_every_check_and_the_end() -> None:
    from gradleak.attacks.optimize import report_progress

    seen = []
    target = torch.tensor([[1.0, -2.0]])
    with report_progress(lambda done, total, best: seen.append((done, total, float(best.min())))):
        minimize(lambda v: (v["x"] - target).pow(2).sum(1), {"x": torch.zeros(1, 2)}, iterations=250,
                 check_every=100, optimizer=OptimizerConfig(lr=0.1))
    assert [(d, t) for d, t, _ in seen] == [(100, 250), (200, 250), (250, 250)]
    assert seen[-1][2] <= seen[0][2] < 5.0  # the best objective only improves
    out = minimize(lambda v: (v["x"] - target).pow(2).sum(1), {"x": torch.zeros(1, 2)}, iterations=10)
    assert len(seen) == 3 and out.iterations == 10  # outside the block nothing is reported


def test_plateau_schedule_and_patience_are_per_trial() -> None:
    """Scheliga et al.'s schedule (lr x0.1 after a plateau) and stopping rule (no new best for ``patience``
    iterations) act per trial: trials run together equal trials run alone, stopped ones included."""
    objective, objective_of, x0 = logistic_problem(trials=3)
    config = OptimizerConfig(name="adam", lr=0.5, signed=True, schedule="plateau", plateau=5)
    together = minimize(objective, {"x": x0}, iterations=200, optimizer=config, patience=15, check_every=10)
    ran = together.trial_iterations
    assert ran is not None and (ran < 200).all() and together.iterations < 200  # every trial stopped early
    for t in range(3):
        alone = minimize(objective_of(t), {"x": x0[t:t + 1]}, iterations=200, optimizer=config, patience=15,
                         check_every=10)
        torch.testing.assert_close(together.variables["x"][t], alone.variables["x"][0], atol=1e-7, rtol=0)
        assert alone.trial_iterations.tolist() == [int(ran[t])]


def test_plateau_schedule_settles_where_a_constant_step_oscillates() -> None:
    """Signed steps of a fixed size cannot settle closer to the optimum than the step; cutting the step on each
    plateau can (the point of the schedule)."""
    def objective(v: dict) -> torch.Tensor:
        return (v["x"] - 0.0437).abs().sum(1)

    start = {"x": torch.zeros(1, 1)}
    constant = minimize(objective, start, iterations=300, optimizer=OptimizerConfig(name="sgd", lr=0.1, signed=True))
    plateau = minimize(objective, start, iterations=300,
                       optimizer=OptimizerConfig(name="sgd", lr=0.1, signed=True, schedule="plateau", plateau=3))
    assert float(constant.objective[0]) > 0.04
    assert float(plateau.objective[0]) < 1e-4


def test_stopping_never_loses_the_best_point() -> None:
    """A stopped trial keeps its best iterate: patience only ends the search, as if the run had been that short."""
    objective, objective_of, x0 = logistic_problem(trials=2)
    config = OptimizerConfig(name="adam", lr=0.05)
    stopped = minimize(objective, {"x": x0}, iterations=300, optimizer=config, patience=1)
    ran = stopped.trial_iterations
    assert ran is not None and (ran < 300).all()
    for t in range(2):
        short = minimize(objective_of(t), {"x": x0[t:t + 1]}, iterations=int(ran[t]), optimizer=config)
        torch.testing.assert_close(stopped.objective[t], short.objective[0], rtol=1e-6, atol=0)
        torch.testing.assert_close(stopped.variables["x"][t], short.variables["x"][0], rtol=0, atol=1e-7)


def test_plateau_options_are_validated() -> None:
    with pytest.raises(ValueError, match="plateau"):
        OptimizerConfig(schedule="plateau", plateau=0)
    with pytest.raises(ValueError, match="patience"):
        minimize(lambda v: v["x"].sum(1), {"x": torch.zeros(1, 1)}, iterations=1, patience=0)


def test_the_attack_passes_the_paper_schedule_through() -> None:
    """``InvertingGradients(schedule="plateau", patience=...)`` runs the schedule and reports each victim's own
    iterations (stopped early here: Adam from lr 1 stalls quickly on one image)."""
    from gradleak.attacks import InvertingGradients
    from gradleak.audit import simulate_and_attack
    from gradleak.data import load_dataset
    from gradleak.models import create_model

    ds = load_dataset("sample-mnist", split="test")
    x, y = ds.tensors([0, 1], size=32)
    torch.manual_seed(0)
    attack = InvertingGradients(iterations=400, schedule="plateau", plateau=10, patience=20, signed=False, lr=1.0,
                                compile=False)
    result = simulate_and_attack(create_model("cnn", in_channels=1), x, y, recipe="fedsgd", attack=attack,
                                 victims="each", mean=ds.mean, std=ds.std)
    ran = [r.iterations for r in result.reconstructions]
    assert all(0 < n < 400 for n in ran), ran
