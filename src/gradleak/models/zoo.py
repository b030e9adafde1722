"""The model registry and :func:`create_model`, the one way gradleak builds a network.

A model is named either by its registry name (``"cnn"``, ``"resnet18"``, ...) or by an import path
``"package.module:factory"`` for a user's own architecture. Every registered model accepts ``num_classes``,
``in_channels``, ``image_size`` and ``dropout`` (the rate of an ``nn.Dropout`` module named ``dropout``
placed before the classifier, which model-level defenses find and replace).

Examples
--------
>>> model = create_model("cnn", num_classes=10, in_channels=1)
>>> parameter_count(model)
65162
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from gradleak.models._common import ModelConfigError, ModelImportError
from gradleak.models.weights import load_weights
from gradleak.registry import Registry

__all__ = [
    "DEFAULT_INPUTS",
    "MODELS",
    "ModelRow",
    "create_model",
    "describe_models",
    "model_table",
    "parameter_count",
]

MODELS: Registry[nn.Module] = Registry("model")

#: The dataset (and its ``(C, H, W)`` shape) each registered model is benchmarked on; the README's table.
DEFAULT_INPUTS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "cnn": ("MNIST padded to 32×32", (1, 32, 32)),
    "lenet": ("CIFAR-10", (3, 32, 32)),
    "convnet": ("CIFAR-10", (3, 32, 32)),
    "resnet18": ("CIFAR-10", (3, 32, 32)),
    "resnet8": ("PneumoniaMNIST padded to 32×32", (1, 32, 32)),
    "mlp": ("MNIST", (1, 28, 28)),
    "vit": ("CIFAR-10", (3, 32, 32)),
}
_FALLBACK_INPUT = ("CIFAR-10", (3, 32, 32))


def create_model(name: str, num_classes: int | None = None, in_channels: int | None = None,
                 **options: Any) -> nn.Module:
    """Build a model by registry name or ``"package.module:factory"`` import path.

    Parameters
    ----------
    name
        A registered name (see ``MODELS.names()``) or an import path containing ``":"``; the class or factory
        at an import path is called as ``factory(num_classes=..., in_channels=..., **options)``, passing
        ``num_classes`` and ``in_channels`` when given and taken, or when it requires them (10 and 3 unless
        given); a plain ``nn.Module`` class with no arguments works and a class keeps its own defaults. It must
        return an ``nn.Module``. The current
        directory is searched for its module too, as ``python -m`` does.
    num_classes
        Number of output logits (registered models: default 10).
    in_channels
        Number of input image channels (1 for MNIST, 3 for CIFAR-10; registered models: default 3).
    **options
        Architecture options of the model (``image_size``, ``dropout``, ``width``, ...). Two options are
        handled here for every model, registered or imported: ``weights_path`` loads a local safetensors
        or ``torch.save`` state dict with :func:`~gradleak.models.load_weights`, ``weights_strict``
        (default ``True``) is passed on as its ``strict``.

    Returns
    -------
    nn.Module
        The model, in training mode, on the CPU.

    Raises
    ------
    UnknownNameError
        ``name`` is neither registered nor an import path; the message lists the valid names.
    ModelConfigError
        An option the model does not accept or a value that does not fit the architecture.
    ModelImportError
        The import path's module or attribute is missing, or the factory did not return an ``nn.Module``.
    WeightsFileError
        ``weights_path`` is missing, unreadable or does not match the model.
    """
    weights_path = options.pop("weights_path", None)
    weights_strict = options.pop("weights_strict", True)
    if ":" in name:
        factory = import_callable(name)
        # your own class or factory keeps its own defaults (Flower's `Net()`, `Net(num_classes=2)`): classes and
        # channels are passed when given and taken, or when it requires them (then 10 and 3 unless given)
        given = {"num_classes": num_classes, "in_channels": in_channels}
        defaults = {"num_classes": 10, "in_channels": 3}
        kwargs = {k: v for k, v in given.items() if v is not None and _accepts(factory, k)}
        kwargs.update({k: defaults[k] for k in given if k not in kwargs and _requires(factory, k)})
        kwargs.update(options)
    else:
        factory = MODELS.get(name)
        kwargs = {"num_classes": 10 if num_classes is None else num_classes,
                  "in_channels": 3 if in_channels is None else in_channels, **options}
    _check_options(name, factory, kwargs)
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelImportError(f"model {name!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    if weights_path is not None:
        load_weights(model, weights_path, strict=bool(weights_strict))
    return model


def parameter_count(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (shared parameters counted once; buffers not counted).

    Parameters
    ----------
    model
        Any module.
    trainable_only
        Count only parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@dataclass(frozen=True)
class ModelRow:
    """One row of the model table: a model built on its benchmark dataset's input shape."""

    name: str
    description: str
    dataset: str
    input_shape: tuple[int, int, int]
    num_classes: int
    parameters: int

    def as_dict(self) -> dict[str, Any]:
        """The row as a JSON-serialisable dict."""
        row = asdict(self)
        row["input_shape"] = list(self.input_shape)
        return row


