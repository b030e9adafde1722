"""Datasets by name: ``load_dataset("mnist", split="test")``.

Names
-----
``mnist``
    IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` in ``<root>/mnist/`` or ``<root>/``;
    splits ``train``, ``test``.
``pneumoniamnist``
    ``<root>/pneumoniamnist.npz`` (MedMNIST layout); splits ``train``, ``val``, ``test``; 0 = normal.
``cifar10``
    ``<root>/cifar10_{split}.npz`` (``images``, ``labels``, ``classes``); offline only ``test`` exists.
``imagefolder:<path>``
    Class sub-folders of PNG/JPEG; uses ``<path>/<split>`` if that folder exists, else ``<path>``.
``npz:<path>``
    A plain npz (``images``, ``labels``, optional ``classes``; split ignored), or any 2-D MedMNIST npz
    (``{split}_images``, ``{split}_labels``).
``sample-mnist``, ``sample-pneumoniamnist``
    The small class-balanced subsets bundled with the package (no files needed).

The data root is the ``root`` argument, else the environment variable ``GRADLEAK_DATA``, else the first
``shared/datasets`` folder found walking up from the current directory (then from this package's location).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np

from gradleak.data import formats
from gradleak.data.dataset import ImageDataset
from gradleak.data.errors import DataFormatError, InvalidSplitError
from gradleak.data.transforms import channel_stats
from gradleak.errors import DatasetNotFoundError
from gradleak.registry import Registry

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "ENV_VAR",
    "MNIST_MEAN",
    "MNIST_STD",
    "check_dataset_name",
    "find_data_root",
    "load_dataset",
]

DATASETS: Registry[ImageDataset] = Registry("dataset")
ENV_VAR = "GRADLEAK_DATA"
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
MNIST_CLASSES = tuple(str(i) for i in range(10))
PNEUMONIA_CLASSES = ("normal", "pneumonia")
_PATH_PREFIXES = {"imagefolder": "imagefolder:<path>", "npz": "npz:<path>"}
_SAMPLE_FILES = {"sample-mnist": "mnist_sample.npz", "sample-pneumoniamnist": "pneumoniamnist_sample.npz"}


def load_dataset(name: str, split: str = "train", root: str | Path | None = None) -> ImageDataset:
    """Load a dataset by name.

    Parameters
    ----------
    name
        A registered name (see :data:`DATASETS`), or ``imagefolder:<path>`` / ``npz:<path>``.
    split
        ``"train"``, ``"test"`` or (where it exists) ``"val"``.
    root
        Folder holding the dataset files; default ``$GRADLEAK_DATA``, else a ``shared/datasets`` folder above
        the current directory.

    Raises
    ------
    UnknownNameError
        ``name`` is not registered; the message lists the valid names.
    InvalidSplitError
        The dataset has no such split; the message lists the valid ones.
    DatasetNotFoundError
        The files are missing; the message names each expected file and each folder searched.

    Examples
    --------
    >>> ds = load_dataset("sample-pneumoniamnist", split="test")
    >>> ds.classes, ds.image_shape
    (('normal', 'pneumonia'), (1, 28, 28))
    """
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _PATH_PREFIXES:
        if not rest:
            raise DatasetNotFoundError(f"{name!r} needs a path after the colon, e.g. {prefix}:/data/xrays")
        return DATASETS.create(_PATH_PREFIXES[prefix], path=rest, split=split, root=root)
    return DATASETS.create(name, split=split, root=root)


def check_dataset_name(name: str) -> None:
    """Raise :class:`~gradleak.errors.UnknownNameError` unless ``load_dataset(name)`` would know ``name``."""
    prefix, sep, rest = name.partition(":")
    if not (sep and prefix in _PATH_PREFIXES and rest):
        DATASETS.check(name)


# ----------------------------------------------------------------------------------------------- data root
def find_data_root(root: str | Path | None = None) -> tuple[Path | None, str]:
    """The data root and how it was chosen (``root`` argument > ``$GRADLEAK_DATA`` > a ``shared/datasets``).

    Returns
    -------
    tuple
        ``(path or None, description)``; ``None`` when nothing was given and no folder was found.
    """
    if root is not None:
        return Path(root).expanduser(), "the root argument"
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser(), f"${ENV_VAR}"
    starts = [
        (Path.cwd(), "the current directory"),
        (Path(__file__).resolve().parent, "the gradleak package"),
    ]
    for start, what in starts:
        for folder in (start, *start.parents):
            for candidate in (folder / "shared" / "datasets", folder.parent / "shared" / "datasets"):
                if candidate.is_dir():
                    return candidate.resolve(), f"a shared/datasets folder found above {what}"
    return None, f"nothing: no root argument, ${ENV_VAR} unset, no shared/datasets folder above {Path.cwd()}"


def _locate(
    dataset: str,
    split: str,
    root: str | Path | None,
    subdirs: tuple[str, ...],
    files: tuple[tuple[str, ...], ...],
    note: str = "",
) -> list[Path]:
    """Find a folder holding one variant of each required file; else raise a helpful DatasetNotFoundError.

    ``files`` lists, per required file, its acceptable names (e.g. with and without ``.gz``).
    """
    base, how = find_data_root(root)
    searched = [] if base is None else [base / s if s else base for s in subdirs]
    for folder in searched:
        found = [next((folder / v for v in variants if (folder / v).is_file()), None) for variants in files]
        if all(f is not None for f in found):
            return [f for f in found if f is not None]
    expected = "; ".join(" or ".join(variants) for variants in files)
    where = ", ".join(str(s) for s in searched) or "(no folder)"
    raise DatasetNotFoundError(
        f"dataset {dataset!r} split {split!r} not found. Expected file(s): {expected}. Searched: {where} "
        f"(data root from {how}).{note} Pass root=... or set {ENV_VAR}=/path/to/datasets, the folder that "
        "holds mnist/, pneumoniamnist.npz and cifar10_test.npz."
    )


def _check_split(dataset: str, split: str, valid: tuple[str, ...]) -> None:
    if split not in valid:
        raise InvalidSplitError(
            f"dataset {dataset!r} has no split {split!r}. Valid splits: {', '.join(valid)}"
        )


def _stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = channel_stats(images)
    return mean, tuple(s if s > 0 else 1.0 for s in std)


def _medmnist(path: Path, split: str, name: str, classes: tuple[str, ...] | None) -> ImageDataset:
    """One split of a MedMNIST-layout npz; mean/std from its train split (so every split agrees)."""
    images, labels, file_classes = formats.read_medmnist_npz(path, split)
    train = images if split == "train" else _train_images_or(path, images)
    mean, std = _stats(train)
    if classes is None:
        classes = file_classes or tuple(str(i) for i in range(int(labels.max(initial=0)) + 1))
    return ImageDataset(images, labels, classes, mean, std, name=name, split=split)


def _train_images_or(path: Path, fallback: np.ndarray) -> np.ndarray:
    try:
        return formats.read_medmnist_npz(path, "train")[0]
    except DataFormatError:
        return fallback


# ----------------------------------------------------------------------------------------------- loaders
@DATASETS.register(
    "mnist", help="MNIST handwritten digits (IDX files), 60,000 train / 10,000 test, 28x28 grey"
)
def _load_mnist(split: str = "train", root: str | Path | None = None) -> ImageDataset:
    _check_split("mnist", split, ("train", "test"))
    stem = "train" if split == "train" else "t10k"
    names = (f"{stem}-images-idx3-ubyte", f"{stem}-labels-idx1-ubyte")
    img_path, lab_path = _locate("mnist", split, root, ("mnist", ""), tuple((f"{n}.gz", n) for n in names))
    images, labels = formats.read_idx(img_path), formats.read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise DataFormatError(
            f"{img_path}, {lab_path}: expected (N, 28, 28) uint8 images and (N,) labels; got {images.shape} "
            f"{images.dtype} and {labels.shape}"
        )
    return ImageDataset(
        images[..., None],
        labels.astype(np.int64),
        MNIST_CLASSES,
        MNIST_MEAN,
        MNIST_STD,
        name="mnist",
        split=split,
    )


@DATASETS.register("pneumoniamnist", help="PneumoniaMNIST chest X-rays (MedMNIST npz), 28x28 grey, 2 classes")
def _load_pneumoniamnist(split: str = "train", root: str | Path | None = None) -> ImageDataset:
    _check_split("pneumoniamnist", split, ("train", "val", "test"))
    (path,) = _locate("pneumoniamnist", split, root, ("", "medmnist"), (("pneumoniamnist.npz",),))
    return _medmnist(path, split, "pneumoniamnist", PNEUMONIA_CLASSES)


@DATASETS.register(
    "cifar10", help="CIFAR-10 (npz per split), 32x32 RGB, 10 classes; offline: test split only"
)
def _load_cifar10(split: str = "train", root: str | Path | None = None) -> ImageDataset:
    _check_split("cifar10", split, ("train", "test"))
    note = ""
    if split == "train":
        note = (
            " Only cifar10_test.npz is shipped offline; use split='test' or provide cifar10_train.npz "
            "(arrays images (N,32,32,3) uint8, labels (N,), classes (10,))."
        )
    (path,) = _locate("cifar10", split, root, ("", "cifar10"), ((f"cifar10_{split}.npz",),), note)
    images, labels, classes = formats.read_npz(path)
    if classes is None:
        raise DataFormatError(f"{path}: missing the 'classes' array")
    return ImageDataset(images, labels, classes, CIFAR10_MEAN, CIFAR10_STD, name="cifar10", split=split)


@DATASETS.register("imagefolder:<path>", help="An ImageFolder tree: <path>[/<split>]/<class>/<image>.png|jpg")
def _load_imagefolder(path: str, split: str = "train", root: str | Path | None = None) -> ImageDataset:
    folder = Path(path).expanduser()
    if (folder / split).is_dir():
        folder = folder / split
    images, labels, classes = formats.read_image_folder(folder)
    mean, std = _stats(images)
    return ImageDataset(images, labels, classes, mean, std, name=f"imagefolder:{path}", split=split)


@DATASETS.register("npz:<path>", help="A plain npz (images, labels[, classes]) or any 2-D MedMNIST npz")
def _load_npz(path: str, split: str = "train", root: str | Path | None = None) -> ImageDataset:
    file = Path(path).expanduser()
    if not file.is_file():
        raise DatasetNotFoundError(f"npz file {file} not found (from dataset name 'npz:{path}')")
    if "images" not in formats.npz_keys(file):
        return _medmnist(file, split, f"npz:{path}", None)
    images, labels, classes = formats.read_npz(file)
    if classes is None:
        classes = tuple(str(i) for i in range(int(labels.max(initial=0)) + 1))
    mean, std = _stats(images)
    return ImageDataset(images, labels, classes, mean, std, name=f"npz:{path}", split=split)


def _load_sample(name: str, split: str, splits: tuple[str, ...]) -> ImageDataset:
    _check_split(name, split, splits)
    resource = resources.files("gradleak.data").joinpath("sample", _SAMPLE_FILES[name])
    with resources.as_file(resource) as path:
        if not path.is_file():
            raise DatasetNotFoundError(
                f"bundled sample {path} is missing; rebuild it with src/gradleak/data/sample/build_sample.py"
            )
        if name == "sample-mnist":
            images, labels, _ = formats.read_medmnist_npz(path, split)
            return ImageDataset(images, labels, MNIST_CLASSES, MNIST_MEAN, MNIST_STD, name=name, split=split)
        return _medmnist(path, split, name, PNEUMONIA_CLASSES)


@DATASETS.register("sample-mnist", help="Bundled class-balanced MNIST sample: 1000 train / 200 test")
def _load_sample_mnist(split: str = "train", root: str | Path | None = None) -> ImageDataset:
    return _load_sample("sample-mnist", split, ("train", "test"))


@DATASETS.register("sample-pneumoniamnist", help="Bundled class-balanced PneumoniaMNIST sample: 600/100/200")
def _load_sample_pneumoniamnist(split: str = "train", root: str | Path | None = None) -> ImageDataset:
    return _load_sample("sample-pneumoniamnist", split, ("train", "val", "test"))
