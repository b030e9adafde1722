"""Defenses against references: Opacus's epsilon, the DP noise scale, the percentile mechanism, secure
aggregation, and the model-stage modules' injectable randomness."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from gradleak.defenses import (
    CVB,
    DEFENSES,
    DPSGD,
    PRECODE,
    DropoutDefense,
    LocalGaussian,
    StepPrune,
    WithholdBN,
    WithholdLayers,
    dp_epsilon,
    resolve_defenses,
    secure_sum,
)
from gradleak.defenses.functional import clip_per_sample, per_sample_norms, prune_by_magnitude
from gradleak.errors import UnknownNameError
from gradleak.fl import LocalData, LocalRecipe, local_update, model_state
from gradleak.fl.federation import FedAvgSimulation, FLClient
from gradleak.fl.recorder import Recorder
from gradleak.fl.store import UpdateStore
from gradleak.models import ModelSpec, create_model
from gradleak.records import AGGREGATE_CLIENT, ClientUpdate, ServerView


@pytest.mark.parametrize(("sigma", "q", "steps", "delta"), [(1.0, 0.01, 1000, 1e-5), (0.8, 0.064, 300, 1e-6)])
def test_epsilon_equals_opacus(sigma, q, steps, delta) -> None:
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    from opacus.accountants.rdp import RDPAccountant

    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    expected, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    assert dp_epsilon(sigma, q, steps, delta, accountant="rdp") == pytest.approx(float(expected), rel=0, abs=0)
    prv = dp_epsilon(sigma, q, steps, delta, accountant="prv")
    assert 0 < prv <= dp_epsilon(sigma, q, steps, delta) * 1.01  # PRV is tighter than RDP


def test_dp_noise_std_is_sigma_clip_over_batch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 300))
    params, buffers = model_state(model)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 300, (8,))
    sigma, clip, lr, batch = 0.5, 2.0, 0.1, 8
    noisy = local_update(model, params, buffers, LocalData(x, y),
                         LocalRecipe(lr=lr, batch_size=batch, shuffle=False, step_transforms=(DPSGD(clip, sigma),)),
                         generator=torch.Generator().manual_seed(1))
    clean = local_update(model, params, buffers, LocalData(x, y),
                         LocalRecipe(lr=lr, batch_size=batch, shuffle=False, step_transforms=(DPSGD(clip, 0.0),)))
    diff = torch.cat([(noisy.params[k] - clean.params[k]).flatten() for k in params]) / lr
    assert diff.numel() > 19_000
    assert float(diff.std()) == pytest.approx(sigma * clip / batch, rel=0.10)
    assert sorted(noisy.noise) == ["dp-sgd/1.bias@0", "dp-sgd/1.weight@0"]  # recorded for a well-informed attacker


def test_clipped_per_sample_norms_at_most_c_including_scalars() -> None:
    g = torch.Generator().manual_seed(2)
    grads = {"scalar": torch.randn(5, generator=g) * 100, "one": torch.randn(5, 1, generator=g) * 100,
             "matrix": torch.randn(5, 3, 4, generator=g) * 100}
    grads["matrix"][2] = 0.0
    grads["scalar"][2] = 1e-3
    grads["one"][2] = 0.0
    clipped = clip_per_sample(grads, 1.5)
    norms = per_sample_norms(clipped)
    assert bool((norms <= 1.5 + 1e-6).all())
    assert float(norms[2]) == pytest.approx(1e-3)  # already small: unchanged
    assert all(clipped[k].shape == grads[k].shape for k in grads)


def test_local_gaussian_noise_std_and_identity_at_zero() -> None:
    g = torch.Generator().manual_seed(3)
    update = ClientUpdate(client=0, round=0, num_examples=4,
                          delta={"a": torch.randn(200, 300, generator=g) * 1e-3, "b": torch.rand(500, generator=g)},
                          buffers={"bn.running_mean": torch.ones(3)})
    d = LocalGaussian(sigma0=2.0)
    noisy = d(update, torch.Generator().manual_seed(4))
    flat = np.concatenate([v.numpy().ravel() for v in update.delta.values()])
    expected = 2.0 * np.percentile(np.abs(flat), 95)
    measured = torch.cat([(noisy.delta[k] - update.delta[k]).flatten() for k in update.delta]).std()
    assert float(measured) == pytest.approx(expected, rel=0.05)
    assert torch.equal(noisy.buffers["bn.running_mean"], update.buffers["bn.running_mean"])  # buffers not noised
    same = LocalGaussian(sigma0=0.0)(update, torch.Generator().manual_seed(4))
    assert all(torch.equal(same.delta[k], update.delta[k]) and same.delta[k].dtype == update.delta[k].dtype
               for k in update.delta)


def test_defenses_compose_without_mutating_input() -> None:
    update = ClientUpdate(client=1, round=0, num_examples=2,
                          delta={"conv1.weight": torch.randn(4, 3), "fc.weight": torch.randn(5)},
                          buffers={"bn1.running_var": torch.ones(4)})
    before = {k: v.clone() for k, v in update.delta.items()}
    out = update
    for d in resolve_defenses(["local-gaussian", "prune-update", "withhold-bn", {"name": "withhold-layers",
                                                                                "options": {"layers": ("conv1",)}}]):
        out = d(out, torch.Generator().manual_seed(0))
    assert sorted(out.delta) == ["fc.weight"] and out.buffers == {}
    assert out.metadata["withheld"] == ["bn1.running_var", "conv1.weight"]
    assert all(torch.equal(update.delta[k], before[k]) for k in before) and update.buffers
    with pytest.raises(ValueError, match="no parameter of layer"):
        WithholdLayers(("nope",))(update)


def test_invalid_parameters_and_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="after= needs features="):
        PRECODE(after="features.block1")
    with pytest.raises(ValueError, match="not both"):
        PRECODE(before="classifier", after="features.block1", features=3136)
    with pytest.raises(ValueError, match=r"puts out \(16, 14, 14\) = 3136 values per example, not features=100"):
        PRECODE(after="features.block1", features=100).apply(create_model("cnn", in_channels=1))(
            torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="clip must be > 0"):
        DPSGD(clip=0)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        StepPrune(rate=1.0)
    with pytest.raises(ValueError, match="sigma0"):
        LocalGaussian(sigma0=-1)
    with pytest.raises(UnknownNameError, match="secure-aggregation"):
        DEFENSES.create("dp")
    assert DEFENSES.create("dp-sgd") == DPSGD(clip=20.0, noise_multiplier=1e-4)  # the paper's defaults
    assert DEFENSES.create("prune").rate == 0.5 and DEFENSES.create("dropout").rate == 0.25


def test_pruning_zeroes_the_smallest_share_per_layer() -> None:
    t = {"w": torch.arange(1.0, 11.0) * torch.tensor([1, -1] * 5)}
    pruned, masks = prune_by_magnitude(t, 0.5)
    assert pruned["w"].abs().tolist() == [0, 0, 0, 0, 0, 6, 7, 8, 9, 10]
    assert int(masks["w"].sum()) == 5


def _clients(n: int = 3) -> list[FLClient]:
    g = torch.Generator().manual_seed(5)
    return [FLClient(i, LocalData(torch.randn(4 * (i + 1), 1, 32, 32, generator=g),
                                  torch.randint(0, 10, (4 * (i + 1),), generator=g)),
                     LocalRecipe(lr=0.05, batch_size=4)) for i in range(n)]


def test_secure_aggregation_view_holds_only_the_sum(tmp_path) -> None:
    spec = ModelSpec("cnn", {"in_channels": 1})
    store = UpdateStore(tmp_path / "s")
    secure = FedAvgSimulation(spec, _clients(), rounds=1, seed=3, aggregator=secure_sum).run(hooks=[Recorder(store)])
    plain = FedAvgSimulation(spec, _clients(), rounds=1, seed=3)
    assert store.clients(round=0) == [AGGREGATE_CLIENT]  # the server recorded one aggregate, no client's update
    for k, v in plain.run().final.params.items():
        torch.testing.assert_close(secure.final.params[k], v, atol=1e-6, rtol=0)

    state = plain.initial_state()
    individual = [plain.client_update(c, state) for c in plain.clients]
    agg = store.load_update(round=0, client=AGGREGATE_CLIENT, model=spec.build())
    view = ServerView(model=spec, global_state=state, updates=[agg], image_shape=(1, 32, 32), num_classes=10)
    seen: list[torch.Tensor] = []

    def walk(obj, depth=0):
        if depth > 6:
            return
        if isinstance(obj, torch.Tensor):
            seen.append(obj)
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v, depth + 1)
        elif isinstance(obj, list | tuple):
            for v in obj:
                walk(v, depth + 1)
        elif dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                walk(getattr(obj, f.name), depth + 1)

    walk(view)
    assert len(view.updates) == 1 and view.update.num_examples == sum(u.num_examples for u in individual)
    for u in individual:
        for k, d in u.delta.items():
            assert not any(t.shape == d.shape and torch.allclose(t, d, atol=1e-7) for t in seen), k
    expected = sum(u.delta["classifier.weight"] * u.num_examples for u in individual) / agg.num_examples
    torch.testing.assert_close(agg.delta["classifier.weight"], expected, atol=1e-6, rtol=1e-5)


EARLY_PRECODE = PRECODE(after="features.block1", features=16 * 14 * 14)


@pytest.mark.parametrize("defense", [PRECODE(), EARLY_PRECODE, CVB(), DropoutDefense(0.25)],
                         ids=["precode", "precode-early", "cvb", "dropout"])
def test_model_stage_defense_noise_is_injectable_and_replays_exactly(defense) -> None:
    torch.manual_seed(6)
    base = create_model("cnn", in_channels=1)
    names = [n for n, _ in base.named_parameters()]
    model = defense.apply(base)
    assert [n for n, _ in base.named_parameters()] == names  # input untouched
    x, y = torch.rand(4, 1, 32, 32), torch.randint(0, 10, (4,))
    assert model(x).shape == (4, 10)
    params, buffers = model_state(model)
    recipe = LocalRecipe(lr=0.05, batch_size=2, shuffle=False)
    client = local_update(model, params, buffers, LocalData(x, y), recipe, generator=torch.Generator().manual_seed(7))
    key = {"precode": "precode", "cvb": "cvb", "dropout": "dropout"}[defense.name]
    assert sorted(client.noise) == [f"{key}@0", f"{key}@1"]
    informed = local_update(model, params, buffers, LocalData(x, y), recipe, noise=client.noise)
    uninformed = local_update(model, params, buffers, LocalData(x, y), recipe,
                              generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(informed.params[k], client.params[k]) for k in params)
    assert any(not torch.equal(uninformed.params[k], client.params[k]) for k in params)
    # the architecture is rebuilt from a spec, so the server (and the store) know it
    spec = ModelSpec("cnn", {"in_channels": 1, "model_defenses": [defense.to_json()]})
    assert [n for n, _ in spec.build().named_parameters()] == [n for n, _ in model.named_parameters()]


def test_kl_term_enters_the_training_loss() -> None:
    torch.manual_seed(9)
    x, y = torch.rand(2, 1, 32, 32), torch.randint(0, 10, (2,))
    outs = []
    for beta in (0.0, 10.0):
        torch.manual_seed(10)
        model = CVB(beta=beta).apply(create_model("cnn", in_channels=1))
        params, buffers = model_state(model)
        outs.append(local_update(model, params, buffers, LocalData(x, y), LocalRecipe(lr=0.1, batch_size=2),
                                 noise={"cvb": torch.zeros(2, 8, 14, 14)}))
    assert any(not torch.allclose(outs[0].params[k], outs[1].params[k]) for k in outs[0].params)


def test_dp_sgd_with_dropout_uses_each_examples_mask() -> None:
    """Per-sample gradients under dropout use row i of the step's mask: DP with no noise and no clipping
    equals plain training with the same masks."""
    torch.manual_seed(11)
    model = DropoutDefense(0.5).apply(create_model("mlp", in_channels=1, image_size=8, width=16, num_classes=3))
    params, buffers = model_state(model)
    data = LocalData(torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,)))
    recipe = LocalRecipe(lr=0.1, batch_size=3, shuffle=False)
    plain = local_update(model, params, buffers, data, recipe, generator=torch.Generator().manual_seed(12))
    dp = local_update(model, params, buffers, data, recipe.replace(step_transforms=(DPSGD(1e9, 0.0),)),
                      noise=plain.noise)
    for k in params:
        torch.testing.assert_close(dp.params[k], plain.params[k], atol=1e-6, rtol=1e-5)


def test_withheld_buffers_pass_store_validation(tmp_path) -> None:
    model = create_model("convnet", in_channels=1, image_size=16, width=4)
    params, buffers = model_state(model)
    out = local_update(model, params, buffers, LocalData(torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))),
                       LocalRecipe(batch_size=4))
    update = WithholdBN()(ClientUpdate(0, 0, delta=out.delta(params), buffers=out.buffers, num_examples=4))
    store = UpdateStore(tmp_path / "s")
    store.save_update(update)
    loaded = store.load_update(round=0, client=0, model=model)
    assert (loaded.buffers == {} and "features.0.1.running_mean" in loaded.metadata["withheld"]) or loaded.metadata[
        "withheld"]
