"""Targeted attacks on defended updates (issue 5's acceptance): tables like Scheliga et al. 2024's Tables 1-4.

Setting: MNIST test images padded to 32×32, the untrained ``cnn`` (seeded), FedSGD batch 1 (one step, SGD
lr 0.01), one image per victim, ``--victims`` victims attacked together, defense defaults (DP clip 20 / noise
multiplier 1e-4, pruning 0.5, dropout 0.25, PRECODE K=256, CVB C/2), SSIM = scikit-image's default
(``result.metrics["ssim_per_image"]``), ASR = share of victims with SSIM > 0.5.

Sections (``--only`` picks some; run them in separate processes and merge with ``--merge``):

- ``single``: Tables 1-3 and DIA: wiig/dpia on DP, gpia vs inverting-gradients at pruning 0.9, pig/wiig on
  PRECODE and CVB, inverting-gradients/wiig under dropout; the rows of vbia, dia, gpia at 0.5 and undefended
  inverting-gradients are the ablation's single-defense rows (cdia on one defense is that attack).
- ``ablation``: Table 4's 24 combinations DO × DP × GP × {none, PRECODE, CVB} under ``cdia`` (or, with
  ``--ablation-attack untargeted``, under inverting-gradients / gpia, which do not model the dropout masks or
  the bottleneck's ε: the attack the paper's DP rows with dropout or CVB match).
- ``long``: the acceptance comparisons (gpia/IG at 0.9, vbia/pig, dia/IG, cdia on DP+PM) at
  ``--long-iterations``, and pig/vbia/cdia with DP on PRECODE placed after the first conv block (``PRECODE*``,
  the placement Scheliga et al. 2024b recommend).
- ``cifar``: Tables 1-3's CIFAR-10 rows for the ``cnn`` (3 input channels): IG, WIIG, DPIA under DP (clip 20,
  noise multiplier 1e-3); IG vs GPIA at pruning 0.90/0.95/0.99; PIG, WIIG, VBIA on PRECODE and CVB; plus the
  undefended IG row. Every attack with its *default* options (``--cifar-iterations`` overrides the budget),
  labels known (``informed``; ``well-informed`` for WIIG), victims drawn at random from the test split (seeded;
  the file is sorted by class), each row beside the paper's figure (``PAPER_CIFAR``). ``--cifar-early``: the
  PRECODE rows with PRECODE after the first conv block (``PRECODE*``), beside the same paper rows.
- ``utility``: test accuracy of the FL model trained with each combination (the ``combined-defenses`` preset,
  shortened for CPU: ``--clients-images`` images per client, ``--rounds`` rounds, ``--test-images`` test images).

The attack settings are inverting-gradients' acceptance settings of ``fidelity_attacks.py`` (unsigned Adam,
lr 1.0, step decay, TV 3e-3) with reduced budgets for a shared 2-core CPU (``--iterations``,
``--ablation-iterations``, ``--restarts``); the paper runs up to 20,000 iterations.

``--dp-noise`` changes DP-SGD's noise multiplier in the ablation and utility sections (the paper's Table 1
uses 1e-3, its ablation 1e-4); ``--with DP`` keeps only the rows and combinations with DP (the others do not
depend on it; ``--with DP CVB``: with both). A ``--with`` part merged after older parts replaces their rows of
the same key (re-measuring one defense after a change to it).

Each row records its seconds per image and the victims' iterations per second; ``--device cuda`` runs the model
and the attacks on a GPU (the file is then ``fidelity_targeted_cuda_<tag>.json``, with the GPU's name).

Usage: ``python benchmarks/fidelity_targeted.py [--only single ablation utility] [--tag part]``, then
``python benchmarks/fidelity_targeted.py --merge part1 part2 [--merge-tag name]`` to print all tables from saved
parts.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradleak.audit import simulate_and_attack
from gradleak.data import load_dataset
from gradleak.fl.local import LocalData
from gradleak.fl.presets import SCENARIOS, Federation
from gradleak.models import create_model
from provenance import provenance

RESULTS = Path(__file__).parent / "results"
ATTACK = {"restarts": 1, "signed": False, "lr": 1.0, "tv": 3e-3}
PRUNE_90 = {"name": "prune", "options": {"rate": 0.9}}
#: PRECODE after the first conv block (the placement Scheliga et al. 2024b recommend), not before the classifier
EARLY_PRECODE = {"name": "precode", "options": {"after": "features.block1", "features": 16 * 14 * 14}}

#: (table, attack, defenses, threat). cdia on one defense *is* the single attack (dia on dropout, vbia on
#: PRECODE/CVB, gpia on pruning, inverting-gradients with none), so those rows are read from the ablation.
SINGLE = [
    ("T1 DP", "wiig", ["dp-sgd"], "well-informed"),
    ("T1 DP", "dpia", ["dp-sgd"], "honest"),
    ("T2 GP 0.9", "inverting-gradients", [PRUNE_90], "honest"),
    ("T2 GP 0.9", "gpia", [PRUNE_90], "honest"),
    ("T3 PRECODE", "pig", ["precode"], "honest"),
    ("T3 PRECODE", "wiig", ["precode"], "well-informed"),
    ("T3 CVB", "pig", ["cvb"], "honest"),
    ("T3 CVB", "wiig", ["cvb"], "well-informed"),
    ("DO", "inverting-gradients", ["dropout"], "honest"),
    ("DO", "wiig", ["dropout"], "well-informed"),
]
#: the acceptance comparisons again at the longer budget ``--long-iterations``
LONG = [
    ("T2 GP 0.9", "inverting-gradients", [PRUNE_90], "honest"),
    ("T2 GP 0.9", "gpia", [PRUNE_90], "honest"),
    ("T3 PRECODE", "pig", ["precode"], "honest"),
    ("T3 PRECODE", "vbia", ["precode"], "honest"),
    ("T3 CVB", "pig", ["cvb"], "honest"),
    ("T3 CVB", "vbia", ["cvb"], "honest"),
    ("DO", "inverting-gradients", ["dropout"], "honest"),
    ("DO", "dia", ["dropout"], "honest"),
    ("T4 DP+CVB", "cdia", ["dp-sgd", "cvb"], "honest"),
    ("T4 DP+PRECODE", "cdia", ["dp-sgd", "precode"], "honest"),
    ("T3 PRECODE*", "pig", [EARLY_PRECODE], "honest"),
    ("T3 PRECODE*", "vbia", [EARLY_PRECODE], "honest"),
    ("T4 DP+PRECODE*", "cdia", ["dp-sgd", EARLY_PRECODE], "honest"),
]
DP_1E3 = {"name": "dp-sgd", "options": {"noise_multiplier": 1e-3}}
#: (table, attack, defenses, threat, (paper SSIM mean, sd, ASR %)): Scheliga et al. 2024, CIFAR-10, CNN
PAPER_CIFAR = [
    ("undefended", "inverting-gradients", [], "informed", (0.87, 0.11, 96.88)),
    ("T1 DP", "inverting-gradients", [DP_1E3], "informed", (0.31, 0.11, 5.47)),
    ("T1 DP", "wiig", [DP_1E3], "well-informed", (0.82, 0.06, 100.0)),
    ("T1 DP", "dpia", [DP_1E3], "informed", (0.26, 0.10, 1.56)),
    *[row for rate, ig, gpia in ((0.90, (0.48, 0.08, 46.88), (0.70, 0.12, 90.62)),
                                 (0.95, (0.32, 0.07, 0.0), (0.53, 0.15, 66.41)),
                                 (0.99, (0.15, 0.04, 0.0), (0.29, 0.13, 3.91)))
      for row in ((f"T2 GP {rate:.2f}", "inverting-gradients", [{"name": "prune", "options": {"rate": rate}}],
                   "informed", ig),
                  (f"T2 GP {rate:.2f}", "gpia", [{"name": "prune", "options": {"rate": rate}}], "informed", gpia))],
    ("T3 PRECODE", "pig", ["precode"], "informed", (0.32, 0.09, 3.91)),
    ("T3 PRECODE", "wiig", ["precode"], "well-informed", (0.83, 0.15, 96.09)),
    ("T3 PRECODE", "vbia", ["precode"], "informed", (0.88, 0.07, 99.22)),
    ("T3 CVB", "pig", ["cvb"], "informed", (0.21, 0.08, 0.0)),
    ("T3 CVB", "wiig", ["cvb"], "well-informed", (0.78, 0.14, 92.19)),
    ("T3 CVB", "vbia", ["cvb"], "informed", (0.72, 0.13, 93.75)),
]
#: the PRECODE rows again with PRECODE after the first conv block (``--cifar-early``), beside the same paper rows
PAPER_CIFAR_EARLY = [(table + "*", attack, [EARLY_PRECODE], threat, paper)
                     for table, attack, defenses, threat, paper in PAPER_CIFAR if defenses == ["precode"]]
FROM_ABLATION = {"none": ("undefended", "inverting-gradients (= cdia)"), "DP": ("T1 DP", "cdia (IG, mean noise)"),
                 "GP": ("T2 GP 0.5", "gpia (= cdia)"), "PRECODE": ("T3 PRECODE", "vbia (= cdia)"),
                 "CVB": ("T3 CVB", "vbia (= cdia)"), "DO": ("DO", "dia (= cdia)")}


def combinations() -> list[tuple[bool, bool, bool, str]]:
    """Table 4's order: DO, DP, GP, PM (PM fastest)."""
    return [(do, dp, gp, pm) for do, dp, gp, pm in itertools.product((False, True), (False, True), (False, True),
                                                                       ("-", "P", "C"))]


