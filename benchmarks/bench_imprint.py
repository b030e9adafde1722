"""Acceptance measurements of the malicious-server attacks of "Robbing the Fed" (issue 6).

1. ``expected_recovery`` (``"iid"`` and ``"paper"``) against a Monte-Carlo of bin occupancy.
2. FedSGD, batch 64 of CIFAR-10, 128 bins before ResNet-18: verbatim recoveries (PSNR ≥ 60 dB against the
   matched original) per batch against ``expected_recovery(64, 128)``; bins from the empirical CDF of *other*
   CIFAR-10 images; collisions, mean PSNR, CPU time of the recovery. Plus a measurement × distribution table on
   a cheap model.
3. One-shot: one aggregate of 64 clients × 64 MNIST images (4096) per trial, summed as secure aggregation does.
4. Sparse variant against FedAvg (8 local steps of batch 8): pixel-space image identifiability (IIP).
5. Deeper placement in a linearised ResNet-18 (before ``layer2``: 32×32, before ``layer3``: 16×16): SSIM of the
   recovered downsampled inputs against the correspondingly downsampled originals.
6. Client-side inspection: detection rate on imprint modules and the paper's evasions, false positives on the zoo.

Images are matched to originals with a linear sum assignment on pixel MSE (scipy), SSIM is scikit-image's.
Run: ``python benchmarks/bench_imprint.py [--quick]``; writes ``benchmarks/results/bench_imprint.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from skimage.metrics import structural_similarity
from torch import nn

from gradleak.attacks.imprint import (
    ImprintAttack,
    ImprintBlock,
    ImprintSecrets,
    expected_recovery,
    insert_imprint,
    one_shot_success,
    reference_features,
    simulate_recovery,
)
from gradleak.attacks.inspect import inspect_model
from gradleak.audit import simulate_and_attack
from gradleak.data import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD, load_dataset, normalize
from gradleak.fl import LocalData, LocalRecipe, local_update, model_state
from gradleak.models import DEFAULT_INPUTS, MODELS, create_model
from gradleak.records import ClientUpdate, GlobalState, Reconstruction, ServerView
from provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results" / "bench_imprint.json"
VERBATIM_DB = 60.0


# ------------------------------------------------------------------ helpers (metrics kept local on purpose)


def psnr_matrix(out: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    mse = ((out[:, None].double() - truth[None].double()) ** 2).flatten(2).mean(2)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-30))


def match(out: torch.Tensor, truth: torch.Tensor) -> list[tuple[int, int]]:
    """Linear sum assignment of outputs to originals on pixel MSE."""
    if len(out) == 0:
        return []
    mse = ((out[:, None].double() - truth[None].double()) ** 2).flatten(2).mean(2)
    rows, cols = linear_sum_assignment(mse.numpy())
    return list(zip(rows.tolist(), cols.tolist(), strict=True))


def identifiability(out: torch.Tensor, truth: torch.Tensor, pool: torch.Tensor) -> float:
    """Pixel-space IIP: share of the batch whose matched output has it as nearest neighbour among batch + pool."""
    candidates = torch.cat([truth, pool]).flatten(1).double()
    hits = 0
    for i, j in match(out, truth):
        d = ((candidates - out[i].flatten().double()) ** 2).sum(1)
        hits += int(d.argmin()) == j
    return hits / len(truth)


def fedsgd_update(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: LocalRecipe
                  ) -> tuple[ClientUpdate, GlobalState]:
    params, buffers = model_state(model)
    out = local_update(model, params, buffers, LocalData(x, y), recipe)
    return ClientUpdate(0, 0, out.delta(params), out.buffers, num_examples=len(x)), GlobalState(0, params, buffers)


def view_of(model: nn.Module, state: GlobalState, update: ClientUpdate, secrets: ImprintSecrets,
            shape: tuple[int, int, int], mean: tuple[float, ...], std: tuple[float, ...]) -> ServerView:
    return ServerView(model=lambda: copy.deepcopy(model), global_state=state, updates=[update], image_shape=shape,
                      num_classes=10, mean=mean, std=std, secrets=secrets)


def occupancy(x_norm: torch.Tensor, secrets: ImprintSecrets) -> torch.Tensor:
    """Inputs per bin (ground truth, for the report only)."""
    h = x_norm.flatten(1).double() @ secrets.measurement
    edges = torch.tensor(secrets.edges, dtype=torch.float64)
    position = torch.bucketize(h, edges, right=True)  # 0: below the first edge, k + 1: above the last
    return torch.bincount(position, minlength=len(edges) + 1)[1:-1]


def grade(rec: Reconstruction, truth: torch.Tensor) -> dict[str, Any]:
    """Verbatim recoveries among valid outputs, collisions, PSNR of the valid outputs (matched)."""
    pairs = match(rec.images, truth)
    p = psnr_matrix(rec.images, truth)
    valid = rec.valid if rec.valid is not None else torch.ones(len(rec.images), dtype=torch.bool)
    matched = [(i, j, float(p[i, j])) for i, j in pairs]
    verbatim_valid = sum(1 for i, _, v in matched if v >= VERBATIM_DB and valid[i])
    verbatim_any = sum(1 for _, _, v in matched if v >= VERBATIM_DB)
    return {
        "outputs": len(rec.images), "valid": int(valid.sum()), "collisions": int((~valid).sum()),
        "verbatim": verbatim_valid, "verbatim_flagged_invalid": verbatim_any - verbatim_valid,
        "valid_not_verbatim": int(valid.sum()) - verbatim_valid,
        "psnr_valid": [v for i, _, v in matched if valid[i]], "recovery_s": rec.wall_time,
    }


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    print(f"\n## {title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths, strict=True)))


def fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


# ------------------------------------------------------------------ 1. expectations


def bench_expectation(draws: int) -> list[dict[str, Any]]:
    out, rows = [], []
    for case, (n, k) in enumerate([(8, 16), (64, 128), (64, 156), (256, 512)]):
        mean, se = simulate_recovery(n, k, draws, torch.Generator().manual_seed(case))
        iid, paper = expected_recovery(n, k, "iid"), expected_recovery(n, k, "paper")
        z = (mean - iid) / se
        out.append({"n": n, "k": k, "iid": iid, "paper": paper, "monte_carlo": mean, "se": se, "z": z,
                    "draws": draws, "within_2se": abs(z) <= 2})
        rows.append([n, k, fmt(paper, 3), fmt(iid, 3), f"{mean:.3f} ± {se:.3f}", fmt(z), abs(z) <= 2])
    table(f"expected verbatim recoveries (Monte-Carlo: {draws} draws)",
          ["n", "k", "paper (Prop. 1)", "iid", "Monte-Carlo", "z", "|z|<=2"], rows)
    return out


# ------------------------------------------------------------------ 2. FedSGD CIFAR-10


def cifar_split() -> tuple[Any, list[int], list[int]]:
    ds = load_dataset("cifar10", split="test")  # sorted by class: split at random
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1)).tolist()
    return ds, perm[:5000], perm[5000:]


def bench_fedsgd(batches: int) -> dict[str, Any]:
    """The acceptance case through the one-call API: ``simulate_and_attack(..., attack="imprint",
    threat="malicious-model")`` — the server inserts 128 bins (empirical CDF of 5000 other CIFAR-10 images)
    before ResNet-18, a client takes one SGD step on its batch of 64, the attack reads the update."""
    ds, attacked, public_idx = cifar_split()
    public, _ = ds.tensors(public_idx)
    torch.manual_seed(0)
    resnet = create_model("resnet18")
    per_batch, rows = [], []
    recipe = LocalRecipe(lr=0.1, steps=1, batch_size=64, shuffle=False)
    for b in range(batches):
        x, y = ds.tensors(attacked[64 * b: 64 * b + 64])
        start = time.perf_counter()
        result = simulate_and_attack(resnet, x, y, recipe=recipe, attack=ImprintAttack(block=ImprintBlock(128)),
                                     threat="malicious-model", public=public, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                                     generator=torch.Generator().manual_seed(b))
        total_s = time.perf_counter() - start
        secrets = result.views[0].secrets
        counts = occupancy(normalize(x, CIFAR10_MEAN, CIFAR10_STD), secrets)
        rec = result.reconstruction
        row = grade(rec, x) | {"singleton_bins": int((counts == 1).sum()), "audit_verbatim": result.metrics["verbatim"],
                               "recovery_s": rec.wall_time, "simulate_and_attack_s": total_s}
        per_batch.append(row)
        rows.append([b, row["singleton_bins"], row["verbatim"], row["audit_verbatim"], row["collisions"],
                     row["valid_not_verbatim"], row["verbatim_flagged_invalid"],
                     fmt(statistics.mean(row["psnr_valid"]), 1), fmt(1e3 * rec.wall_time, 1), fmt(total_s, 1)])
    verbatim = [r["verbatim"] for r in per_batch]
    summary = {
        "batches": batches, "batch_size": 64, "bins": 128, "model": "resnet18 (CIFAR stem)",
        "public": "5000 CIFAR-10 test images disjoint from the attacked ones (empirical CDF of brightness)",
        "verbatim_mean": statistics.mean(verbatim), "verbatim_se": statistics.stdev(verbatim) / math.sqrt(batches),
        "expected_iid": expected_recovery(64, 128, "iid"), "expected_paper": expected_recovery(64, 128, "paper"),
        "singleton_bins_mean": statistics.mean(r["singleton_bins"] for r in per_batch),
        "collisions_mean": statistics.mean(r["collisions"] for r in per_batch),
        "false_valid_total": sum(r["valid_not_verbatim"] for r in per_batch),
        "verbatim_flagged_invalid_total": sum(r["verbatim_flagged_invalid"] for r in per_batch),
        "psnr_mean_recovered": statistics.mean(v for r in per_batch for v in r["psnr_valid"]),
        "psnr_min_recovered": min(v for r in per_batch for v in r["psnr_valid"]),
        "recovery_ms_mean": 1e3 * statistics.mean(r["recovery_s"] for r in per_batch),
        "simulate_and_attack_s_mean": statistics.mean(r["simulate_and_attack_s"] for r in per_batch),
        "api": "gradleak.simulate_and_attack(..., attack=ImprintAttack(block=ImprintBlock(128)), "
               "threat='malicious-model', public=<5000 other images>)",
    }
    table("FedSGD, CIFAR-10 batch 64, 128 bins before ResNet-18",
          ["batch", "singleton bins", "verbatim", "audit verbatim", "collisions", "valid∧¬verbatim",
           "verbatim∧¬valid", "PSNR valid", "recovery ms", "total s"], rows)
    print(f"verbatim per batch {summary['verbatim_mean']:.2f} ± {summary['verbatim_se']:.2f} (iid expectation "
          f"{summary['expected_iid']:.2f}, Prop. 1 {summary['expected_paper']:.2f}); collisions/batch "
          f"{summary['collisions_mean']:.2f}; mean PSNR of recovered {summary['psnr_mean_recovered']:.1f} dB "
          f"(min {summary['psnr_min_recovered']:.1f}); recovery {summary['recovery_ms_mean']:.1f} ms")
    return {"summary": summary, "per_batch": [{k: v for k, v in r.items() if k != "psnr_valid"} for r in per_batch]}


def bench_measurements(batches: int) -> list[dict[str, Any]]:
    """Verbatim recoveries per measurement and distribution on a cheap model (the module is what matters)."""
    ds, attacked, public_idx = cifar_split()
    public, _ = ds.tensors(public_idx)
    public_n = normalize(public, CIFAR10_MEAN, CIFAR10_STD)
    recipe = LocalRecipe(lr=0.1, steps=1, batch_size=64, shuffle=False)
    out, rows = [], []
    for measurement in ("brightness", "random", "fourier"):
        for distribution in ("empirical", "gaussian", "laplace"):
            torch.manual_seed(0)
            block = ImprintBlock(num_bins=128, measurement=measurement, distribution=distribution)
            model, secrets = insert_imprint(create_model("cnn", in_channels=3), block, (3, 32, 32), public=public_n,
                                            generator=torch.Generator().manual_seed(0))
            verbatim, singles = [], []
            for b in range(batches):
                x, y = ds.tensors(attacked[64 * b: 64 * b + 64])
                xn = normalize(x, CIFAR10_MEAN, CIFAR10_STD)
                update, state = fedsgd_update(model, xn, y, recipe)
                rec = ImprintAttack()(view_of(model, state, update, secrets, (3, 32, 32), CIFAR10_MEAN, CIFAR10_STD))
                verbatim.append(grade(rec, x)["verbatim"])
                singles.append(int((occupancy(xn, secrets) == 1).sum()))
            out.append({"measurement": measurement, "distribution": distribution, "verbatim_mean":
                        statistics.mean(verbatim), "singleton_bins_mean": statistics.mean(singles)})
            rows.append([measurement, distribution, fmt(statistics.mean(verbatim)), fmt(statistics.mean(singles))])
    table(f"measurement × distribution (cnn, {batches} batches of 64, 128 bins; iid expectation 39.05)",
          ["h", "CDF", "verbatim/batch", "singleton bins/batch"], rows)
    return out


# ------------------------------------------------------------------ 3. one-shot


def bench_one_shot(trials: int, clients: int = 64, per_client: int = 64) -> dict[str, Any]:
    train, test = load_dataset("mnist", split="train"), load_dataset("mnist", split="test")
    public, _ = test.tensors(list(range(len(test))), size=32)  # the server's data: the test split
    n = clients * per_client
    torch.manual_seed(0)
    block = ImprintBlock(variant="one-shot", aggregate_size=n)
    model, secrets = insert_imprint(create_model("cnn", in_channels=1), block, (1, 32, 32),
                                    public=normalize(public, MNIST_MEAN, MNIST_STD))
    g = torch.Generator().manual_seed(2)
    recipe = LocalRecipe(lr=0.1, steps=1, batch_size=per_client, shuffle=False)
    params, buffers = model_state(model)
    results, inside_counts = [], []
    for _ in range(trials):
        idx = torch.randperm(len(train), generator=g)[:n].tolist()
        x, y = train.tensors(idx, size=32)
        xn = normalize(x, MNIST_MEAN, MNIST_STD)
        total: dict[str, torch.Tensor] = {}
        for c in range(clients):  # secure aggregation: the server sees only the sum of the clients' updates
            part = slice(c * per_client, (c + 1) * per_client)
            delta = local_update(model, params, buffers, LocalData(xn[part], y[part]), recipe).delta(params)
            total = {k: total.get(k, 0) + v for k, v in delta.items()}
        update = ClientUpdate(-1, 0, total, num_examples=n)
        rec = ImprintAttack()(view_of(model, GlobalState(0, params, buffers), update, secrets, (1, 32, 32),
                                      MNIST_MEAN, MNIST_STD))
        g_ = grade(rec, x)
        inside = int(occupancy(xn, secrets)[0])
        inside_counts.append(inside)
        results.append(g_["verbatim"] >= 1)
    rate = sum(results) / trials
    exact_one = sum(1 for c in inside_counts if c == 1) / trials
    summary = {"trials": trials, "aggregate": n, "clients": clients, "success_rate": rate,
               "trials_with_exactly_one_in_bin": exact_one, "expected": one_shot_success(n, 1 / n),
               "mean_inputs_in_bin": statistics.mean(inside_counts)}
    table(f"one-shot: one MNIST image out of a secure aggregate of {clients}×{per_client} = {n}",
          ["trials", "verbatim recovered", "trials with one input in bin", "expected (1−1/n)^(n−1)"],
          [[trials, fmt(rate, 3), fmt(exact_one, 3), fmt(summary["expected"], 3)]])
    return summary


# ------------------------------------------------------------------ 4. sparse vs FedAvg


def bench_sparse(clients: int) -> list[dict[str, Any]]:
    ds, attacked, public_idx = cifar_split()
    public, _ = ds.tensors(public_idx)
    pool, _ = ds.tensors(attacked[2000:4000])  # nearest-neighbour candidates besides the batch
    few = max(2, clients // 3)
    configs = [(128, None, 0.1, clients), (128, None, 0.01, few), (256, None, 0.1, few), (128, 1e-2, 0.1, few),
               (128, 1.0, 0.1, few)]
    out, rows = [], []
    for bins, scale, lr, n_clients in configs:
        torch.manual_seed(0)
        block = ImprintBlock(num_bins=bins, variant="sparse", scale=scale)
        model, secrets = insert_imprint(create_model("resnet18"), block, (3, 32, 32),
                                        public=normalize(public, CIFAR10_MEAN, CIFAR10_STD),
                                        generator=torch.Generator().manual_seed(0))
        recipe = LocalRecipe(lr=lr, steps=8, batch_size=8, shuffle=False)
        iip_all, iip_valid, verbatim = [], [], []
        for c in range(n_clients):
            x, y = ds.tensors(attacked[64 * c: 64 * c + 64])
            update, state = fedsgd_update(model, normalize(x, CIFAR10_MEAN, CIFAR10_STD), y, recipe)
            rec = ImprintAttack()(view_of(model, state, update, secrets, (3, 32, 32), CIFAR10_MEAN, CIFAR10_STD))
            iip_all.append(identifiability(rec.images, x, pool))
            iip_valid.append(identifiability(rec.images[rec.valid], x, pool))
            verbatim.append(grade(rec, x)["verbatim"])
        row = {"bins": bins, "c0": block.c0, "lr": lr, "clients": n_clients, "iip_all_outputs":
               statistics.mean(iip_all), "iip_valid_outputs": statistics.mean(iip_valid),
               "verbatim_mean": statistics.mean(verbatim), "distinct_bins_expected": bins * (1 - (1 - 1 / bins) ** 64)}
        out.append(row)
        rows.append([bins, block.c0, lr, n_clients, fmt(100 * row["iip_all_outputs"], 1),
                     fmt(100 * row["iip_valid_outputs"], 1), fmt(row["verbatim_mean"], 1),
                     fmt(row["distinct_bins_expected"], 1)])
    table("sparse imprint vs FedAvg (8 local steps × batch 8 = 64 CIFAR-10 images, ResNet-18)",
          ["bins", "c0", "lr", "clients", "IIP % (all)", "IIP % (valid)", "verbatim", "E[distinct bins]"], rows)
    return out


# ------------------------------------------------------------------ 5. deeper placement


def bench_deeper(batches: int) -> list[dict[str, Any]]:
    ds, attacked, public_idx = cifar_split()
    public, _ = ds.tensors(public_idx[:1024])
    out, rows = [], []
    for position in ("layer2", "layer3"):
        torch.manual_seed(0)
        model, secrets = insert_imprint(create_model("resnet18"), ImprintBlock(num_bins=128), (3, 32, 32),
                                        position=position, public=normalize(public, CIFAR10_MEAN, CIFAR10_STD),
                                        batch_size=64, generator=torch.Generator().manual_seed(0))
        recipe = LocalRecipe(lr=0.1, steps=1, batch_size=64, shuffle=False)
        ssims, verbatim, valid = [], [], []
        for b in range(batches):
            x, y = ds.tensors(attacked[64 * b: 64 * b + 64])
            update, state = fedsgd_update(model, normalize(x, CIFAR10_MEAN, CIFAR10_STD), y, recipe)
            rec = ImprintAttack()(view_of(model, state, update, secrets, (3, 32, 32), CIFAR10_MEAN, CIFAR10_STD))
            reference = reference_features(x, secrets)
            g_ = grade(rec, reference)
            verbatim.append(g_["verbatim"])
            valid.append(g_["valid"])
            for i, j in match(rec.images, reference):
                if rec.valid[i]:
                    ssims.append(float(structural_similarity(rec.images[i].numpy(), reference[j].numpy(),
                                                             data_range=1.0, channel_axis=0,
                                                             win_size=min(7, reference.shape[-1]))))
        size = tuple(secrets.feature_shape)
        row = {"position": position, "features": size, "image_size": reference.shape[-1], "batches": batches,
               "valid_mean": statistics.mean(valid), "verbatim_mean": statistics.mean(verbatim),
               "ssim_mean": statistics.mean(ssims), "ssim_min": min(ssims),
               "share_ssim_ge_0.9": sum(s >= 0.9 for s in ssims) / len(ssims)}
        out.append(row)
        rows.append([position, "×".join(map(str, size)), f"{reference.shape[-1]}×{reference.shape[-1]}",
                     fmt(row["valid_mean"], 1), fmt(row["verbatim_mean"], 1), fmt(row["ssim_mean"], 4),
                     fmt(row["ssim_min"], 4), fmt(100 * row["share_ssim_ge_0.9"], 1)])
    table(f"deeper placement in linearised ResNet-18 (FedSGD, batch 64, 128 bins, {batches} batches)",
          ["before", "features", "recovered", "valid/batch", "verbatim/batch", "SSIM mean", "SSIM min",
           "% SSIM≥0.9"], rows)
    return out


# ------------------------------------------------------------------ 6. inspection


def perturb(model: nn.Module, secrets: ImprintSecrets, eps: float, g: torch.Generator) -> nn.Module:
    """Evasion: add a random vector of relative norm ``eps`` to every bin row of ``down`` and column of ``up``."""
    model = copy.deepcopy(model)
    params = dict(model.named_parameters())
    down, up = params[secrets.weight], params[secrets.weight.replace("down", "up")]
    with torch.no_grad():
        for r in secrets.rows:
            for vec in (down[r], up[:, r]):  # views: changed in place
                noise = torch.randn(vec.shape, generator=g)
                vec += eps * vec.norm() * noise / noise.norm()
    return model


def attack_rate(model: nn.Module, secrets: ImprintSecrets, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    recipe = LocalRecipe(lr=0.1, steps=1, batch_size=64, shuffle=False)
    found = []
    for x, y in batches:
        update, state = fedsgd_update(model, normalize(x, CIFAR10_MEAN, CIFAR10_STD), y, recipe)
        rec = ImprintAttack()(view_of(model, state, update, secrets, (3, 32, 32), CIFAR10_MEAN, CIFAR10_STD))
        found.append(grade(rec, x)["verbatim"])
    return statistics.mean(found)


def bench_inspection(seeds: int) -> dict[str, Any]:
    ds, attacked, public_idx = cifar_split()
    public = normalize(ds.tensors(public_idx[:1000])[0], CIFAR10_MEAN, CIFAR10_STD)
    batches = [ds.tensors(attacked[64 * b: 64 * b + 64]) for b in range(3)]
    cases: list[tuple[str, Callable[[int], tuple[nn.Module, ImprintSecrets]]]] = []
    for variant in ("cumulative", "sparse", "one-shot"):
        for measurement in ("brightness", "random", "fourier"):
            block = ImprintBlock(num_bins=128, variant=variant, measurement=measurement, aggregate_size=4096)
            cases.append((f"{variant} / {measurement}", _maker(block, public)))
    cases.append(("evasion: 128 random extra rows", _maker(ImprintBlock(num_bins=128, extra_rows=128), public)))
    cases.append(("evasion: permuted bins", _maker(ImprintBlock(num_bins=128, permute=True), public)))
    cases.append(("evasion: extra rows + permuted", _maker(ImprintBlock(num_bins=128, extra_rows=128, permute=True),
                                                           public)))
    for eps in (0.01, 0.1, 1.0, 3.0):
        cases.append((f"evasion: rows perturbed, eps={eps}", _maker(ImprintBlock(num_bins=128), public, eps)))
    cases.append(("deeper: before layer3 of ResNet-18", _maker(ImprintBlock(num_bins=128), public[:256],
                                                               position="layer3")))
    rows, out = [], []
    for name, make in cases:
        flags, rate = [], None
        for seed in range(seeds):
            model, secrets = make(seed)
            flags.append(inspect_model(model).flagged)
            if seed == 0 and (name.startswith("evasion") or name == "cumulative / brightness"):
                rate = attack_rate(model, secrets, batches)
        out.append({"case": name, "detection_rate": sum(flags) / seeds, "seeds": seeds,
                    "verbatim_per_batch_of_64": rate})
        rows.append([name, f"{sum(flags)}/{seeds}", "" if rate is None else fmt(rate, 1)])
    table("inspection: detection of imprint modules", ["module", "flagged", "verbatim/batch (attack still works?)"],
          rows)
    fp_rows, fp = [], []
    for name in MODELS.names():
        c, s = DEFAULT_INPUTS[name][1][:2]
        flagged = 0
        for seed in range(seeds):
            torch.manual_seed(seed)
            flagged += inspect_model(create_model(name, in_channels=c, image_size=s)).flagged
        fp.append({"model": name, "false_positives": flagged, "seeds": seeds})
        fp_rows.append([name, f"{flagged}/{seeds}"])
    table("inspection: false positives on the zoo (random initialisations)", ["model", "flagged"], fp_rows)
    return {"detection": out, "false_positives": fp,
            "false_positive_rate": sum(r["false_positives"] for r in fp) / (seeds * len(fp))}


def _maker(block: ImprintBlock, public: torch.Tensor, eps: float = 0.0, position: str | None = None
           ) -> Callable[[int], tuple[nn.Module, ImprintSecrets]]:
    def make(seed: int) -> tuple[nn.Module, ImprintSecrets]:
        torch.manual_seed(seed)
        base = create_model("resnet18") if position else create_model("cnn", in_channels=3)
        g = torch.Generator().manual_seed(seed)
        model, secrets = insert_imprint(base, block, (3, 32, 32), public=public, position=position, generator=g)
        return (perturb(model, secrets, eps, g) if eps else model), secrets

    return make


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches and trials (a smoke run)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", choices=["expected_recovery", "fedsgd_cifar10",
                        "measurement_distribution", "one_shot_mnist", "sparse_fedavg", "deeper_placement",
                        "inspection"], help="run these sections only (the others keep their last results)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    q = args.quick
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor(),
                    "threads": args.threads, "numpy": np.__version__},
        "quick": q,
    }
    sections = {
        "expected_recovery": lambda: bench_expectation(20_000 if q else 100_000),
        "fedsgd_cifar10": lambda: bench_fedsgd(3 if q else 20),
        "measurement_distribution": lambda: bench_measurements(3 if q else 20),
        "one_shot_mnist": lambda: bench_one_shot(5 if q else 40),
        "sparse_fedavg": lambda: bench_sparse(2 if q else 10),
        "deeper_placement": lambda: bench_deeper(1 if q else 5),
        "inspection": lambda: bench_inspection(2 if q else 5),
    }
    only = args.only or list(sections)
    if args.only and RESULTS.exists():  # rerun some sections, keep the others' last results
        results = {**json.loads(RESULTS.read_text()), **results}
    for name in only:
        results[name] = sections[name]()
    results["wall_s" if not args.only else f"wall_s_{'+'.join(only)}"] = time.perf_counter() - started
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"provenance": provenance(), **results}, indent=2, default=str))
    print(f"\nwrote {RESULTS} in {results['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
