"""Fidelity of the optimisation attacks (issue 4's acceptance measurements); prints tables, writes JSON.

Sections (``--only`` picks some):

- ``ig``: inverting-gradients, the ``cnn`` (untrained), 32×32 MNIST test images, FedSGD batch 1, 32 victims.
- ``dlg``: dlg, ``lenet`` (untrained), 32×32 CIFAR-10 test images, FedSGD batch 1, 16 victims.
- ``defaults``: inverting-gradients with its *default* options (``--defaults-iterations`` overrides the budget),
  the ``cnn`` (untrained), FedSGD batch 1 (one SGD step), ``--ig-victims`` victims drawn at random from the test
  split (seeded; the CIFAR-10 file is sorted by class, its first 1,000 images are all airplanes): CIFAR-10 with
  the labels known and with the labels recovered by the attack (iDLG), MNIST and PneumoniaMNIST (labels
  recovered). ASR: share of victims with SSIM > 0.5 (Scheliga et al. 2024). ``--defaults-model`` attacks another
  model (e.g. ``resnet18``: the paper's ResNet-18 IG row with ``--defaults-only "labels known"``; or a user's own
  class by import path, such as the Flower example's ``cifarapp.task:Net`` with ``PYTHONPATH=examples/flower
  --defaults-mean 0.5 --defaults-std 0.5``, its clients' normalisation).
- ``labels``: label recovery on batches of 8 (distinct and repeated labels) and iDLG on single images.
- ``controls``: fedavg-inversion on a BatchNorm network, one-image batch-1 clients, the hospital paper's Fig. 3:
  (d) right checkpoint + BN re-estimation, (b) no BN re-estimation, (c) another round's checkpoint.
- ``trends``: the same attack as the client's batch size (one step) and number of local steps (batch 1) grow
  (the paper's Fig. 5).

Graded by :func:`gradleak.metrics.grade`, the one grading function (SSIM: scikit-image's default
``structural_similarity`` on ``[0, 1]`` images).

Usage: ``python benchmarks/fidelity_attacks.py [--only ig dlg ...] [--device cuda] [--bn-model convnet]``
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradleak.attacks.dlg import DLG
from gradleak.attacks.fedavg_inversion import FedAvgInversion
from gradleak.attacks.inverting_gradients import InvertingGradients
from gradleak.attacks.labels import classifier_gradient, idlg_label, infer_labels, wainakh_labels, yin_labels
from gradleak.audit import simulate_and_attack
from gradleak.data import load_dataset
from gradleak.fl import LocalData, LocalRecipe, local_update, model_state
from gradleak.fl.federation import FedAvgSimulation, FederationHook, FLClient
from gradleak.metrics import grade
from gradleak.models import create_model
from gradleak.records import ClientUpdate, GlobalState, Reconstruction, ServerView
from provenance import provenance

RESULTS = Path(__file__).parent / "results"

#: Attack settings of the acceptance runs (chosen on victims outside the measured ones, see the report).
IG = {"iterations": 1000, "restarts": 4, "signed": False, "lr": 1.0, "tv": 3e-3}
DLG_CFG = {"iterations": 500, "restarts": 8}
FEDAVG = {"iterations": 500}


def per_image_ssim(images: torch.Tensor, truth: torch.Tensor) -> list[float]:
    """SSIM of reconstruction ``i`` against original ``i``, graded by :func:`gradleak.metrics.grade`."""
    return grade(Reconstruction(images=images.detach().cpu()), truth.cpu(), assign=False)["ssim"].tolist()


def summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max()), "n": len(a)}


def run_ig(args: argparse.Namespace) -> dict[str, Any]:
    ds = load_dataset("mnist", split="test")
    x, y = ds.tensors(list(range(args.ig_victims)), size=32)
    torch.manual_seed(0)
    model = create_model("cnn", in_channels=1)
    started = time.perf_counter()
    result = simulate_and_attack(model, x, y, recipe="fedsgd", attack=InvertingGradients(**IG), victims="each",
                                 mean=ds.mean, std=ds.std, generator=torch.Generator().manual_seed(1))
    ssim = result.metrics["ssim_per_image"]
    out = {"config": IG, "victims": len(ssim), "ssim": summary(ssim), "ssim_per_image": ssim,
           "share_above_0.5": float(np.mean(np.asarray(ssim) > 0.5)), "psnr": summary(result.metrics["psnr_per_image"]),
           "label_accuracy": result.metrics["label_accuracy"], "seconds": time.perf_counter() - started}
    print(f"[ig] cnn MNIST b1 x{len(ssim)}: SSIM mean {out['ssim']['mean']:.3f} ± {out['ssim']['std']:.3f} "
          f"(min {out['ssim']['min']:.3f}); >0.5: {out['share_above_0.5']:.0%}; labels {out['label_accuracy']:.0%}; "
          f"{out['seconds']:.0f}s")
    return out


def run_dlg(args: argparse.Namespace) -> dict[str, Any]:
    ds = load_dataset("cifar10", split="test")
    x, y = ds.tensors(list(range(args.dlg_victims)), size=32)
    torch.manual_seed(0)
    model = create_model("lenet", in_channels=3)
    started = time.perf_counter()
    result = simulate_and_attack(model, x, y, recipe="fedsgd", attack=DLG(**DLG_CFG), victims="each",
                                 mean=ds.mean, std=ds.std, generator=torch.Generator().manual_seed(2))
    ssim = result.metrics["ssim_per_image"]
    out = {"config": DLG_CFG, "victims": len(ssim), "ssim": summary(ssim), "ssim_per_image": ssim,
           "psnr": summary(result.metrics["psnr_per_image"]), "label_accuracy": result.metrics["label_accuracy"],
           "seconds": time.perf_counter() - started}
    print(f"[dlg] lenet CIFAR-10 b1 x{len(ssim)}: SSIM mean {out['ssim']['mean']:.3f} ± {out['ssim']['std']:.3f} "
          f"(min {out['ssim']['min']:.3f}); labels {out['label_accuracy']:.0%}; {out['seconds']:.0f}s")
    return out


def _norm(given: list[float] | None, dataset: tuple[float, ...]) -> tuple[float, ...]:
    """The normalisation the model's clients use: the dataset's, or the one given (one value for every channel)."""
    if not given:
        return tuple(dataset)
    return tuple(given) * len(dataset) if len(given) == 1 else tuple(given)


def random_victims(name: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """``n`` test images drawn without replacement by a seeded permutation (every class, not the file's first
    ``n``), 32×32 in [0, 1], their labels and the dataset."""
    ds = load_dataset(name, split="test")
    idx = np.random.default_rng(seed).permutation(len(ds.labels))[:n].tolist()
    x, y = ds.tensors(idx, size=32)
    return x, y, ds


#: (row, dataset, classes, threat): "informed" grants the labels, "honest" makes the attack recover them
DEFAULT_ROWS = [("CIFAR-10, labels known", "cifar10", 10, "informed"),
                ("CIFAR-10, labels recovered", "cifar10", 10, "honest"),
                ("MNIST, labels recovered", "mnist", 10, "honest"),
                ("PneumoniaMNIST, labels recovered", "pneumoniamnist", 2, "honest")]


def run_defaults(args: argparse.Namespace) -> dict[str, Any]:
    options = {} if args.defaults_iterations is None else {"iterations": args.defaults_iterations}
    attack = InvertingGradients(**options, **json.loads(args.defaults_options))
    rows = {}
    for row, name, classes, threat in DEFAULT_ROWS:
        if args.defaults_only and not any(k.lower() in row.lower() for k in args.defaults_only):
            continue
        x, y, ds = random_victims(name, args.ig_victims, args.victims_seed)
        mean, std = _norm(args.defaults_mean, ds.mean), _norm(args.defaults_std, ds.std)
        torch.manual_seed(0)
        model = create_model(args.defaults_model, in_channels=x.shape[1], num_classes=classes)
        started = time.perf_counter()
        result = simulate_and_attack(model.to(args.device), x, y, recipe="fedsgd", attack=attack, victims="each",
                                     threat=threat, mean=mean, std=std, generator=torch.Generator().manual_seed(1))
        seconds = time.perf_counter() - started
        ssim = result.metrics["ssim_per_image"]
        execution = result.reconstructions[0].config.get("execution")
        rows[row] = {"dataset": name, "model": args.defaults_model, "threat": threat, "victims": len(ssim),
                     "mean": mean, "std": std, "ssim": summary(ssim),
                     "asr": float(np.mean(np.asarray(ssim) > 0.5)), "ssim_per_image": ssim,
                     "psnr": summary(result.metrics["psnr_per_image"]),
                     "label_accuracy": result.metrics["label_accuracy"], "seconds": seconds,
                     "seconds_per_image": seconds / len(ssim), "iterations": attack.iterations,
                     "victim_iterations_per_second": len(ssim) * attack.iterations / seconds,
                     "execution": execution, "tv_auto": result.reconstructions[0].config.get("tv_auto")}
        r = rows[row]
        print(f"[defaults] {row:<34} x{r['victims']}: SSIM {r['ssim']['mean']:.3f} ± {r['ssim']['std']:.3f} "
              f"(min {r['ssim']['min']:.3f}), ASR {r['asr']:.1%}, labels {r['label_accuracy']:.0%}; "
              f"{seconds:.0f} s ({execution['iteration'] if execution else '?'})"
              + (f", TV chosen {r['tv_auto']['chosen']:g}" if r["tv_auto"] else ""), flush=True)
    return {"config": attack.config(), "victims_seed": args.victims_seed, "rows": rows}


def _view(model: torch.nn.Module, state: GlobalState, x: torch.Tensor, y: torch.Tensor, recipe: LocalRecipe,
          ds: Any, num_classes: int, prior: torch.Tensor | None = None) -> ServerView:
    out = local_update(model, state.params, state.buffers, LocalData(ds.normalize(x), y), recipe)
    update = ClientUpdate(client=0, round=state.round, delta=out.delta(state.params), buffers=out.buffers,
                          num_examples=len(x))
    return ServerView(model=bn_model, global_state=state,
                      updates=(update,), image_shape=tuple(x.shape[1:]), num_classes=num_classes, mean=ds.mean,
                      std=ds.std, num_images=len(x), batch_size=recipe.batch_size, recipe=recipe, prior=prior)


def run_labels(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    for dataset, model_name, channels in (("mnist", "cnn", 1), ("cifar10", "lenet", 3)):
        ds = load_dataset(dataset, split="test")
        torch.manual_seed(0)
        model = create_model(model_name, in_channels=channels)
        params, buffers = model_state(model)
        state = GlobalState(round=0, params=params, buffers=buffers)
        rows: dict[str, list[float]] = {}
        for _ in range(args.label_batches):
            for kind in ("distinct", "repeated"):
                if kind == "distinct":
                    classes = rng.permutation(10)[:8]
                    idx = [int(rng.choice(np.nonzero(ds.labels == c)[0])) for c in classes]
                else:
                    idx = rng.choice(len(ds), 8, replace=False).tolist()
                x, y = ds.tensors(idx, size=32)
                view = _label_view(model, state, x, y, ds)
                g = classifier_gradient(view)
                for name, pred in (("yin", yin_labels(g, 8)), ("wainakh", wainakh_labels(g, 8)),
                                   ("wainakh-calibrated", infer_labels("wainakh-calibrated", view, 8))):
                    rows.setdefault(f"{name}/{kind}", []).append(_multiset(pred, y))
                for i in range(8):
                    single = _label_view(model, state, x[i:i + 1], y[i:i + 1], ds)
                    rows.setdefault(f"idlg/{kind}-images", []).append(
                        float(int(idlg_label(classifier_gradient(single))[0]) == int(y[i])))
        out[f"{model_name}-{dataset}"] = {k: float(np.mean(v)) for k, v in rows.items()}
        print(f"[labels] {model_name} {dataset} ({args.label_batches} batches of 8): "
              + ", ".join(f"{k} {v:.1%}" for k, v in out[f"{model_name}-{dataset}"].items()))
    return out


def _label_view(model: torch.nn.Module, state: GlobalState, x: torch.Tensor, y: torch.Tensor, ds: Any) -> ServerView:
    recipe = LocalRecipe(lr=0.01, steps=1, batch_size=len(x), shuffle=False)
    out = local_update(model, state.params, state.buffers, LocalData(ds.normalize(x), y), recipe)
    update = ClientUpdate(client=0, round=0, delta=out.delta(state.params), num_examples=len(x))
    factory = _Same(model)
    return ServerView(model=factory, global_state=state, updates=(update,), image_shape=tuple(x.shape[1:]),
                      num_classes=10, mean=ds.mean, std=ds.std, num_images=len(x), recipe=recipe)


class _Same:
    """Factory of copies of one module (one object for all views, so they can be attacked together)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def __call__(self) -> torch.nn.Module:
        return copy.deepcopy(self.module)


