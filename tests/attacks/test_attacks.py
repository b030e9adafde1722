"""The optimisation attacks end to end: registry, vectorised == looped, quality above the initialisation's,
the fedavg-inversion replay reproducing the update exactly (and the paper's controls not)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from gradleak.attacks import ATTACKS
from gradleak.attacks.base import AttackError
from gradleak.attacks.dlg import DLG, IDLG
from gradleak.attacks.fedavg_inversion import FedAvgInversion
from gradleak.attacks.gradinversion import GradInversion
from gradleak.attacks.init import initialize
from gradleak.attacks.inverting_gradients import InvertingGradients
from gradleak.data.transforms import denormalize
from gradleak.fl import LocalData, LocalRecipe, local_update, model_state
from gradleak.models import create_model
from gradleak.records import GlobalState

from ._helpers import Factory, client_view, mnist, tiny_bn_net

FEDSGD = LocalRecipe(lr=0.01, steps=1, batch_size=1, shuffle=False)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(structural_similarity(a[0].double().numpy(), b[0].double().numpy(), data_range=1.0))


def test_registered_with_their_configuration() -> None:
    assert {"dlg", "idlg", "inverting-gradients", "gradinversion", "fedavg-inversion"} <= set(ATTACKS.names())
    attack = ATTACKS.create("inverting-gradients", iterations=7, restarts=2)
    assert isinstance(attack, InvertingGradients) and "iterations=7" in repr(attack) and "tv=0.01" in repr(attack)
    assert attack == InvertingGradients(iterations=7, restarts=2)
    assert IDLG().labels == "idlg" and DLG().optimizer == "lbfgs" and GradInversion().bn_prior > 0
    with pytest.raises(AttackError, match="objective"):
        InvertingGradients(objective="l3")
    with pytest.raises(AttackError, match="frozen BN"):
        FedAvgInversion(bn_replay=False)
    assert FedAvgInversion().without_bn_reestimation().bn_buffers == 0.0


def test_inverting_gradients_beats_its_initialisation() -> None:
    torch.manual_seed(0)
    model = create_model("cnn", in_channels=1)
    x, y, mean, std = mnist(2)
    factory = Factory(model)
    views = [client_view(model, x[i:i + 1], y[i:i + 1], FEDSGD, mean=mean, std=std, factory=factory)
             for i in range(2)]
    attack = InvertingGradients(iterations=120, tv=1e-2)
    out = attack.attack_many(views, generator=[torch.Generator().manual_seed(i) for i in range(2)])
    start = [denormalize(initialize("gaussian", trials=1, n=1, image_shape=(1, 32, 32),
                                    generator=torch.Generator().manual_seed(i)), mean, std).clamp(0, 1)[0, 0]
             for i in range(2)]
    baseline = max(ssim(start[i], x[i]) for i in range(2))
    scores = [ssim(out[i].images[0], x[i]) for i in range(2)]
    assert baseline < 0.1 and min(scores) > baseline + 0.4, (baseline, scores)
    assert [int(r.labels[0]) for r in out] == y.tolist()  # iDLG labels
    assert out[0].loss_trace is not None and float(out[0].loss_trace[-1]) < float(out[0].loss_trace[0])
    assert out[0].iterations == 120 and out[0].attack == "inverting-gradients" and out[0].wall_time > 0


def small_mnist(n: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
    x, y, mean, std = mnist(n, offset)
    return torch.nn.functional.avg_pool2d(x, 2), y % 4, mean, std  # 16×16, 4 classes


def rounds() -> tuple[torch.nn.Module, GlobalState, GlobalState]:
    """A tiny BN network and two consecutive 'rounds' of its global state (round 1 trained on other data)."""
    model = tiny_bn_net()
    params, buffers = model_state(model)
    round0 = GlobalState(round=0, params=params, buffers=buffers)
    x, y, mean, std = small_mnist(8, offset=50)
    xn = (x - mean[0]) / std[0]
    out = local_update(model, params, buffers, LocalData(xn, y), LocalRecipe(lr=0.1, batch_size=4, shuffle=False))
    return model, round0, GlobalState(round=1, params=out.params, buffers=out.buffers)


@pytest.mark.parametrize("recipe", [LocalRecipe(lr=0.05, steps=1, batch_size=1, shuffle=False),
                                    LocalRecipe(lr=0.05, epochs=2, batch_size=1, shuffle=True, seed=4)],
                         ids=["one-image-one-step", "three-images-six-steps"])
def test_fedavg_replay_reproduces_the_update_and_the_controls_do_not(recipe: LocalRecipe) -> None:
    model, round0, round1 = rounds()
    n = recipe.batch_size if recipe.steps == 1 else 3
    x, y, mean, std = small_mnist(n)
    factory = Factory(model)
    right = client_view(model, x, y, recipe, mean=mean, std=std, factory=factory, state=round1, num_classes=4,
                        prior=x.mean(0))
    wrong = dataclasses.replace(right, global_state=round0)  # another round's checkpoint (Fig. 3c)
    attack = FedAvgInversion(tv=0.0, l2=0.0)
    truth = (x.unsqueeze(0), y.unsqueeze(0))
    at_truth = float(attack.evaluate([right], *truth)[0])
    wrong_ckpt = float(attack.evaluate([wrong], *truth)[0])
    no_bn = float(attack.without_bn_reestimation().evaluate([right], *truth)[0])
    assert at_truth < 1e-3 * min(wrong_ckpt, no_bn), (at_truth, wrong_ckpt, no_bn)
    # the BN term alone vanishes at the truth too: the replay re-estimated the client's running statistics
    only_bn = dataclasses.replace(attack, bn_buffers=1.0)
    assert float(only_bn.evaluate([right], *truth)[0]) < 1e-2 * float(only_bn.evaluate([wrong], *truth)[0])


def assert_same(together, alone) -> None:
    torch.testing.assert_close(together.images, alone.images, atol=1e-4, rtol=0)
    torch.testing.assert_close(together.loss_trace, alone.loss_trace, atol=1e-5, rtol=1e-4)
    assert torch.equal(together.labels, alone.labels)
    for a, b in zip(together.trials, alone.trials, strict=True):
        torch.testing.assert_close(a.images, b.images, atol=1e-4, rtol=0)


def test_vectorised_victims_equal_looped_victims() -> None:
    # BN network, soft labels, one client per view from *different* global states (stacked parameters)
    model, round0, round1 = rounds()
    x, y, mean, std = small_mnist(3)
    factory = Factory(model)
    recipe = LocalRecipe(lr=0.05, steps=2, batch_size=1, shuffle=False)
    views = [client_view(model, x[i:i + 1].repeat(2, 1, 1, 1), y[i:i + 1].repeat(2), recipe, mean=mean, std=std,
                         factory=factory, state=(round0, round1)[i % 2], num_classes=4, prior=x.mean(0))
             for i in range(3)]
    attack = FedAvgInversion(iterations=12, restarts=2, init_noise=0.1)
    together = attack.attack_many(views, generator=[torch.Generator().manual_seed(10 + i) for i in range(3)])
    for i, view in enumerate(views):
        assert_same(together[i], attack(view, generator=torch.Generator().manual_seed(10 + i)))
    # shared global state, hard labels, signed-free Adam and L-BFGS on the cnn
    torch.manual_seed(0)
    cnn = create_model("cnn", in_channels=1)
    x, y, mean, std = mnist(2)
    factory = Factory(cnn)
    views = [client_view(cnn, x[i:i + 1], y[i:i + 1], FEDSGD, mean=mean, std=std, factory=factory) for i in range(2)]
    # a single trial runs unvmapped (other kernels, rounding differences ~3e-8) and L-BFGS's line search
    # amplifies rounding (0.002 after 4 iterations): it is compared after 2
    for attack in (InvertingGradients(iterations=8, signed=False, restarts=2), IDLG(iterations=2)):
        together = attack.attack_many(views, generator=[torch.Generator().manual_seed(i) for i in range(2)])
        for i, view in enumerate(views):
            assert_same(together[i], attack(view, generator=torch.Generator().manual_seed(i)))


def test_view_requirements() -> None:
    model = tiny_bn_net()
    x, y, mean, std = small_mnist(1)
    view = client_view(model, x, y, FEDSGD, mean=mean, std=std, num_classes=4)
    with pytest.raises(AttackError, match="prior image"):
        FedAvgInversion()(view)
    with pytest.raises(AttackError, match=r"needs view\.recipe"):
        FedAvgInversion(init="mean")(dataclasses.replace(view, recipe=None))
    withheld = dataclasses.replace(view, updates=(dataclasses.replace(view.update, buffers={}),))
    with pytest.raises(AttackError, match="withheld"):
        FedAvgInversion(init="mean", iterations=1)(withheld)
    out = GradInversion(iterations=3, restarts=2, labels="wainakh")(view)  # BN prior + group term run
    assert out.images.shape == (1, 1, 16, 16) and len(out.trials) == 2
    assert np.isfinite([t.objective for t in out.trials]).all()


def test_attack_gradient_matches_finite_differences() -> None:
    # Differentiating *through* vmap (torch.autograd or torch.func.grad) of a replay containing native
    # BatchNorm returns wrong input gradients in PyTorch 2.14 (off by tens of percent); the attacks take
    # vmap(grad_and_value(...)) instead. Float64, smooth activations, so finite differences are exact.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1, bias=False), torch.nn.BatchNorm2d(3),
                              torch.nn.SiLU(), torch.nn.Flatten(), torch.nn.Linear(3 * 36, 4)).double()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(1, 1, 6, 6, generator=g, dtype=torch.float64), torch.tensor([2])
    view = client_view(net, x, y, LocalRecipe(lr=0.1, steps=1, batch_size=1, shuffle=False), num_classes=4,
                       prior=torch.zeros(1, 6, 6))
    for attack in (FedAvgInversion(labels="joint", tv=1e-2, l2=1e-3, bn_buffers=0.1, restarts=2, group=0.1),
                   InvertingGradients(labels="idlg", restarts=2)):
        problem = attack.problem([view])
        values = problem.initial([torch.Generator().manual_seed(1)])
        values["x"] = values["x"] + 0.3 * torch.randn(values["x"].shape, generator=g, dtype=torch.float64)
        _, grads = problem.value_and_grad(values)
        for key in values:
            d = torch.randn(values[key].shape, generator=g, dtype=torch.float64)
            h = 1e-6
            plus = problem.objective({**values, key: values[key] + h * d}).sum()
            minus = problem.objective({**values, key: values[key] - h * d}).sum()
            fd = float((plus - minus) / (2 * h))
            assert float((grads[key] * d).sum()) == pytest.approx(fd, rel=1e-5, abs=1e-8), (type(attack), key)


def test_auto_tv_chooses_by_the_update_match_and_says_so() -> None:
    """``tv="auto"``: one short run per candidate from the same start, the weight whose reconstructions match
    the update best (objective without TV, never the truth) runs the full budget, and the choice is reported."""
    from gradleak.attacks.replay import TV_CANDIDATES
    from gradleak.audit import simulate_and_attack

    x, y, mean, std = mnist(2)
    torch.manual_seed(0)
    views = list(simulate_and_attack(create_model("cnn", in_channels=1), x, y, recipe="fedsgd",
                                     attack="inverting-gradients", attack_options={"iterations": 0},
                                     victims="each", mean=mean, std=std).views)
    attack = InvertingGradients(iterations=40, tv="auto", tv_sweep_iterations=20, compile=False)
    recons = attack.attack_many(views, generator=torch.Generator().manual_seed(3))
    note = recons[0].config["tv_auto"]
    assert set(note["scores"]) == set(TV_CANDIDATES) and note["sweep_iterations"] == 20
    assert note["chosen"] == min(note["scores"], key=note["scores"].get)
    assert recons[0].config["tv"] == "auto" and recons[1].config["tv_auto"] == note
    # the full run is the fixed-weight attack with the chosen weight, from the same start
    fixed = dataclasses.replace(attack, tv=note["chosen"]).attack_many(views,
                                                                     generator=torch.Generator().manual_seed(3))
    for a, b in zip(recons, fixed, strict=True):
        torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
    # each score is the sum over the victims of the matching term at that candidate's short run
    short = dataclasses.replace(attack, tv=TV_CANDIDATES[0], iterations=20).attack_many(
        views, generator=torch.Generator().manual_seed(3))
    match = dataclasses.replace(attack, tv=0.0).evaluate(views, torch.stack([r.images for r in short]))
    assert note["scores"][TV_CANDIDATES[0]] == pytest.approx(float(match.sum()), rel=1e-4, abs=1e-6)
    with pytest.raises(AttackError, match="tv must be"):
        InvertingGradients(tv="strong")
