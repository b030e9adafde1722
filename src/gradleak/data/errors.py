"""Errors raised by :mod:`gradleak.data`. All derive from :class:`gradleak.errors.GradleakError`."""

from __future__ import annotations

from gradleak.errors import GradleakError

__all__ = ["DataFormatError", "InvalidDatasetError", "InvalidSplitError", "PartitionError"]


class DataFormatError(GradleakError, ValueError):
    """A dataset file exists but is corrupt, truncated or in a layout gradleak does not read."""


class InvalidDatasetError(GradleakError, ValueError):
    """Arrays that cannot form an :class:`~gradleak.data.ImageDataset` (shapes, dtypes, label range)."""


class InvalidSplitError(GradleakError, ValueError):
    """A split a dataset does not have; the message lists the valid splits."""


class PartitionError(GradleakError, ValueError):
    """An impossible client partition (more images asked for than exist, bad sizes, ...)."""
