"""Scenario presets with the settings of the seed papers, as config objects a study can name.

- ``hospital`` — Hatamizadeh et al. (TMI 2023), Table I: 9 clients with training sizes
  8, 32, 128, 512, 8, 32, 128, 512, 1 (class-balanced) and batch sizes 4, 4, 4, 4, 8, 8, 8, 8, 1; client 9's
  single image is a normal case taken from client 1's data, and client 9 shares client 1's validation set.
  ResNet-18 with BatchNorm in training mode, SGD without momentum, step learning-rate decay, one local epoch.
  On PneumoniaMNIST, the offline stand-in for the paper's COVID-19 chest X-rays. Deviation: the paper gives
  each client 200 validation cases; PneumoniaMNIST's validation split has 270 images, so each client gets
  32 (16 per class) by default.
- ``combined-defenses`` — Scheliga et al. (2024): 10 IID clients, Adam with lr 1e-3, batch 64, one local
  epoch, the paper's CNN; on MNIST (padded to 32×32) or CIFAR-10. Offline only the CIFAR-10 *test* split
  exists, so for ``dataset="cifar10"`` a seeded 2,000-image hold-out of it is the test set and the other
  8,000 images are the clients' pool.

Examples
--------
>>> scenario = SCENARIOS.create("hospital", rounds=3)            # doctest: +SKIP
>>> sim = scenario.simulation()                                   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from gradleak.data import ImageDataset, load_dataset, partition_by_sizes, partition_dirichlet, partition_iid
from gradleak.fl.federation import FedAvgSimulation, FLClient
from gradleak.fl.local import LocalData
from gradleak.fl.recipe import LocalRecipe
from gradleak.models import ModelSpec
from gradleak.records import InputSpec
from gradleak.registry import Registry

if TYPE_CHECKING:
    from gradleak.defenses import Stages

__all__ = ["SCENARIOS", "Federation", "Scenario", "combined_defenses", "hospital"]


@dataclass(frozen=True)
class Federation:
    """A built scenario: clients with model-ready tensors, the test split, and where each came from."""

    scenario: Scenario
    clients: list[FLClient]
    test: LocalData
    train_data: ImageDataset
    train_indices: list[np.ndarray]
    val_data: ImageDataset | None
    val_indices: list[np.ndarray]

    def client_images(self, client: int) -> torch.Tensor:
        """Client ``client``'s training images in ``[0, 1]`` pixel space (ground truth for metrics)."""
        return self.train_data.tensors(self.train_indices[client], size=self.scenario.image_size)[0]


