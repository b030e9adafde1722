"""What the malicious server of "Robbing the Fed" keeps to itself: the imprint module's layer names, bin edges,
row order and shapes (:class:`ImprintSecrets`), and how the linearised path downsamples the images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

__all__ = ["BNStage", "ImprintSecrets", "Variant", "reference_features"]

Variant = Literal["cumulative", "sparse", "one-shot"]


@dataclass(frozen=True)
class BNStage:
    """A BatchNorm on the linearised path: its name, momentum, eps and the spatial size it normalises."""

    name: str
    momentum: float | None
    eps: float
    spatial: tuple[int, int]


@dataclass(frozen=True, eq=False)
class ImprintSecrets:
    """What the server keeps to itself and passes to the attack in ``ServerView.secrets``.

    Attributes
    ----------
    weight, bias
        Parameter names of the imprint's measuring layer (``down``).
    variant
        ``"cumulative"``, ``"sparse"`` or ``"one-shot"``.
    rows
        Row of ``down`` holding bin ``i``, bins in increasing order of ``h`` (extra decoy rows are not listed).
    edges
        ``k + 1`` bin edges in ``h`` units: bin ``i`` is ``[edges[i], edges[i+1])``.
    targets
        Per bin, whether it is meant to hold one input (the one-shot attack's large rest bin is not).
    measurement
        ``h``'s weights on the flattened features ``(m,)``.
    feature_shape
        Shape of one input of the module ``(C', H', W')``.
    position
        Where the module sits (``None``: before the model).
    image_channels
        Feature channels carrying image channels (deeper placement).
    offset
        Shift BatchNorm adds on the linearised path.
    stages, spatial
        BatchNorm layers on the linearised path, and spatial operations (``("subsample", s)``,
        ``("maxpool", kernel, stride, padding)``) between the image and the module (see :func:`reference_features`).
    """

    weight: str
    bias: str
    variant: Variant
    rows: tuple[int, ...]
    edges: tuple[float, ...]
    targets: tuple[bool, ...]
    measurement: Tensor
    feature_shape: tuple[int, ...]
    position: str | None = None
    image_channels: int = 0
    offset: float = 0.0
    stages: tuple[BNStage, ...] = ()
    spatial: tuple[tuple[object, ...], ...] = ()

    @property
    def num_bins(self) -> int:
        return len(self.rows)


def reference_features(images: Tensor, secrets: ImprintSecrets) -> Tensor:
    """The originals ``(N, C, H, W)`` in ``[0, 1]`` downsampled exactly as the linearised path downsamples them.

    BatchNorm acts per channel and increasingly, so it commutes with strided subsampling and max-pooling: the
    attack's de-normalised recovery of a deeper placement is compared with this.
    """
    x = images
    for op in secrets.spatial:
        if op[0] == "subsample":
            x = x[..., :: int(op[1]), :: int(op[1])]  # type: ignore[call-overload]
        else:
            x = nn.functional.max_pool2d(x, op[1], op[2], op[3])  # type: ignore[call-overload]
    return x
