"""Imprint module of "Robbing the Fed": the recovery formula, its variants, the expectations and the inspection."""

from __future__ import annotations

import copy
import itertools
import math
from collections import Counter

import pytest
import torch
from torch import nn

from gradleak.attacks.base import ATTACKS, AttackError
from gradleak.attacks.imprint import (
    ImprintAttack,
    ImprintBlock,
    ImprintSecrets,
    bin_edges,
    expected_recovery,
    insert_imprint,
    one_shot_success,
    reference_features,
    simulate_recovery,
)
from gradleak.attacks.inspect import inspect_model
from gradleak.fl import LocalData, LocalRecipe, local_update, model_state
from gradleak.models import DEFAULT_INPUTS, MODELS, create_model
from gradleak.records import ClientUpdate, GlobalState, ServerView

MEAN, STD = (0.5, 0.4, 0.45), (0.25, 0.3, 0.2)


SHAPE = (3, 8, 8)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(R, N) PSNR of every output against every original."""
    return 10 * torch.log10(1.0 / ((a[:, None] - b[None]) ** 2).flatten(2).mean(2).clamp_min(1e-30))


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def images(n: int, seed: int, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    """8-bit images with a per-image brightness, so that h spreads like real data."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 1, 1, generator=g) * 0.6 + 0.2
    noise = torch.rand(n, *shape, generator=g) * 0.4 - 0.2
    return ((base + noise).clamp(0, 1) * 255).round() / 255


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(SHAPE), 10))


def attack_view(model: nn.Module, secrets: ImprintSecrets, pixels: torch.Tensor, recipe: LocalRecipe | None = None,
                *, keep_buffers: bool = True) -> ServerView:
    x = normalize(pixels)
    y = torch.arange(len(x)) % 10
    params, buffers = model_state(model)
    recipe = recipe or LocalRecipe(lr=0.1, steps=1, batch_size=len(x), shuffle=False)
    out = local_update(model, params, buffers, LocalData(x, y), recipe)
    update = ClientUpdate(0, 0, out.delta(params), out.buffers if keep_buffers else {}, num_examples=len(x))
    return ServerView(model=lambda: copy.deepcopy(model), global_state=GlobalState(0, params, buffers),
                      updates=[update], image_shape=SHAPE, num_classes=10, mean=MEAN, std=STD,
                      secrets=secrets)


def occupancy(pixels: torch.Tensor, secrets: ImprintSecrets) -> Counter[int]:
    h = normalize(pixels).flatten(1).double() @ secrets.measurement
    edges = torch.tensor(secrets.edges, dtype=torch.float64)
    return Counter((torch.bucketize(h, edges, right=True) - 1).tolist())


# ---------------------------------------------------------------- expectations


def brute_force_configurations(n: int, k: int) -> float:
    """Mean number of singly occupied bins over all occupancy configurations, each counted once."""
    configs = [c for c in itertools.product(range(n + 1), repeat=k) if sum(c) == n]
    return sum(sum(1 for x in c if x == 1) for c in configs) / len(configs)


def test_proposition_1_as_printed() -> None:
    # the paper's Fig. 2a: with 156 bins an attacker "can expect to recover over 50%" of a batch of 64
    assert 0.5 < expected_recovery(64, 156, model="paper") / 64 < 0.501
    assert expected_recovery(64, 128, model="paper") == pytest.approx(28.168613943, abs=1e-8)
    assert expected_recovery(256, 512, model="paper") == pytest.approx(113.500483386, abs=1e-8)
    # the printed sum is the stars-and-bars mean (configurations equally likely) minus the n/k tail
    for n, k in [(3, 4), (4, 6), (5, 7)]:
        assert expected_recovery(n, k, model="paper") == pytest.approx(brute_force_configurations(n, k) - n / k,
                                                                        abs=1e-12)
    with pytest.raises(ValueError, match="k > n > 2"):
        expected_recovery(8, 8, model="paper")


