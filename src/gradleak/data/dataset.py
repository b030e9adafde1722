"""The in-memory labelled image dataset that every loader returns.

Examples
--------
>>> import numpy as np
>>> ds = ImageDataset(
...     images=np.zeros((4, 28, 28, 1), dtype=np.uint8), labels=np.array([0, 1, 1, 0]),
...     classes=("a", "b"), mean=(0.5,), std=(0.25,), name="toy",
... )
>>> len(ds), ds.num_classes, ds.image_shape
(4, 2, (1, 28, 28))
>>> ds.class_counts().tolist()
[2, 2]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gradleak.data import transforms
from gradleak.data.errors import InvalidDatasetError

__all__ = ["ImageDataset"]


@dataclass(frozen=True, eq=False, repr=False)
class ImageDataset:
    """Labelled images, channels-last, with the normalisation statistics models should use.

    Parameters
    ----------
    images
        ``(N, H, W, C)`` array: ``uint8`` (0..255) or ``float32`` in [0, 1].
    labels
        ``(N,)`` integer class indices in ``[0, len(classes))``; stored as ``int64``.
    classes
        Class names; ``classes[i]`` names label ``i``.
    mean, std
        Per-channel mean and standard deviation of the images in [0, 1] units (standard values for MNIST and
        CIFAR-10, computed from the training split otherwise).
    name
        Dataset name as given to :func:`gradleak.data.load_dataset`.
    split
        The split these images come from, when known.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    split: str | None = None

    def __post_init__(self) -> None:
        who = f"dataset {self.name!r}"
        images = self.images
        if not isinstance(images, np.ndarray) or images.ndim != 4:
            shape = getattr(images, "shape", type(images).__name__)
            raise InvalidDatasetError(f"{who}: images must be an (N, H, W, C) numpy array; got {shape}")
        if images.dtype == np.uint8:
            pass
        elif images.dtype == np.float32:
            if images.size and not (
                np.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0
            ):
                raise InvalidDatasetError(f"{who}: float32 images must be finite and within [0, 1]")
        else:
            raise InvalidDatasetError(f"{who}: images must be uint8 or float32 in [0, 1]; got {images.dtype}")
        if min(images.shape[1:]) < 1:
            raise InvalidDatasetError(f"{who}: images have an empty dimension: shape {images.shape}")
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise InvalidDatasetError(
                f"{who}: labels must be a 1-D integer array; got shape {labels.shape}, dtype {labels.dtype}"
            )
        if len(labels) != len(images):
            raise InvalidDatasetError(f"{who}: {len(images)} images but {len(labels)} labels")
        classes = tuple(str(c) for c in self.classes)
        if not classes or len(set(classes)) != len(classes):
            raise InvalidDatasetError(f"{who}: classes must be non-empty and unique; got {classes}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            bad = labels[(labels < 0) | (labels >= len(classes))][0]
            raise InvalidDatasetError(
                f"{who}: label {int(bad)} is out of range for {len(classes)} classes "
                f"(valid 0..{len(classes) - 1})"
            )
        channels = images.shape[3]
        mean = tuple(float(v) for v in self.mean)
        std = tuple(float(v) for v in self.std)
        if len(mean) != channels or len(std) != channels:
            raise InvalidDatasetError(
                f"{who}: images have {channels} channel(s) but mean has {len(mean)} and std {len(std)} values"
            )
        if not all(np.isfinite(s) and s > 0 for s in std):
            raise InvalidDatasetError(f"{who}: std must be positive and finite; got {std}")
        object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        split = f", split={self.split!r}" if self.split is not None else ""
        return (
            f"ImageDataset(name={self.name!r}{split}, n={len(self)}, image_shape={self.image_shape}, "
            f"dtype={self.images.dtype}, classes={self.num_classes})"
        )

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``, including classes with no images here)."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``: the shape of one image as models see it (before any resize)."""
        _, h, w, c = self.images.shape
        return (int(c), int(h), int(w))

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        """The images at ``indices`` (integer positions, in that order; repeats allowed), same metadata."""
        idx = self._indices(indices)
        return ImageDataset(
            images=self.images[idx],
            labels=self.labels[idx],
            classes=self.classes,
            mean=self.mean,
            std=self.std,
            name=self.name,
            split=self.split,
        )

    def class_counts(self) -> np.ndarray:
        """``(num_classes,)`` int64 array: number of images of each class."""
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)

    def tensors(
        self, indices: Sequence[int] | np.ndarray | None = None, size: int | None = None, resize: str = "pad"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels as model inputs.

        Parameters
        ----------
        indices
            Which images (default: all).
        size, resize
            See :func:`gradleak.data.transforms.to_tensor`.

        Returns
        -------
        tuple
            ``(x, y)``: ``float32 (n, C, H, W)`` in [0, 1] (not normalised; see :meth:`normalize`) and
            ``int64 (n,)`` labels.
        """
        if indices is None:
            images, labels = self.images, self.labels
        else:
            idx = self._indices(indices)
            images, labels = self.images[idx], self.labels[idx]
        x = transforms.to_tensor(images, size=size, resize=resize)
        return x, torch.from_numpy(np.array(labels, dtype=np.int64))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a ``(..., C, H, W)`` tensor in [0, 1] with this dataset's mean and std."""
        return transforms.normalize(x, self.mean, self.std)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`."""
        return transforms.denormalize(x, self.mean, self.std)

    def _indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise InvalidDatasetError(
                f"indices must be a 1-D sequence of integers; got shape {idx.shape}, dtype {idx.dtype}"
            )
        if idx.min() < -len(self) or idx.max() >= len(self):
            raise InvalidDatasetError(f"index out of range for dataset {self.name!r} of {len(self)} images")
        return idx.astype(np.int64, copy=False)
