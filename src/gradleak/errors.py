"""The exceptions gradleak raises on bad input. Each message says what is wrong and what to do."""

from __future__ import annotations

__all__ = [
    "DatasetNotFoundError",
    "GradleakError",
    "UnknownNameError",
    "UpdateFileError",
]


class GradleakError(Exception):
    """Base class of every error gradleak raises deliberately."""


class UnknownNameError(GradleakError, KeyError):
    """A name (model, dataset, attack, ...) that no registry knows; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(GradleakError, FileNotFoundError):
    """The files of a dataset are missing; the message names the files that were expected and where."""


class UpdateFileError(GradleakError, ValueError):
    """An update or global-state file is missing, corrupt, hostile or does not match the model.

    Attributes
    ----------
    path
        The offending file.
    """

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