def model_table(
    image_shapes: Mapping[str, tuple[int, int, int]] | None = None,
    *,
    num_classes: int = 10,
    names: Iterable[str] | None = None,
) -> list[ModelRow]:
    """Build every registered model on an input shape and report its parameter count.

    Parameters
    ----------
    image_shapes
        ``(C, H, W)`` per model name; models not listed use :data:`DEFAULT_INPUTS` (else 3×32×32).
        ``H`` must equal ``W`` (models take one ``image_size``).
    num_classes
        Number of classes every model is built with.
    names
        Models to include (default: every registered model, sorted).

    Returns
    -------
    list[ModelRow]
        One row per model, in ``names`` order.
    """
    shapes = dict(image_shapes or {})
    rows = []
    for name in MODELS.names() if names is None else list(names):
        dataset, default_shape = DEFAULT_INPUTS.get(name, _FALLBACK_INPUT)
        shape = tuple(shapes.get(name, default_shape))
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ModelConfigError(f"image shape for {name!r} must be (C, S, S), got {shape}")
        if name in shapes:
            dataset = "custom"
        c, s, _ = shape
        model = create_model(name, num_classes=num_classes, in_channels=c, image_size=s)
        rows.append(
            ModelRow(
                name=name,
                description=MODELS.describe(name),
                dataset=dataset,
                input_shape=(c, s, s),
                num_classes=num_classes,
                parameters=parameter_count(model),
            )
        )
    return rows


def describe_models() -> list[dict[str, Any]]:
    """Name, description, benchmark dataset and input shape, classes and parameter count of each model.

    The numbers of the README's model table come from here (see :data:`DEFAULT_INPUTS`, 10 classes).
    """
    return [row.as_dict() for row in model_table()]


def _import_module(module_name: str) -> Any:
    """Import ``module_name``; when it is not found, look in the current directory too (as ``python -m`` does)."""
    import sys

    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        cwd = str(Path.cwd())
        if exc.name is None or not module_name.startswith(exc.name) or cwd in sys.path:
            raise
        sys.path.append(cwd)
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError:
            sys.path.remove(cwd)
            raise exc from None


def import_callable(path: str, what: str = "model") -> Callable[..., Any]:
    """The callable at ``"package.module:attr"`` (``attr`` may be dotted), imported as :func:`create_model` does
    (the current directory is searched too); ``what`` names it in the one-line errors."""
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise ModelImportError(f"{what} import path {path!r} must look like 'package.module:factory'")
    try:
        module = _import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ModelImportError(
                f"{what} {path!r}: cannot import module {module_name!r} ({exc}). Install it or add its "
                "folder to sys.path / PYTHONPATH."
            ) from exc
        raise ModelImportError(f"{what} {path!r}: importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise ModelImportError(
            f"{what} {path!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    target: Any = module
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise ModelImportError(f"{what} {path!r}: module {module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ModelImportError(f"{what} {path!r}: {attr_path!r} is a {type(target).__name__}, not callable")
    return target


def _accepts(factory: Callable[..., Any], key: str) -> bool:
    """Whether ``factory`` takes the keyword ``key`` (or any keyword)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any((p.name == key and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)) or p.kind == p.VAR_KEYWORD
               for p in parameters)


def _requires(factory: Callable[..., Any], key: str) -> bool:
    """Whether ``factory`` has a parameter ``key`` without a default."""
    try:
        parameter = inspect.signature(factory).parameters.get(key)
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is inspect.Parameter.empty and parameter.kind in (
        parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)


def _check_options(name: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Fail with the accepted option names instead of a bare ``TypeError`` from the factory."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        accepted = ", ".join(
            p.name
            for p in signature.parameters.values()
            if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        )
        raise ModelConfigError(
            f"model {name!r} does not accept these options ({exc}); its options are: {accepted}"
        ) from None