def _multiset(pred: torch.Tensor, truth: torch.Tensor) -> float:
    p = np.bincount(pred.numpy(), minlength=10)
    t = np.bincount(truth.numpy(), minlength=10)
    return float(np.minimum(p, t).sum() / len(truth))


# -- fedavg-inversion --------------------------------------------------------------------------------------


def small_bn_resnet(num_classes: int = 2, in_channels: int = 1, width: int = 16, activation: str = "relu"
                    ) -> torch.nn.Module:
    """A small BatchNorm ResNet for CPU runs (ResNet-8: a 3×3 stem and three torchvision BasicBlocks of widths
    w, 2w, 4w, strides 1, 2, 2, global average pool, linear; no max-pool), the stand-in for ResNet-18.
    ``activation="silu"`` replaces every ReLU by SiLU (twice differentiable, as DLG's sigmoid LeNet)."""
    from torch import nn
    from torchvision.models.resnet import BasicBlock

    act = {"relu": nn.ReLU, "silu": nn.SiLU}[activation]

    def block(cin: int, cout: int, stride: int) -> nn.Module:
        down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        b = BasicBlock(cin, cout, stride=stride, downsample=down)
        b.relu = act()
        return b

    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), act(),
                         block(width, width, 1), block(width, 2 * width, 2), block(2 * width, 4 * width, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))


