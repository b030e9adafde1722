"""``compile=True``: the compiled iteration computes what the eager one does (to float rounding)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time

import pytest
import torch

from gradleak.attacks import CDIA, VBIA, InvertingGradients, compiling
from gradleak.attacks.base import AttackError
from gradleak.attacks.replay import split_generators
from gradleak.audit import simulate_and_attack
from gradleak.fl import LocalRecipe
from gradleak.models import create_model

from ._helpers import client_view, mnist, tiny_bn_net

needs_compiler = pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                                    reason="torch.compile (Inductor) needs a C++ compiler on a CPU")


def _same_iteration(attack, views, seed: int = 1) -> None:
    """Value and gradient of the eager and the compiled problem at the same starting point."""
    eager = attack.problem(views)
    compiled = dataclasses.replace(attack, compile=True).problem(views)
    start = eager.initial(split_generators(torch.Generator().manual_seed(seed), len(views)))
    loss_e, grads_e = eager.value_and_grad(start)
    loss_c, grads_c = compiled.value_and_grad(start)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    assert set(grads_c) == set(grads_e)
    for k, g in grads_e.items():
        scale = float(g.abs().max())
        assert scale > 0, k  # a zero gradient would make the comparison vacuous
        torch.testing.assert_close(grads_c[k], g, rtol=0, atol=1e-4 * scale)


@needs_compiler
def test_compiled_attack_follows_the_eager_one() -> None:
    x, y, mean, std = mnist(1)
    torch.manual_seed(0)
    model = create_model("cnn", in_channels=1)
    view = client_view(model, x, y, LocalRecipe(lr=0.01, steps=1, batch_size=1, shuffle=False), mean=mean, std=std)
    attack = InvertingGradients(iterations=20, signed=False, tv=1e-3)
    _same_iteration(attack, [view])
    eager = attack(view, generator=torch.Generator().manual_seed(3))
    compiled = dataclasses.replace(attack, compile=True)(view, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(compiled.images, eager.images, rtol=0, atol=1e-4)
    assert compiled.loss_trace[-1] < 0.7 * compiled.loss_trace[0]  # it optimises (0.73 -> 0.39)


@needs_compiler
def test_compiled_audit_of_rgb_victims_follows_the_eager_one() -> None:
    """Single-image RGB victims attacked together (the audit's shape; vmap over victims, the first layer unfolded
    by phase) and one victim of two images (F.unfold), compiled and eager."""
    torch.manual_seed(0)
    model = create_model("cnn", in_channels=3)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 4, 7])
    views = simulate_and_attack(model, x, y, recipe="fedsgd", attack="inverting-gradients",
                                attack_options={"iterations": 0}, victims="each", mean=(0.5,) * 3, std=(0.25,) * 3,
                                generator=torch.Generator().manual_seed(5)).views
    assert len(views) == 3 and all(v.num_images == 1 for v in views)
    _same_iteration(InvertingGradients(tv=1e-2), list(views))
    pair = client_view(model, x[:2], y[:2], LocalRecipe(lr=0.01, steps=1, batch_size=2, shuffle=False),
                       mean=(0.5,) * 3, std=(0.25,) * 3)
    _same_iteration(InvertingGradients(tv=1e-2), [pair])
    # 'same' convolutions after the first (padded layers gathered channels-last): LeNet, and the cnn with CVB
    # (attacked by vbia, whose ε is a variable: inverting-gradients would draw one, differently when compiled)
    for net, defenses, attack in ((create_model("lenet"), [], InvertingGradients(tv=1e-2)),
                                  (model, ["cvb"], VBIA(tv=1e-2))):
        views = simulate_and_attack(net, x, y, recipe="fedsgd", attack="inverting-gradients", defenses=defenses,
                                    attack_options={"iterations": 0}, victims="each", mean=(0.5,) * 3,
                                    std=(0.25,) * 3, generator=torch.Generator().manual_seed(5)).views
        _same_iteration(attack, list(views))


@needs_compiler
def test_compiled_batchnorm_replay_with_restarts_and_local_steps() -> None:
    x, y, _, _ = mnist(4)
    x, y = torch.nn.functional.avg_pool2d(x, 2), y % 4  # 16×16, the tiny net's 4 classes
    model = tiny_bn_net()
    recipe = LocalRecipe(lr=0.05, steps=2, batch_size=2, shuffle=False)
    view = client_view(model, x, y, recipe, num_classes=4, labels=True)
    _same_iteration(InvertingGradients(restarts=2, labels="known", bn_buffers=1e-2, tv=1e-3), [view])


@needs_compiler
def test_compiled_targeted_attack_with_optimised_noise_and_victims() -> None:
    torch.manual_seed(0)
    model = create_model("cnn", in_channels=1)
    x, y, mean, std = mnist(2)
    views = simulate_and_attack(model, x, y, recipe="fedsgd", attack="inverting-gradients",
                                attack_options={"iterations": 0}, defenses=["prune", "cvb"], victims="each",
                                mean=mean, std=std, generator=torch.Generator().manual_seed(5)).views
    _same_iteration(CDIA(restarts=2, tv=1e-3), list(views))


def test_compile_without_a_cpp_compiler_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y, mean, std = mnist(1)
    torch.manual_seed(0)
    view = client_view(create_model("cnn", in_channels=1), x, y, LocalRecipe(lr=0.01, steps=1, batch_size=1),
                       mean=mean, std=std)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(AttackError, match="C\\+\\+ compiler"):
        InvertingGradients(iterations=1, compile=True).problem([view])


def test_a_failing_compilation_falls_back_to_the_eager_iteration(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y, mean, std = mnist(1)
    torch.manual_seed(0)
    view = client_view(create_model("cnn", in_channels=1), x, y, LocalRecipe(lr=0.01, steps=1, batch_size=1),
                       mean=mean, std=std)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/g++")

    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no backend here")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    attack = InvertingGradients(iterations=5, signed=False)
    eager = attack(view, generator=torch.Generator().manual_seed(3))
    with pytest.warns(RuntimeWarning, match="no backend here"):
        fallen = dataclasses.replace(attack, compile=True)(view, generator=torch.Generator().manual_seed(3))
    # the fallback is the torch.func route of the same iteration: the same images to rounding
    torch.testing.assert_close(fallen.images, eager.images, rtol=0, atol=1e-5)


# -- compile="auto" (the default) ------------------------------------------------------------------------------

def _one_view():
    x, y, mean, std = mnist(1)
    torch.manual_seed(0)
    return client_view(create_model("cnn", in_channels=1), x, y, LocalRecipe(lr=0.01, steps=1, batch_size=1),
                       mean=mean, std=std)


def test_auto_keeps_a_short_attack_eager_and_says_so() -> None:
    recon = InvertingGradients(iterations=compiling.MIN_ITERATIONS - 1)(_one_view())
    execution = recon.config["execution"]
    assert execution["iteration"] == "eager" and "too short" in execution["reason"]
    assert recon.config["compile"] == "auto"


def test_auto_without_a_compiler_warns_once_and_runs_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compiling, "_WARNED", set())
    view = _one_view()
    attack = InvertingGradients(iterations=3)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler") as caught:
        first = attack(view)
        attack(view)
    assert len([w for w in caught if "C++" in str(w.message)]) == 1
    assert first.config["execution"]["iteration"] == "eager"
    assert "no compiler" in first.config["execution"]["reason"]


def _fake_compile(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """torch.compile replaced by the traced function itself: the decision is tested without compiling."""
    compiled: list[int] = []

    def fake(fn, **kwargs):
        compiled.append(1)
        return fn
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/g++")
    monkeypatch.setattr(torch, "compile", fake)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR", "/nonexistent"))
    return compiled


def test_auto_compiles_when_the_probe_says_it_repays(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    compiled = _fake_compile(monkeypatch)
    monkeypatch.setenv("GRADLEAK_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compiling, "_COMPILED", set())
    monkeypatch.setattr(compiling, "_SLOWER", set())
    # the fake compilation is no faster than eager: keep it (going back to eager is tested below)
    monkeypatch.setattr(compiling.AdaptiveIteration, "_recheck", lambda self, seconds: None)
    view = _one_view()
    attack = InvertingGradients(iterations=compiling.MIN_ITERATIONS, signed=False)
    # a first compilation that costs nothing is always worth it: the switch comes after the probe
    monkeypatch.setattr(compiling, "COLD_SECONDS", 0.0)
    recon = attack(view, generator=torch.Generator().manual_seed(3))
    execution = recon.config["execution"]
    assert compiled and execution["iteration"] == "compiled"
    assert execution["switched_at"] == compiling.PROBE + 1 and execution["compile_seconds"] >= 0
    # the measured cost is recorded on disk per problem; the same problem later in this process costs nothing
    record = json.loads(compiling.compile_record().read_text())
    assert len(record) == 1 and next(iter(record.values())) >= 0
    monkeypatch.setattr(compiling, "COLD_SECONDS", 1e9)
    again = attack(view, generator=torch.Generator().manual_seed(3))
    assert "earlier in this process" in again.config["execution"]["reason"]
    assert again.config["execution"]["switched_at"] == 0 and again.config["execution"]["compile_seconds"] == 0
    assert json.loads(compiling.compile_record().read_text()) == record  # a reuse is no compilation to record
    eager = dataclasses.replace(attack, compile=False)(view, generator=torch.Generator().manual_seed(3))
    assert eager.config["execution"]["iteration"] == "eager"
    torch.testing.assert_close(recon.images, eager.images, rtol=0, atol=1e-5)  # the torch.func route, to rounding


def test_auto_goes_back_to_eager_when_the_compiled_iteration_is_slower(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path) -> None:
    """A compiled iteration measured slower than the eager probe: the rest of the run, and later runs of the same
    problem in this process, are eager, and the record says so."""
    calls: list[int] = []

    def slow(fn, **kwargs):
        def call(values):
            calls.append(1)
            time.sleep(0.05)  # far slower than an eager iteration of the small cnn (a few ms)
            return fn(values)
        return call
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/g++")
    monkeypatch.setattr(torch, "compile", slow)
    monkeypatch.setenv("GRADLEAK_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compiling, "_COMPILED", set())
    monkeypatch.setattr(compiling, "_SLOWER", set())
    monkeypatch.setattr(compiling, "COLD_SECONDS", 0.0)
    view = _one_view()
    attack = InvertingGradients(iterations=compiling.MIN_ITERATIONS, signed=False)
    recon = attack(view, generator=torch.Generator().manual_seed(3))
    execution = recon.config["execution"]
    # the compiling call, then PROBE timed compiled calls, then eager
    assert len(calls) == 1 + compiling.PROBE and execution["iteration"] == "eager"
    assert execution["switched_back_at"] == execution["switched_at"] + 1 + compiling.PROBE  # compiling call, probe
    assert execution["compiled_seconds_per_iteration"] >= 0.05 > execution["eager_seconds_per_iteration"]
    assert "back to eager" in execution["reason"] and recon.iterations == compiling.MIN_ITERATIONS
    again = attack(view, generator=torch.Generator().manual_seed(3))
    assert len(calls) == 1 + compiling.PROBE and "measured slower" in again.config["execution"]["reason"]
    eager = dataclasses.replace(attack, compile=False)(view, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(recon.images, eager.images, rtol=0, atol=1e-5)


def test_auto_stays_eager_when_compiling_would_not_repay(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    compiled = _fake_compile(monkeypatch)
    monkeypatch.setenv("GRADLEAK_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compiling, "_COMPILED", set())
    monkeypatch.setattr(compiling, "COLD_SECONDS", 1e9)
    recon = InvertingGradients(iterations=compiling.MIN_ITERATIONS)(_one_view())
    assert not compiled and recon.config["execution"]["iteration"] == "eager"
    assert "would not repay" in recon.config["execution"]["reason"]
    assert recon.config["execution"]["eager_seconds_per_iteration"] > 0


def test_compile_option_is_validated() -> None:
    with pytest.raises(AttackError, match="compile must be"):
        InvertingGradients(compile="yes")
