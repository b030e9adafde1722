"""Errors and option checks shared by the model families.

Kept free of model code so that every family, the zoo and the weight loader can import it without cycles.
"""

from __future__ import annotations

from torch import Tensor

from gradleak.errors import GradleakError

__all__ = [
    "ModelConfigError",
    "ModelImportError",
    "WeightsFileError",
    "check_dropout",
    "check_input_shape",
    "check_positive_int",
]


class ModelConfigError(GradleakError, ValueError):
    """A model option (or an input) does not fit the architecture; the message says what would."""


class ModelImportError(GradleakError, ImportError):
    """A ``package.module:factory`` model could not be imported or did not build an ``nn.Module``."""


class WeightsFileError(GradleakError, ValueError):
    """A weights file is missing, unreadable, hostile or does not match the model.

    Attributes
    ----------
    path
        The offending file.
    problem
        What is wrong with it (names the mismatched keys and shapes when there are any).
    """

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def check_positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    """Return ``value`` if it is an ``int`` (not a bool) ``>= minimum``; raise :class:`ModelConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_dropout(p: object) -> float:
    """Return the dropout rate ``p`` as a float in ``[0, 1)``; raise :class:`ModelConfigError` otherwise."""
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= float(p) < 1.0:
        raise ModelConfigError(f"dropout must be a rate in [0, 1), got {p!r}")
    return float(p)


def check_input_shape(x: Tensor, expected: tuple[int, int, int], model: str, hint: str = "") -> None:
    """Raise :class:`ModelConfigError` unless the trailing ``(C, H, W)`` of ``x`` equals ``expected``.

    Only the trailing three dimensions are read, so the check also holds inside ``torch.func.vmap``.
    """
    if tuple(x.shape[-3:]) != expected:
        c, h, w = expected
        got = "×".join(str(s) for s in x.shape[-3:])
        message = f"{model} was built for {c}×{h}×{w} inputs (C×H×W), got {got}"
        raise ModelConfigError(f"{message}. {hint}".strip() if hint else message)