_BN_MODEL: dict[str, Any] = {"name": "small-bn-resnet",
                             "options": {"in_channels": 1, "num_classes": 2, "width": 16, "activation": "silu"}}


def bn_model() -> torch.nn.Module:
    """The BatchNorm network of the fedavg-inversion runs (``--bn-model``), freshly initialised."""
    if _BN_MODEL["name"] == "small-bn-resnet":
        return small_bn_resnet(**_BN_MODEL["options"])
    return create_model(_BN_MODEL["name"], **_BN_MODEL["options"])


class _States(FederationHook):
    def __init__(self) -> None:
        self.states: dict[int, GlobalState] = {}

    def on_round_start(self, round: int, state: GlobalState) -> None:
        self.states[round] = state


def _federation(args: argparse.Namespace) -> tuple[Any, torch.nn.Module, dict[int, GlobalState], torch.Tensor]:
    """A short FedAvg on PneumoniaMNIST (4 clients × 32 images, SGD, BN in training mode): the global
    states at the start of every round, and the domain prior (mean of 256 training images)."""
    ds = load_dataset("pneumoniamnist", split="train")
    rng = np.random.default_rng(0)
    pool = rng.permutation(len(ds))
    clients = []
    for c in range(4):
        x, y = ds.tensors(pool[c * 32:(c + 1) * 32], size=32)
        clients.append(FLClient(id=c, train=LocalData(ds.normalize(x), y),
                                recipe=LocalRecipe(lr=0.01, batch_size=8, epochs=1)))
    hook = _States()
    sim = FedAvgSimulation(bn_model, clients, rounds=args.rounds + 1, seed=0, device=args.device)
    sim.run(hooks=[hook])
    prior = ds.tensors(pool[1000:1256], size=32)[0].mean(0)
    model = bn_model().to(args.device)
    states = {r: GlobalState(round=r, params={k: v.to(args.device) for k, v in s.params.items()},
                             buffers={k: v.to(args.device) for k, v in s.buffers.items()})
              for r, s in hook.states.items()}
    return ds, model, states, prior


