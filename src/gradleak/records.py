"""Typed records passed between stages: data → fl → attacks → metrics → study → report.

These dataclasses are the contracts between the stages (``docs/architecture.md``). Tensors inside them are never
mutated by a stage that receives them; a stage that changes something returns a new record
(``dataclasses.replace``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

if TYPE_CHECKING:  # types only: records imports nothing of gradleak when it runs
    from gradleak.attacks.imprint.secrets import ImprintSecrets
    from gradleak.defenses.base import Defense
    from gradleak.fl.recipe import LocalRecipe

__all__ = [
    "AGGREGATE_CLIENT",
    "ClientUpdate",
    "GlobalState",
    "InputSpec",
    "Reconstruction",
    "ServerView",
    "Trial",
]

TensorDict = dict[str, Tensor]

#: Client id of an aggregate the server sees under secure aggregation (no real client has this id).
AGGREGATE_CLIENT = 99_999


@dataclass(frozen=True)
class InputSpec:
    """What the model takes as input: ``channels`` × ``size`` × ``size`` images, made from the clients' images by
    ``resize`` (``"none"``: they already have that size; ``"pad"``: zero-padded, centred; ``"bilinear"``) and
    normalised per channel with ``mean`` and ``std`` (``torchvision.transforms.Normalize``)."""

    size: int
    channels: int
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resize: str = "none"

    def __post_init__(self) -> None:
        for name in ("size", "channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"input spec {name} must be a positive integer, got {value!r}")
        if self.resize not in ("none", "pad", "bilinear"):
            raise ValueError(f"input spec resize must be none, pad or bilinear, got {self.resize!r}")
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) not in (1, self.channels):
                raise ValueError(f"input spec {name} needs 1 or {self.channels} values, got {len(values)}")
            object.__setattr__(self, name, values)
        if any(v <= 0 for v in self.std):
            raise ValueError(f"input spec std must be positive, got {self.std}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "channels": self.channels, "mean": list(self.mean), "std": list(self.std),
                "resize": self.resize}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InputSpec:
        unknown = sorted(set(data) - {"size", "channels", "mean", "std", "resize"})
        if unknown:
            raise ValueError(f"input spec has unknown keys {unknown}; valid: size, channels, mean, std, resize")
        return cls(size=data["size"], channels=data["channels"], mean=tuple(data.get("mean", (0.0,))),
                   std=tuple(data.get("std", (1.0,))), resize=str(data.get("resize", "none")))


@dataclass(frozen=True)
class GlobalState:
    """The global model the server sent at the start of ``round``.

    Attributes
    ----------
    round
        FL round index (0-based).
    params
        Trainable parameters by ``named_parameters`` name.
    buffers
        Buffers by ``named_buffers`` name (BatchNorm running statistics, ``num_batches_tracked``).
    metadata
        JSON-serialisable facts (model spec, accuracy, ...).
    """

    round: int
    params: TensorDict
    buffers: TensorDict = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> TensorDict:
        """Parameters and buffers as one mapping, as ``nn.Module.load_state_dict`` expects."""
        return {**self.params, **self.buffers}


@dataclass(frozen=True)
class ClientUpdate:
    """What one client sends the server after local training in one round.

    Attributes
    ----------
    client
        Client identifier.
    round
        FL round index the update answers.
    delta
        ``params_after - params_before`` for every parameter the client sends. Parameters a defense withholds
        are absent.
    buffers
        Buffers after local training (BatchNorm statistics); empty when withheld.
    num_examples
        Number of training examples the client reports (the FedAvg weight).
    metadata
        Other JSON-serialisable facts the server really sees (e.g. recipe fields, defenses announced).
    """

    client: int
    round: int
    delta: TensorDict
    buffers: TensorDict = field(default_factory=dict)
    num_examples: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_examples < 0:
            raise ValueError(f"num_examples must be >= 0, got {self.num_examples}")


@dataclass(frozen=True)
class ServerView:
    """Everything an attacker may use, and nothing else. Ground truth is never inside a view.

    Attributes
    ----------
    model
        How to build the architecture the clients train (a :class:`ModelSpec` or a zero-argument factory).
    global_state
        The global model of the attacked round (or, as a control, of another round).
    updates
        The observed update(s): one client's, or an aggregate when secure aggregation is on.
    image_shape
        ``(C, H, W)`` of the clients' inputs.
    num_classes
        Number of classes of the task.
    mean, std
        Per-channel normalisation the model applies to ``[0, 1]`` images.
    labels
        Labels, when the threat model grants them.
    batch_size, num_images
        Batch size and number of local examples, when known.
    recipe
        The client's local training recipe, when known.
    defenses
        Defenses the attacker knows are in use.
    prior
        A prior image (domain prior) the attacker holds, in ``[0, 1]``.
    secrets
        For a malicious server: what it keeps of the modification it sent (the imprint module's layer names,
        bins and shapes).
    client_noise
        The client's randomness by noise key (dropout masks, bottleneck ε, DP noise), for a well-informed attacker
        (threat ``"well-informed"``).
    """

    model: Callable[[], nn.Module]
    global_state: GlobalState
    updates: Sequence[ClientUpdate]
    image_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    labels: Tensor | None = None
    batch_size: int | None = None
    num_images: int | None = None
    recipe: LocalRecipe | None = None
    defenses: tuple[Defense, ...] = ()
    prior: Tensor | None = None
    secrets: ImprintSecrets | None = None
    client_noise: Mapping[str, Tensor] | None = None

    def build_model(self) -> nn.Module:
        """A fresh module of the clients' architecture loaded with the view's global state."""
        module = self.model()
        module.load_state_dict(self.global_state.state_dict(), strict=True)
        return module

    @property
    def update(self) -> ClientUpdate:
        """The single observed update; raises if the view holds several."""
        if len(self.updates) != 1:
            raise ValueError(f"this view holds {len(self.updates)} updates; use .updates")
        return self.updates[0]


@dataclass(frozen=True)
class Trial:
    """One restart of an optimisation attack."""

    images: Tensor
    objective: float
    soft_labels: Tensor | None = None


@dataclass(frozen=True)
class Reconstruction:
    """An attack's output. Attacks never grade themselves; :mod:`gradleak.metrics` does.

    Attributes
    ----------
    images
        Reconstructed images ``(N, C, H, W)`` in ``[0, 1]`` pixel space.
    labels
        Hard labels ``(N,)``, when the attack produces them.
    soft_labels
        Label distributions ``(N, num_classes)``, when optimised.
    trials
        Per-restart results, best first or in restart order as the attack documents.
    loss_trace
        Objective value per recorded iteration of the selected trial.
    wall_time
        Seconds the attack took.
    iterations
        Optimisation iterations run (0 for analytic attacks).
    attack
        Registry name of the attack.
    config
        The attack's configuration (``repr``-able values).
    valid
        Per-image mask: ``False`` marks outputs the attack knows are not single inputs (e.g. imprint bins
        hit by several inputs).
    """

    images: Tensor
    labels: Tensor | None = None
    soft_labels: Tensor | None = None
    trials: tuple[Trial, ...] = ()
    loss_trace: Tensor | None = None
    wall_time: float = 0.0
    iterations: int = 0
    attack: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    valid: Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.valid is not None and self.valid.shape != (self.images.shape[0],):
            raise ValueError("valid must have one entry per image")


def in_layer(name: str, layer: str) -> bool:
    """True when parameter ``name`` is ``layer`` itself or one of the module ``layer``'s parameters
    (``"features.block2"`` holds ``"features.block2.conv.weight"``, not ``"features.block20.bias"``)."""
    return name == layer or name.startswith(layer + ".")