@dataclass(frozen=True)
class Scenario:
    """An FL scenario: data, partition, model, local recipe(s) and schedule.

    ``partition`` is ``"sizes"`` (explicit ``sizes``, optionally ``balanced``, with ``shared`` images:
    ``{client: (source_client, k)}``; balanced clients of size 1 take ``single_class``), ``"iid"`` or
    ``"dirichlet"`` (concentration ``alpha``) over ``num_clients``. ``batch_sizes`` gives each client its own
    batch size (else ``recipe.batch_size``).
    ``val_per_client`` images of the validation split go to each client (class-balanced);
    ``shared_val`` maps a client to the client whose validation set it reuses.
    """

    name: str
    dataset: str
    model: ModelSpec
    recipe: LocalRecipe
    rounds: int
    partition: Literal["sizes", "iid", "dirichlet"] = "iid"
    num_clients: int = 10
    sizes: tuple[int, ...] = ()
    batch_sizes: tuple[int, ...] = ()
    balanced: bool = False
    shared: dict[int, tuple[int, int]] = field(default_factory=dict)
    single_class: int | None = None
    alpha: float = 0.5
    image_size: int | None = None
    train_split: str = "train"
    val_split: str | None = None
    val_per_client: int = 0
    shared_val: dict[int, int] = field(default_factory=dict)
    test_split: str = "test"
    test_holdout: int = 0
    fraction: float = 1.0
    seed: int = 0
    data_root: str | None = None
    defenses: tuple[Any, ...] = ()

    def replace(self, **changes: Any) -> Scenario:
        """A copy with ``changes`` (``rounds=3``, ``dataset="sample-pneumoniamnist"``, ...)."""
        return dataclasses.replace(self, **changes)

    def _split_pool(self) -> tuple[ImageDataset, ImageDataset]:
        pool = load_dataset(self.dataset, split=self.train_split, root=self.data_root)
        if not self.test_holdout:
            return pool, load_dataset(self.dataset, split=self.test_split, root=self.data_root)
        order = np.random.default_rng([self.seed, 0x7E57]).permutation(len(pool))
        return pool.subset(order[self.test_holdout:]), pool.subset(order[: self.test_holdout])

    def _partition(self, labels: np.ndarray) -> list[np.ndarray]:
        if self.partition == "sizes":
            return partition_by_sizes(labels, list(self.sizes), balanced=self.balanced, seed=self.seed,
                                      shared=dict(self.shared) or None, single_class=self.single_class)
        if self.partition == "iid":
            return partition_iid(labels, self.num_clients, seed=self.seed)
        if self.partition == "dirichlet":
            return partition_dirichlet(labels, self.num_clients, self.alpha, seed=self.seed)
        raise ValueError(f"partition must be sizes, iid or dirichlet, got {self.partition!r}")

    def _local(self, data: ImageDataset, indices: np.ndarray) -> LocalData:
        x, y = data.tensors(indices, size=self.image_size)
        return LocalData(data.normalize(x), y)

    def build(self) -> Federation:
        """Load the data and cut it into clients (deterministic in ``seed``)."""
        train, test = self._split_pool()
        parts = self._partition(train.labels)
        val_data, val_parts = None, []
        if self.val_split and self.val_per_client:
            val_data = load_dataset(self.dataset, split=self.val_split, root=self.data_root)
            owners = [c for c in range(len(parts)) if c not in self.shared_val]
            own = partition_by_sizes(val_data.labels, [self.val_per_client] * len(owners), balanced=True,
                                     seed=self.seed + 1)
            by_client = dict(zip(owners, own, strict=True))
            val_parts = [by_client[self.shared_val.get(c, c)] for c in range(len(parts))]
        clients = []
        for c, idx in enumerate(parts):
            batch = self.batch_sizes[c] if self.batch_sizes else self.recipe.batch_size
            clients.append(FLClient(
                id=c,
                train=self._local(train, idx),
                recipe=self.recipe.replace(batch_size=batch),
                val=self._local(val_data, val_parts[c]) if val_data is not None else None,
            ))
        return Federation(self, clients, self._local(test, np.arange(len(test))), train, parts, val_data,
                          val_parts)

    def input_spec(self, federation: Federation | None = None) -> InputSpec:
        """What the model takes: the dataset's channels and normalisation at ``image_size`` (zero-padded when
        larger than the stored images, as :meth:`build` makes them; resized when smaller)."""
        data = (federation or self.build()).train_data
        channels, height, _ = data.image_shape
        size = self.image_size or height
        resize = "none" if size == height else "pad" if size > height else "bilinear"
        return InputSpec(size=size, channels=channels, mean=tuple(data.mean), std=tuple(data.std), resize=resize)

    def defended(self) -> tuple[ModelSpec, LocalRecipe, Stages]:
        """The model spec and recipe with the scenario's defenses applied, and the defenses by stage."""
        from gradleak.defenses import by_stage, resolve_defenses

        stages = by_stage(resolve_defenses(self.defenses))
        model = self.model
        if stages["model"]:
            options = dict(model.options)
            options["model_defenses"] = [*options.get("model_defenses", []), *(d.to_json() for d in stages["model"])]
            model = ModelSpec(model.name, options)
        recipe = self.recipe.replace(step_transforms=(*self.recipe.step_transforms, *stages["step"]))
        return model, recipe, stages

    def simulation(self, *, progress: bool = False, device: str | torch.device = "cpu",
                   federation: Federation | None = None) -> FedAvgSimulation:
        """The :class:`FedAvgSimulation` of this scenario, with its defenses in place."""
        fed = federation if federation is not None else self.build()
        model, recipe, stages = self.defended()
        clients = [dataclasses.replace(c, recipe=c.recipe.replace(step_transforms=recipe.step_transforms))
                   for c in fed.clients]
        aggregator = None
        if stages["aggregate"]:
            if len(stages["aggregate"]) > 1:
                raise ValueError("at most one aggregate-stage defense")
            aggregator = stages["aggregate"][0]
        return FedAvgSimulation(model, clients, rounds=self.rounds, fraction=self.fraction, seed=self.seed,
                                test=fed.test, update_defenses=stages["update"], aggregator=aggregator,
                                progress=progress, device=device)


SCENARIOS: Registry[Scenario] = Registry("scenario")


@SCENARIOS.register("hospital")
def hospital(**overrides: Any) -> Scenario:
    """Hatamizadeh et al. 2023, Table I: 9 hospitals, ResNet-18 with BatchNorm, SGD, PneumoniaMNIST."""
    base = Scenario(
        name="hospital",
        dataset="pneumoniamnist",
        model=ModelSpec("resnet18", {"num_classes": 2, "in_channels": 1, "image_size": 28, "norm": "batch"}),
        recipe=LocalRecipe(optimizer="sgd", lr=0.01, momentum=0.0, lr_schedule="step", lr_step_size=32,
                           lr_gamma=0.5, epochs=1, bn_mode="train"),
        rounds=100,
        partition="sizes",
        sizes=(8, 32, 128, 512, 8, 32, 128, 512, 1),
        batch_sizes=(4, 4, 4, 4, 8, 8, 8, 8, 1),
        balanced=True,
        shared={8: (0, 1)},
        single_class=0,
        val_split="val",
        val_per_client=32,
        shared_val={8: 0},
    )
    return base.replace(**overrides)


@SCENARIOS.register("combined-defenses")
def combined_defenses(dataset: str = "mnist", **overrides: Any) -> Scenario:
    """Scheliga et al. 2024: 10 IID clients, Adam 1e-3, batch 64, one epoch, the paper's CNN (MNIST/CIFAR-10)."""
    channels = 3 if "cifar" in dataset else 1
    extra: dict[str, Any] = {}
    if dataset == "cifar10":  # offline only the test split exists: hold 2,000 of it out as the test set
        extra = {"train_split": "test", "test_holdout": 2000}
    base = Scenario(
        name="combined-defenses",
        dataset=dataset,
        model=ModelSpec("cnn", {"num_classes": 10, "in_channels": channels}),
        recipe=LocalRecipe(optimizer="adam", lr=1e-3, batch_size=64, epochs=1, bn_mode="train"),
        rounds=10,
        partition="iid",
        num_clients=10,
        image_size=32,
        **extra,
    )
    return base.replace(**overrides)
