"""One call for the common experiment: simulate a client's update from images, attack it, grade the result.

Examples
--------
>>> import torch, gradleak
>>> from gradleak.models import create_model
>>> model = create_model("cnn", in_channels=1)
>>> images, labels = torch.rand(2, 1, 32, 32), torch.tensor([3, 7])
>>> result = gradleak.simulate_and_attack(model, images, labels, recipe="fedsgd",
...     attack="inverting-gradients", attack_options={"iterations": 10}, victims="each")
>>> result.reconstruction.images.shape
torch.Size([2, 1, 32, 32])
>>> result.metrics["leak_rule"], len(result.metrics["ssim_per_image"])
('threshold', 2)
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

# importing the attack modules registers them
import gradleak.attacks  # noqa: F401  (registers every attack)
from gradleak.attacks.base import ATTACKS, Attack
from gradleak.attacks.imprint.secrets import ImprintSecrets
from gradleak.attacks.replay import ReplayAttack
from gradleak.data.transforms import normalize
from gradleak.errors import GradleakError
from gradleak.fl.client import ModuleCopies, client_step
from gradleak.fl.local import LocalData, model_state
from gradleak.fl.recipe import LocalRecipe
from gradleak.metrics import grade
from gradleak.records import GlobalState, Reconstruction, ServerView

__all__ = ["RECIPE_PRESETS", "THREATS", "AuditResult", "Threat", "Truth", "simulate_and_attack"]


#: Local-training presets by name, as functions of the client's number of images.
RECIPE_PRESETS: dict[str, Callable[[int], LocalRecipe]] = {
    "fedsgd": lambda n: LocalRecipe(optimizer="sgd", lr=0.01, steps=1, batch_size=n, shuffle=False),
    "fedavg": lambda n: LocalRecipe(optimizer="sgd", lr=0.01, epochs=1, batch_size=min(4, n), shuffle=True),
}


@dataclass(frozen=True)
class Threat:
    """What a threat model grants the attacker beyond the global state, the update(s) (with BN buffers unless
    withheld), the recipe, the number of images and the defenses in use."""

    labels: bool = False
    client_noise: bool = False
    malicious_model: bool = False
    description: str = ""


#: The threat models by name.
THREATS: dict[str, Threat] = {
    "honest": Threat(description="honest-but-curious server: sees the update, the round's model, the recipe"),
    "informed": Threat(labels=True, description="honest-but-curious server that also knows the labels"),
    "well-informed": Threat(client_noise=True, description="also handed the client's randomness (dropout masks, "
                            "VB samples, DP noise) in ServerView.extra['noise'], as the WIIG attack assumes"),
    "malicious-model": Threat(malicious_model=True, description="malicious server: sends a modified model (the "
                              "attack's modify_model) and keeps its secrets in ServerView.secrets"),
}


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
    def cat(name: str) -> Any:
        parts = [getattr(r, name) for r in results]
        return None if parts[0] is None else torch.cat(parts)

    traces = [r.loss_trace for r in results]
    return dataclasses.replace(
        results[0], images=cat("images"), labels=cat("labels"), soft_labels=cat("soft_labels"),
        trials=tuple(t for r in results for t in r.trials),
        loss_trace=torch.stack([t for t in traces if t is not None], 1) if all(t is not None for t in traces)
        else None,
        wall_time=sum(r.wall_time for r in results), iterations=max(r.iterations for r in results),
        valid=cat("valid"))


def _metrics(recon: Reconstruction, truth: Truth, prior: Tensor | None, *, paired_by_index: bool) -> dict[str, Any]:
    """The audit's metrics, from :func:`gradleak.metrics.grade` (the one grading function)."""
    g = grade(recon, truth.images, truth.labels, prior=prior, assign=not paired_by_index)
    out: dict[str, Any] = {
        "ssim": g["ssim_mean"], "ssim_per_image": g["ssim"].tolist(), "psnr": g["psnr_mean"],
        "psnr_per_image": g["psnr"].tolist(), "assignment": g["order"].tolist(), "n_images": g["n_truth"],
        "n_matched": g["n_matched"], "asr": g["asr"], "leak_rule": g["rule"], "leaks": g["n_leaks"],
        "leak_per_image": g["leak"].tolist(), "verbatim": g["n_verbatim"], "verbatim_psnr": g["verbatim_psnr"],
        "reconstructions": g["n_reconstructions"], "valid": g["n_valid"],
        "share_recovered": g["n_verbatim"] / g["n_truth"],
    }
    if "rdlv" in g:
        out.update(ssim_prior=float(g["ssim_prior"].mean()), rdlv=g["rdlv_mean"], rdlv_per_image=g["rdlv"].tolist())
    # one label per victim in order when each image is its own client; as multisets within a batch
    key = "label_accuracy" if paired_by_index else "label_multiset_accuracy"
    out["label_accuracy"] = g.get(key)
    return out


