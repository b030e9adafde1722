"""The registry, create_model, import-path factories, the dropout hook and the parameter table."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torchvision
from torch import nn

from gradleak.errors import GradleakError, UnknownNameError
from gradleak.models import (
    DEFAULT_INPUTS,
    MODELS,
    ModelConfigError,
    ModelImportError,
    ModelSpec,
    create_model,
    describe_models,
    model_table,
    parameter_count,
)

EXPECTED_NAMES = {"cnn", "lenet", "convnet", "resnet18", "resnet8", "mlp", "vit"}
ALL = sorted(EXPECTED_NAMES)


def conv_params(k: int, cin: int, cout: int, bias: bool = True) -> int:
    return k * k * cin * cout + (cout if bias else 0)


def linear_params(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


def build(name: str, num_classes: int = 10, **options: object) -> tuple[nn.Module, tuple[int, int, int]]:
    _, (c, s, _) = DEFAULT_INPUTS[name]
    options = {"in_channels": c, "image_size": s, **options}
    model = create_model(name, num_classes=num_classes, **options)
    return model, (int(options["in_channels"]), int(options["image_size"]), int(options["image_size"]))


def test_every_model_is_registered() -> None:
    assert set(MODELS.names()) == EXPECTED_NAMES
    assert set(DEFAULT_INPUTS) == EXPECTED_NAMES
    for name in MODELS.names():
        assert MODELS.describe(name), f"{name} has no one-line description"


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_on_dataset_shape(name: str) -> None:
    torch.manual_seed(0)
    model, shape = build(name)
    x = torch.rand(2, *shape)
    logits = model(x)
    assert logits.shape == (2, 10)
    nn.functional.cross_entropy(logits, torch.tensor([0, 7])).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    # every parameter tensor receives some gradient signal
    assert sum(int(g.abs().sum() > 0) for g in grads) == len(grads)


# the smallest image each model takes, to keep the option tests fast
SMALL = {"cnn": 32, "lenet": 16, "convnet": 16, "resnet18": 16, "resnet8": 8, "mlp": 16, "vit": 16}


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", ALL)
def test_in_channels_one_and_three(name: str, in_channels: int) -> None:
    size = SMALL[name]
    model, _ = build(name, num_classes=7, in_channels=in_channels, image_size=size)
    model.eval()
    assert model(torch.rand(2, in_channels, size, size)).shape == (2, 7)


@pytest.mark.parametrize("name", ALL)
def test_dropout_option_inserts_one_real_dropout(name: str) -> None:
    model, shape = build(name, dropout=0.3, image_size=SMALL[name])
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 1
    assert model.dropout is dropouts[0]
    assert model.dropout.p == pytest.approx(0.3)
    x = torch.rand(2, *shape)
    model.eval()
    assert torch.equal(model(x), model(x))  # inactive in eval mode
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, model(x))  # active in train mode


@pytest.mark.parametrize("name", ALL)
def test_zero_dropout_equals_no_dropout_in_train_mode(name: str) -> None:
    torch.manual_seed(0)
    model, shape = build(name, image_size=SMALL[name])
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.0
    model.train()
    x = torch.rand(2, *shape)
    rng = torch.get_rng_state()
    with_dropout = model(x)
    assert torch.equal(rng, torch.get_rng_state())  # p=0 draws no random numbers
    model.dropout = nn.Identity()
    assert torch.equal(with_dropout, model(x))


@pytest.mark.parametrize("bad", [-0.1, 1.0, "0.5", True])
def test_invalid_dropout_is_rejected(bad: object) -> None:
    with pytest.raises(ModelConfigError, match="dropout"):
        create_model("lenet", dropout=bad)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        create_model("resnet19")
    message = str(info.value)
    assert all(name in message for name in EXPECTED_NAMES)
    assert "Did you mean 'resnet18'" in message


def test_unknown_option_lists_accepted_options() -> None:
    with pytest.raises(ModelConfigError, match="width") as info:
        create_model("mlp", widht=10)
    assert "depth" in str(info.value)


def test_model_spec_builds_through_create_model() -> None:
    model = ModelSpec("cnn", {"in_channels": 1, "num_classes": 4}).build()
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 4)


FACTORY_MODULE = """
    from torch import nn

    def build(num_classes, in_channels, width=4):
        return nn.Sequential(
            nn.Conv2d(in_channels, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(width, num_classes),
        )

    class Zoo:
        @staticmethod
        def tiny(num_classes, in_channels):
            return nn.Linear(in_channels, num_classes)

    def not_a_model(num_classes, in_channels):
        return "a string"

    NOT_CALLABLE = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    (tmp_path / "gl_user_arch.py").write_text(textwrap.dedent(FACTORY_MODULE))
    (tmp_path / "gl_broken_arch.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "gl_user_arch"


def test_import_path_factory(user_module: str) -> None:
    model = create_model(f"{user_module}:build", num_classes=5, in_channels=1, width=8)
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 5)
    assert parameter_count(model) == conv_params(3, 1, 8) + linear_params(8, 5)
    nested = create_model(f"{user_module}:Zoo.tiny", num_classes=2, in_channels=6)
    assert isinstance(nested, nn.Linear) and nested.weight.shape == (2, 6)


def test_an_imported_class_keeps_its_own_defaults(tmp_path, monkeypatch) -> None:
    """NVFlare's and Flower's examples write `Net(num_classes=2)`: a spec that names only the class must build the
    class as its author defaults it, not with 10 classes."""
    (tmp_path / "gl_own_defaults.py").write_text(textwrap.dedent("""
        from torch import nn

        class Net(nn.Linear):
            def __init__(self, num_classes=2, in_channels=4):
                super().__init__(in_channels, num_classes)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert create_model("gl_own_defaults:Net").weight.shape == (2, 4)
    assert create_model("gl_own_defaults:Net", num_classes=7).weight.shape == (7, 4)


def test_import_path_errors_are_clear(user_module: str) -> None:
    with pytest.raises(ModelImportError, match=r"cannot import module 'gl_no_such_module'.*sys.path"):
        create_model("gl_no_such_module:build")
    with pytest.raises(ModelImportError, match=r"has no attribute 'missing'"):
        create_model(f"{user_module}:missing")
    with pytest.raises(ModelImportError, match=r"not a torch\.nn\.Module"):
        create_model(f"{user_module}:not_a_model")
    with pytest.raises(ModelImportError, match="not callable"):
        create_model(f"{user_module}:NOT_CALLABLE")
    with pytest.raises(ModelImportError, match="boom at import"):
        create_model("gl_broken_arch:build")
    with pytest.raises(ModelImportError, match=r"package\.module:factory"):
        create_model(":build")
    with pytest.raises(ModelConfigError, match="does not accept"):
        create_model(f"{user_module}:build", depth=3)
    # every error is a GradleakError, so a CLI can catch them in one place
    assert issubclass(ModelImportError, GradleakError) and issubclass(ModelConfigError, GradleakError)


def expected_parameter_counts() -> dict[str, int]:
    """Hand-computed counts for the README's shapes (10 classes), from each architecture's layer sizes."""
    cnn = conv_params(5, 1, 16) + conv_params(5, 16, 32) + conv_params(5, 32, 64) + linear_params(64, 10)
    lenet = conv_params(5, 3, 12) + 2 * conv_params(5, 12, 12) + linear_params(12 * 8 * 8, 10)
    w = 32
    convnet = sum(
        conv_params(3, cin, cout, bias=False) + 2 * cout  # conv + BatchNorm affine
        for cin, cout in [(3, w), (w, w), (w, 2 * w), (2 * w, 2 * w), (2 * w, 4 * w), (4 * w, 4 * w)]
    ) + linear_params(4 * w, 10)
    # torchvision's ResNet-18 with a 10-class head, minus the difference of the 7×7 and 3×3 stems
    resnet18 = parameter_count(torchvision.models.resnet18(weights=None, num_classes=10))
    resnet18 -= conv_params(7, 3, 64, bias=False) - conv_params(3, 3, 64, bias=False)
    # ResNet-8 (width 16, one channel): 3×3 stem + BN, three BasicBlocks (1×1 conv + BN shortcut when the shape
    # changes), linear head
    def block(cin: int, cout: int) -> int:
        shortcut = conv_params(1, cin, cout, bias=False) + 2 * cout if cin != cout else 0
        return conv_params(3, cin, cout, bias=False) + conv_params(3, cout, cout, bias=False) + 4 * cout + shortcut

    resnet8 = conv_params(3, 1, 16, bias=False) + 2 * 16 + block(16, 16) + block(16, 32) + block(32, 64)
    resnet8 += linear_params(64, 10)
    mlp = linear_params(28 * 28, 256) + linear_params(256, 256) + linear_params(256, 10)
    d, m, tokens = 256, 512, (32 // 4) ** 2 + 1
    block = 2 * (2 * d) + 4 * linear_params(d, d) + linear_params(d, m) + linear_params(m, d)
    vit = conv_params(4, 3, d) + d + tokens * d + 4 * block + 2 * d + linear_params(d, 10)
    return {"cnn": cnn, "lenet": lenet, "convnet": convnet, "resnet18": resnet18, "resnet8": resnet8, "mlp": mlp,
            "vit": vit}


def test_parameter_table_matches_hand_computed_counts() -> None:
    rows = model_table()
    print("\nmodel      dataset                 input      classes  parameters")
    for row in rows:
        shape = "×".join(map(str, row.input_shape))
        print(f"{row.name:10} {row.dataset:23} {shape:10} {row.num_classes:7}  {row.parameters:>10,}")
    assert {row.name: row.parameters for row in rows} == expected_parameter_counts()
    assert describe_models() == [row.as_dict() for row in rows]
    assert resnet18_is_standard(rows)


def resnet18_is_standard(rows) -> bool:
    """The CIFAR-stem ResNet-18 with 10 classes has the widely quoted 11,173,962 parameters."""
    return next(r.parameters for r in rows if r.name == "resnet18") == 11_173_962


def test_model_table_custom_shapes() -> None:
    rows = model_table({"lenet": (1, 28, 28)}, names=["lenet"], num_classes=100)
    assert rows[0].dataset == "custom" and rows[0].input_shape == (1, 28, 28)
    expected = conv_params(5, 1, 12) + 2 * conv_params(5, 12, 12) + linear_params(588, 100)
    assert rows[0].parameters == expected
    with pytest.raises(ModelConfigError, match=r"\(C, S, S\)"):
        model_table({"lenet": (1, 28, 32)}, names=["lenet"])
