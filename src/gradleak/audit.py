"""One call for the common experiment: simulate a client's update from images, attack it, grade the result.

Examples
--------
>>> import torch, gradleak
>>> from gradleak.models import create_model
>>> model = create_model("cnn", in_channels=1)
>>> images, labels = torch.rand(2, 1, 32, 32), torch.tensor([3, 7])
>>> result = gradleak.audit.simulate_and_attack(model, images, labels, recipe="fedsgd",
...     attack="inverting-gradients", attack_options={"iterations": 10}, victims="each")
>>> result.reconstruction.images.shape
torch.Size([2, 1, 32, 32])
>>> sorted(result.metrics)[:3]
['label_accuracy', 'psnr', 'psnr_per_image']
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

# importing the attack modules registers them
import gradleak.attacks  # noqa: F401  (registers every attack)
from gradleak.attacks.base import ATTACKS, Attack
from gradleak.attacks.replay import ReplayAttack
from gradleak.data.transforms import normalize
from gradleak.errors import GradleakError
from gradleak.fl.local import LocalData, local_update, model_state
from gradleak.fl.recipe import LocalRecipe
from gradleak.metrics import assign, psnr, ssim
from gradleak.records import ClientUpdate, GlobalState, Reconstruction, ServerView

__all__ = ["RECIPE_PRESETS", "THREATS", "AuditResult", "DefensesUnavailableError", "Truth", "image_metrics",
           "simulate_and_attack"]


class DefensesUnavailableError(GradleakError, NotImplementedError):
    """``defenses`` were given but the defenses stage is not implemented yet."""


#: Local-training presets by name, as functions of the client's number of images.
RECIPE_PRESETS: dict[str, Callable[[int], LocalRecipe]] = {
    "fedsgd": lambda n: LocalRecipe(optimizer="sgd", lr=0.01, steps=1, batch_size=n, shuffle=False),
    "fedavg": lambda n: LocalRecipe(optimizer="sgd", lr=0.01, epochs=1, batch_size=min(4, n), shuffle=True),
}


def _honest(truth_labels: Tensor) -> dict[str, Any]:
    return {"labels": None}


def _informed(truth_labels: Tensor) -> dict[str, Any]:
    return {"labels": truth_labels}


#: What each threat model grants beyond the global state, the update (with buffers), the recipe and the
#: number of images: ``honest`` (honest-but-curious server) nothing more, ``informed`` also the labels.
THREATS: dict[str, Callable[[Tensor], dict[str, Any]]] = {"honest": _honest, "informed": _informed}


@dataclass(frozen=True)
class Truth:
    """Ground truth of an audit: images in ``[0, 1]`` and labels (never shown to the attack)."""

    images: Tensor
    labels: Tensor


@dataclass(frozen=True)
class AuditResult:
    """Reconstruction, ground truth, metrics, and the views that were attacked.

    With ``victims="each"``, ``reconstruction`` concatenates the per-victim results in image order (its
    ``loss_trace`` is ``(records, victims)``) and ``reconstructions`` holds each one.
    """

    reconstruction: Reconstruction
    truth: Truth
    metrics: dict[str, Any]
    views: tuple[ServerView, ...]
    reconstructions: tuple[Reconstruction, ...] = field(default=())


#: scikit-image's default SSIM (7×7 uniform window), the reference the attack acceptance figures use
SKIMAGE_DEFAULT_SSIM = {"gaussian": False, "win_size": 7, "use_sample_covariance": True}


def image_metrics(reconstructed: Tensor, truth: Tensor, *, match: bool = True) -> dict[str, Any]:
    """SSIM (scikit-image's default settings, via :mod:`gradleak.metrics`) and PSNR between ``[0, 1]`` image
    batches, optionally after the assignment of reconstructions to originals that maximises total SSIM (order
    is not recoverable within a batch)."""
    rec = reconstructed.detach().cpu().double().clamp(0, 1)
    ref = truth.detach().cpu().double().clamp(0, 1)
    win = min(7, min(ref.shape[-2:]) - (1 - min(ref.shape[-2:]) % 2))
    options = {**SKIMAGE_DEFAULT_SSIM, "win_size": win}
    if match and len(rec) > 1:
        order = [int(i) for i in assign(rec, ref, metric="ssim", **options)[0]]
    else:
        order = list(range(len(ref)))
    paired = rec[order]
    per_ssim = ssim(paired, ref, **options).tolist()
    per_psnr = psnr(paired, ref).tolist()
    return {"ssim": float(np.mean(per_ssim)), "ssim_per_image": per_ssim,
            "psnr": float(np.mean(per_psnr)), "psnr_per_image": per_psnr, "assignment": order}


def _label_accuracy(predicted: Tensor | None, truth: Tensor) -> float | None:
    """Share of the true labels recovered, as multisets (order within a batch is not recoverable)."""
    if predicted is None:
        return None
    p = np.bincount(predicted.cpu().numpy(), minlength=int(truth.max()) + 1)
    t = np.bincount(truth.cpu().numpy(), minlength=len(p))
    p = np.pad(p, (0, len(t) - len(p)))
    return float(np.minimum(p, t).sum() / len(truth))


class _ModuleFactory:
    """A zero-argument factory of copies of a module (the view's architecture)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self) -> nn.Module:
        return copy.deepcopy(self.module)


def _resolve_recipe(recipe: LocalRecipe | str, n: int) -> LocalRecipe:
    if isinstance(recipe, LocalRecipe):
        return recipe
    try:
        return RECIPE_PRESETS[recipe](n)
    except KeyError:
        raise GradleakError(f"unknown recipe preset {recipe!r}; use one of {sorted(RECIPE_PRESETS)} "
                            "or pass a gradleak.fl.LocalRecipe") from None


def _combine(results: Sequence[Reconstruction]) -> Reconstruction:
    if len(results) == 1:
        return results[0]
    cat = lambda name: None if getattr(results[0], name) is None else torch.cat(  # noqa: E731
        [getattr(r, name) for r in results])
    traces = [r.loss_trace for r in results]
    return dataclasses.replace(
        results[0], images=cat("images"), labels=cat("labels"), soft_labels=cat("soft_labels"),
        trials=tuple(t for r in results for t in r.trials),
        loss_trace=torch.stack(traces, 1) if all(t is not None for t in traces) else None,
        wall_time=sum(r.wall_time for r in results), iterations=max(r.iterations for r in results),
        valid=None if results[0].valid is None else torch.cat([r.valid for r in results]))  # type: ignore[misc]


def simulate_and_attack(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    recipe: LocalRecipe | str,
    attack: Attack | str,
    attack_options: Mapping[str, Any] | None = None,
    defenses: Sequence[Any] = (),
    threat: str = "honest",
    victims: str = "batch",
    generator: torch.Generator | None = None,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    prior: Tensor | None = None,
    num_classes: int | None = None,
) -> AuditResult:
    """Simulate a client's update from ``images``, build the view ``threat`` allows, attack, and grade.

    Parameters
    ----------
    model
        The clients' architecture in the state of the attacked round (not modified).
    images, labels
        ``(N, C, H, W)`` images in ``[0, 1]`` and ``(N,)`` class indices.
    recipe
        The client's :class:`~gradleak.fl.LocalRecipe` or a preset name (``"fedsgd"``: one step on the whole
        batch, SGD lr 0.01; ``"fedavg"``: one epoch in batches of 4, SGD lr 0.01).
    attack, attack_options
        An attack object, or a registered attack name and its options.
    defenses
        Not available yet: must be empty (raises :class:`DefensesUnavailableError`).
    threat
        ``"honest"`` (global state, update with BN buffers, recipe, number of images) or ``"informed"``
        (also the labels).
    victims
        ``"batch"``: all images are one client's data; ``"each"``: every image is its own one-image client,
        all attacked together (vectorised for optimisation attacks).
    generator
        Seeds the clients' training randomness and the attack.
    mean, std
        Per-channel normalisation the model expects; ``images`` are normalised with it.
    prior
        A prior image in ``[0, 1]`` the attacker holds (``ServerView.prior``; needed by ``fedavg-inversion``).
    num_classes
        Number of classes (default: the model's number of outputs).
    """
    if defenses:
        raise DefensesUnavailableError("defenses are not implemented yet (they arrive with the defenses issue); "
                                       "pass defenses=()")
    if threat not in THREATS:
        raise GradleakError(f"unknown threat {threat!r}; use one of {sorted(THREATS)}")
    if victims not in ("batch", "each"):
        raise GradleakError(f"victims must be 'batch' or 'each', got {victims!r}")
    if images.dim() != 4 or labels.shape != (images.shape[0],):
        raise GradleakError("images must be (N, C, H, W) in [0, 1] and labels (N,) class indices")
    if isinstance(attack, str):
        attack = ATTACKS.create(attack, **dict(attack_options or {}))
    elif attack_options:
        raise GradleakError("attack_options go with an attack name; configure an attack object directly")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    client_seed, attack_seed = torch.randint(0, 2**62, (2,), generator=generator).tolist()

    params, buffers = model_state(model)
    state = GlobalState(round=0, params=params, buffers=buffers)
    dtype = next(iter(params.values())).dtype if params else torch.float32
    x = normalize(images.to(dtype), mean, std)
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(copy.deepcopy(model).eval()(x[:1]).shape[-1])
    groups = [list(range(len(images)))] if victims == "batch" else [[i] for i in range(len(images))]
    factory = _ModuleFactory(model)
    views = []
    for client, idx in enumerate(groups):
        client_recipe = _resolve_recipe(recipe, len(idx))
        g = torch.Generator().manual_seed(client_seed + client)
        out = local_update(model, params, buffers, LocalData(x[idx], labels[idx]), client_recipe, generator=g)
        update = ClientUpdate(client=client, round=0, delta=out.delta(params), buffers=out.buffers,
                              num_examples=len(idx), metadata={"recipe": client_recipe.to_json()})
        views.append(ServerView(
            model=factory, global_state=state, updates=(update,),
            image_shape=tuple(images.shape[1:]), num_classes=num_classes,  # type: ignore[arg-type]
            mean=tuple(mean), std=tuple(std), batch_size=client_recipe.batch_size, num_images=len(idx),
            recipe=client_recipe, prior=prior, **THREATS[threat](labels[idx])))

    attack_generator = torch.Generator().manual_seed(attack_seed)
    if isinstance(attack, ReplayAttack):
        results = attack.attack_many(views, generator=attack_generator)
    else:
        results = [attack(v, generator=attack_generator) for v in views]
    reconstruction = _combine(results)
    truth = Truth(images=images.detach().clone(), labels=labels.detach().clone())
    metrics: dict[str, Any] = image_metrics(reconstruction.images, truth.images, match=victims == "batch")
    if reconstruction.labels is None:
        metrics["label_accuracy"] = None
    elif victims == "each":  # one label per victim, in order
        metrics["label_accuracy"] = float((reconstruction.labels.cpu() == labels.cpu()).float().mean())
    else:
        metrics["label_accuracy"] = _label_accuracy(reconstruction.labels, labels)
    return AuditResult(reconstruction=reconstruction, truth=truth, metrics=metrics, views=tuple(views),
                       reconstructions=tuple(results))