def _check_threat(threat: str, attack: Attack) -> Threat:
    if threat not in THREATS:
        raise GradleakError(f"unknown threat {threat!r}; use one of {sorted(THREATS)}")
    granted = THREATS[threat]
    if attack.modifies_model and not granted.malicious_model:
        raise GradleakError(f"the {attack.name or type(attack).__name__} attack modifies the model the clients "
                            "train: use threat='malicious-model'")
    if granted.malicious_model and not attack.modifies_model:
        modifying = sorted(n for n in ATTACKS.names() if getattr(ATTACKS.get(n), "modifies_model", False))
        raise GradleakError(f"threat='malicious-model' needs an attack that modifies the model (one of "
                            f"{modifying}); "
                            f"{attack.name or type(attack).__name__} attacks honest updates")
    return granted


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
    public: Tensor | None = None,
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
        Defense names (papers' defaults), ``{"name", "options"}`` dicts or :class:`~gradleak.defenses.Defense`
        objects, applied by stage in order: model (the clients' architecture: ``dropout``, ``precode``,
        ``cvb``), step (inside local training: ``dp-sgd``, ``prune``), update (before sending:
        ``local-gaussian``, ``laplace``, ``prune-update``, ``withhold-bn``, ``withhold-layers``) and aggregate
        (``secure-aggregation``: the server sees one aggregate of all clients). The view lists them in
        ``defenses`` (the attacker knows which defenses are in use, not their randomness).
    threat
        A key of :data:`THREATS`: ``"honest"`` (global state, update with BN buffers, recipe, number of images),
        ``"informed"`` (also the labels), ``"well-informed"`` (also the client's randomness),
        ``"malicious-model"`` (the attack's :meth:`~gradleak.attacks.base.Attack.modify_model` sets the model
        the clients train, e.g. the imprint module).
    victims
        ``"batch"``: all images are one client's data; ``"each"``: every image is its own one-image client,
        all attacked together (vectorised for optimisation attacks).
    generator
        Seeds the clients' training randomness, the defenses, the server's modification and the attack.
    mean, std
        Per-channel normalisation the model expects; ``images`` are normalised with it.
    prior
        A prior image in ``[0, 1]`` the attacker holds (``ServerView.prior``; needed by ``fedavg-inversion``).
    public
        Images in ``[0, 1]`` a malicious server holds (never the attacked ones), e.g. to place imprint bins.
    num_classes
        Number of classes (default: the model's number of outputs).

    Returns
    -------
    AuditResult
        ``metrics`` comes from :func:`gradleak.metrics.grade`, the grading every entry point shares: SSIM/PSNR
        per image (after the SSIM-optimal pairing within a batch; in victim order with ``victims="each"``) and
        their means over the paired images, RDLV against ``prior``, label accuracy, verbatim recoveries (PSNR
        ≥ 60 dB), and the leak verdict of every image (``leak_per_image``, ``leaks``) under ``leak_rule``.
    """
    from gradleak.defenses import by_stage, resolve_defenses

    if victims not in ("batch", "each"):
        raise GradleakError(f"victims must be 'batch' or 'each', got {victims!r}")
    if images.dim() != 4 or labels.shape != (images.shape[0],):
        raise GradleakError("images must be (N, C, H, W) in [0, 1] and labels (N,) class indices")
    if isinstance(attack, str):
        attack = ATTACKS.create(attack, **dict(attack_options or {}))
    elif attack_options:
        raise GradleakError("attack_options go with an attack name; configure an attack object directly")
    granted = _check_threat(threat, attack)
    try:
        defense_list = resolve_defenses(defenses)
    except (KeyError, TypeError, ValueError) as exc:
        raise GradleakError(f"defenses: {exc}") from exc
    stages = by_stage(defense_list)
    if len(stages["aggregate"]) > 1:
        raise GradleakError("at most one aggregate-stage defense")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    client_seed, attack_seed, server_seed = torch.randint(0, 2**62, (3,), generator=generator).tolist()

    image_shape: tuple[int, int, int] = tuple(images.shape[1:])  # type: ignore[assignment]
    client_model = model
    for defense in stages["model"]:
        client_model = defense.apply(client_model)
    secrets: ImprintSecrets | None = None
    if granted.malicious_model:
        server_public = None if public is None else normalize(public.float(), mean, std)
        client_model, secrets = attack.modify_model(client_model, image_shape, public=server_public,
                                                    generator=torch.Generator().manual_seed(server_seed))
    params, buffers = model_state(client_model)
    state = GlobalState(round=0, params=params, buffers=buffers)
    first = next(iter(params.values()), None)
    dtype = first.dtype if first is not None else torch.float32
    device = first.device if first is not None else images.device
    x = normalize(images.to(device=device, dtype=dtype), mean, std)  # the clients train where the model is
    local_labels = labels.to(device)
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(copy.deepcopy(client_model).eval()(x[:1]).shape[-1])
    groups = [list(range(len(images)))] if victims == "batch" else [[i] for i in range(len(images))]
    factory = ModuleCopies(client_model)
    updates, noises, recipes = [], [], []
    for client, idx in enumerate(groups):
        client_recipe = _resolve_recipe(recipe, len(idx))
        client_recipe = client_recipe.replace(step_transforms=(*client_recipe.step_transforms, *stages["step"]))
        step = client_step(client_model, state, LocalData(x[idx], local_labels[idx]), client_recipe, client=client,
                           defenses=stages["update"], generator=torch.Generator().manual_seed(client_seed + client))
        updates.append(step.update)
        noises.append(step.noise)
        recipes.append(client_recipe)

    common: dict[str, Any] = {"model": factory, "global_state": state, "image_shape": image_shape,
                              "num_classes": num_classes, "mean": tuple(mean), "std": tuple(std), "prior": prior,
                              "defenses": tuple(defense_list), "secrets": secrets}
    views = []
    if stages["aggregate"]:  # one view: the aggregate of every client
        views.append(ServerView(updates=(stages["aggregate"][0](updates),), num_images=len(images),
                                batch_size=recipes[0].batch_size if len(groups) == 1 else None,
                                recipe=recipes[0] if len(groups) == 1 else None,
                                labels=labels if granted.labels else None, **common))
    else:
        for idx, update, noise, client_recipe in zip(groups, updates, noises, recipes, strict=True):
            views.append(ServerView(
                updates=(update,), batch_size=client_recipe.batch_size, num_images=len(idx), recipe=client_recipe,
                labels=labels[idx] if granted.labels else None,
                client_noise=noise if granted.client_noise else None, **common))

    attack_generator = torch.Generator().manual_seed(attack_seed)
    if isinstance(attack, ReplayAttack):
        results = attack.attack_many(views, generator=attack_generator)
    else:
        results = [attack(v, generator=attack_generator) for v in views]
    reconstruction = _combine(results)
    truth = Truth(images=images.detach().clone(), labels=labels.detach().clone())
    by_index = victims == "each" and len(views) > 1 and reconstruction.valid is None
    metrics = _metrics(reconstruction, truth, prior, paired_by_index=by_index)
    return AuditResult(reconstruction=reconstruction, truth=truth, metrics=metrics, views=tuple(views),
                       reconstructions=tuple(results))
