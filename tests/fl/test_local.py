"""local_update against PyTorch's own training loop, finite differences, and vmap."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import vmap

from gradleak.fl import LocalData, LocalRecipe, batch_schedule, local_update, model_state
from gradleak.fl.local import bind_functional


def small_bn_net(in_ch: int = 1, classes: int = 3, momentum: float | None = 0.1, dropout: float = 0.0) -> nn.Module:
    # no bias before BatchNorm (as in ResNets): such a bias has an exactly-zero gradient, and Adam would turn
    # its round-off into full-size steps, making any two implementations disagree
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4, momentum=momentum),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(4, momentum=momentum),
        nn.ReLU(),
        nn.Flatten(),
    ]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(4 * 4 * 4, 8, bias=False), nn.BatchNorm1d(8, momentum=momentum), nn.Tanh(),
               nn.Linear(8, classes)]
    return nn.Sequential(*layers)


def reference_training(model: nn.Module, data: LocalData, recipe: LocalRecipe) -> nn.Module:
    """Ordinary nn.Module + torch.optim loop over the same batch order."""
    model = copy.deepcopy(model).train()
    if recipe.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                              weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, betas=recipe.betas, eps=recipe.eps,
                               weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=recipe.lr_step_size,
                                            gamma=recipe.lr_gamma if recipe.lr_schedule == "step" else 1.0)
    for idx in batch_schedule(len(data), recipe):
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
        opt.step()
        sched.step()
    return model


def make_data(n: int = 20, seed: int = 0, dtype=torch.float32) -> LocalData:
    g = torch.Generator().manual_seed(seed)
    return LocalData(torch.randn(n, 1, 8, 8, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g))


@pytest.mark.parametrize(
    "recipe",
    [
        LocalRecipe(optimizer="sgd", lr=0.05, epochs=3, batch_size=4, seed=3),
        LocalRecipe(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, epochs=3,
                    batch_size=4, seed=1, lr_schedule="step", lr_step_size=4, lr_gamma=0.5),
        LocalRecipe(optimizer="adam", lr=1e-3, weight_decay=1e-4, epochs=3, batch_size=4, seed=2),
    ],
    ids=["sgd", "sgd-momentum-step-decay", "adam"],
)
def test_matches_torch_training_loop(recipe: LocalRecipe) -> None:
    torch.manual_seed(0)
    model = small_bn_net()
    data = make_data()  # 20 examples / batch 4 = 5 batches per epoch, 3 epochs = 15 steps
    assert len(batch_schedule(len(data), recipe)) == 15
    ref = reference_training(model, data, recipe)
    params, buffers = model_state(model)
    out = local_update(model, params, buffers, data, recipe)
    assert len(out.per_step) == 15
    for name, value in ref.named_parameters():
        torch.testing.assert_close(out.params[name], value.detach(), atol=1e-5, rtol=0)
    for name, value in ref.named_buffers():
        torch.testing.assert_close(out.buffers[name], value, atol=1e-5, rtol=0)
    # the module itself is untouched
    for name, value in model.named_parameters():
        assert torch.equal(value, params[name])


def test_cumulative_bn_momentum_none_matches_torch() -> None:
    torch.manual_seed(1)
    model = small_bn_net(momentum=None)
    data = make_data()
    recipe = LocalRecipe(lr=0.05, epochs=2, batch_size=4)
    ref = reference_training(model, data, recipe)
    out = local_update(model, None, None, data, recipe)
    for name, value in ref.named_buffers():
        torch.testing.assert_close(out.buffers[name], value, atol=1e-5, rtol=0)


def test_eval_bn_mode_freezes_running_statistics() -> None:
    torch.manual_seed(2)
    model = small_bn_net()
    params, buffers = model_state(model)
    out = local_update(model, params, buffers, make_data(), LocalRecipe(lr=0.05, bn_mode="eval", batch_size=4))
    for name, value in buffers.items():
        assert torch.equal(out.buffers[name], value)
    ref = copy.deepcopy(model)
    ref.eval()  # eval-mode BN; no dropout in this net, so the whole net in eval equals BN-eval training
    opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    data = make_data()
    for idx in batch_schedule(len(data), LocalRecipe(batch_size=4)):
        opt.zero_grad()
        nn.functional.cross_entropy(ref(data.x[idx]), data.y[idx]).backward()
        opt.step()
    for name, value in ref.named_parameters():
        torch.testing.assert_close(out.params[name], value.detach(), atol=1e-5, rtol=0)


def test_update_gradient_matches_finite_differences() -> None:
    """d(update)/d(images) with BN in train mode and 2 local steps, in double precision."""
    torch.manual_seed(3)
    model = small_bn_net().double()
    params, buffers = model_state(model)
    data = make_data(n=4, dtype=torch.float64)
    recipe = LocalRecipe(lr=0.1, batch_size=2, shuffle=False)  # 2 steps
    weights = {k: torch.randn_like(v) for k, v in params.items()}

    def scalar_of_update(x: torch.Tensor) -> torch.Tensor:
        out = local_update(model, params, buffers, LocalData(x, data.y), recipe, create_graph=True)
        delta = out.delta(params)
        value = sum((weights[k] * delta[k]).sum() for k in delta)
        return value + sum(out.buffers[k].sum() for k in out.buffers if "running" in k)

    x = data.x.clone().requires_grad_(True)
    (analytic,) = torch.autograd.grad(scalar_of_update(x), x)
    g = torch.Generator().manual_seed(0)
    h = 1e-6
    for _ in range(4):  # directional derivatives along random directions, central differences
        d = torch.randn(x.shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            numeric = (scalar_of_update(data.x + h * d) - scalar_of_update(data.x - h * d)) / (2 * h)
        torch.testing.assert_close((analytic * d).sum(), numeric, rtol=1e-5, atol=1e-7)


def test_no_graph_kept_without_create_graph() -> None:
    model = small_bn_net()
    data = make_data()
    x = data.x.clone().requires_grad_(True)
    out = local_update(model, None, None, LocalData(x, data.y), LocalRecipe(batch_size=4))
    assert all(v.grad_fn is None and not v.requires_grad for v in out.params.values())


def test_gradient_only_returns_the_step_gradient_and_leaves_params() -> None:
    torch.manual_seed(6)
    model = small_bn_net()
    params, buffers = model_state(model)
    data = make_data(n=4)
    recipe = LocalRecipe(lr=0.1, steps=1, batch_size=4, shuffle=False)
    x = data.x.clone().requires_grad_(True)
    full = local_update(model, params, buffers, LocalData(x, data.y), recipe, create_graph=True)
    only = local_update(model, params, buffers, LocalData(x, data.y), recipe, create_graph=True, gradient_only=True)
    for k, p in params.items():
        assert only.params[k] is p  # no optimizer step
        # one plain SGD step: the full replay's delta is -lr times the gradient the short one returns
        torch.testing.assert_close(full.params[k] - p, -0.1 * only.per_step[0].grads[k])
    assert all(torch.equal(full.buffers[k], only.buffers[k]) for k in buffers)  # BN statistics still updated
    with pytest.raises(ValueError, match="one-step"):
        local_update(model, params, buffers, data, LocalRecipe(lr=0.1, steps=2, batch_size=2), gradient_only=True)


def test_vmap_over_trials_equals_separate_calls() -> None:
    torch.manual_seed(4)
    model = small_bn_net()
    params, buffers = model_state(model)
    recipe = LocalRecipe(optimizer="adam", lr=1e-2, batch_size=3, epochs=2, seed=5)
    xs = torch.randn(8, 6, 1, 8, 8)
    y = torch.randint(0, 3, (6,))

    def run(x: torch.Tensor) -> tuple[dict, dict]:
        out = local_update(model, params, buffers, LocalData(x, y), recipe)
        return out.params, out.buffers

    batched_params, batched_buffers = vmap(run)(xs)
    for i in range(8):
        single_params, single_buffers = run(xs[i])
        for k, v in single_params.items():
            torch.testing.assert_close(batched_params[k][i], v, atol=1e-6, rtol=1e-5)
        for k, v in single_buffers.items():
            torch.testing.assert_close(batched_buffers[k][i], v, atol=1e-6, rtol=1e-5)


def test_soft_labels_are_differentiable() -> None:
    model = small_bn_net()
    data = make_data(n=4)
    params, buffers = model_state(model)
    soft = torch.full((4, 3), 1 / 3, requires_grad=True)
    out = local_update(model, params, buffers, LocalData(data.x, soft), LocalRecipe(batch_size=4),
                       create_graph=True)
    loss = sum(d.pow(2).sum() for d in out.delta(params).values())
    (g,) = torch.autograd.grad(loss, soft)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_dropout_noise_is_recorded_and_replayable() -> None:
    torch.manual_seed(5)
    model = small_bn_net(dropout=0.5)
    data = make_data()
    recipe = LocalRecipe(batch_size=5, seed=0)  # 4 steps
    params, buffers = model_state(model)
    first = local_update(model, params, buffers, data, recipe, generator=torch.Generator().manual_seed(9))
    assert sorted(first.noise) == [f"7@{t}" for t in range(4)]
    rates = torch.stack([m.mean() for m in first.noise.values()])
    assert 0.3 < float(rates.mean()) < 0.7  # Bernoulli(1 - p) masks
    replay = local_update(model, params, buffers, data, recipe, noise=first.noise)
    other = local_update(model, params, buffers, data, recipe, generator=torch.Generator().manual_seed(10))
    for k in first.params:
        assert torch.equal(replay.params[k], first.params[k])
    assert any(not torch.equal(other.params[k], first.params[k]) for k in first.params)
    # an attacker may optimise the masks: they are differentiable inputs
    masks = {k: v.clone().requires_grad_(True) for k, v in first.noise.items()}
    out = local_update(model, params, buffers, data, recipe, noise=masks, create_graph=True)
    grads = torch.autograd.grad(sum(d.sum() for d in out.delta(params).values()), list(masks.values()))
    assert all(torch.isfinite(g).all() for g in grads)


def test_explicit_batches_and_fixed_steps() -> None:
    model = small_bn_net()
    data = make_data(n=8)
    recipe = LocalRecipe(batch_size=4, steps=5, shuffle=False)
    schedule = batch_schedule(8, recipe)
    assert [s.tolist() for s in schedule] == [[0, 1, 2, 3], [4, 5, 6, 7]] * 2 + [[0, 1, 2, 3]]
    by_data = local_update(model, None, None, data, recipe)
    by_batches = local_update(model, None, None, [(data.x[i], data.y[i]) for i in schedule], recipe)
    for k in by_data.params:
        assert torch.equal(by_data.params[k], by_batches.params[k])


def test_invalid_recipe_is_rejected_with_reasons() -> None:
    with pytest.raises(ValueError, match="lr must be a positive"):
        LocalRecipe(lr=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        LocalRecipe(batch_size=0)


class _ClipMean:
    """Test transform: per-example clipping to norm C, then the batch mean (DP-SGD without noise)."""

    per_sample = True

    def __init__(self, clip: float) -> None:
        self.clip = clip
        self.seen: list[dict] = []

    def __call__(self, grads, *, step, batch_size):
        self.seen.append({k: v.detach().clone() for k, v in grads.items()})
        norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
        scale = (self.clip / (norms + 1e-12)).clamp(max=1.0)
        return {k: (g * scale.view(-1, *[1] * (g.dim() - 1))).sum(0) / batch_size for k, g in grads.items()}


def test_per_sample_step_transform_gets_per_example_gradients() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.Tanh(), nn.Linear(5, 3))
    data = make_data(n=6)
    params, buffers = model_state(model)
    clip = _ClipMean(clip=1e9)  # no clipping: the mean of per-example gradients is the batch gradient
    recipe = LocalRecipe(lr=0.1, batch_size=3, shuffle=False, step_transforms=(clip,))
    out = local_update(model, params, buffers, data, recipe)
    plain = local_update(model, params, buffers, data, LocalRecipe(lr=0.1, batch_size=3, shuffle=False))
    for k in params:
        torch.testing.assert_close(out.params[k], plain.params[k], atol=1e-6, rtol=1e-5)
    # the transform saw one gradient per example, equal to that example's own gradient
    ref = copy.deepcopy(model)
    for i in range(3):
        ref.zero_grad()
        nn.functional.cross_entropy(ref(data.x[i:i + 1]), data.y[i:i + 1]).backward()
        for k, p in ref.named_parameters():
            torch.testing.assert_close(clip.seen[0][k][i], p.grad, atol=1e-6, rtol=1e-5)
    # with a small clip norm the update shrinks accordingly
    tight = local_update(model, params, buffers, data,
                         LocalRecipe(lr=0.1, batch_size=3, shuffle=False, step_transforms=(_ClipMean(1e-3),)))
    moved = sum(float((tight.params[k] - params[k]).norm()) for k in params)
    assert 0 < moved < 2 * 0.1 * 1e-3 * len(params)


def test_per_sample_transform_refuses_batchnorm_in_train_mode() -> None:
    with pytest.raises(ValueError, match="per-sample"):
        local_update(small_bn_net(), None, None, make_data(),
                     LocalRecipe(batch_size=4, step_transforms=(_ClipMean(1.0),)))


def test_bound_functional_forwards_train_the_same_and_behave_outside() -> None:
    torch.manual_seed(5)
    model = small_bn_net(dropout=0.5)
    data = make_data()
    recipe = LocalRecipe(batch_size=5, seed=0)  # 4 steps, BatchNorm in training mode, dropout
    params, buffers = model_state(model)
    plain = local_update(model, params, buffers, data, recipe, generator=torch.Generator().manual_seed(9))
    bound = bind_functional(copy.deepcopy(model))
    assert all("forward" in vars(m) for m in bound.modules() if isinstance(m, (nn.BatchNorm2d, nn.Dropout)))
    out = local_update(bound, params, buffers, data, recipe, generator=torch.Generator().manual_seed(9))
    for k in plain.params:
        assert torch.equal(out.params[k], plain.params[k])
    for k in plain.buffers:
        assert torch.equal(out.buffers[k], plain.buffers[k])
    assert all(torch.equal(out.noise[k], plain.noise[k]) for k in plain.noise)
    assert "forward" not in vars(model[1])  # the unbound model was patched for the call only
    # outside local training a bound module is the plain module (eval and train mode, running stats updated)
    x = data.x[:6]
    for train in (False, True):
        reference, twin = copy.deepcopy(model).train(train), copy.deepcopy(bound).train(train)
        torch.manual_seed(1)
        expected = reference(x)
        torch.manual_seed(1)
        torch.testing.assert_close(twin(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(twin[1].running_mean, reference[1].running_mean, rtol=0, atol=0)
    # a deep copy of a bound model computes with its own BatchNorm (not the original's)
    twin = copy.deepcopy(bound).eval()
    with torch.no_grad():
        twin[1].weight.mul_(2.0)
    assert twin[1].forward.__self__ is twin[1]
    assert not torch.equal(twin(x), bound.eval()(x))
