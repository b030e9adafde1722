"""A compact VGG-style ConvNet with BatchNorm, after the ``ConvNet`` of Inverting Gradients / breaching.

References
----------
Geiping, Bauermeister, Dröge, Moeller. "Inverting Gradients — How easy is it to break privacy in federated
learning?", NeurIPS 2020 (their ``ConvNet`` with a ``width`` option: 3×3 conv-BN-ReLU layers of widths
w, 2w, 4w, 8w with max-pooling). This is a shorter variant with the same building blocks.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from gradleak.models._common import ModelConfigError, check_dropout, check_positive_int
from gradleak.models.zoo import MODELS

__all__ = ["ConvNet"]

STAGE_MULTIPLIERS = (1, 2, 4)
MIN_IMAGE_SIZE = 2 ** len(STAGE_MULTIPLIERS)


def _conv_bn_relu(cin: int, cout: int) -> list[tuple[str, nn.Module]]:
    return [
        ("conv", nn.Conv2d(cin, cout, 3, padding=1, bias=False)),  # bias is redundant before BatchNorm
        ("bn", nn.BatchNorm2d(cout)),
        ("relu", nn.ReLU()),
    ]


@MODELS.register("convnet")
class ConvNet(nn.Module):
    """VGG-style ConvNet with BatchNorm (after Geiping et al. 2020): 3 stages of 2 conv-BN-ReLU + max-pool.

    Exact architecture for width ``w`` (default 32):

    ============  ===========================================================
    ``stage1``    conv3×3(C → w), BN, ReLU, conv3×3(w → w), BN, ReLU, maxpool 2
    ``stage2``    conv3×3(w → 2w), BN, ReLU, conv3×3(2w → 2w), BN, ReLU, maxpool 2
    ``stage3``    conv3×3(2w → 4w), BN, ReLU, conv3×3(4w → 4w), BN, ReLU, maxpool 2
    head          global average pool, flatten, dropout, Linear(4w → num_classes)
    ============  ===========================================================

    Convolutions use padding 1 and no bias (BatchNorm follows). The global pool makes the model accept any
    image size of at least 8×8; BatchNorm in training mode normalises with batch statistics.

    Parameters
    ----------
    num_classes
        Number of output logits.
    in_channels
        Input channels.
    image_size
        Input height and width; only checked (>= 8), the architecture does not depend on it.
    width
        Base width ``w``.
    dropout
        Rate of the ``nn.Dropout`` (attribute ``dropout``) before the classifier.

    Attributes
    ----------
    features, pool, flatten, dropout, classifier
        The three stages (``nn.Sequential``), global pool, flatten, dropout and the final linear layer.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        image_size: int = 32,
        width: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        check_positive_int("width", width)
        if check_positive_int("image_size", image_size) < MIN_IMAGE_SIZE:
            raise ModelConfigError(
                f"ConvNet max-pools three times and needs images of at least "
                f"{MIN_IMAGE_SIZE}×{MIN_IMAGE_SIZE}, got image_size={image_size}"
            )
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        cin = in_channels
        for i, mult in enumerate(STAGE_MULTIPLIERS, start=1):
            cout = mult * width
            layers = [(f"{n}1", m) for n, m in _conv_bn_relu(cin, cout)]
            layers += [(f"{n}2", m) for n, m in _conv_bn_relu(cout, cout)]
            layers.append(("pool", nn.MaxPool2d(2)))
            stages[f"stage{i}"] = nn.Sequential(OrderedDict(layers))
            cin = cout
        self.features = nn.Sequential(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(-3)
        self.dropout = nn.Dropout(check_dropout(dropout))
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, C, H, W)``."""
        return self.classifier(self.dropout(self.flatten(self.pool(self.features(x)))))
