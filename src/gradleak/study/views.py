"""Turn recorded updates into :class:`~gradleak.records.ServerView` objects: what the attacker reads from an
:class:`~gradleak.fl.store.UpdateStore` (written by the simulator's ``Recorder`` or by Flower's
``RecordingStrategy``), plus what the threat model grants (recipe, prior, labels, secrets).

Examples
--------
>>> store = UpdateStore("runs/hospital/store", create=False)                         # doctest: +SKIP
>>> context = data_context("sample-pneumoniamnist")                                  # doctest: +SKIP
>>> view = view_from_store(store, round=2, client=8, context=context,
...                        prior=domain_prior("sample-pneumoniamnist"))              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn

from gradleak.attacks.imprint.secrets import ImprintSecrets
from gradleak.errors import GradleakError
from gradleak.fl.recipe import LocalRecipe
from gradleak.fl.store import UpdateStore
from gradleak.models import ModelSpec
from gradleak.records import ClientUpdate, GlobalState, ServerView

__all__ = ["DataContext", "data_context", "domain_prior", "output_classes", "recipe_from_update", "server_view",
           "view_from_store"]


@dataclass(frozen=True)
class DataContext:
    """What the server knows about the clients' inputs: shape, classes and the normalisation the model uses."""

    image_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def output_classes(module: nn.Module, image_shape: Sequence[int]) -> int:
    """The number of logits ``module`` returns for one input of ``image_shape`` (run once, in eval mode).

    The attacker's label space is the model's output, whatever the dataset's metadata says: a 10-class model
    trained on a 2-class dataset still computes its loss over 10 logits."""
    import torch

    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            param = next(module.parameters(), None)
            x = torch.zeros(1, *image_shape, dtype=param.dtype if param is not None else torch.float32)
            out = module(x)
    except Exception as exc:  # a model that does not fit the input: one clear line
        raise GradleakError(f"the model does not run on one {tuple(image_shape)} input: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    finally:
        module.train(training)
    if not hasattr(out, "shape") or out.dim() != 2 or out.shape[0] != 1:
        raise GradleakError(f"the model must return logits (N, num_classes); it returned shape "
                            f"{tuple(getattr(out, 'shape', ()))} for one input")
    return int(out.shape[-1])


def data_context(dataset: str, *, image_size: int | None = None, root: str | None = None,
                 split: str = "test") -> DataContext:
    """The :class:`DataContext` of a dataset (its ``split`` is read for the metadata), resized to ``image_size``."""
    from gradleak.data import load_dataset

    ds = load_dataset(dataset, split=split, root=root)
    c, h, w = ds.image_shape
    if image_size is not None:
        h = w = image_size
    return DataContext(image_shape=(c, h, w), num_classes=ds.num_classes, mean=tuple(ds.mean), std=tuple(ds.std))


def domain_prior(dataset: str, *, split: str = "test", images: int = 64, image_size: int | None = None,
                 root: str | None = None, seed: int = 0) -> Tensor:
    """A domain prior in ``[0, 1]``: the mean of ``images`` images of ``split`` (data the server holds, not a
    client's), drawn with ``seed``; shape ``(C, H, W)``."""
    return public_images(dataset, split=split, images=images, image_size=image_size, root=root, seed=seed).mean(0)


def public_images(dataset: str, *, split: str = "test", images: int = 256, image_size: int | None = None,
                  root: str | None = None, seed: int = 0) -> Tensor:
    """``images`` images of ``split`` in ``[0, 1]`` (the server's public data), drawn with ``seed``."""
    from gradleak.data import load_dataset

    ds = load_dataset(dataset, split=split, root=root)
    rng = np.random.default_rng([seed, 0x9E1])
    idx = np.sort(rng.choice(len(ds), size=min(images, len(ds)), replace=False))
    return ds.tensors(idx, size=image_size)[0]


def recipe_from_update(update: ClientUpdate, *, fallback: LocalRecipe | None = None,
                       step_transforms: Sequence[Any] = ()) -> LocalRecipe | None:
    """The local recipe an update's metadata announces (the simulator records it, with the client's seed), with
    ``step_transforms`` put back (they are recorded by name only); ``fallback`` when the metadata has none (e.g.
    updates recorded from Flower)."""
    data = update.metadata.get("recipe")
    if data is None:
        return fallback
    if not isinstance(data, Mapping):
        raise GradleakError(f"update of client {update.client}, round {update.round}: metadata 'recipe' must be "
                            f"an object, got {type(data).__name__}")
    fields = {k: v for k, v in data.items() if k != "step_transforms"}
    try:
        recipe = LocalRecipe.from_json(fields)
    except (TypeError, ValueError) as exc:
        raise GradleakError(f"update of client {update.client}, round {update.round}: its recorded recipe is "
                            f"invalid: {exc}") from None
    return recipe.replace(step_transforms=tuple(step_transforms))


def server_view(
    update: ClientUpdate,
    global_state: GlobalState,
    model: ModelSpec | Callable[[], nn.Module],
    context: DataContext,
    *,
    recipe: LocalRecipe | None = None,
    prior: Tensor | None = None,
    labels: Tensor | None = None,
    defenses: Sequence[Any] = (),
    secrets: ImprintSecrets | None = None,
) -> ServerView:
    """A :class:`ServerView` of one recorded update: the round's global model, the update, the data context,
    and what the threat model grants (``recipe``, ``prior``, ``labels``, ``defenses``, ``secrets``).

    The number of images is the update's ``num_examples`` (what FedAvg weights by, so the server sees it); the
    batch size is the recipe's, capped at that number.
    """
    n = update.num_examples
    batch = min(recipe.batch_size, n) if recipe is not None and n else None
    return ServerView(
        model=model, global_state=global_state, updates=(update,), image_shape=context.image_shape,
        num_classes=context.num_classes, mean=context.mean, std=context.std, labels=labels,
        batch_size=batch, num_images=n or None, recipe=recipe, defenses=tuple(defenses), prior=prior,
        secrets=secrets,
    )


def view_from_store(
    store: UpdateStore,
    *,
    round: int,
    client: int,
    context: DataContext,
    model: ModelSpec | Callable[[], nn.Module] | None = None,
    recipe: LocalRecipe | None = None,
    step_transforms: Sequence[Any] = (),
    prior: Tensor | None = None,
    labels: Tensor | None = None,
    defenses: Sequence[Any] = (),
) -> ServerView:
    """Load (and validate against the model) the update of ``client`` in ``round`` and that round's global
    state, and build its :class:`ServerView`. ``model`` defaults to the store's model spec; ``recipe`` is the
    fallback when the update's metadata records none."""
    if model is None:
        if store.model_spec is None:
            raise GradleakError(f"{store.path}: the store records no model spec; say which model the clients "
                                "train (gradleak attack --model NAME --model-option key=value)")
        model = store.model_spec
    module = model()
    if not store.has_update(round, client):
        have = store.clients(round) if round in store.rounds() else []
        raise GradleakError(f"{store.path}: no update of client {client} in round {round} (round {round} has "
                            f"clients {have or 'none'}; rounds recorded: {store.rounds() or 'none'})")
    if not store.has_global(round):
        raise GradleakError(f"{store.path}: no global state of round {round} (recorded: {store.global_rounds()})")
    update = store.load_update(round, client, model=module)
    state = store.load_global(round, model=module)
    classes = output_classes(module, context.image_shape)
    if classes != context.num_classes:
        context = dataclasses.replace(context, num_classes=classes)
    return server_view(update, state, model, context,
                       recipe=recipe_from_update(update, fallback=recipe, step_transforms=step_transforms),
                       prior=prior, labels=labels, defenses=defenses)
