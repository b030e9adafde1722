"""The small CNN of Scheliga et al., the benchmark model of PRECODE and of the stochastic-defenses study.

References
----------
Scheliga, Mäder, Seeland. "PRECODE — A Generic Model Extension to Prevent Deep Gradient Leakage", WACV 2022.
Scheliga, Mäder, Seeland. "Combining Stochastic Defenses to Resist Gradient Inversion: An Ablation
Study", 2024 (Section 5: "three convolutional layers with 5×5 kernels, [16, 32, 64] channels, a stride of 2
and ReLU activation. The last layer of the CNN is a fully connected classification layer with 10 neurons").
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from gradleak.models._common import ModelConfigError, check_dropout, check_input_shape, check_positive_int
from gradleak.models.zoo import MODELS

__all__ = ["ScheligaCNN"]

CHANNELS = (16, 32, 64)
KERNEL_SIZE = 5
STRIDE = 2
PAPER_IMAGE_SIZE = 32
_PAD_HINT = "Pad MNIST's 28×28 images to 32×32 with gradleak.data's to_tensor(size=32)."


@MODELS.register("cnn")
class ScheligaCNN(nn.Module):
    """Scheliga et al.'s CNN: three 5×5 stride-2 ReLU convolutions [16, 32, 64] and a linear classifier.

    With the paper's valid convolutions (``padding=0``) a 32×32 input shrinks 32 → 14 → 5 → 1, so the
    classifier sees 64 features; the architecture therefore needs 32×32 inputs (MNIST padded to 32×32).
    The paper's final softmax is left to the loss: the model returns logits.

    Parameters
    ----------
    num_classes
        Number of output logits (10 in the paper).
    in_channels
        Input channels: 1 for MNIST, 3 for CIFAR-10.
    image_size
        Input height and width. Must be 32 unless ``padding`` is set.
    padding
        Zero padding of each convolution (0 in the paper). A non-zero value builds a variant for other
        image sizes; the classifier is sized to the resulting feature map.
    dropout
        Rate of the ``nn.Dropout`` (attribute ``dropout``) before the classifier; 0 is the paper's model.

    Attributes
    ----------
    features
        ``nn.Sequential`` of the conv blocks ``block1``, ``block2``, ``block3`` (each ``conv`` + ``relu``),
        so a bottleneck (PRECODE) can be inserted after ``block1``.
    flatten, dropout, classifier
        Flatten, dropout and the final ``nn.Linear``.

    Examples
    --------
    >>> import torch
    >>> model = ScheligaCNN(num_classes=10, in_channels=1)
    >>> model(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        image_size: int = PAPER_IMAGE_SIZE,
        padding: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        check_positive_int("image_size", image_size)
        check_positive_int("padding", padding, minimum=0)
        if padding == 0 and image_size != PAPER_IMAGE_SIZE:
            raise ModelConfigError(
                f"the Scheliga et al. CNN uses valid 5×5 stride-2 convolutions and needs 32×32 inputs "
                f"(32 → 14 → 5 → 1, 64 features); got image_size={image_size}. {_PAD_HINT} "
                "(Or pass padding > 0 to build a non-paper variant for other sizes.)"
            )
        size = image_size
        for _ in CHANNELS:
            size = (size + 2 * padding - KERNEL_SIZE) // STRIDE + 1
            if size < 1:
                raise ModelConfigError(
                    f"image_size={image_size} with padding={padding} is too small for three 5×5 stride-2 "
                    "convolutions; use 32×32 inputs with padding=0 (the paper's model)"
                )
        self.image_shape = (in_channels, image_size, image_size)
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        cin = in_channels
        for i, cout in enumerate(CHANNELS, start=1):
            conv = nn.Conv2d(cin, cout, KERNEL_SIZE, stride=STRIDE, padding=padding)
            blocks[f"block{i}"] = nn.Sequential(OrderedDict([("conv", conv), ("relu", nn.ReLU())]))
            cin = cout
        self.features = nn.Sequential(blocks)
        self.flatten = nn.Flatten(-3)
        self.dropout = nn.Dropout(check_dropout(dropout))
        self.classifier = nn.Linear(CHANNELS[-1] * size * size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, C, H, W)``."""
        hint = _PAD_HINT if self.image_shape[1] == PAPER_IMAGE_SIZE else ""
        check_input_shape(x, self.image_shape, "the Scheliga et al. CNN", hint)
        return self.classifier(self.dropout(self.flatten(self.features(x))))
