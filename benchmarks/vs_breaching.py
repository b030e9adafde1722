"""gradleak against breaching (Geiping et al.'s reference framework), side by side in one run.

The same Inverting-Gradients attack in both tools: the same model class and weights (gradleak's ``cnn`` with 3
input channels, imported from ``src/`` in both processes), the same victims (CIFAR-10 test images from
``shared/datasets``, handed to breaching in memory), the same observed update (gradleak's FedSGD simulation;
breaching gets ``-delta / lr``, the gradient), the same starting images (gradleak's Gaussian draw, passed to
breaching as ``initial_data``), and the same recipe: cosine objective, anisotropic TV, Adam on signed gradients,
lr, step decay by 0.1 at 3/8, 5/8, 7/8, pixels boxed to ``[0, 1]``, known labels, the same number of trials.

Cases: one victim of batch 1, one victim of batch 8, and a 16-victim audit (each victim one image), which
breaching attacks one after another and gradleak in one vectorised run (``InvertingGradients.attack_many``).

Per case and tool: iterations/s, wall time, peak memory (resident set sampled during the attack, and its rise
over the case's start), mean PSNR/SSIM of the reconstructions against the originals, graded by
``gradleak.metrics.grade`` (the one grading function) for both tools; medians of ``--repeats`` rounds (each
round: new victims and seeds; in each round the tools attack a case back to back, rotating which goes first, and
the speed ratio is the median over the rounds of these pairs' ratios, robust to the machine's speed drifting
between pairs). A case with fewer than ``--min-images`` images (default 32) over ``--repeats`` rounds gets more
rounds, so that its SSIM difference rests on that many images: the tools start from the same image, but their
signed-Adam paths part after a few hundred steps, and the paired difference of one image has a standard deviation
near 0.04 (5 batch-1 images give a standard error near 0.016, as large as the 0.02 tolerance). The paired standard
error is reported with each difference.
gradleak runs twice per case: with its default options (``compile="auto"``, ``gradleak``) and with
``compile=False`` (``gradleak_eager``, its ``ratios_eager`` and ``*_eager`` acceptance keys; ``--no-eager`` skips
it). Every gradleak run follows a 3-iteration warm-up run outside its wall time. For the default variant the
warm-up compiles (``compile=True``, the first time per process and case shape) and its time is reported as
``warmup_seconds``, the compilation time; the timed run then finds the problem compiled in this process, and
``compile="auto"`` compiles when that repays (a first, cold, 300-iteration attack of the small CNN would not:
it stays eager, see ``gradleak.attacks.compiling``). Each default run's ``execution`` record (which path ran,
why, when it switched) is kept in the rows.
Plus the physical-floor ratio per case: one attack iteration over one plain forward + backward training step of
the same model and batch; the plain step and gradleak's own iteration are measured by
``benchmarks/bench_attacks.py``'s ``bench`` (reused, not copied), and breaching's measured iteration time is
divided by the same plain step.

The tools run single-threaded (``--threads``), one after the other, never at once.

Usage::

    make bench-breaching                      # creates .venv-breaching, then runs this script
    .venv/bin/python benchmarks/vs_breaching.py [--iterations 300] [--repeats 3] [--quick] [--threads 1]
        [--trials 1] [--cases single_b1 single_b8 audit_16x1] [--min-images 32] [--no-resnet] [--no-eager]
        [--output PATH]

writes ``benchmarks/results/vs_breaching_cpu.json``. The breaching half runs as
``.venv-breaching/bin/python benchmarks/vs_breaching.py --tool breaching --exchange DIR``; the two processes
exchange weights, images, updates and reconstructions as ``.npz`` files (no pickle) in a temporary folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from provenance import provenance

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
MODEL = ("cnn", {"in_channels": 3, "num_classes": 10})
CASES = {  # name: (victims, images per victim)
    "single_b1": (1, 1),
    "single_b8": (1, 8),
    "audit_16x1": (16, 1),
}


# -- shared helpers (both processes) ---------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRSS:
    """Samples the process's resident set every ``period`` seconds while active."""

    def __init__(self, period: float = 0.005) -> None:
        self.period, self.peak, self.start = period, 0, 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(self.period)

    def __enter__(self) -> _PeakRSS:
        self.start = self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    def summary(self) -> dict:
        return {"peak_rss_mib": self.peak / 2**20, "peak_rss_rise_mib": (self.peak - self.start) / 2**20}