def _victim_images(args: argparse.Namespace, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_dataset("pneumoniamnist", split="test")
    return ds.tensors(list(range(n)), size=32)


def run_controls(args: argparse.Namespace) -> dict[str, Any]:
    ds, model, states, prior = _federation(args)
    x, y = _victim_images(args, args.fedavg_victims)
    right, wrong = states[args.rounds], states[0]
    recipe = LocalRecipe(lr=0.01, steps=1, batch_size=1, shuffle=False)  # client 9 of the hospital paper
    views = [_view(model, right, x[i:i + 1].to(args.device), y[i:i + 1].to(args.device), recipe, ds, 2, prior)
             for i in range(len(x))]
    attack = FedAvgInversion(**FEDAVG)
    runs = {"d: right checkpoint + BN re-estimation": (attack, views),
            "b: no BN re-estimation": (attack.without_bn_reestimation(), views),
            f"c: wrong checkpoint (round 0 for round {args.rounds})":
                (attack, [_replace_state(v, wrong) for v in views])}
    out: dict[str, Any] = {"model": _BN_MODEL, "config": FEDAVG, "round": args.rounds, "victims": len(x)}
    prior_ssim = per_image_ssim(prior.expand_as(x), x)
    out["prior_ssim"] = summary(prior_ssim)
    print(f"[controls] {_BN_MODEL['name']} {_BN_MODEL['options']} PneumoniaMNIST 32×32, round {args.rounds}, "
          f"{len(x)} one-image clients; prior SSIM {out['prior_ssim']['mean']:.3f}")
    for name, (a, vs) in runs.items():
        started = time.perf_counter()
        recs = a.attack_many(vs, generator=torch.Generator().manual_seed(3))
        images = torch.cat([r.images for r in recs])
        ssim = per_image_ssim(images, x)
        out[name] = {"ssim": summary(ssim), "ssim_per_image": ssim, "seconds": time.perf_counter() - started}
        print(f"  {name:<48} SSIM {out[name]['ssim']['mean']:.3f} ± {out[name]['ssim']['std']:.3f} "
              f"[{out[name]['ssim']['min']:.3f}, {out[name]['ssim']['max']:.3f}]  {out[name]['seconds']:.0f}s")
    return out


def _replace_state(view: ServerView, state: GlobalState) -> ServerView:
    return dataclasses.replace(view, global_state=state)


def run_trends(args: argparse.Namespace) -> dict[str, Any]:
    ds, model, states, prior = _federation(args)
    state = states[args.rounds]
    references, _ = _victim_images(args, args.trend_references)
    extra, extra_y = load_dataset("pneumoniamnist", split="val").tensors(list(range(64)), size=32)
    ref_y = _victim_images(args, args.trend_references)[1]
    out: dict[str, Any] = {"batch_size": {}, "local_steps": {}, "references": len(references)}
    attack = FedAvgInversion(**FEDAVG)
    settings = [("batch_size", k, LocalRecipe(lr=0.01, steps=1, batch_size=k, shuffle=False)) for k in args.sizes]
    settings += [("local_steps", k, LocalRecipe(lr=0.01, epochs=1, batch_size=1, shuffle=False)) for k in args.sizes]
    print(f"[trends] {_BN_MODEL['name']} PneumoniaMNIST, round {args.rounds}, {len(references)} reference images")
    for axis, k, recipe in settings:
        views = []
        for r in range(len(references)):
            others = slice(r * 8, r * 8 + k - 1)  # the client's other images (new ones added, as Fig. 5)
            x = torch.cat([references[r:r + 1], extra[others]])
            y = torch.cat([ref_y[r:r + 1], extra_y[others]])
            views.append(_view(model, state, x.to(args.device), y.to(args.device), recipe, ds, 2, prior))
        started = time.perf_counter()
        recs = attack.attack_many(views, generator=torch.Generator().manual_seed(4))
        # the reference image's reconstruction: the best-matching reconstructed image of its client
        ssim = [max(per_image_ssim(rec.images[j:j + 1], references[r:r + 1])[0]
                    for j in range(len(rec.images))) for r, rec in enumerate(recs)]
        out[axis][k] = {"ssim": summary(ssim), "ssim_per_reference": ssim, "seconds": time.perf_counter() - started}
        print(f"  {axis:<12} {k:>2}: SSIM {out[axis][k]['ssim']['mean']:.3f} ± {out[axis][k]['ssim']['std']:.3f}  "
              f"{out[axis][k]['seconds']:.0f}s", flush=True)
    return out


SECTIONS = {"ig": run_ig, "dlg": run_dlg, "defaults": run_defaults, "labels": run_labels, "controls": run_controls,
            "trends": run_trends}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ig-victims", type=int, default=32)
    parser.add_argument("--dlg-victims", type=int, default=16)
    parser.add_argument("--defaults-iterations", type=int, default=None,
                        help="defaults section: attack budget (default: inverting-gradients' own)")
    parser.add_argument("--defaults-model", default="cnn",
                        help="defaults section: the attacked model (untrained, seeded): a registered name, e.g. "
                             "resnet18, or an import path such as the Flower example's cifarapp.task:Net")
    parser.add_argument("--defaults-mean", type=float, nargs="*", default=None,
                        help="defaults section: the clients' normalisation mean (default: the dataset's)")
    parser.add_argument("--defaults-std", type=float, nargs="*", default=None,
                        help="defaults section: the clients' normalisation std (default: the dataset's)")
    parser.add_argument("--defaults-only", nargs="*", default=[],
                        help="defaults section: only rows whose name contains one of these (cifar, mnist, ...)")
    parser.add_argument("--victims-seed", type=int, default=0, help="defaults section: the victims' permutation")
    parser.add_argument("--defaults-options", default="{}",
                        help="defaults section: JSON options changing the defaults (a control, e.g. '{\"tv\": 1e-4}')")
    parser.add_argument("--label-batches", type=int, default=50)
    parser.add_argument("--fedavg-victims", type=int, default=8)
    parser.add_argument("--trend-references", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--rounds", type=int, default=3, help="attacked round (the wrong checkpoint is round 0)")
    parser.add_argument("--bn-model", default="small-bn-resnet-silu",
                        choices=["small-bn-resnet-silu", "small-bn-resnet", "convnet", "resnet18"])
    parser.add_argument("--iterations", type=int, default=None, help="override the fedavg-inversion iterations")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.bn_model == "resnet18":
        _BN_MODEL.update(name="resnet18", options={"in_channels": 1, "num_classes": 2, "image_size": 32})
    elif args.bn_model == "small-bn-resnet":
        _BN_MODEL["options"]["activation"] = "relu"
    elif args.bn_model == "convnet":
        _BN_MODEL.update(name="convnet", options={"in_channels": 1, "num_classes": 2, "width": 16})
    if args.iterations:
        FEDAVG["iterations"] = args.iterations
    results: dict[str, Any] = {"device": args.device, "threads": args.threads, "torch": torch.__version__,
                               "device_name": torch.cuda.get_device_name(torch.device(args.device))
                               if torch.device(args.device).type == "cuda" else "cpu",
                               "platform": platform.platform(), "load_average": os.getloadavg()}
    for name in args.only:
        results[name] = SECTIONS[name](args)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"fidelity_attacks{('_' + args.tag) if args.tag else ''}.json"
    path.write_text(json.dumps({"provenance": provenance(), **results}, indent=2, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
