"""ResNet-18 from torchvision with a CIFAR or ImageNet stem and BatchNorm or GroupNorm.

References
----------
He, Zhang, Ren, Sun. "Deep Residual Learning for Image Recognition", CVPR 2016 (the CIFAR stem replaces the
7×7 stride-2 convolution and max-pool by one 3×3 stride-1 convolution, as is standard for 32×32 inputs).
Wu, He. "Group Normalization", ECCV 2018 (GroupNorm is the BatchNorm replacement used in FL, where batch
statistics leak and differ between clients; Hatamizadeh et al. 2023 attack both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from gradleak.models._common import ModelConfigError, check_dropout, check_positive_int
from gradleak.models.zoo import MODELS

__all__ = ["ResNet8", "ResNetWithDropout", "resnet8", "resnet18"]

CIFAR_STEM_MAX_SIZE = 64


class ResNetWithDropout(ResNet):
    """torchvision's :class:`~torchvision.models.ResNet` with an ``nn.Dropout`` (``dropout``) before ``fc``.

    Parameter and buffer names are torchvision's, so torchvision state dicts load unchanged.
    """

    def __init__(self, *args: object, dropout: float = 0.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.dropout = nn.Dropout(check_dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, C, H, W)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.dropout(self.avgpool(x).flatten(-3)))


def _norm_layer(norm: str, groups: int) -> Callable[[int], nn.Module]:
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "group":
        check_positive_int("norm_groups", groups)

        def group_norm(channels: int) -> nn.Module:
            g = min(groups, channels)
            if channels % g:
                raise ModelConfigError(f"norm_groups={groups} does not divide {channels} channels")
            return nn.GroupNorm(g, channels)

        return group_norm
    raise ModelConfigError(f"norm must be 'batch' or 'group', got {norm!r}")


@MODELS.register("resnet18")
def resnet18(
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    image_size: int = 32,
    stem: Literal["cifar", "imagenet"] | None = None,
    norm: Literal["batch", "group"] = "batch",
    norm_groups: int = 32,
    dropout: float = 0.0,
) -> ResNetWithDropout:
    """ResNet-18 (He et al. 2016) from torchvision, with a CIFAR or ImageNet stem and Batch- or GroupNorm.

    Parameters
    ----------
    num_classes
        Number of output logits (size of ``fc``).
    in_channels
        Input channels; ``conv1`` is built for them.
    image_size
        Input height and width; only chooses the default stem (the network is fully convolutional).
    stem
        ``"cifar"``: ``conv1`` is 3×3 stride 1 padding 1 and there is no max-pool. ``"imagenet"``:
        torchvision's 7×7 stride-2 ``conv1`` and 3×3 stride-2 max-pool. Default: ``"cifar"`` for
        ``image_size <= 64``, else ``"imagenet"``.
    norm
        ``"batch"`` (torchvision's) or ``"group"``: ``GroupNorm(min(norm_groups, C), C)`` everywhere.
    norm_groups
        Number of groups for ``norm="group"``.
    dropout
        Rate of the ``nn.Dropout`` (attribute ``dropout``) before ``fc``.

    Returns
    -------
    ResNetWithDropout
        Randomly initialised (torchvision's initialisation). ImageNet weights cannot be downloaded here;
        pass ``weights_path=`` to :func:`~gradleak.models.create_model` to load a local file.
    """
    check_positive_int("num_classes", num_classes)
    check_positive_int("in_channels", in_channels)
    check_positive_int("image_size", image_size)
    if stem is None:
        stem = "cifar" if image_size <= CIFAR_STEM_MAX_SIZE else "imagenet"
    if stem not in ("cifar", "imagenet"):
        raise ModelConfigError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
    model = ResNetWithDropout(
        BasicBlock,
        [2, 2, 2, 2],
        num_classes=num_classes,
        norm_layer=_norm_layer(norm, norm_groups),
        dropout=dropout,
    )
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    # the same initialisation torchvision gives its own conv1
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU}


def _basic_block(cin: int, cout: int, stride: int, activation: type[nn.Module]) -> BasicBlock:
    down = None
    if stride != 1 or cin != cout:
        down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
    block = BasicBlock(cin, cout, stride=stride, downsample=down)
    block.relu = activation()  # BasicBlock applies it after each of its two BN layers
    return block


class ResNet8(nn.Module):
    """A small BatchNorm ResNet for CPU-scale audits: a 3×3 stem and three torchvision ``BasicBlock`` stages.

    =========  ==================================================================
    ``conv1``  conv3×3(C → w), ``bn1``, activation (no max-pool)
    ``layer1`` BasicBlock(w → w, stride 1)
    ``layer2`` BasicBlock(w → 2w, stride 2; 1×1 conv + BN shortcut)
    ``layer3`` BasicBlock(2w → 4w, stride 2; 1×1 conv + BN shortcut)
    head       global average pool, flatten, ``dropout``, ``fc`` Linear(4w → num_classes)
    =========  ==================================================================

    Eight weight layers on the main path (1 + 3 × 2 + 1), hence the name. Parameter and buffer names follow
    torchvision's ResNet (``conv1``, ``bn1``, ``layerK.0.*``, ``fc``).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, *, image_size: int = 32, width: int = 16,
                 activation: Literal["relu", "silu"] = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        check_positive_int("width", width)
        if check_positive_int("image_size", image_size) < RESNET8_MIN_IMAGE_SIZE:
            raise ModelConfigError(f"resnet8 halves the image twice and needs images of at least "
                                   f"{RESNET8_MIN_IMAGE_SIZE}×{RESNET8_MIN_IMAGE_SIZE}, got image_size={image_size}")
        if activation not in _ACTIVATIONS:
            raise ModelConfigError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        act = _ACTIVATIONS[activation]
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act = act()
        self.layer1 = nn.Sequential(_basic_block(width, width, 1, act))
        self.layer2 = nn.Sequential(_basic_block(width, 2 * width, 2, act))
        self.layer3 = nn.Sequential(_basic_block(2 * width, 4 * width, 2, act))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(check_dropout(dropout))
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, C, H, W)``."""
        x = self.act(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.dropout(self.avgpool(x).flatten(-3)))


RESNET8_MIN_IMAGE_SIZE = 4


@MODELS.register("resnet8")
def resnet8(
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    image_size: int = 32,
    width: int = 16,
    activation: Literal["relu", "silu"] = "relu",
    dropout: float = 0.0,
) -> ResNet8:
    """ResNet-8 with BatchNorm, the CPU-scale stand-in for ResNet-18 in the hospital scenario.

    The architecture is :class:`ResNet8`'s.

    Parameters
    ----------
    num_classes, in_channels
        Output logits and input channels.
    image_size
        Input height and width; only checked (at least 4), the network is fully convolutional.
    width
        Channels of the first stage ``w`` (stages have w, 2w, 4w).
    activation
        ``"relu"`` (He et al.) or ``"silu"``: SiLU everywhere, smooth and twice differentiable, which lets
        optimisation attacks follow second-order information that ReLU's kinks cut off.
    dropout
        Rate of the ``nn.Dropout`` (attribute ``dropout``) before ``fc``.
    """
    return ResNet8(num_classes, in_channels, image_size=image_size, width=width, activation=activation,
                   dropout=dropout)