def _build_model(path: Path) -> torch.nn.Module:
    """gradleak's model class (imported from ``src``, so the breaching venv needs no gradleak install)."""
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))
    from gradleak.models import create_model

    name, options = MODEL
    model = create_model(name, **options)
    with np.load(path, allow_pickle=False) as z:
        model.load_state_dict({k: torch.from_numpy(z[k]) for k in z.files})
    return model


# -- the breaching half (runs in .venv-breaching) ----------------------------------------------------------


def run_breaching(exchange: Path, cases: list[str] | None = None) -> None:
    """Attack the cases of the exchange folder (all, or ``cases``) with breaching; writes reconstructions and
    timings there."""
    import logging
    import types
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.INFO)
    config = json.loads((exchange / "config.json").read_text())
    torch.set_num_threads(config["threads"])
    started = time.perf_counter()
    import breaching
    from omegaconf import OmegaConf

    import_seconds = time.perf_counter() - started
    model = _build_model(exchange / "model.npz")
    names = [k for k, _ in model.named_parameters()]
    base = breaching.get_attack_config("invertinggradients")
    OmegaConf.set_struct(base, False)

    def attacker_for(iterations: int):
        cfg = OmegaConf.merge(base, {
            "label_strategy": None,  # labels are handed over (known), as gradleak's labels="known"
            "restarts": {"num_trials": config["trials"], "scoring": "cosine-similarity"},
            "init": "randn",
            "optim": {"optimizer": "adam", "signed": "hard", "step_size": config["lr"], "boxed": True,
                      "max_iterations": iterations, "step_size_decay": "step-lr", "warmup": 0,
                      "callback": 10**9},
            "regularization": {"total_variation": {"scale": config["tv"], "inner_exp": 1, "outer_exp": 1}},
        })
        return breaching.attacks.prepare_attack(model, torch.nn.CrossEntropyLoss(), cfg,
                                                {"dtype": torch.float, "device": torch.device("cpu")})

    mean, std = config["mean"], config["std"]
    metadata = types.SimpleNamespace(shape=tuple(config["image_shape"]), mean=mean, std=std, modality="vision",
                                     classes=config["num_classes"])
    payload = [{"parameters": [p.detach().clone() for p in model.parameters()], "buffers": None,
                "metadata": metadata}]
    dm = torch.tensor(mean).view(1, -1, 1, 1)
    ds = torch.tensor(std).view(1, -1, 1, 1)

    def attack(attacker, z, v: int) -> torch.Tensor:
        shared = [{"gradients": [torch.from_numpy(z[f"grad/{k}"][v]) for k in names], "buffers": None,
                   "metadata": {"num_data_points": int(z["labels"].shape[1]), "local_hyperparams": None,
                                "labels": torch.from_numpy(z["labels"][v])}}]
        initial = torch.from_numpy(z["init"][v]) if config["trials"] == 1 else None
        out, _ = attacker.reconstruct(payload, shared, {}, initial_data=initial, dryrun=False)
        return (out["data"].detach() * ds + dm).clamp(0, 1)

    timings = {"import_seconds": import_seconds, "cases": {}}
    warm = attacker_for(3)
    for case in cases or config["cases"]:
        with np.load(exchange / f"case_{case}.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        attack(warm, arrays, 0)  # warm-up: first-call costs (allocator, kernels) out of the timing
        attacker = attacker_for(config["iterations"])
        images, per_victim = [], []
        with _PeakRSS() as mem:
            for v in range(arrays["labels"].shape[0]):
                t0 = time.perf_counter()
                images.append(attack(attacker, arrays, v))
                per_victim.append(time.perf_counter() - t0)
        np.savez(exchange / f"breaching_{case}.npz", images=torch.stack(images).numpy())
        timings["cases"][case] = {"wall_seconds": sum(per_victim), "victim_seconds": per_victim, **mem.summary()}
    timings["max_rss_mib"] = _max_rss_mib()
    timings["torch"] = torch.__version__
    timings["breaching"] = _version("breaching")
    (exchange / "breaching_timings.json").write_text(json.dumps(timings))


def _git_state() -> dict:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"head": git("rev-parse", "HEAD"), "src_dirty": bool(git("status", "--porcelain", "src"))}


