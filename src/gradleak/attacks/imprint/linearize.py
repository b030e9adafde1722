"""Linearising a torchvision-style ResNet before a layer (Fowl et al. 2022, Fig. 11, App. B): ``conv1`` and
shortcut convolutions become identity maps on the image channels, residual branches are switched off by zeroing
their last BatchNorm, and BatchNorm shifts its output by ``offset`` so the ReLUs pass everything."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RESNET_POSITIONS", "linearize_resnet"]

RESNET_POSITIONS = ("layer1", "layer2", "layer3", "layer4")


def _identity_conv(conv: nn.Module, channels: int) -> tuple[object, ...] | None:
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"cannot linearise {conv}: not a Conv2d")
    kh, kw = conv.kernel_size
    if conv.padding != (kh // 2, kw // 2) or conv.stride[0] != conv.stride[1] or conv.groups != 1:
        raise ValueError(f"cannot linearise {conv}: need centred padding, square stride and groups=1")
    conv.weight.zero_()
    for c in range(channels):
        conv.weight[c, c, kh // 2, kw // 2] = 1.0
    if conv.bias is not None:
        conv.bias.zero_()
    return ("subsample", conv.stride[0]) if conv.stride[0] > 1 else None


def _identity_bn(bn: nn.Module, channels: int, offset: float) -> None:
    if not isinstance(bn, nn.BatchNorm2d):
        raise ValueError(f"linearisation supports BatchNorm2d only, got {type(bn).__name__} (norm='group' "
                         "normalises each image by its own statistics, which the attack cannot undo)")
    bn.weight.zero_()
    bn.bias.zero_()
    bn.weight[:channels] = 1.0
    bn.bias[:channels] = offset
    assert bn.running_mean is not None and bn.running_var is not None  # linearised BatchNorm tracks statistics
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)


@torch.no_grad()
def linearize_resnet(model: nn.Module, position: str, image_channels: int, offset: float = 20.0
                     ) -> tuple[list[str], list[tuple[object, ...]]]:
    """Turn the layers of a torchvision-style ResNet before ``position`` into identity maps (in place).

    Returns the names of the BatchNorm layers left on the path and the spatial operations, in order.
    """
    if position not in RESNET_POSITIONS or not all(hasattr(model, n) for n in ("conv1", "bn1", *RESNET_POSITIONS)):
        raise ValueError(f"deeper placement needs a ResNet (conv1, bn1, layer1..layer4) and position in "
                         f"{RESNET_POSITIONS}; got {position!r}")
    bns, spatial = ["bn1"], []
    op = _identity_conv(model.get_submodule("conv1"), image_channels)
    spatial += [op] if op else []
    _identity_bn(model.get_submodule("bn1"), image_channels, offset)
    if isinstance(model.maxpool, nn.MaxPool2d):
        p = model.maxpool
        spatial.append(("maxpool", p.kernel_size, p.stride, p.padding))
    for layer in RESNET_POSITIONS[: RESNET_POSITIONS.index(position)]:
        for i, block in enumerate(getattr(model, layer)):
            last = block.bn3 if hasattr(block, "bn3") else block.bn2
            last.weight.zero_()
            last.bias.zero_()
            if block.downsample is not None:
                op = _identity_conv(block.downsample[0], image_channels)
                spatial += [op] if op else []
                _identity_bn(block.downsample[1], image_channels, offset)
                bns.append(f"{layer}.{i}.downsample.1")
    return bns, spatial
