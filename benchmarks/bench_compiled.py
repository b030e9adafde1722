"""The compiled attack iteration against the eager one, per model and defense (what ``compile="auto"`` relies on).

Each case builds the views of ``--victims`` CIFAR-10 test images (one image each, one SGD step, the audit's shape:
victims attacked together, vectorised), the attack's problem eager (``compile=False``) and compiled
(``compile=True``), and times ``value_and_grad`` (objective and gradient of one iteration) at the same start:
the median of ``--blocks`` blocks of ``--iterations`` calls each, after warm-up calls; the first compiled call
(the compilation, from the on-disk cache when it holds the problem) is reported apart. Cases: the ``cnn``
undefended (inverting-gradients), with CVB and with PRECODE (vbia: its ε is a variable, so compiled and eager
compute the same), LeNet and ResNet-8 undefended. A compiled iteration slower than the eager one is a regression
of :mod:`gradleak.attacks.unfold` (``compile="auto"`` would then go back to eager after its check).

Usage: ``python benchmarks/bench_compiled.py [--threads 1] [--victims 32] [--cases cnn cnn-cvb ...]``; writes
``benchmarks/results/bench_compiled_cpu.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradleak.attacks import ATTACKS
from gradleak.attacks.compiling import has_compiler
from gradleak.attacks.replay import split_generators
from gradleak.audit import simulate_and_attack
from gradleak.data import load_dataset
from gradleak.models import create_model
from provenance import provenance

RESULTS = Path(__file__).parent / "results"
#: name -> (model, model options, defenses, attack)
CASES: dict[str, tuple[str, dict[str, Any], list[str], str]] = {
    "cnn": ("cnn", {"in_channels": 3}, [], "inverting-gradients"),
    "cnn-cvb": ("cnn", {"in_channels": 3}, ["cvb"], "vbia"),
    "cnn-precode": ("cnn", {"in_channels": 3}, ["precode"], "vbia"),
    "lenet": ("lenet", {}, [], "inverting-gradients"),
    "resnet8": ("resnet8", {}, [], "inverting-gradients"),
}


def _seconds_per_call(fn, iterations: int, blocks: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(blocks):
        started = time.perf_counter()
        for _ in range(iterations):
            fn()
        times.append((time.perf_counter() - started) / iterations)
    return statistics.median(times)


def run_case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    model_name, options, defenses, attack_name = CASES[name]
    ds = load_dataset("cifar10", split="test")
    idx = np.random.default_rng(0).permutation(len(ds.labels))[:args.victims].tolist()
    x, y = ds.tensors(idx, size=32)
    torch.manual_seed(0)
    model = create_model(model_name, **options)
    views = list(simulate_and_attack(model, x, y, recipe="fedsgd", attack="inverting-gradients",
                                     attack_options={"iterations": 0}, defenses=defenses, victims="each",
                                     mean=ds.mean, std=ds.std, generator=torch.Generator().manual_seed(1)).views)
    attack = ATTACKS.create(attack_name, tv=1e-2, compile=False)
    eager = attack.problem(views)
    compiled = dataclasses.replace(attack, compile=True).problem(views)
    start = eager.initial(split_generators(torch.Generator().manual_seed(2), len(views)))
    started = time.perf_counter()
    compiled.value_and_grad(start)
    compile_seconds = time.perf_counter() - started
    row = {"case": name, "model": model_name, "defenses": defenses, "attack": attack_name, "victims": len(views),
           "compile_seconds": compile_seconds,
           "eager_seconds_per_iteration": _seconds_per_call(lambda: eager.value_and_grad(start), args.iterations,
                                                            args.blocks),
           "compiled_seconds_per_iteration": _seconds_per_call(lambda: compiled.value_and_grad(start),
                                                               args.iterations, args.blocks)}
    row["speedup"] = row["eager_seconds_per_iteration"] / row["compiled_seconds_per_iteration"]
    print(f"{name:<12} {attack_name:<20} {len(views)} victims: eager {row['eager_seconds_per_iteration'] * 1e3:7.2f} "
          f"ms, compiled {row['compiled_seconds_per_iteration'] * 1e3:7.2f} ms ({row['speedup']:.2f}x); "
          f"first compiled call {compile_seconds:.1f} s", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--victims", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=10, help="calls per timed block")
    parser.add_argument("--blocks", type=int, default=3, help="timed blocks (the median is reported)")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    if not has_compiler(torch.device("cpu")):
        print("bench_compiled: skipped, torch.compile needs a C++ compiler (g++ or clang++) on a CPU")
        return
    torch.set_num_threads(args.threads)
    rows = [run_case(name, args) for name in args.cases]
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "bench_compiled_cpu.json"
    path.write_text(json.dumps({"provenance": provenance(), "settings": vars(args), "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
