"""``gradleak attack`` (one recorded update, with a progress bar and an optional grade against the truth) and
``gradleak imprint-calc``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from gradleak.cli.app import app, console, fail
from gradleak.errors import GradleakError

if TYPE_CHECKING:
    from torch import Tensor

def _scalar(value: str) -> object:
    """A command-line value as YAML reads it, with numbers in exponent notation as numbers (``1e-2``, which
    YAML 1.1 leaves a string)."""
    import yaml

    parsed = yaml.safe_load(value)
    if isinstance(parsed, str):
        try:
            return float(parsed)
        except ValueError:
            return parsed
    return parsed


def _parse_options(pairs: list[str]) -> dict:
    """``key=value`` pairs; values parsed as YAML scalars (``iterations=200``, ``tv=1e-2``, ``labels=joint``)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise GradleakError(f"--option takes key=value, got {pair!r}")
        options[key] = _scalar(value)
    return options


def _truth(spec: str, split: str, size: int | None, resize: str) -> tuple[Tensor, Tensor]:
    """The attacked client's true images and labels: an npz file (``images``, ``labels``), an image folder, or
    ``DATASET@i,j,...`` (images of a dataset by index, from ``split``)."""
    from gradleak.data import load_dataset

    name, sep, indices = spec.rpartition("@")
    if not sep:
        name, indices = spec, ""
    path = Path(name)
    if not name.startswith(("npz:", "imagefolder:")):
        if path.suffix == ".npz":
            name = f"npz:{name}"
        elif path.is_dir():
            name = f"imagefolder:{name}"
    ds = load_dataset(name, split=split)
    try:
        idx = [int(i) for i in indices.split(",")] if indices else None
    except ValueError:
        raise GradleakError(f"--truth {spec!r}: the indices after @ must be integers, e.g. cifar10@3,17") from None
    return ds.tensors(idx, size=size, resize="pad" if resize == "none" else resize)


