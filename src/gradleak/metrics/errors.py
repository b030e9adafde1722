"""Errors raised by :mod:`gradleak.metrics`. All derive from :class:`gradleak.errors.GradleakError`."""

from __future__ import annotations

from gradleak.errors import GradleakError

__all__ = ["MetricInputError", "MissingWeightsError"]


class MetricInputError(GradleakError, ValueError):
    """Images, scores or options given to a metric are unusable (wrong shape, empty, non-finite, bad option)."""


class MissingWeightsError(GradleakError, FileNotFoundError):
    """A metric needs pretrained weights that are not on disk; the message names the file and where to get it.

    gradleak never downloads weights: place the file locally and pass its path.
    """
