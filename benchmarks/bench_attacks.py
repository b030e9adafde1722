"""Speed of the optimisation attacks: inverting-gradients iterations per second, and the cost of one attack
iteration relative to one plain training step (forward + backward) of the same model and batch.

Configurations: the ``cnn`` (1×32×32) and ResNet-18 (3×32×32, CIFAR stem), batch 1 and 8, 1 trial and 32 trials
(restarts of one victim, vectorised). One attack iteration = replaying the client's step with
``create_graph=True`` for every trial, the cosine objective, its gradient with respect to the dummy images
(double backward), and the signed-Adam step. The plain step is ``model(x)``, cross-entropy, ``backward()`` on
an ``nn.Module`` (no functional machinery). Two ratios: to T plain steps of the batch (T trials), and to one
plain step on all T trials' images stacked into one batch (the physical floor of a double-backward attack
iteration is about 3 of those).

Usage: ``python benchmarks/bench_attacks.py [--device cuda] [--threads 1] [--quick]``; writes
``benchmarks/results/bench_attacks_<device>.json`` and prints one line per configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gradleak.attacks.inverting_gradients import InvertingGradients
from gradleak.attacks.optimize import minimize
from gradleak.fl import LocalData, LocalRecipe, local_update, model_state
from gradleak.models import create_model
from gradleak.records import ClientUpdate, GlobalState, ServerView
from provenance import provenance

RESULTS = Path(__file__).parent / "results"
MODELS = {"cnn": (1, {"in_channels": 1}), "resnet18": (3, {"in_channels": 3, "image_size": 32})}


class _Factory:
    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def __call__(self) -> torch.nn.Module:
        return self.module


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, repeats: int, device: torch.device, warm: bool = True) -> float:
    if warm:
        fn()
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - started) / repeats


def bench(name: str, batch: int, trials: int, iterations: int, device: torch.device, heavy: bool = False,
          blocks: int = 5) -> dict:
    """One configuration; ``heavy`` skips the warm-up runs (minutes per iteration on a CPU)."""
    channels, options = MODELS[name]
    torch.manual_seed(0)
    model = create_model(name, **options).to(device)
    params, buffers = model_state(model)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, channels, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    recipe = LocalRecipe(lr=0.01, steps=1, batch_size=batch, shuffle=False)
    out = local_update(model, params, buffers, LocalData(x, y), recipe)
    view = ServerView(model=_Factory(model), global_state=GlobalState(0, params, buffers),
                      updates=(ClientUpdate(0, 0, out.delta(params), out.buffers, num_examples=batch),),
                      image_shape=(channels, 32, 32), num_classes=10, labels=y, num_images=batch, recipe=recipe)
    attack = InvertingGradients(iterations=iterations, restarts=trials, labels="known")
    problem = attack.problem([view])
    start = problem.initial([torch.Generator().manual_seed(1)])

    def attack_run(k: int) -> None:
        minimize(problem.objective, start, iterations=k, optimizer=attack.optimizer_config(),
                 project=problem.project, trace_every=10, value_and_grad=problem.value_and_grad)

    module = create_model(name, **options).to(device).train()

    def plain_step() -> None:
        module.zero_grad(set_to_none=True)
        F.cross_entropy(module(x), y).backward()

    # Interleaved blocks, medians: a block times `iterations` attack iterations (minimize ends with one more
    # objective evaluation, timed alone with 0 iterations and subtracted), then as many plain steps; the ratio is
    # taken within each block, so a load change between blocks does not bias it (one long block each did).
    warm = heavy is False
    if warm:
        attack_run(1)
        plain_step()
    per_iteration_blocks, step_blocks = [], []
    for _ in range(blocks):
        per_iteration_blocks.append((_timed(lambda: attack_run(iterations), 1, device, False)
                                     - _timed(lambda: attack_run(0), 1, device, False)) / iterations)
        step_blocks.append(_timed(plain_step, max(3, iterations), device, False))
    per_iteration = statistics.median(per_iteration_blocks)
    step = statistics.median(step_blocks)
    ratio = statistics.median(a / b for a, b in zip(per_iteration_blocks, step_blocks, strict=True)) / trials
    peak = _peak_rss_gib()
    xs, ys = x.repeat(trials, 1, 1, 1), y.repeat(trials)

    def plain_stacked_step() -> None:  # all trials' images as one batch: the floor for vectorised trials
        module.zero_grad(set_to_none=True)
        F.cross_entropy(module(xs), ys).backward()

    stacked = step if trials == 1 else _timed(plain_stacked_step, max(3, iterations // 4), device)
    return {"model": name, "batch": batch, "trials": trials, "iterations_timed": iterations,
            "seconds_per_iteration": per_iteration, "iterations_per_second": 1.0 / per_iteration,
            "trial_iterations_per_second": trials / per_iteration, "plain_step_seconds": step,
            "ratio_to_plain_steps": ratio, "blocks": blocks, "seconds_per_iteration_blocks": per_iteration_blocks,
            "plain_step_seconds_blocks": step_blocks, "plain_stacked_step_seconds": stacked,
            "ratio_to_stacked_plain_step": per_iteration / stacked, "peak_rss_gib_so_far": peak}


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--quick", action="store_true", help="fewer timed iterations")
    parser.add_argument("--full", action="store_true", help="also ResNet-18 batch 8 × 32 trials on a CPU")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for name in args.models:
        for batch in (1, 8):
            for trials in (1, 32):
                work = batch * trials * (60 if name == "resnet18" else 1)  # rough cost in cnn-image units
                heavy = device.type == "cpu" and work > 64
                iterations = 2 if heavy else (20 if args.quick else 50)
                if device.type == "cuda":
                    iterations = 10 if args.quick else 30
                if heavy and work > 8 * 32 * 60 / 2 and not args.full:
                    print(f"{name:<9} batch {batch} trials {trials:>2}: skipped on this CPU (pass --full)")
                    continue
                row = bench(name, batch, trials, iterations, device, heavy, blocks=3 if heavy else 5)
                rows.append(row)
                print(f"{name:<9} batch {batch} trials {trials:>2}: {row['iterations_per_second']:8.2f} it/s "
                      f"({row['trial_iterations_per_second']:8.1f} trial-it/s), plain step "
                      f"{1e3 * row['plain_step_seconds']:.2f} ms, attack iteration = "
                      f"{row['ratio_to_plain_steps']:.1f} plain steps per trial, "
                      f"{row['ratio_to_stacked_plain_step']:.1f} plain steps on all trials' images", flush=True)
    meta = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bench_attacks_{device.type}.json"
    path.write_text(json.dumps({"provenance": provenance(), "meta": meta, "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