@app.command()
def attack(
    store_dir: Path = typer.Option(..., "--store", help="an UpdateStore (from gradleak run/simulate or Flower)"),
    round_: int = typer.Option(..., "--round", min=0, help="the round of the attacked update (0-based)"),
    client: int = typer.Option(..., min=0, help="the client id of the attacked update (gradleak inspect lists them)"),
    attack_name: str = typer.Option(..., "--attack", help="an attack name (gradleak list attacks)"),
    option: list[str] = typer.Option([], help="attack option key=value (repeatable), e.g. tv=1e-2"),
    truth: str | None = typer.Option(None, help="the client's true images, to grade the reconstruction: an npz "
                                                "(images, labels), an image folder, or DATASET@i,j"),
    truth_split: str = typer.Option("train", help="split of DATASET for --truth DATASET@i,j"),
    dataset: str | None = typer.Option(None, help="a dataset like the clients' (its test split gives the prior "
                                                  "image; shape and normalisation when the store records none)"),
    model: str | None = typer.Option(None, help="the clients' model when the store records none"),
    model_option: list[str] = typer.Option([], help="model option key=value (repeatable), with --model"),
    image_size: int | None = typer.Option(None, help="input size (default: the store's input spec)"),
    mean: str | None = typer.Option(None, help="per-channel normalisation mean, e.g. 0.5,0.5,0.5"),
    std: str | None = typer.Option(None, help="per-channel normalisation std, e.g. 0.5,0.5,0.5"),
    data_root: str | None = typer.Option(None, help="folder with the dataset files"),
    prior_images: int = typer.Option(64, min=0, help="prior image: mean of this many --dataset test images "
                                                     "(0: none)"),
    optimizer: str | None = typer.Option(None, help="the clients' optimizer (sgd, adam), overriding the store"),
    lr: float | None = typer.Option(None, help="the clients' learning rate, overriding the store"),
    momentum: float | None = typer.Option(None, help="the clients' SGD momentum, overriding the store"),
    weight_decay: float | None = typer.Option(None, help="the clients' weight decay, overriding the store"),
    batch_size: int | None = typer.Option(None, min=1, help="the clients' batch size, overriding the store"),
    epochs: int | None = typer.Option(None, min=1, help="the clients' local epochs, overriding the store"),
    num_images: int | None = typer.Option(None, min=1, help="the client's number of images, when the store "
                                                            "records none (or to override it)"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("gradleak-out/attack"), help="where the reconstruction goes"),
) -> None:
    """Attack one recorded update (also updates recorded from Flower by RecordingStrategy) and, with --truth,
    grade the reconstruction. What the store records (model, input size and normalisation, the clients' recipe)
    is used; any of it can be overridden. Writes OUT/reconstruction.png and .npz."""
    import dataclasses

    import numpy as np
    import torch

    import gradleak.attacks  # noqa: F401
    from gradleak.attacks.base import ATTACKS
    from gradleak.attacks.optimize import report_progress
    from gradleak.fl.recipe import LocalRecipe
    from gradleak.fl.store import UpdateStore
    from gradleak.metrics import describe_rule, grade
    from gradleak.models import ModelSpec
    from gradleak.records import InputSpec
    from gradleak.report.figures import save_image_row
    from gradleak.study.views import DataContext, data_context, domain_prior, view_from_store

    def floats(text: str | None, what: str) -> tuple[float, ...] | None:
        if text is None:
            return None
        try:
            return tuple(float(v) for v in text.split(","))
        except ValueError:
            raise GradleakError(f"--{what} takes numbers separated by commas, e.g. 0.5,0.5,0.5") from None

    try:
        options = _parse_options(option)
        if "iterations" in options and not (isinstance(options["iterations"], int) and options["iterations"] >= 1):
            raise GradleakError(f"--option iterations must be an integer >= 1, got {options['iterations']!r}")
        attack_obj = ATTACKS.create(attack_name, **options)
        store = UpdateStore(store_dir, create=False)
        recorded = store.server_info.get("input")
        spec = InputSpec.from_json(recorded) if recorded else None
        size = image_size or (spec.size if spec else None)
        resize = spec.resize if spec else "pad"
        if spec is not None:
            side = size or spec.size
            context = DataContext(image_shape=(spec.channels, side, side), num_classes=0, mean=spec.mean,
                                  std=spec.std)
        elif dataset is not None:
            context = data_context(dataset, image_size=image_size, root=data_root)
        else:
            raise GradleakError(f"{store_dir}: the store records no input spec; say what the clients' images are "
                                "with --dataset NAME (gradleak list datasets), or record them with "
                                "RecordingStrategy(input_spec=...)")
        m, s_ = floats(mean, "mean"), floats(std, "std")
        context = dataclasses.replace(context, mean=m or context.mean, std=s_ or context.std)
        prior = (domain_prior(dataset, images=prior_images, image_size=size, root=data_root, seed=seed)
                 if dataset is not None and prior_images else None)
        overrides: dict[str, Any] = {k: v for k, v in {"optimizer": optimizer, "lr": lr, "momentum": momentum,
                                       "weight_decay": weight_decay, "batch_size": batch_size,
                                       "epochs": epochs}.items() if v is not None}
        # when an update records no recipe: what the server app declared, with the command line's overrides
        declared = {**store.server_info.get("recipe", {}), **overrides}
        fallback = LocalRecipe.from_json({"shuffle": False, **declared}) \
            if {"lr", "batch_size"} <= set(declared) else None
        model_spec = ModelSpec(model, _parse_options(model_option)) if model is not None else None
        view = view_from_store(store, round=round_, client=client, context=context, model=model_spec,
                               recipe=fallback, prior=prior)
        if overrides and view.recipe is not None:
            view = dataclasses.replace(view, recipe=view.recipe.replace(**overrides),
                                       batch_size=min(overrides.get("batch_size", view.recipe.batch_size),
                                                      view.num_images or 1))
        if num_images is not None:
            view = dataclasses.replace(view, num_images=num_images, batch_size=min(
                view.recipe.batch_size if view.recipe is not None else num_images, num_images))
        if not view.num_images:
            raise GradleakError(f"the store records no number of images for client {client} (its client reported "
                                "none): give it with --num-images N")
        if view.recipe is None:
            raise GradleakError("the store records no recipe for this update: say how the clients train with --lr "
                                "and --batch-size (and --optimizer, --momentum, --epochs where they differ from "
                                "sgd, 0, 1), or record it with RecordingStrategy(recipe=...)")
        console.print(f"{attack_name} on client {client}, round {round_}: {view.num_images} image(s); the client's "
                      f"recipe: {view.recipe.optimizer} lr {view.recipe.lr:g}"
                      + (f" momentum {view.recipe.momentum:g}" if view.recipe.momentum else "")
                      + f", batch {view.recipe.batch_size}, {view.recipe.epochs} epoch(s); input "
                        f"{'×'.join(map(str, view.image_shape))}, mean {list(view.mean)}, std {list(view.std)}")
        truth_x = truth_y = None
        if truth is not None:
            truth_x, truth_y = _truth(truth, truth_split, size, resize)
            if tuple(truth_x.shape[1:]) != tuple(view.image_shape):
                raise GradleakError(f"--truth images are {tuple(truth_x.shape[1:])}, the model's input is "
                                    f"{tuple(view.image_shape)}; give --image-size or the store's input spec")
        with _attack_progress(attack_obj) as callback, report_progress(callback):
            recon = attack_obj(view, generator=torch.Generator().manual_seed(seed))
    except (GradleakError, TypeError, ValueError) as exc:
        fail(exc if isinstance(exc, GradleakError) else GradleakError(f"{attack_name}: {exc}"))
        return
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "reconstruction.npz", images=recon.images.numpy(),
                        labels=np.array([] if recon.labels is None else recon.labels.numpy()))
    png = save_image_row(recon.images, out / "reconstruction.png", title=f"{attack_name}: client {client}, "
                         f"round {round_}")
    final = recon.loss_trace[-1].min().item() if recon.loss_trace is not None and recon.loss_trace.numel() else None
    restarts = getattr(attack_obj, "restarts", 1)
    console.print(f"{len(recon.images)} image(s) in {recon.wall_time:.1f} s: {recon.iterations} iterations × "
                  f"{restarts} restart(s)" + (f", objective {final:.4g}" if final is not None else "")
                  + f" -> [bold]{png}[/]")
    execution = recon.config.get("execution")
    if execution:
        console.print(f"iterations ran {execution['iteration']}: {execution['reason']}", markup=False)
    if truth_x is not None:
        g = grade(recon, truth_x, truth_y, prior=prior, assign=len(truth_x) > 1)
        for i in range(g["n_truth"]):
            parts = [f"SSIM {g['ssim'][i]:.3f}", f"PSNR {g['psnr'][i]:.1f} dB"]
            if "rdlv" in g:
                parts.append(f"RDLV {g['rdlv'][i]:+.1f} % (prior SSIM {g['ssim_prior'][i]:.3f})")
            console.print(f"  image {i}: " + ", ".join(parts) + (" — leak" if g["leak"][i] else " — no leak"))
        summary = f"SSIM {g['ssim_mean']:.3f}, PSNR {g['psnr_mean']:.1f} dB"
        if "rdlv" in g:
            summary += f", RDLV {g['rdlv_mean']:+.1f} %"
        console.print(f"graded against {truth}: {summary}; {g['n_leaks']} of {g['n_truth']} image(s) leak "
                      f"({describe_rule(g['rule'], g['tau'])})")


