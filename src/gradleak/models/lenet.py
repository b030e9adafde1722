"""The LeNet variant of Deep Leakage from Gradients (DLG).

References
----------
Zhu, Liu, Han. "Deep Leakage from Gradients", NeurIPS 2019 (the model of their released code, called
``LeNetZhu`` in breaching): sigmoid activations and no pooling, so the gradient is twice differentiable
everywhere and never sparse.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from gradleak.models._common import check_dropout, check_input_shape, check_positive_int
from gradleak.models.zoo import MODELS

__all__ = ["LeNetZhu"]

WIDTH = 12
KERNEL_SIZE = 5


def _out_size(size: int, stride: int) -> int:
    padding = KERNEL_SIZE // 2
    return (size + 2 * padding - KERNEL_SIZE) // stride + 1


@MODELS.register("lenet")
class LeNetZhu(nn.Module):
    """DLG's LeNet (Zhu et al. 2019): three 5×5 sigmoid convolutions of 12 channels and one linear layer.

    Architecture: ``Conv2d(C, 12, 5, padding=2, stride=2)``, Sigmoid, ``Conv2d(12, 12, 5, padding=2,
    stride=2)``, Sigmoid, ``Conv2d(12, 12, 5, padding=2, stride=1)``, Sigmoid, flatten,
    ``Linear(12 · ⌈S/4⌉², num_classes)`` — 768 features for 32×32 inputs, 588 for 28×28.

    Parameters
    ----------
    num_classes
        Number of output logits.
    in_channels
        Input channels.
    image_size
        Input height and width ``S``.
    dropout
        Rate of the ``nn.Dropout`` (attribute ``dropout``) before the classifier (0: DLG's model).

    Attributes
    ----------
    features, flatten, dropout, classifier
        The convolutional body (``conv1``/``act1`` ... ``conv3``/``act3``), flatten, dropout, linear layer.
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, *, image_size: int = 32, dropout: float = 0.0
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        check_positive_int("image_size", image_size)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        size, cin = image_size, in_channels
        for i, stride in enumerate((2, 2, 1), start=1):
            layers[f"conv{i}"] = nn.Conv2d(cin, WIDTH, KERNEL_SIZE, padding=KERNEL_SIZE // 2, stride=stride)
            layers[f"act{i}"] = nn.Sigmoid()
            size, cin = _out_size(size, stride), WIDTH
        self.image_shape = (in_channels, image_size, image_size)
        self.features = nn.Sequential(layers)
        self.flatten = nn.Flatten(-3)
        self.dropout = nn.Dropout(check_dropout(dropout))
        self.classifier = nn.Linear(WIDTH * size * size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, C, H, W)``."""
        check_input_shape(x, self.image_shape, "LeNet", "Pass image_size to create_model.")
        return self.classifier(self.dropout(self.flatten(self.features(x))))
