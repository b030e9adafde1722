"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric") from local files.

LPIPS needs two pretrained files that gradleak never downloads:

1. the backbone: a torchvision ImageNet state dict of AlexNet (``alexnet-owt-7be5be79.pth``) or VGG-16
   (``vgg16-397923af.pth``), as ``torchvision.models.<net>(weights="DEFAULT")`` would fetch from
   ``download.pytorch.org/models/``; only its ``features.*`` tensors are used;
2. the LPIPS linear calibration layers: ``weights/v0.1/alex.pth`` or ``vgg.pth`` of the ``lpips`` package
   (github.com/richzhang/PerceptualSimilarity), keys ``lin0.model.1.weight`` ... ``lin4.model.1.weight``.

Neither ``lpips`` nor ``torchmetrics`` is a dependency; this is the ``lpips`` package's v0.1 forward pass
(``normalize=True``: inputs in ``[0, 1]``), re-written in ~100 lines. Files are read with
:func:`gradleak.models.weights.read_state_dict`, which never unpickles code.
"""

from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from gradleak.metrics._checks import as_pair
from gradleak.metrics.errors import MetricInputError, MissingWeightsError

__all__ = ["LPIPS_NETS", "lpips"]

# (slice boundaries into torchvision's ``features``, channels of each tapped ReLU), as in lpips.pretrained_networks
LPIPS_NETS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "alex": ((0, 2, 5, 8, 10, 12), (64, 192, 384, 256, 256)),
    "vgg": ((0, 4, 9, 16, 23, 30), (64, 128, 256, 512, 512)),
}
_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10


def lpips(
    a: Tensor | np.ndarray,
    b: Tensor | np.ndarray,
    *,
    weights_path: str | os.PathLike[str] | None = None,
    backbone_path: str | os.PathLike[str] | None = None,
    net: str = "alex",
) -> Tensor:
    """Learned perceptual distance of each pair (0 for identical images; lower is more similar).

    Parameters
    ----------
    a, b
        Image batches ``(N, C, H, W)`` in ``[0, 1]`` with ``C`` 1 (repeated to RGB) or 3. AlexNet needs
        ``H, W >= 31``, VGG-16 ``>= 16``.
    weights_path
        The LPIPS linear-layer file (``lpips`` package ``weights/v0.1/<net>.pth``).
    backbone_path
        The torchvision ImageNet state dict of the backbone (see the module docstring).
    net
        ``"alex"`` (the LPIPS default) or ``"vgg"``.

    Returns
    -------
    Tensor
        ``(N,)`` float32 distances (no gradient).

    Raises
    ------
    MissingWeightsError
        A path is not given or the file does not exist; the message names the file that is needed.
    gradleak.models.WeightsFileError
        A file is unreadable or holds other tensors than expected.
    MetricInputError
        Bad shapes, channel count, image size or ``net``.
    """
    if net not in LPIPS_NETS:
        raise MetricInputError(f"unknown LPIPS net {net!r}; choose one of {sorted(LPIPS_NETS)}")
    lin_file = f"the LPIPS linear layers 'weights/v0.1/{net}.pth' of the lpips package"
    backbone_file = f"the torchvision ImageNet {net} state dict '{_BACKBONE_FILES[net]}'"
    weights = _require(weights_path, lin_file, "weights_path")
    backbone = _require(backbone_path, backbone_file, "backbone_path")
    x, y = as_pair(a, b, dtype=torch.float32)
    _check_size(x, net)
    if x.shape[1] not in (1, 3):
        raise MetricInputError(f"LPIPS needs 1- or 3-channel images, got {x.shape[1]} channels")
    slices, lins = _load(net, str(weights), str(backbone))
    slices, lins = slices.to(x.device), lins.to(x.device)
    with torch.no_grad():
        feats = _scale(torch.cat([x, y]))
        total = torch.zeros(x.shape[0], device=x.device)
        for block, lin in zip(slices, lins, strict=True):
            feats = block(feats)
            fx, fy = _unit(feats[: x.shape[0]]), _unit(feats[x.shape[0] :])
            total = total + lin((fx - fy).square()).mean(dim=(1, 2, 3))
    return total


def _require(path: str | os.PathLike[str] | None, what: str, argument: str) -> Path:
    if path is None:
        raise MissingWeightsError(
            f"LPIPS needs {what}; gradleak never downloads weights. Place the file locally and pass {argument}=..."
        )
    if not Path(path).is_file():
        raise MissingWeightsError(f"{path}: no such file; LPIPS needs {what} here ({argument})")
    return Path(path)


def _scale(images: Tensor) -> Tensor:
    """``[0, 1]`` → ``[-1, 1]`` → lpips' ScalingLayer; grey images repeated to three channels."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    shift = torch.tensor(_SHIFT, device=images.device).view(1, 3, 1, 1)
    scale = torch.tensor(_SCALE, device=images.device).view(1, 3, 1, 1)
    return (2 * images - 1 - shift) / scale


def _unit(features: Tensor) -> Tensor:
    """lpips.normalize_tensor: unit L2 norm along channels."""
    return features / (features.square().sum(dim=1, keepdim=True).sqrt() + _EPS)


@functools.lru_cache(maxsize=2)
def _load(net: str, weights: str, backbone: str) -> tuple[nn.ModuleList, nn.ModuleList]:
    """The backbone cut into LPIPS's five slices and the five 1×1 linear layers, in eval mode."""
    import torchvision

    from gradleak.models import WeightsFileError
    from gradleak.models.weights import read_state_dict

    with torch.device("meta"):  # skip the random initialisation of ~60-140 M classifier weights we never use
        features = (torchvision.models.alexnet if net == "alex" else torchvision.models.vgg16)(weights=None).features
    features = features.to_empty(device="cpu")
    state = {k.removeprefix("features."): v for k, v in read_state_dict(backbone).items() if k.startswith("features.")}
    expected = features.state_dict()
    if set(state) != set(expected) or any(state[k].shape != v.shape for k, v in expected.items()):
        raise WeightsFileError(backbone, f"not a torchvision {net} state dict (expected the 'features.*' tensors)")
    features.load_state_dict(state)
    bounds, channels = LPIPS_NETS[net]
    slices = nn.ModuleList(features[lo:hi] for lo, hi in itertools.pairwise(bounds))
    lin_state = read_state_dict(weights)
    lins = nn.ModuleList()
    for i, width in enumerate(channels):
        key = f"lin{i}.model.1.weight"
        tensor = lin_state.get(key)
        if tensor is None or tuple(tensor.shape) != (1, width, 1, 1):
            raise WeightsFileError(
                weights, f"not an LPIPS {net} linear-layer file (expected {key} of shape (1, {width}, 1, 1))"
            )
        lin = nn.Conv2d(width, 1, kernel_size=1, bias=False)
        lin.weight.data.copy_(tensor)
        lins.append(lin)
    return slices.eval(), lins.eval()


def _check_size(images: Tensor, net: str) -> None:
    minimum = 31 if net == "alex" else 16
    if min(images.shape[-2:]) < minimum:
        size = tuple(images.shape[-2:])
        raise MetricInputError(f"LPIPS-{net} needs images of at least {minimum}×{minimum}, got {size}")