def _max_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


# -- the gradleak half and the comparison (runs in gradleak's .venv) ---------------------------------------


@contextmanager
def _bench_attacks_3ch():
    """``bench_attacks.bench`` with its ``cnn`` on 3 input channels (CIFAR-10), restored afterwards."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_attacks

    saved = dict(bench_attacks.MODELS)
    bench_attacks.MODELS["cnn"] = (3, {"in_channels": 3})
    try:
        yield bench_attacks
    finally:
        bench_attacks.MODELS.clear()
        bench_attacks.MODELS.update(saved)


class Comparison:
    def __init__(self, args: argparse.Namespace) -> None:
        from gradleak.attacks.inverting_gradients import InvertingGradients
        from gradleak.data import load_dataset
        from gradleak.models import create_model

        self.args = args
        self.dataset = load_dataset("cifar10", split="test")
        torch.manual_seed(args.seed)
        name, options = MODEL
        self.model = create_model(name, **options)
        self.attack = InvertingGradients(iterations=args.iterations, lr=args.lr, tv=args.tv, restarts=args.trials,
                                         labels="known", schedule="step", signed=True, boxed=True)

    def _victims(self, case: str, round_: int) -> tuple[torch.Tensor, torch.Tensor]:
        victims, n = CASES[case]
        count = victims * n
        before = [v * k for c, (v, k) in CASES.items()]
        offset = sum(before) * round_ + sum(before[:list(CASES).index(case)])  # new victims every case and round
        images = torch.from_numpy(self.dataset.images[offset:offset + count]).permute(0, 3, 1, 2).float() / 255
        labels = torch.from_numpy(self.dataset.labels[offset:offset + count]).long()
        return images, labels

    def prepare(self, case: str, round_: int, exchange: Path) -> dict:
        """Simulate the victims' updates (gradleak), draw the starting images, write breaching's inputs."""
        from gradleak.attacks.replay import split_generators
        from gradleak.audit import simulate_and_attack
        from gradleak.data.transforms import denormalize

        victims, n = CASES[case]
        images, labels = self._victims(case, round_)
        seed = self.args.seed + 1000 * round_ + list(CASES).index(case)
        zero = simulate_and_attack(self.model, images, labels, recipe="fedsgd",
                                   attack=dataclasses.replace(self.attack, iterations=0),
                                   threat="informed", victims="batch" if victims == 1 else "each",
                                   generator=torch.Generator().manual_seed(seed), mean=self.dataset.mean,
                                   std=self.dataset.std)
        views = zero.views
        # the attack's generator, as simulate_and_attack derives it: the same starting images for both tools
        attack_seed = torch.randint(0, 2**62, (3,), generator=torch.Generator().manual_seed(seed)).tolist()[1]
        init = self.attack.problem(views).initial(split_generators(torch.Generator().manual_seed(attack_seed),
                                                              len(views)))["x"]
        start = denormalize(init, self.dataset.mean, self.dataset.std).clamp(0, 1)
        got = torch.cat([r.images for r in zero.reconstructions])
        if self.args.trials == 1 and not torch.allclose(start.reshape(got.shape), got):
            raise RuntimeError("could not reproduce gradleak's starting images; breaching would start elsewhere")
        lr = views[0].recipe.lr
        arrays = {"init": init.reshape(victims, self.args.trials, n, *images.shape[1:])[:, 0].numpy(),
                  "labels": labels.reshape(victims, n).numpy()}
        for k, _ in self.model.named_parameters():
            arrays[f"grad/{k}"] = torch.stack([-v.update.delta[k] / lr for v in views]).numpy()
        np.savez(exchange / f"case_{case}.npz", **arrays)
        return {"views": views, "images": images, "labels": labels, "attack_seed": attack_seed}

    def run_gradleak(self, case: str, prepared: dict, eager: bool = False) -> dict:
        """gradleak's attack of the case after a 3-iteration warm-up run. By default the attack runs with its
        default options (``compile="auto"``) after a warm-up with ``compile=True``, which compiles (the first time
        per process and case shape; later rounds reuse Dynamo's cache) and is reported as ``warmup_seconds``,
        outside ``wall_seconds``. With ``eager`` the attack and its warm-up run with ``compile=False``."""
        views = prepared["views"]
        attack = dataclasses.replace(self.attack, compile=False) if eager else self.attack
        t0 = time.perf_counter()
        dataclasses.replace(attack, iterations=3, compile=not eager).attack_many(
            views, generator=torch.Generator().manual_seed(0))
        warmup = time.perf_counter() - t0
        with _PeakRSS() as mem:
            t0 = time.perf_counter()
            results = attack.attack_many(views, generator=torch.Generator().manual_seed(prepared["attack_seed"]))
            wall = time.perf_counter() - t0
        return {"wall_seconds": wall, "warmup_seconds": warmup, "images": torch.stack([r.images for r in results]),
                "execution": results[0].config.get("execution"), **mem.summary()}

    def grade(self, case: str, images: torch.Tensor, prepared: dict) -> dict:
        from gradleak.metrics import grade
        from gradleak.records import Reconstruction

        victims, n = CASES[case]
        truth = prepared["images"].reshape(victims, n, *prepared["images"].shape[1:])
        per = [grade(Reconstruction(images=images[v].detach().cpu()), truth[v].cpu(), assign=n > 1)
               for v in range(victims)]
        ssim = [s for g in per for s in g["ssim"].tolist()]  # per original image, in the victims' order
        return {"ssim": float(np.mean(ssim)), "ssim_images": ssim,
                "psnr": float(np.mean([p for g in per for p in g["psnr"].tolist()]))}


def _median(rows: list[dict], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def _floor(args: argparse.Namespace) -> dict:
    """``bench_attacks.bench`` per case (gradleak's iteration and the plain training step), plus ResNet-18 b8."""
    out = {}
    cpu = torch.device("cpu")
    with _bench_attacks_3ch() as ba:
        for case, (victims, n) in CASES.items():
            row = ba.bench("cnn", n, victims, args.floor_iterations, cpu, heavy=False)
            out[case] = row
            print(f"floor {case:<11}: plain step {1e3 * row['plain_step_seconds']:.2f} ms, gradleak iteration "
                  f"{1e3 * row['seconds_per_iteration']:.2f} ms = {row['ratio_to_plain_steps']:.2f} plain steps "
                  f"per trial ({row['ratio_to_stacked_plain_step']:.2f} on all trials' images stacked)", flush=True)
        if not args.quick and not args.no_resnet:
            row = ba.bench("resnet18", 8, 1, 2, cpu, heavy=True)
            out["resnet18_b8"] = row
            print(f"floor resnet18_b8 : plain step {1e3 * row['plain_step_seconds']:.1f} ms, gradleak iteration "
                  f"{1e3 * row['seconds_per_iteration']:.1f} ms = {row['ratio_to_plain_steps']:.2f} plain steps",
                  flush=True)
    return out


def _breaching_case(python: Path, exchange: Path, env: dict, comparison: Comparison, case: str, prepared: dict,
                    rows: dict) -> dict:
    """Run breaching's half on one case of the exchange folder; grade its reconstructions into ``rows``."""
    cmd = [str(python), str(Path(__file__).resolve()), "--tool", "breaching", "--exchange", str(exchange),
           "--cases", case]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    timings = json.loads((exchange / "breaching_timings.json").read_text())
    with np.load(exchange / f"breaching_{case}.npz", allow_pickle=False) as z:
        images = torch.from_numpy(z["images"])
    rows[case]["breaching"].append({**timings["cases"][case], **comparison.grade(case, images, prepared)})
    return {k: v for k, v in timings.items() if k != "cases"}


def compare(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    python = Path(args.breaching_python)
    if not python.exists():
        sys.exit(f"{python} not found: run `make bench-breaching` (it creates the breaching venv)")
    comparison = Comparison(args)
    # breaching's step-lr milestones (MultiStepLR at T // 2.667, T // 1.6, T // 1.142) against gradleak's
    # int(f * T) for f in 3/8, 5/8, 7/8: they coincide for T = 300 (not for every T, e.g. 200 or 240)
    milestones = {"breaching": [int(args.iterations // d) for d in (2.667, 1.6, 1.142)],
                  "gradleak": [int(f * args.iterations) for f in (3 / 8, 5 / 8, 7 / 8)]}
    if milestones["breaching"] != milestones["gradleak"]:
        print(f"warning: the step-decay milestones differ at {args.iterations} iterations: {milestones}")
    load = [os.getloadavg()]
    variants = ["gradleak", "gradleak_eager"] if args.eager else ["gradleak"]
    rows: dict[str, dict[str, list[dict]]] = {c: {t: [] for t in ["breaching", *variants]} for c in CASES}
    breaching_meta: dict = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    started = time.perf_counter()
    rounds = case_rounds(args.repeats, args.min_images)
    for round_ in range(max(rounds.values())):
        active = [case for case in CASES if rounds[case] > round_]
        with tempfile.TemporaryDirectory(prefix="vs_breaching_") as tmp:
            exchange = Path(tmp)
            state = {k: v.detach().numpy() for k, v in comparison.model.state_dict().items()}
            np.savez(exchange / "model.npz", **state)
            config = {"iterations": args.iterations, "lr": args.lr, "tv": args.tv, "trials": args.trials,
                      "threads": args.threads, "cases": active, "mean": list(comparison.dataset.mean),
                      "std": list(comparison.dataset.std), "image_shape": [3, 32, 32], "num_classes": 10}
            (exchange / "config.json").write_text(json.dumps(config))
            prepared = {case: comparison.prepare(case, round_, exchange) for case in active}
            # the two tools attack each case back to back (seconds apart, which tool first alternating), so that
            # the shared machine's drift in speed (up to 2x over minutes here) falls on both halves of a pair
            for index, case in enumerate(active):
                order = ["breaching", *variants]
                shift = (round_ + index) % len(order)
                for tool in order[shift:] + order[:shift]:
                    if tool == "breaching":
                        breaching_meta.update(_breaching_case(python, exchange, env, comparison, case,
                                                              prepared[case], rows))
                    else:
                        out = comparison.run_gradleak(case, prepared[case], eager=tool == "gradleak_eager")
                        images = out.pop("images")
                        rows[case][tool].append({**out, **comparison.grade(case, images, prepared[case])})
            load.append(os.getloadavg())
            for case in active:
                g, b = rows[case]["gradleak"][-1], rows[case]["breaching"][-1]
                line = (f"round {round_ + 1}/{rounds[case]} {case:<11}: gradleak {g['wall_seconds']:7.2f} s "
                        f"({g['execution']['iteration']}, compilation {g['warmup_seconds']:.1f} s) "
                        f"SSIM {g['ssim']:.3f} | breaching {b['wall_seconds']:7.2f} s SSIM {b['ssim']:.3f}")
                if args.eager:
                    e = rows[case]["gradleak_eager"][-1]
                    line += f" | eager {e['wall_seconds']:7.2f} s SSIM {e['ssim']:.3f}"
                print(line, flush=True)
    floor = _floor(args)
    load.append(os.getloadavg())
    summary = _summarise(args, rows, floor)
    meta = {"device": "cpu", "threads": args.threads, "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "load_average_1_5_15min": load, "seconds_total": time.perf_counter() - started,
            "breaching": breaching_meta, "gradleak_max_rss_mib": _max_rss_mib(),
            "git": _git_state(), "milestones": milestones,
            "recipe": {"attack": "inverting-gradients", "objective": "cosine", "tv": args.tv, "optimizer": "adam",
                       "lr": args.lr, "schedule": "step x0.1 at 3/8, 5/8, 7/8", "signed": True, "boxed": True,
                       "iterations": args.iterations, "trials": args.trials, "labels": "known",
                       "init": "gaussian N(0,1) in normalised space, the same draw for both tools",
                       "client": "FedSGD, one step on the victim's batch (SGD lr 0.01); breaching gets -delta/lr"},
            "variants": {"gradleak": "default options (compile='auto'); wall_seconds exclude the warm-up run, "
                                     "which compiles (compile=True) the first time per process and case shape "
                                     "(warmup_seconds); rows[...]['execution'] says which path the timed run took",
                         "gradleak_eager": "the same attack with compile=False" if args.eager else None},
            "model": {"name": MODEL[0], **MODEL[1]}, "dataset": "cifar10 test (shared/datasets/cifar10_test.npz)",
            "repeats": args.repeats, "min_images": args.min_images,
            "cases": {c: {"victims": v, "images_per_victim": n, "rounds": rounds[c],
                          "images_graded": rounds[c] * v * n} for c, (v, n) in CASES.items()}}
    RESULTS.mkdir(exist_ok=True)
    path = Path(args.output) if args.output else RESULTS / "vs_breaching_cpu.json"
    path.write_text(json.dumps({"provenance": provenance(), "meta": meta, "summary": summary, "rows": rows,
                                "floor": floor}, indent=2))
    _print_summary(summary)
    print(f"wrote {path}")


def case_rounds(repeats: int, min_images: int) -> dict[str, int]:
    """Rounds per case: ``repeats``, or more where that many rounds grade fewer than ``min_images`` images."""
    return {case: max(repeats, -(-min_images // (v * n))) for case, (v, n) in CASES.items()}


def _summarise(args: argparse.Namespace, rows: dict, floor: dict) -> dict:
    out: dict = {"cases": {}}
    for case, (victims, _n) in CASES.items():
        tools = {}
        for tool in rows[case]:
            r = rows[case][tool]
            wall = _median(r, "wall_seconds")
            # iterations/s: optimisation steps per second of the whole case (16 victims: all victims' steps)
            tools[tool] = {"wall_seconds_median": wall, "wall_seconds_all": [x["wall_seconds"] for x in r],
                           "iterations_per_second": args.iterations / wall,
                           "victim_iterations_per_second": victims * args.iterations / wall,
                           "seconds_per_iteration": wall / args.iterations,
                           "peak_rss_mib_median": _median(r, "peak_rss_mib"),
                           "peak_rss_rise_mib_median": _median(r, "peak_rss_rise_mib"),
                           "ssim_mean": _mean(r, "ssim"), "psnr_mean": _mean(r, "psnr"),
                           "ssim_all": [x["ssim"] for x in r], "psnr_all": [x["psnr"] for x in r],
                           "ssim_images": [s for x in r for s in x["ssim_images"]]}
            if tool != "breaching":
                tools[tool]["warmup_seconds_all"] = [x["warmup_seconds"] for x in r]
        out["cases"][case] = {**tools, "ratios": _ratios(tools["gradleak"], tools["breaching"], floor[case],
                                                         victims)}
        if "gradleak_eager" in tools:
            out["cases"][case]["ratios_eager"] = _ratios(tools["gradleak_eager"], tools["breaching"],
                                                         floor[case], victims)
        out["cases"][case]["gradleak"]["execution_all"] = [x["execution"] for x in rows[case]["gradleak"]]
    c = out["cases"]
    acceptance = {}
    for key, suffix in (("ratios", ""), ("ratios_eager", "_eager")):
        for b in ("b1", "b8"):
            if f"single_{b}" in c and key in c[f"single_{b}"]:
                r = c[f"single_{b}"][key]
                acceptance[f"single_{b}_speedup_ge_2{suffix}"] = r["speedup_gradleak_over_breaching"] >= 2
                acceptance[f"single_{b}_ssim_not_lower_by_0.02{suffix}"] = r["ssim_gradleak_minus_breaching"] >= -0.02
        if "audit_16x1" in c and key in c["audit_16x1"]:
            acceptance[f"audit_wall_le_one_fifth{suffix}"] = (
                c["audit_16x1"][key]["wall_ratio_gradleak_to_breaching"] <= 0.2)
            acceptance[f"audit_speedup_ge_9{suffix}"] = c["audit_16x1"][key]["speedup_gradleak_over_breaching"] >= 9
            acceptance[f"audit_ssim_not_lower_by_0.02{suffix}"] = (
                c["audit_16x1"][key]["ssim_gradleak_minus_breaching"] >= -0.02)
    if "single_b8" in c and args.trials == 1:
        acceptance["floor_cnn_b8_le_4"] = c["single_b8"]["ratios_eager" if "ratios_eager" in c["single_b8"]
                                                        else "ratios"]["floor_ratio_gradleak"] <= 4
    if "resnet18_b8" in floor:
        out["resnet18_b8_floor_ratio_gradleak"] = floor["resnet18_b8"]["ratio_to_plain_steps"]
        acceptance["floor_resnet18_b8_le_4"] = floor["resnet18_b8"]["ratio_to_plain_steps"] <= 4
    out["acceptance"] = acceptance
    return out


def _ratios(g: dict, b: dict, floor: dict, victims: int) -> dict:
    """gradleak (one variant) against breaching on one case."""
    step = floor["plain_step_seconds"]
    pairs = list(zip(g["wall_seconds_all"], b["wall_seconds_all"], strict=True))
    # per image: both tools attacked the same image from the same start
    diffs = np.subtract(g["ssim_images"], b["ssim_images"])
    ratios = {"speedup_gradleak_over_breaching": statistics.median(bw / gw for gw, bw in pairs),
              "wall_ratio_gradleak_to_breaching": statistics.median(gw / bw for gw, bw in pairs),
              # per round (the pair ran back to back) and, less robust to drift, the ratio of the medians
              "speedup_per_round": [bw / gw for gw, bw in pairs],
              "speedup_of_medians": b["wall_seconds_median"] / g["wall_seconds_median"],
              "wall_ratio_of_medians": g["wall_seconds_median"] / b["wall_seconds_median"],
              "ssim_gradleak_minus_breaching": g["ssim_mean"] - b["ssim_mean"],
              "ssim_difference_images": len(diffs),
              "ssim_difference_paired_se": float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1
              else None,
              "psnr_gradleak_minus_breaching": g["psnr_mean"] - b["psnr_mean"],
              "plain_step_seconds": step,
              # per victim-iteration, over one plain step of that victim's batch
              "floor_ratio_gradleak": g["seconds_per_iteration"] / (victims * step),
              "floor_ratio_breaching": b["seconds_per_iteration"] / (victims * step),
              "floor_ratio_gradleak_bench_attacks": floor["ratio_to_plain_steps"]}
    if victims > 1:
        ratios["floor_ratio_gradleak_stacked"] = g["seconds_per_iteration"] / floor["plain_stacked_step_seconds"]
    return ratios


def _print_summary(summary: dict) -> None:
    print("\ncase         tool               it/s    wall s   peak rise MiB   SSIM    PSNR   floor ratio")
    for case, c in summary["cases"].items():
        for tool in [t for t in ("gradleak", "gradleak_eager", "breaching") if t in c]:
            t = c[tool]
            floor = (c["ratios"]["floor_ratio_breaching"] if tool == "breaching" else
                     c["ratios" if tool == "gradleak" else "ratios_eager"]["floor_ratio_gradleak"])
            print(f"{case:<12} {tool:<17} {t['iterations_per_second']:7.2f} {t['wall_seconds_median']:8.2f} "
                  f"{t['peak_rss_rise_mib_median']:14.1f} {t['ssim_mean']:7.3f} {t['psnr_mean']:7.2f} "
                  f"{floor:8.2f}")
        for key, label in (("ratios", "gradleak"), ("ratios_eager", "eager")):
            if key not in c:
                continue
            r = c[key]
            rounds = ", ".join(f"{x:.2f}" for x in r["speedup_per_round"])
            print(f"{'':12} {label}/breaching: speed x{r['speedup_gradleak_over_breaching']:.2f} (median of the "
                  f"rounds' pairs: {rounds}; of the medians x{r['speedup_of_medians']:.2f}), wall "
                  f"{r['wall_ratio_gradleak_to_breaching']:.3f}, SSIM {r['ssim_gradleak_minus_breaching']:+.3f} "
                  f"over {r['ssim_difference_images']} images (paired s.e. "
                  f"{r['ssim_difference_paired_se'] or float('nan'):.3f}), "
                  f"PSNR {r['psnr_gradleak_minus_breaching']:+.2f} dB")
        warm = c["gradleak"]["warmup_seconds_all"]
        paths = sorted({e["iteration"] for e in c["gradleak"]["execution_all"] if e})
        print(f"{'':12} gradleak ran {'/'.join(paths)}; warm-up (compilation) per round: "
              f"{', '.join(f'{w:.1f}' for w in warm)} s")
    if "resnet18_b8_floor_ratio_gradleak" in summary:
        print(f"ResNet-18 batch 8 floor ratio (gradleak): {summary['resnet18_b8_floor_ratio_gradleak']:.2f}")
    for name, ok in summary["acceptance"].items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tool", choices=("compare", "breaching"), default="compare",
                        help="'breaching': the breaching half only (run by the comparison in breaching's venv)")
    parser.add_argument("--exchange", type=Path, help="exchange folder (with --tool breaching)")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-images", type=int, default=32,
                        help="more rounds for a case whose --repeats rounds grade fewer images than this")
    parser.add_argument("--trials", type=int, default=1, help="restarts per victim, in both tools")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--tv", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--floor-iterations", type=int, default=50)
    parser.add_argument("--breaching-python", default=str(ROOT / ".venv-breaching" / "bin" / "python"))
    parser.add_argument("--output", help="JSON path (default benchmarks/results/vs_breaching_cpu.json)")
    parser.add_argument("--quick", action="store_true", help="30 iterations, 1 repeat, no ResNet-18 floor")
    parser.add_argument("--cases", nargs="*", choices=list(CASES), default=list(CASES), help="cases to run")
    parser.add_argument("--no-resnet", action="store_true", help="skip the ResNet-18 floor measurement")
    parser.add_argument("--no-eager", dest="eager", action="store_false",
                        help="skip gradleak's eager variant (compile=False)")
    args = parser.parse_args()
    for case in [c for c in CASES if c not in args.cases]:
        del CASES[case]
    if args.tool == "breaching":
        run_breaching(args.exchange, args.cases)
        return
    if args.quick:
        args.iterations, args.repeats, args.floor_iterations, args.min_images = 30, 1, 10, 0
        if not args.output:
            args.output = str(RESULTS / "vs_breaching_quick.json")
    compare(args)


if __name__ == "__main__":
    main()
