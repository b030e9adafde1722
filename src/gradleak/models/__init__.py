"""The networks clients train and attackers invert.

Build one with :func:`create_model` by registry name (``cnn``, ``lenet``, ``convnet``, ``resnet18``, ``mlp``,
``vit``) or by ``"package.module:factory"`` import path. Every model takes ``num_classes``, ``in_channels``,
``image_size`` and ``dropout`` (an ``nn.Dropout`` named ``dropout`` before the classifier), returns logits,
and is twice differentiable with respect to its input, as gradient-inversion attacks require.

Examples
--------
>>> from gradleak.models import create_model, parameter_count
>>> model = create_model("lenet", num_classes=10, in_channels=3, image_size=32)
>>> parameter_count(model)
15826
"""

from gradleak.models._common import ModelConfigError, ModelImportError, WeightsFileError

# importing a family module registers it in MODELS
from gradleak.models.cnn import ScheligaCNN
from gradleak.models.convnet import ConvNet
from gradleak.models.lenet import LeNetZhu
from gradleak.models.mlp import MLP
from gradleak.models.resnet import ResNetWithDropout, resnet18
from gradleak.models.spec import ModelSpec
from gradleak.models.vit import ViT
from gradleak.models.weights import load_weights, read_state_dict, save_weights
from gradleak.models.zoo import (
    DEFAULT_INPUTS,
    MODELS,
    ModelRow,
    create_model,
    describe_models,
    model_table,
    parameter_count,
)

__all__ = [
    "DEFAULT_INPUTS",
    "MLP",
    "MODELS",
    "ConvNet",
    "LeNetZhu",
    "ModelConfigError",
    "ModelImportError",
    "ModelRow",
    "ModelSpec",
    "ResNetWithDropout",
    "ScheligaCNN",
    "ViT",
    "WeightsFileError",
    "create_model",
    "describe_models",
    "load_weights",
    "model_table",
    "parameter_count",
    "read_state_dict",
    "resnet18",
    "save_weights",
]