def defenses_of(do: bool, dp: bool, gp: bool, pm: str, dp_noise: float = 1e-4) -> list[Any]:
    dp_sgd = "dp-sgd" if dp_noise == 1e-4 else {"name": "dp-sgd", "options": {"noise_multiplier": dp_noise}}
    return [*(["dropout"] if do else []), *([dp_sgd] if dp else []), *(["prune"] if gp else []),
            *({"P": ["precode"], "C": ["cvb"]}.get(pm, []))]


def label(do: bool, dp: bool, gp: bool, pm: str) -> str:
    parts = [n for n, on in (("DO", do), ("DP", dp), ("GP", gp)) if on] + ([{"P": "PRECODE", "C": "CVB"}[pm]]
                                                                          if pm != "-" else [])
    return "+".join(parts) or "none"


def victims(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, Any]:
    ds = load_dataset("mnist", split="test")
    x, y = ds.tensors(list(range(args.victims)), size=32)
    return x, y, ds


def cifar_victims(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """``--victims`` CIFAR-10 test images drawn by a seeded permutation (the file is sorted by class)."""
    ds = load_dataset("cifar10", split="test")
    idx = np.random.default_rng(args.victims_seed).permutation(len(ds.labels))[:args.victims].tolist()
    x, y = ds.tensors(idx, size=32)
    return x, y, ds


def attack_row(args: argparse.Namespace, attack: str, defenses: list, threat: str, iterations: int | None,
               cifar: bool = False) -> dict[str, Any]:
    x, y, ds = cifar_victims(args) if cifar else victims(args)
    torch.manual_seed(0)
    model = create_model("cnn", in_channels=x.shape[1])
    if cifar:  # the attacks' defaults, or what --cifar-options changes
        options: dict[str, Any] = {**({} if iterations is None else {"iterations": iterations}),
                                   **json.loads(args.cifar_options)}
    else:
        options = {**ATTACK, "restarts": args.restarts, "iterations": iterations}
    started = time.perf_counter()
    result = simulate_and_attack(model.to(args.device), x, y, recipe="fedsgd", attack=attack, attack_options=options,
                                 defenses=defenses, threat=threat, victims="each", mean=ds.mean, std=ds.std,
                                 generator=torch.Generator().manual_seed(1))
    ssim = np.asarray(result.metrics["ssim_per_image"])
    config = result.reconstructions[0].config
    options = {**options, "iterations": config.get("iterations", iterations), "execution": config.get("execution"),
               **({"tv_auto": config["tv_auto"]} if "tv_auto" in config else {})}
    seconds = time.perf_counter() - started
    return {"attack": attack, "defenses": defenses, "threat": threat, "config": options, "victims": len(ssim),
            "ssim_mean": float(ssim.mean()), "ssim_std": float(ssim.std(ddof=1)), "asr": float((ssim > 0.5).mean()),
            "ssim_per_image": ssim.tolist(), "seconds": seconds, "seconds_per_image": seconds / len(ssim),
            # the victims' optimisation steps per second (attacked together; each victim's best trial's steps,
            # a TV sweep's short runs not counted)
            "victim_iterations_per_second": sum(r.iterations for r in result.reconstructions) / seconds}


#: the ablation's labels of the registry names, so ``--with`` reads the same in every section
LABELS = {"dropout": "DO", "dp-sgd": "DP", "prune": "GP", "precode": "PRECODE", "cvb": "CVB"}


def _labels(defenses: list) -> set[str]:
    names = (d if isinstance(d, str) else d["name"] for d in defenses)
    return {LABELS.get(n, n) for n in names}


def _selected(args: argparse.Namespace, combination: str) -> bool:
    return all(name in combination.split("+") for name in args.only_with)


def _table_rows(args: argparse.Namespace, section: str, specs: list, iterations: int) -> list[dict[str, Any]]:
    rows = []
    for table, attack, defenses, threat in specs:
        if not set(args.only_with) <= _labels(defenses):
            continue
        row = {"table": table, **attack_row(args, attack, defenses, threat, iterations)}
        rows.append(row)
        print(f"[{section}] {table:<13} {attack:<20} SSIM {row['ssim_mean']:.2f} ± {row['ssim_std']:.2f}  "
              f"ASR {row['asr']:.0%}  {row['seconds']:.0f}s", flush=True)
    return rows


def run_single(args: argparse.Namespace) -> list[dict[str, Any]]:
    return _table_rows(args, "single", SINGLE, args.iterations)


def run_cifar(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    k, n = (int(v) for v in args.cifar_part.split("/"))
    specs = [row for row in (PAPER_CIFAR_EARLY if args.cifar_early else PAPER_CIFAR)
             if not args.cifar_rows or any(k in row[0] for k in args.cifar_rows)]
    for table, attack, defenses, threat, paper in specs[k * len(specs) // n:(k + 1) * len(specs) // n]:
        row = {"table": table, "paper": {"ssim_mean": paper[0], "ssim_std": paper[1], "asr": paper[2] / 100},
               **attack_row(args, attack, defenses, threat, args.cifar_iterations, cifar=True)}
        rows.append(row)
        print(f"[cifar] {table:<11} {attack:<20} SSIM {row['ssim_mean']:.2f} ± {row['ssim_std']:.2f}  "
              f"ASR {row['asr']:.1%}  (paper {paper[0]:.2f} ± {paper[1]:.2f}, {paper[2]:.2f} %)  "
              f"{row['seconds']:.0f}s" + (f", TV chosen {row['config']['tv_auto']['chosen']:g}"
                                         if "tv_auto" in row["config"] else ""), flush=True)
    return rows


def run_long(args: argparse.Namespace) -> list[dict[str, Any]]:
    k, n = (int(v) for v in args.long_part.split("/"))
    return _table_rows(args, "long", LONG[k * len(LONG) // n:(k + 1) * len(LONG) // n], args.long_iterations)


def ablation_attack(args: argparse.Namespace, gp: bool) -> str:
    """``cdia``, or with ``--ablation-attack untargeted`` the attack that models no stochastic defense:
    inverting-gradients (gpia when GP prunes, as pruning is read off the update), dropout masks and a
    bottleneck's ε drawn fresh in every iteration."""
    if args.ablation_attack == "cdia":
        return "cdia"
    return "gpia" if gp else "inverting-gradients"


def run_ablation(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    k, n = (int(v) for v in args.ablation_part.split("/"))
    todo = [c for c in combinations() if _selected(args, label(*c))]
    for combo in todo[k * len(todo) // n:(k + 1) * len(todo) // n]:
        row = {"combination": label(*combo),
               **attack_row(args, ablation_attack(args, combo[2]), defenses_of(*combo, args.dp_noise), "honest",
                            args.ablation_iterations)}
        rows.append(row)
        print(f"[ablation] {row['combination']:<20} SSIM {row['ssim_mean']:.2f} ± {row['ssim_std']:.2f}  "
              f"ASR {row['asr']:.0%}  {row['seconds']:.0f}s", flush=True)
    return rows


def small_federation(args: argparse.Namespace, scenario: Any) -> Federation:
    """The preset's federation with every client's data cut to ``--clients-images`` and the test set to
    ``--test-images`` (CPU budget)."""
    fed = scenario.build()
    clients = [dataclasses.replace(c, train=LocalData(c.train.x[:args.clients_images], c.train.y[:args.clients_images]))
               for c in fed.clients]
    test = LocalData(fed.test.x[:args.test_images], fed.test.y[:args.test_images])
    return dataclasses.replace(fed, clients=clients, test=test)


def run_utility(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    base = SCENARIOS.create("combined-defenses", rounds=args.rounds, seed=0)
    fed = small_federation(args, base)
    for combo in (c for c in combinations() if _selected(args, label(*c))):
        scenario = base.replace(defenses=tuple(defenses_of(*combo, args.dp_noise)))
        started = time.perf_counter()
        result = scenario.simulation(federation=fed).run()
        accuracy = [m.test_accuracy for m in result.history]
        rows.append({"combination": label(*combo), "test_accuracy": accuracy[-1], "per_round": accuracy,
                     "rounds": args.rounds, "clients_images": args.clients_images, "test_images": len(fed.test),
                     "seconds": time.perf_counter() - started})
        print(f"[utility] {label(*combo):<20} test accuracy {accuracy[-1]:.2%} after {args.rounds} rounds  "
              f"{rows[-1]['seconds']:.0f}s", flush=True)
    return rows


def tables(results: dict[str, Any]) -> str:
    out = []
    if "single" in results:
        out.append("Tables 1-3 (+DIA): attack on single defenses, MNIST cnn b1, "
                   f"{results['single'][0]['victims']} victims, {results['single'][0]['config']['iterations']} it")
        out.append(f"{'table':<11} {'defenses':<14} {'attack':<28} {'SSIM':>12} {'ASR':>6}")
        for r in results["single"]:
            d = "+".join(x if isinstance(x, str) else f"{x['name']} {x['options']['rate']}" for x in r["defenses"])
            out.append(f"{r['table']:<11} {d or '-':<14} {r['attack']:<28} "
                       f"{r['ssim_mean']:.2f} ± {r['ssim_std']:.2f} {r['asr']:>6.0%}")
        for r in results.get("ablation", []):
            if r["combination"] in FROM_ABLATION:
                table, name = FROM_ABLATION[r["combination"]]
                out.append(f"{table:<11} {r['combination'].lower():<14} {name:<28} "
                           f"{r['ssim_mean']:.2f} ± {r['ssim_std']:.2f} {r['asr']:>6.0%}")
    if "ablation" in results:
        util = {r["combination"]: r for r in results.get("utility", [])}
        first = results["ablation"][0]
        out.append("")
        attacks = sorted({r["attack"] for r in results["ablation"]})
        out.append(f"Table 4: {'/'.join(attacks)} on defense combinations, {first['victims']} victims, "
                   f"{first['config']['iterations']} it" + (f"; accuracy after {next(iter(util.values()))['rounds']} "
                                                            "rounds (reduced federation)" if util else ""))
        out.append(f"{'DO':>3} {'DP':>3} {'GP':>3} {'PM':>3} {'SSIM':>12} {'ASR':>6} {'accuracy':>9}")
        for r in results["ablation"]:
            parts = r["combination"].split("+")
            pm = "P" if "PRECODE" in parts else "C" if "CVB" in parts else "-"
            flags = ["x" if n in parts else "." for n in ("DO", "DP", "GP")]
            acc = util.get(r["combination"], {}).get("test_accuracy")
            out.append(f"{flags[0]:>3} {flags[1]:>3} {flags[2]:>3} {pm:>3} {r['ssim_mean']:.2f} ± {r['ssim_std']:.2f} "
                       f"{r['asr']:>6.0%} {'' if acc is None else f'{acc:.2%}':>9}")
    if "cifar" in results:
        first = results["cifar"][0]
        out.append("")
        changed = {k: v for k, v in first["config"].items() if k not in ("iterations", "execution", "tv_auto")}
        out.append(f"Tables 1-3, CIFAR-10 cnn b1, labels known, {first['victims']} victims, attack defaults "
                   f"({first['config']['iterations']} it{', ' + json.dumps(changed) if changed else ''}); "
                   "paper: Scheliga et al. 2024")
        out.append(f"{'table':<11} {'defenses':<16} {'attack':<20} {'SSIM':>12} {'ASR':>7}   {'paper':>20}")
        for r in results["cifar"]:
            d = "+".join(_short(x) for x in r["defenses"]) or "-"
            p = r["paper"]
            out.append(f"{r['table']:<11} {d:<16} {r['attack']:<20} {r['ssim_mean']:.2f} ± {r['ssim_std']:.2f} "
                       f"{r['asr']:>7.1%}   {p['ssim_mean']:.2f} ± {p['ssim_std']:.2f} {p['asr']:>7.2%}")
    if "long" in results:
        out.append("")
        out.append(f"Acceptance comparisons at {results['long'][0]['config']['iterations']} iterations "
                   f"({results['long'][0]['victims']} victims)")
        for r in results["long"]:
            d = "+".join(_short(x) for x in r["defenses"])
            out.append(f"{r['table']:<14} {d:<16} {r['attack']:<20} {r['ssim_mean']:.2f} ± {r['ssim_std']:.2f} "
                       f"{r['asr']:>6.0%}")
    if "utility" in results and "ablation" not in results:
        out.append("")
        out.extend(f"{r['combination']:<20} {r['test_accuracy']:.2%}" for r in results["utility"])
    return "\n".join(out)


def _short(defense: Any) -> str:
    if isinstance(defense, str):
        return defense
    if "rate" in defense["options"]:
        return f"{defense['name']} {defense['options']['rate']}"
    return f"{defense['name']}*" if "after" in defense["options"] else defense["name"]


def _row_key(row: dict[str, Any]) -> str:
    if "combination" in row:  # an untargeted row never replaces cdia's row of the same combination
        return row["combination"] + ("" if row.get("attack", "cdia") == "cdia" else " untargeted")
    return json.dumps([row["table"], row["attack"], row["defenses"], row["threat"]])


def _merge_rows(rows: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with each row of ``new`` replacing the row of the same key in place, or appended (slices of a
    section merge in the order given; a ``--with`` re-run replaces the rows it re-measured)."""
    out = list(rows)
    index = {_row_key(r): i for i, r in enumerate(out)}
    for r in new:
        if _row_key(r) in index:
            out[index[_row_key(r)]] = r
        else:
            index[_row_key(r)] = len(out)
            out.append(r)
    return out


SECTIONS = {"single": run_single, "ablation": run_ablation, "utility": run_utility, "long": run_long,
            "cifar": run_cifar}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[k for k in SECTIONS if k != "cifar"], choices=list(SECTIONS))
    parser.add_argument("--cifar-iterations", type=int, default=None,
                        help="cifar section: attack budget (default: each attack's own)")
    parser.add_argument("--cifar-part", default="0/1", help="k/n: run the k-th of n equal slices of the cifar rows")
    parser.add_argument("--cifar-options", default="{}",
                        help="cifar section: JSON attack options replacing defaults (a variant, e.g. '{\"tv\": 1e-4}')")
    parser.add_argument("--cifar-rows", nargs="*", default=[],
                        help="cifar section: only the rows whose table contains one of these (e.g. PRECODE)")
    parser.add_argument("--cifar-early", action="store_true",
                        help="cifar section: the PRECODE rows with PRECODE after the first conv block (PRECODE*)")
    parser.add_argument("--victims-seed", type=int, default=0, help="cifar section: the victims' permutation")
    parser.add_argument("--victims", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--ablation-iterations", type=int, default=100)
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--long-iterations", type=int, default=300)
    parser.add_argument("--long-part", default="0/1", help="k/n: run the k-th of n equal slices of the long rows")
    parser.add_argument("--ablation-part", default="0/1", help="k/n: run the k-th of n equal slices of Table 4")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients-images", type=int, default=300)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="where the model and the attacks run (e.g. cuda)")
    parser.add_argument("--tag", default="")
    parser.add_argument("--dp-noise", type=float, default=1e-4,
                        help="DP-SGD noise multiplier in the ablation and utility sections (the paper's 1e-4)")
    parser.add_argument("--ablation-attack", choices=("cdia", "untargeted"), default="cdia",
                        help="untargeted: inverting-gradients (gpia with GP), which models no dropout mask or "
                             "bottleneck ε (what the paper's DP rows with dropout or CVB match)")
    parser.add_argument("--with", dest="only_with", nargs="*", default=[],
                        help="only the rows and combinations with all these defenses (DO, DP, GP, PRECODE, CVB)")
    parser.add_argument("--merge", nargs="*", default=None, help="tags of saved parts to merge and print")
    parser.add_argument("--merge-tag", default="", help="with --merge: write fidelity_targeted_cpu_<tag>.json")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.merge is not None:
        merged: dict[str, Any] = {"parts": args.merge}
        for tag in args.merge:
            part = json.loads((RESULTS / f"fidelity_targeted_cpu_{tag}.json").read_text())
            for k, v in part.items():
                if k in SECTIONS and k in merged:
                    merged[k] = _merge_rows(merged[k], v)
                elif k not in merged:
                    merged[k] = v
        path = RESULTS / f"fidelity_targeted_cpu{('_' + args.merge_tag) if args.merge_tag else ''}.json"
        path.write_text(json.dumps({**merged, "provenance": provenance()}, indent=2, default=str))
        print(tables(merged))
        print(f"wrote {path}")
        return
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k not in ("merge",)},
                               "attack": ATTACK, "torch": torch.__version__, "platform": platform.platform(),
                               "device_name": torch.cuda.get_device_name(torch.device(args.device))
                               if torch.device(args.device).type == "cuda" else "cpu",
                               "load_average_start": os.getloadavg()}
    started = time.perf_counter()
    for name in args.only:
        results[name] = SECTIONS[name](args)
    results["seconds"] = time.perf_counter() - started
    path = RESULTS / f"fidelity_targeted_{torch.device(args.device).type}{('_' + args.tag) if args.tag else ''}.json"
    path.write_text(json.dumps({"provenance": provenance(), **results}, indent=2, default=str))
    print(tables(results))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