def test_iid_expectation_matches_enumeration_and_monte_carlo() -> None:
    n, k = 3, 4  # every assignment of 3 independent inputs to 4 bins, equally likely
    exact = sum(sum(1 for b in a if a.count(b) == 1) for a in itertools.product(range(k), repeat=n)) / k**n
    assert expected_recovery(n, k) == pytest.approx(exact, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    for n, k in [(8, 16), (64, 128)]:
        mean, se = simulate_recovery(n, k, 20_000, g)
        assert abs(mean - expected_recovery(n, k)) < 3 * se  # 3 standard errors: a seeded test must not flake
    assert expected_recovery(64, 128) == pytest.approx(39.0469, abs=1e-4)
    assert one_shot_success(4096, 1 / 4096) == pytest.approx(math.exp(-1), abs=1e-4)


def test_bin_edges_have_equal_mass() -> None:
    probs = torch.linspace(0, 1, 5, dtype=torch.float64)
    gauss = bin_edges(probs, "gaussian", loc=1.0, scale=2.0)
    assert gauss[2] == pytest.approx(1.0) and gauss[1] == pytest.approx(1.0 - 2.0 * 0.6744897502, abs=1e-8)
    lap = bin_edges(probs, "laplace", loc=0.0, scale=1.0)
    assert lap[1] == pytest.approx(-math.log(2), abs=1e-12)
    values = torch.arange(101, dtype=torch.float64)
    emp = bin_edges(probs, "empirical", values=values)
    assert emp[1:4].tolist() == [25.0, 50.0, 75.0] and emp[0] < 0 and emp[4] > 100
    with pytest.raises(ValueError, match="public data"):
        bin_edges(probs, "empirical")


# ---------------------------------------------------------------- FedSGD recovery


@pytest.mark.parametrize("measurement", ["brightness", "random", "fourier"])
def test_fedsgd_single_bins_verbatim_and_collisions_flagged(measurement: str) -> None:
    public = normalize(images(400, seed=1))
    model, secrets = insert_imprint(tiny_model(), ImprintBlock(num_bins=32, measurement=measurement), SHAPE,
                                    public=public, generator=torch.Generator().manual_seed(0))
    pixels = images(16, seed=2)
    rec = ImprintAttack()(attack_view(model, secrets, pixels))
    counts = occupancy(pixels, secrets)
    singles = sum(1 for c in counts.values() if c == 1)
    collisions = sum(1 for c in counts.values() if c > 1)
    assert singles >= 5  # the test exercises both cases
    assert int(rec.valid.sum()) == singles and int((~rec.valid).sum()) == collisions
    best = psnr(rec.images, pixels).max(1).values
    assert float(best[rec.valid].min()) >= 60.0       # every valid output is an input verbatim
    assert bool((best[~rec.valid] < 60.0).all())
    assert float(rec.images.min()) >= 0.0 and float(rec.images.max()) <= 1.0
    only = ImprintAttack(include_collisions=False)(attack_view(model, secrets, pixels))
    assert len(only.images) == singles and bool(only.valid.all())


def test_module_keeps_the_model_and_its_output() -> None:
    base = tiny_model()
    before = copy.deepcopy(base.state_dict())
    model, secrets = insert_imprint(base, ImprintBlock(num_bins=16), SHAPE, public=normalize(images(100, 1)))
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # the input is not modified
    x = normalize(images(4, 3))
    with torch.no_grad():
        out, ref = model(x), base(x)
    assert out.shape == ref.shape and float((out - ref).abs().max()) < 0.05 * float(ref.abs().max())
    names = dict(model.named_parameters())
    assert names[secrets.weight].shape == (16, math.prod(SHAPE))
    assert {type(m).__name__ for m in model.modules()} <= {"Sequential", "ImprintBottleneck", "Linear", "ReLU",
                                                            "Flatten"}


def test_evasions_do_not_stop_the_attack() -> None:
    public = normalize(images(400, seed=1))
    block = ImprintBlock(num_bins=32, extra_rows=16, permute=True)
    model, secrets = insert_imprint(tiny_model(), block, SHAPE, public=public,
                                    generator=torch.Generator().manual_seed(0))
    assert sorted(secrets.rows) != list(secrets.rows)  # the bins are permuted
    pixels = images(16, seed=2)
    rec = ImprintAttack()(attack_view(model, secrets, pixels))
    singles = sum(1 for c in occupancy(pixels, secrets).values() if c == 1)
    assert int(rec.valid.sum()) == singles
    assert float(psnr(rec.images, pixels).max(1).values[rec.valid].min()) >= 60.0


def test_several_updates_and_missing_secrets() -> None:
    model, secrets = insert_imprint(tiny_model(), ImprintBlock(num_bins=32), SHAPE, public=normalize(images(300, 1)))
    a, b = attack_view(model, secrets, images(8, 4)), attack_view(model, secrets, images(8, 5))
    both = ServerView(model=a.model, global_state=a.global_state, updates=[a.update, b.update], image_shape=SHAPE,
                      num_classes=10, mean=MEAN, std=STD, secrets=a.secrets)
    rec = ImprintAttack()(both)
    assert len(rec.images) == len(ImprintAttack()(a).images) + len(ImprintAttack()(b).images)
    assert ATTACKS.get("imprint") is ImprintAttack
    bare = ServerView(model=a.model, global_state=a.global_state, updates=a.updates, image_shape=SHAPE,
                      num_classes=10)
    with pytest.raises(AttackError, match="secrets"):
        ImprintAttack()(bare)


def test_one_shot_fishes_one_input_from_an_aggregate() -> None:
    pixels = images(512, seed=6)
    block = ImprintBlock(variant="one-shot", aggregate_size=16)  # a bin of mass 1/16: often exactly one of 16
    model, secrets = insert_imprint(tiny_model(), block, SHAPE, public=normalize(images(2000, 7)))
    assert len(secrets.rows) == 2 and secrets.targets == (True, False)
    outcomes = Counter()
    for t in range(8):
        batch = pixels[16 * t: 16 * t + 16]
        rec = ImprintAttack()(attack_view(model, secrets, batch))
        inside = occupancy(batch, secrets).get(0, 0)
        assert len(rec.images) == min(inside, 1)  # only the target bin is read
        if inside == 1:
            assert bool(rec.valid.all()) and float(psnr(rec.images, batch).max()) >= 60.0
        elif inside > 1:
            assert not bool(rec.valid.any())
        outcomes[min(inside, 2)] += 1
    assert outcomes[1] >= 1


def test_sparse_variant_under_fedavg_local_steps() -> None:
    public = normalize(images(400, seed=1))
    model, secrets = insert_imprint(tiny_model(), ImprintBlock(num_bins=64, variant="sparse"), SHAPE, public=public,
                                    generator=torch.Generator().manual_seed(0))
    pixels = images(16, seed=8)
    recipe = LocalRecipe(lr=0.1, batch_size=4, steps=4, shuffle=False)
    rec = ImprintAttack()(attack_view(model, secrets, pixels, recipe))
    best = psnr(rec.images, pixels).max(1)
    assert float(best.values[rec.valid].min()) >= 60.0
    identified = set(best.indices[rec.valid].tolist())
    assert len(identified) == int(rec.valid.sum())  # no input returned twice
    assert len(identified) >= 10  # expectation over distinct bins: 64·(1 − (63/64)^16) ≈ 14.3


# ---------------------------------------------------------------- deeper placement


@pytest.mark.parametrize(("position", "size", "bn_mode"), [("layer2", 8, "train"), ("layer3", 4, "train"),
                                                          ("layer3", 4, "eval")])
def test_deeper_placement_recovers_downsampled_inputs(position: str, size: int, bn_mode: str) -> None:
    torch.manual_seed(0)
    base = create_model("resnet18", image_size=8)
    model, secrets = insert_imprint(base, ImprintBlock(num_bins=32), SHAPE, position=position,
                                    public=normalize(images(96, 1)), batch_size=12, bn_mode=bn_mode)
    pixels = images(12, seed=9)
    recipe = LocalRecipe(lr=0.1, steps=1, batch_size=12, shuffle=False, bn_mode=bn_mode)
    view = attack_view(model, secrets, pixels, recipe)
    if bn_mode == "eval":
        view = ServerView(**{**view.__dict__, "recipe": recipe})
    rec = ImprintAttack()(view)
    reference = reference_features(pixels, secrets)
    assert rec.images.shape[1:] == (3, size, size) == reference.shape[1:]
    assert int(rec.valid.sum()) >= 4
    assert float(psnr(rec.images, reference).max(1).values[rec.valid].min()) >= 60.0


def test_deeper_placement_needs_the_bn_buffers_in_training_mode() -> None:
    torch.manual_seed(0)
    model, secrets = insert_imprint(create_model("resnet18", image_size=8), ImprintBlock(num_bins=8), SHAPE,
                                    position="layer2", public=normalize(images(48, 1)), batch_size=12)
    view = attack_view(model, secrets, images(12, 9), keep_buffers=False)
    with pytest.raises(AttackError, match="buffers"):
        ImprintAttack()(view)
    with pytest.raises(ValueError, match="position"):
        insert_imprint(tiny_model(), ImprintBlock(), SHAPE, position="layer9")


# ---------------------------------------------------------------- inspection


def test_inspection_flags_imprints_and_their_evasions() -> None:
    public = normalize(images(200, 1))
    blocks = [ImprintBlock(num_bins=32), ImprintBlock(num_bins=32, variant="sparse", measurement="random"),
              ImprintBlock(variant="one-shot", aggregate_size=64, measurement="fourier"),
              ImprintBlock(num_bins=32, extra_rows=32, permute=True)]
    for block in blocks:
        model, secrets = insert_imprint(tiny_model(), block, SHAPE, public=public,
                                        generator=torch.Generator().manual_seed(0))
        report = inspect_model(model)
        down = next(f for f in report.layers if f.name == secrets.weight.rsplit(".", 1)[0])
        assert down.flagged, block
        assert down.collinear_rows == len(secrets.rows)
        assert down.monotone == (not block.permute)
    assert not inspect_model(tiny_model()).flagged


@pytest.mark.parametrize("name", MODELS.names())
def test_inspection_has_no_false_positive_on_the_zoo(name: str) -> None:
    c, s = DEFAULT_INPUTS[name][1][:2]
    torch.manual_seed(0)
    report = inspect_model(create_model(name, in_channels=c, image_size=s))
    assert not report.flagged, report.summary()
