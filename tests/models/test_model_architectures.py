"""Each architecture against the paper or reference implementation it reproduces."""

from __future__ import annotations

import itertools

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gradleak.models import MLP, ModelConfigError, ViT, create_model, parameter_count


def conv_params(k: int, cin: int, cout: int, bias: bool = True) -> int:
    return k * k * cin * cout + (cout if bias else 0)


# --- Scheliga et al. CNN -----------------------------------------------------------------------------


@pytest.mark.parametrize("in_channels", [1, 3])
def test_cnn_parameter_count_matches_paper_architecture(in_channels: int) -> None:
    # "three convolutional layers with 5×5 kernels, [16, 32, 64] channels, a stride of 2" + 64 → 10 linear
    channels = [in_channels, 16, 32, 64]
    expected = sum(conv_params(5, cin, cout) for cin, cout in itertools.pairwise(channels))
    expected += 64 * 10 + 10
    model = create_model("cnn", in_channels=in_channels)
    assert parameter_count(model) == expected
    assert expected == {1: 65_162, 3: 65_962}[in_channels]


def test_cnn_layers_and_feature_map_sizes() -> None:
    model = create_model("cnn", in_channels=1)
    convs = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (16, (5, 5), (2, 2), (0, 0)),
        (32, (5, 5), (2, 2), (0, 0)),
        (64, (5, 5), (2, 2), (0, 0)),
    ]
    x = torch.rand(2, 1, 32, 32)
    sizes = []
    for block in model.features:
        x = block(x)
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [(16, 14, 14), (32, 5, 5), (64, 1, 1)]  # 32 → 14 → 5 → 1
    assert model.classifier.in_features == 64
    assert list(dict(model.features.named_children())) == ["block1", "block2", "block3"]


def test_cnn_rejects_28x28_with_padding_hint() -> None:
    with pytest.raises(ModelConfigError, match="32×32") as info:
        create_model("cnn", in_channels=1, image_size=28)
    assert "to_tensor(size=32)" in str(info.value)
    model = create_model("cnn", in_channels=1)
    with pytest.raises(ModelConfigError, match="32×32") as info:
        model(torch.rand(2, 1, 28, 28))
    assert "to_tensor(size=32)" in str(info.value)


def test_cnn_padding_variant_accepts_other_sizes() -> None:
    model = create_model("cnn", in_channels=1, image_size=28, padding=2)  # 28 → 14 → 7 → 4
    assert model.classifier.in_features == 64 * 4 * 4
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


# --- DLG LeNet -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("in_channels", "size", "features"), [(3, 32, 768), (1, 28, 588), (3, 28, 588)])
def test_lenet_matches_dlg(in_channels: int, size: int, features: int) -> None:
    model = create_model("lenet", in_channels=in_channels, image_size=size)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (in_channels, 12, (5, 5), (2, 2), (2, 2)),
        (12, 12, (5, 5), (2, 2), (2, 2)),
        (12, 12, (5, 5), (1, 1), (2, 2)),
    ]
    assert sum(isinstance(m, nn.Sigmoid) for m in model.modules()) == 3
    assert model.classifier.in_features == features
    expected = conv_params(5, in_channels, 12) + 2 * conv_params(5, 12, 12) + features * 10 + 10
    assert parameter_count(model) == expected
    assert model(torch.rand(2, in_channels, size, size)).shape == (2, 10)


def test_lenet_cifar_count_is_dlgs() -> None:
    # 912 + 3612 + 3612 + 7690 (Linear(768, 10)) for the CIFAR-10 model of Zhu et al.'s notebook
    assert parameter_count(create_model("lenet")) == 15_826


# --- ConvNet -------------------------------------------------------------------------------------------


def test_convnet_structure() -> None:
    model = create_model("convnet", width=8)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8, 16, 16, 32, 32]
    assert all(c.kernel_size == (3, 3) and c.bias is None for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 6
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    assert model.classifier.in_features == 32
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 10)  # global pool: any size >= 8
    with pytest.raises(ModelConfigError, match="at least 8"):
        create_model("convnet", image_size=4)


# --- ResNet-18 -----------------------------------------------------------------------------------------


def test_resnet_group_norm_has_no_batchnorm() -> None:
    model = create_model("resnet18", norm="group")
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 20  # bn1 + 2 per BasicBlock × 8 + 3 downsample
    assert all(n.num_groups == 32 for n in norms)
    model.train()
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)  # GroupNorm works with batch size 1


def test_resnet_stems() -> None:
    cifar = create_model("resnet18", image_size=32)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    imagenet = create_model("resnet18", image_size=224)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    gray = create_model("resnet18", in_channels=1, image_size=72)  # > 64: ImageNet stem by default
    assert gray.conv1.in_channels == 1 and gray.conv1.kernel_size == (7, 7)
    assert gray(torch.rand(2, 1, 72, 72)).shape == (2, 10)
    with pytest.raises(ModelConfigError, match="stem"):
        create_model("resnet18", stem="tiny")
    with pytest.raises(ModelConfigError, match="norm"):
        create_model("resnet18", norm="layer")


def test_resnet_keeps_torchvision_names() -> None:
    ours = create_model("resnet18", num_classes=1000, stem="imagenet")
    reference = torchvision.models.resnet18(weights=None)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    ours.load_state_dict(reference.state_dict())
    ours.eval()
    reference.eval()
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(ours(x), reference(x))


# --- MLP -----------------------------------------------------------------------------------------------


def test_mlp_first_layer_is_plain_linear_with_bias() -> None:
    model = create_model("mlp", in_channels=1, image_size=28)
    assert isinstance(model, MLP)
    first = model.input_layer
    assert type(first) is nn.Linear and first.bias is not None
    assert (first.in_features, first.out_features) == (784, 256)
    assert next(m for m in model.modules() if isinstance(m, nn.Linear)) is first
    deeper = create_model("mlp", in_channels=1, image_size=28, depth=3, width=64)
    assert parameter_count(deeper) == 784 * 64 + 64 + 2 * (64 * 64 + 64) + 64 * 10 + 10
    with pytest.raises(ModelConfigError, match="1×28×28"):
        model(torch.rand(2, 1, 32, 32))


# --- ViT -----------------------------------------------------------------------------------------------


def test_vit_structure() -> None:
    model = create_model("vit")
    assert isinstance(model, ViT)
    assert model.pos_embed.shape == (1, 65, 256)  # 8×8 patches of 4×4 + class token
    assert len(model.blocks) == 4
    assert model.blocks[0].attn.heads == 16 and model.blocks[0].mlp[0].out_features == 512
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    small = create_model("vit", in_channels=1, image_size=28, dim=32, heads=4, depth=1, mlp_dim=64)
    assert small(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ModelConfigError, match="multiple of patch_size"):
        create_model("vit", image_size=30)
    with pytest.raises(ModelConfigError, match="divisible"):
        create_model("vit", dim=100, heads=16)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"in_channels": 2.5}, "in_channels"),
        ({"image_size": -1}, "image_size"),
    ],
)
def test_invalid_common_options(options: dict[str, object], match: str) -> None:
    for name in ("lenet", "mlp", "vit", "convnet", "resnet18", "cnn"):
        with pytest.raises(ModelConfigError, match=match):
            create_model(name, **options)