@contextlib.contextmanager
def _attack_progress(attack_obj: object):
    """A progress bar of the optimisation (iterations, best objective) when the output is a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = int(getattr(attack_obj, "iterations", 0) or 0)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not console.is_terminal or total < 1, transient=True) as bar:
        task = bar.add_task("attack (best objective –)", total=total)

        def callback(done: int, iterations: int, best: object) -> None:
            value = float(best.min()) if hasattr(best, "min") else float("nan")
            bar.update(task, completed=done, total=iterations, description=f"attack (best objective {value:.4g})")

        yield callback


@app.command("imprint-calc")
def imprint_calc(
    batch: int = typer.Option(..., min=1, help="inputs in the attacked batch (or aggregate)"),
    bins: int = typer.Option(..., min=1, help="imprint bins"),
    draws: int = typer.Option(20000, min=1, help="Monte-Carlo draws"),
) -> None:
    """How many of BATCH inputs an imprint module with BINS bins recovers (alone in their bin): the iid
    expectation, Proposition 1 of Fowl et al. as printed (for bins > batch > 2), and a Monte-Carlo check."""
    import torch

    from gradleak.attacks.imprint import expected_recovery, simulate_recovery

    iid = expected_recovery(batch, bins)
    mean, se = simulate_recovery(batch, bins, draws, torch.Generator().manual_seed(0))
    table = Table(title=f"{batch} inputs, {bins} bins")
    for col in ("model", "expected inputs recovered", "share of the batch"):
        table.add_column(col)
    table.add_row("independent inputs", f"{iid:.2f}", f"{iid / batch:.1%}")
    table.add_row(f"Monte-Carlo ({draws} draws)", f"{mean:.2f} ± {se:.2f}", f"{mean / batch:.1%}")
    if bins > batch > 2:
        paper = expected_recovery(batch, bins, model="paper")
        table.add_row("Proposition 1 as printed", f"{paper:.2f}", f"{paper / batch:.1%}")
    console.print(table)
