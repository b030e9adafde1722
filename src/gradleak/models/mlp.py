"""A fully connected ReLU network on flattened images.

References
----------
Fowl, Geiping, Czaja, Goldblum, Goldstein. "Robbing the Fed", ICLR 2022, and Phong et al. 2017 /
Geiping et al. 2020 (Prop. 1): the input of a linear layer with bias is recovered exactly from its gradient
as ``dL/dW_i / dL/db_i``. The first layer here is therefore a plain ``nn.Linear`` with bias.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from gradleak.models._common import check_dropout, check_input_shape, check_positive_int
from gradleak.models.zoo import MODELS

__all__ = ["MLP"]


@MODELS.register("mlp")
class MLP(nn.Module):
    """Multi-layer perceptron: flatten, ReLU hidden layers (default 2 × 256 units), linear classifier.

    Architecture: ``Flatten → Linear(C·S², width) → ReLU → [Linear(width, width) → ReLU] × (depth − 1)
    → Dropout → Linear(width, num_classes)``. The first layer (``input_layer``) is a plain ``nn.Linear``
    with bias, which analytic attacks invert exactly.

    Parameters
    ----------
    num_classes
        Number of output logits.
    in_channels
        Input channels ``C``.
    image_size
        Input height and width ``S``.
    width
        Units of each hidden layer.
    depth
        Number of hidden layers (>= 1).
    dropout
        Rate of the ``nn.Dropout`` (attribute ``dropout``) before the classifier.

    Attributes
    ----------
    flatten, features, dropout, classifier
        Flatten, the hidden layers (``fc1``/``relu1``, ...), dropout and the output layer.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        image_size: int = 32,
        width: int = 256,
        depth: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        check_positive_int("image_size", image_size)
        check_positive_int("width", width)
        check_positive_int("depth", depth)
        self.image_shape = (in_channels, image_size, image_size)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        fan_in = in_channels * image_size * image_size
        for i in range(1, depth + 1):
            layers[f"fc{i}"] = nn.Linear(fan_in, width)
            layers[f"relu{i}"] = nn.ReLU()
            fan_in = width
        self.flatten = nn.Flatten(-3)
        self.features = nn.Sequential(layers)
        self.dropout = nn.Dropout(check_dropout(dropout))
        self.classifier = nn.Linear(width, num_classes)

    @property
    def input_layer(self) -> nn.Linear:
        """The first ``nn.Linear`` (the layer analytic attacks invert)."""
        layer = self.features.get_submodule("fc1")
        assert isinstance(layer, nn.Linear)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, C, H, W)``."""
        check_input_shape(x, self.image_shape, "MLP", "Pass in_channels and image_size to create_model.")
        return self.classifier(self.dropout(self.features(self.flatten(x))))
