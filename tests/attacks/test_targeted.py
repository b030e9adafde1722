"""Targeted attacks (WIIG, DIA, PIG, GPIA, VBIA, DPIA, CDIA): each replays what it claims to, and helps."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks import ATTACKS, CDIA, DIA, DPIA, GPIA, PIG, VBIA, WIIG, InvertingGradients
from gradleak.attacks.base import AttackError
from gradleak.attacks.optimize import OptimizerConfig, minimize
from gradleak.audit import simulate_and_attack
from gradleak.defenses import CVB, DPSGD, PRECODE, DropoutDefense, StepPrune
from gradleak.defenses.functional import prune_by_magnitude
from gradleak.fl import LocalData, LocalRecipe, local_update
from gradleak.metrics import grading_ssim
from gradleak.models import create_model

from ._helpers import mnist

NOTHING = {"iterations": 0}


def views_of(defenses, n: int = 2, threat: str = "honest", offset: int = 0):
    """Views of ``n`` one-image clients of the untrained cnn under ``defenses`` (no attack run)."""
    torch.manual_seed(0)
    model = create_model("cnn", in_channels=1)
    x, y, mean, std = mnist(n, offset)
    result = simulate_and_attack(model, x, y, recipe="fedsgd", attack="inverting-gradients", attack_options=NOTHING,
                                 defenses=defenses, threat=threat, victims="each", mean=mean, std=std,
                                 generator=torch.Generator().manual_seed(5))
    return list(result.views), x, y


def test_registered_and_cdia_picks_components_from_the_view() -> None:
    assert {"wiig", "dia", "pig", "gpia", "vbia", "dpia", "cdia"} <= set(ATTACKS.names())
    assert isinstance(ATTACKS.create("cdia", iterations=3), CDIA)
    views, _, _ = views_of(["dropout", "dp-sgd", "prune", "cvb"], n=1)
    assert CDIA().components(views[0]) == {"dropout", "dp-mean", "pruning", "bottleneck"}
    assert CDIA().components(views_of([{"name": "prune-update", "options": {"rate": 0.5}}, "precode"], n=1)[0][0]) \
        == {"pruning", "bottleneck"}
    model = views[0].build_model()
    tg = CDIA().targeting(views, model, views[0].recipe, 1)
    assert set(tg.leaves) == {"dropout@0", "cvb@0"}  # masks and epsilon optimised
    assert set(tg.fixed[0]) == {k for k in (views[0].client_noise or tg.fixed[0]) if k.startswith("dp-sgd/")}
    assert all(float(v.abs().sum()) == 0 for v in tg.fixed[0].values())  # DP noise replaced by its mean
    assert not any(isinstance(t, StepPrune) for t in tg.recipe.step_transforms)  # mask instead of re-pruning
    assert any(isinstance(t, DPSGD) for t in tg.recipe.step_transforms)
    # no defense: cdia is plain inverting-gradients, iterate for iterate
    plain, _, _ = views_of([], n=1)
    cfg = {"iterations": 4, "signed": False, "lr": 1.0, "tv": 1e-3}
    a = CDIA(**cfg).attack_many(plain, generator=torch.Generator().manual_seed(3))[0]
    b = InvertingGradients(**cfg).attack_many(plain, generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(a.images, b.images)
    with pytest.raises(AttackError, match="dropout"):
        DIA().targeting(plain, plain[0].build_model(), plain[0].recipe, 1)


def test_wiig_with_the_true_noise_reproduces_the_update() -> None:
    views, x, _ = views_of(["dropout", "dp-sgd", "cvb"], threat="well-informed")
    truth = x.view(2, 1, *x.shape[1:])
    informed = WIIG(tv=0.0).evaluate(views, truth)
    uninformed = InvertingGradients(tv=0.0).evaluate(views, truth)  # draws its own masks, epsilon, noise
    assert float(informed.max()) < 1e-5, informed
    assert float(uninformed.min()) > 1e-3, uninformed
    honest, _, _ = views_of(["dropout"])  # the honest threat hands no noise
    with pytest.raises(AttackError, match="well-informed"):
        WIIG().targeting(honest, honest[0].build_model(), honest[0].recipe, 1)


def test_vbia_and_dpia_objectives_vanish_at_the_true_noise() -> None:
    views, x, _ = views_of(["cvb"], threat="well-informed")
    truth = x.view(2, 1, *x.shape[1:])
    eps = torch.stack([v.client_noise["cvb@0"] for v in views])
    assert float(VBIA(tv=0.0).evaluate(views, truth, noise={"cvb@0": eps}).max()) < 1e-5
    assert float(VBIA(tv=0.0).evaluate(views, truth, noise={"cvb@0": -eps}).min()) > 1e-3
    views, x, _ = views_of(["dp-sgd"], threat="well-informed")
    std = DPSGD().noise_multiplier * DPSGD().clip
    keys = [k for k in views[0].client_noise if k.startswith("dp-sgd/")]
    xi = {k: torch.stack([v.client_noise[k] for v in views]) / std for k in keys}
    zeros = {k: torch.zeros_like(v) for k, v in xi.items()}
    attack = DPIA(tv=0.0, dp_reg=0.0)
    assert float(attack.evaluate(views, truth, noise=xi).max()) < 1e-5
    assert float(attack.evaluate(views, truth, noise=zeros).min()) > 1e-3


def test_gpia_mask_is_the_clients_pruning_mask() -> None:
    views, x, y = views_of([{"name": "prune", "options": {"rate": 0.9}}])
    model = views[0].build_model()
    tg = GPIA().targeting(views, model, views[0].recipe, 1)
    params = views[0].global_state.params
    for i, view in enumerate(views):
        xn = (x[i:i + 1] - view.mean[0]) / view.std[0]
        plain = local_update(model, params, view.global_state.buffers, LocalData(xn, y[i:i + 1]),
                             LocalRecipe(lr=1.0, steps=1, batch_size=1, shuffle=False))
        grads = {k: -d for k, d in plain.delta(params).items()}
        _, keep = prune_by_magnitude(grads, 0.9)
        for k in keep:
            assert torch.equal(tg.masks[i][k].bool(), keep[k]), k
            assert 0.05 < float(keep[k].float().mean()) < 0.15 or keep[k].numel() < 20
    truth = x.view(2, 1, *x.shape[1:])
    assert float(GPIA(tv=0.0).evaluate(views, truth).max()) < 1e-5  # masked replay = the pruned update


def test_dia_masks_stay_in_the_unit_interval_and_move() -> None:
    views, _, _ = views_of([DropoutDefense(rate=0.25)])
    attack = DIA(iterations=15, restarts=2, signed=False, lr=1.0)
    result, problem = attack.solve(views, [torch.Generator().manual_seed(i) for i in range(2)])
    masks = result.variables["noise:dropout@0"]
    assert masks.shape == (4, 1, 64)
    assert float(masks.min()) >= 0.0 and float(masks.max()) <= 1.0
    assert bool(((masks > 0.01) & (masks < 0.99)).any())  # optimised, not the Bernoulli start
    start = problem.initial([torch.Generator().manual_seed(i) for i in range(2)])["noise:dropout@0"]
    assert set(start.unique().tolist()) <= {0.0, 1.0} and 0.5 < float(start.mean()) < 0.95


def test_pig_ignores_the_decoder_and_every_later_layer() -> None:
    # the authors' released CNN+CVB "ignore" config leaves out 'decoder', '1.conv', '2.conv' and the classifier
    views, _, _ = views_of([CVB()], n=1)
    model = views[0].build_model()
    tg = PIG().targeting(views, model, views[0].recipe, 1)
    kept = [k for k, _ in model.named_parameters() if k not in tg.ignore]
    assert kept == ["features.block1.block.conv.weight", "features.block1.block.conv.bias",
                    "features.block1.cvb.mu.weight", "features.block1.cvb.sigma.weight"]
    # PRECODE sits before the classifier: only its decoder and the classifier are stochastic
    views, _, _ = views_of([PRECODE()], n=1)
    model = views[0].build_model()
    assert PIG().targeting(views, model, views[0].recipe, 1).ignore == {
        "classifier.precode.decoder.weight", "classifier.precode.decoder.bias",
        "classifier.linear.weight", "classifier.linear.bias"}
    # PRECODE early (after the first conv block, Scheliga et al. 2024b): as CVB, the later layers are left out
    views, _, _ = views_of([PRECODE(after="features.block1", features=16 * 14 * 14)], n=1)
    model = views[0].build_model()
    tg = PIG().targeting(views, model, views[0].recipe, 1)
    assert [k for k, _ in model.named_parameters() if k not in tg.ignore] == [
        "features.block1.block.conv.weight", "features.block1.block.conv.bias",
        "features.block1.precode.encoder.weight", "features.block1.precode.encoder.bias"]
    # without a bottleneck there is nothing to leave out
    views, _, _ = views_of(["dropout"], n=1)
    with pytest.raises(AttackError, match="variational bottleneck"):
        PIG().targeting(views, views[0].build_model(), views[0].recipe, 1)


def test_pig_ignore_names_the_left_out_layers() -> None:
    # the released CNN+CVB list, written as module paths, gives the automatic set
    views, _, _ = views_of([CVB()], n=1)
    model = views[0].build_model()
    released = ["features.block1.cvb.decoder", "features.block2", "features.block3", "classifier"]
    named = ATTACKS.create("pig", ignore=released)
    assert named.ignore == tuple(released)
    assert named.targeting(views, model, views[0].recipe, 1).ignore == \
        PIG().targeting(views, model, views[0].recipe, 1).ignore
    # on PRECODE before the classifier named layers can leave out conv layers before the bottleneck, and a
    # parameter name leaves out that parameter alone
    views, _, _ = views_of([PRECODE()], n=1)
    model = views[0].build_model()
    tg = PIG(ignore=("classifier", "features.block2", "features.block3.conv.weight")).targeting(
        views, model, views[0].recipe, 1)
    assert [k for k, _ in model.named_parameters() if k not in tg.ignore] == [
        "features.block1.conv.weight", "features.block1.conv.bias", "features.block3.conv.bias"]
    # any model: the layers are named, no bottleneck needed
    views, _, _ = views_of(["dropout"], n=1)
    model = views[0].build_model()
    assert PIG(ignore=["classifier"]).targeting(views, model, views[0].recipe, 1).ignore == {
        "classifier.weight", "classifier.bias"}
    with pytest.raises(AttackError, match=r"no parameter or module.*features\.block1\.conv\.weight"):
        PIG(ignore=["decoder"]).targeting(views, model, views[0].recipe, 1)
    for bad in ("classifier", ["", "classifier"], [3], None):
        with pytest.raises(AttackError, match="ignore must be a list"):
            PIG(ignore=bad)


def test_targeted_vectorised_equals_looped() -> None:
    views, _, _ = views_of(["dropout", "cvb"])
    attack = CDIA(iterations=6, restarts=2, signed=False, lr=1.0)
    together = attack.attack_many(views, generator=[torch.Generator().manual_seed(7 + i) for i in range(2)])
    for i, view in enumerate(views):
        alone = attack(view, generator=torch.Generator().manual_seed(7 + i))
        torch.testing.assert_close(together[i].images, alone.images, atol=1e-4, rtol=0)


def test_lr_scale_scales_one_variable_step() -> None:
    out = minimize(lambda v: v["a"].sum(1) + v["b"].sum(1), {"a": torch.zeros(1, 2), "b": torch.zeros(1, 2)},
                   iterations=1, optimizer=OptimizerConfig(name="sgd", lr=1.0), lr_scale={"b": 0.25})
    assert torch.equal(out.variables["a"], -torch.ones(1, 2))
    assert torch.equal(out.variables["b"], -torch.ones(1, 2) / 4)
    with pytest.raises(ValueError, match="L-BFGS"):
        minimize(lambda v: v["a"].sum(1), {"a": torch.zeros(1, 2)}, iterations=1,
                 optimizer=OptimizerConfig(name="lbfgs"), lr_scale={"a": 0.5})


def test_dia_beats_inverting_gradients_under_dropout() -> None:
    views, x, _ = views_of([DropoutDefense(rate=0.25)], n=2, offset=3)
    cfg = {"iterations": 120, "signed": False, "lr": 1.0, "tv": 3e-3}
    scores = {}
    for attack in (InvertingGradients(**cfg), DIA(**cfg)):
        recs = attack.attack_many(views, generator=torch.Generator().manual_seed(11))
        images = torch.cat([r.images for r in recs])
        scores[attack.name] = float(grading_ssim(images, x).mean())
    assert scores["dia"] > scores["inverting-gradients"] + 0.1, scores


def test_tv_auto_bottleneck_sweeps_behind_a_bottleneck_only() -> None:
    """The targeted default ``tv="auto-bottleneck"``: the sweep of ``tv="auto"`` where the model holds a variational
    bottleneck, inverting-gradients' 1e-2 elsewhere; a number given is used as it is."""
    bottleneck, _, _ = views_of(["cvb"], n=1)
    plain, _, _ = views_of(["dropout"], n=1)
    assert VBIA().tv == "auto-bottleneck"
    assert VBIA().resolve_tv(bottleneck) == "auto" and PIG().resolve_tv(views_of(["precode"], n=1)[0]) == "auto"
    assert DIA().resolve_tv(plain) == 1e-2 == InvertingGradients().tv
    assert VBIA(tv=1e-3).resolve_tv(bottleneck) == 1e-3
    with pytest.raises(AttackError, match=r"one of \['auto', 'auto-bottleneck'\]"):
        VBIA(tv="bottleneck")
    with pytest.raises(AttackError, match=r"one of \['auto'\]"):
        InvertingGradients(tv="auto-bottleneck")
    with pytest.raises(AttackError, match="sweep when the attack runs"):
        VBIA().problem(bottleneck)
    # behind the bottleneck: the sweep ran, and the run equals tv="auto" given by hand
    cfg = {"iterations": 6, "tv_sweep_iterations": 3, "signed": False, "lr": 1.0}
    default = VBIA(**cfg).attack_many(bottleneck, generator=torch.Generator().manual_seed(2))[0]
    swept = VBIA(tv="auto", **cfg).attack_many(bottleneck, generator=torch.Generator().manual_seed(2))[0]
    assert default.config["tv"] == "auto-bottleneck" and default.config["tv_resolved"] == "auto"
    assert set(default.config["tv_auto"]["scores"]) == {1e-2, 1e-3, 1e-4}
    assert default.config["tv_auto"]["chosen"] == swept.config["tv_auto"]["chosen"]
    assert torch.equal(default.images, swept.images)
    # elsewhere: no sweep, the same run as tv=1e-2
    default = DIA(**cfg).attack_many(plain, generator=torch.Generator().manual_seed(2))[0]
    fixed = DIA(tv=1e-2, **cfg).attack_many(plain, generator=torch.Generator().manual_seed(2))[0]
    assert default.config["tv_resolved"] == 1e-2 and "tv_auto" not in default.config
    assert torch.equal(default.images, fixed.images)
