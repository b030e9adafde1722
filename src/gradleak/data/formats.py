"""Readers (and a few writers) for the standard image-dataset file formats.

- MNIST IDX (``read_idx`` / ``write_idx``), gzipped or not, detected by the gzip magic bytes ``1f 8b``.
- MedMNIST npz (``read_medmnist_npz``): ``{split}_images``, ``{split}_labels``; any 2-D MedMNIST dataset.
- Plain npz (``read_npz``): ``images``, ``labels`` and optionally ``classes``.
- ImageFolder trees (``read_image_folder`` / ``write_image_folder``): one sub-folder of PNG/JPEG per class.

Nothing here unpickles: every ``np.load`` uses ``allow_pickle=False``. Images are returned channels-last,
``(N, H, W, C)``; labels as ``int64 (N,)``.
"""

from __future__ import annotations

import gzip
import struct
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from gradleak.data.errors import DataFormatError
from gradleak.errors import DatasetNotFoundError

if TYPE_CHECKING:
    from gradleak.data.dataset import ImageDataset

__all__ = [
    "IDX_DTYPES",
    "IMAGE_EXTENSIONS",
    "npz_keys",
    "read_idx",
    "read_image_folder",
    "read_medmnist_npz",
    "read_npz",
    "write_idx",
    "write_image_folder",
]

#: IDX type byte → big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_GZIP_MAGIC = b"\x1f\x8b"


# ----------------------------------------------------------------------------------------------- IDX
def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (as the MNIST files), gzipped or not.

    Parameters
    ----------
    path
        The file. Gzip compression is detected from its first two bytes, not from its name.

    Returns
    -------
    np.ndarray
        The array, with the shape and type the header declares, in native byte order.

    Raises
    ------
    DataFormatError
        Bad magic number, unknown type code, truncated header or data, trailing bytes, corrupt gzip.
    """
    path = Path(path)
    raw = _read_file(path)
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataFormatError(f"{path}: corrupt or truncated gzip stream ({exc})") from None
    if len(raw) < 4:
        raise DataFormatError(
            f"{path}: {len(raw)} bytes is too short for an IDX header (4-byte magic number)"
        )
    zero, type_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or type_code not in IDX_DTYPES:
        raise DataFormatError(
            f"{path}: bad IDX magic number 0x{raw[:4].hex()}; expected 0x0000TTDD with type TT in "
            f"{{{', '.join(f'{t:02x}' for t in IDX_DTYPES)}}} (is this an IDX file?)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, got {len(raw)}"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = IDX_DTYPES[type_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        raise DataFormatError(
            f"{path}: IDX data {what}: shape {dims} of {dtype.name} needs {expected} bytes after the header, "
            f"found {got}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def write_idx(array: np.ndarray, path: str | Path, *, compress: bool = False) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``compress``); the inverse of :func:`read_idx`."""
    arr = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    native = arr.dtype.newbyteorder("=")
    if native not in codes:
        raise DataFormatError(
            f"IDX cannot store dtype {arr.dtype}; use one of {sorted(str(d) for d in codes)}"
        )
    if arr.ndim > 255:
        raise DataFormatError(f"IDX stores at most 255 dimensions; got {arr.ndim}")
    header = struct.pack(">HBB", 0, codes[native], arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(native.newbyteorder(">")).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
    return path


# ----------------------------------------------------------------------------------------------- npz
def _read_file(path: Path) -> bytes:
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: no such file")
    return path.read_bytes()


def _load_npz(path: Path, keys: tuple[str, ...] | None = None) -> tuple[list[str], dict[str, np.ndarray]]:
    """The names in an npz file and the arrays ``keys`` (all when ``None``) that it holds; never unpickles."""
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: no such file")
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip with entries / an empty zip
        what = "a single .npy array" if magic.startswith(b"\x93NUM") else f"bytes 0x{magic.hex()}"
        raise DataFormatError(f"{path}: not a readable npz file (an npz is a zip archive; found {what})")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise DataFormatError(
                    f"{path}: expected an .npz archive of named arrays, found a single array"
                )
            names = list(z.files)
            return names, {k: z[k] for k in (names if keys is None else keys) if k in names}
    except DataFormatError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataFormatError(
                f"{path}: contains object arrays; gradleak never unpickles data files"
            ) from None
        raise DataFormatError(f"{path}: not a readable npz file ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataFormatError(f"{path}: not a readable npz file ({exc})") from None


def npz_keys(path: str | Path) -> list[str]:
    """Names of the arrays in an npz file (without loading them)."""
    return _load_npz(Path(path), ())[0]


def _images_nhwc(images: np.ndarray, where: str) -> np.ndarray:
    """``(N,H,W)`` → ``(N,H,W,1)``; check ``(N,H,W,C)`` with C in {1, 3}; uint8 or float in [0, 1]."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        raise DataFormatError(
            f"{where}: images must be (N, H, W) grey or (N, H, W, 1|3) channels-last 2-D images; got shape "
            f"{images.shape} (3-D volumes and channels-first arrays are not supported)"
        )
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.floating):
        return images.astype(np.float32, copy=False)
    raise DataFormatError(
        f"{where}: images must be uint8 (0..255) or float in [0, 1]; got dtype {images.dtype}"
    )


def _labels_1d(labels: np.ndarray, n: int, where: str) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataFormatError(f"{where}: labels must have shape (N,) or (N, 1); got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(f"{where}: labels must be integers; got dtype {labels.dtype}")
    if len(labels) != n:
        raise DataFormatError(f"{where}: {n} images but {len(labels)} labels")
    if labels.size and labels.min() < 0:
        raise DataFormatError(f"{where}: negative label {int(labels.min())}")
    return labels.astype(np.int64)


def _classes(arrays: dict[str, np.ndarray], where: str) -> tuple[str, ...] | None:
    if "classes" not in arrays:
        return None
    classes = arrays["classes"]
    if classes.ndim != 1 or classes.dtype.kind not in "US":
        raise DataFormatError(
            f"{where}: 'classes' must be a 1-D string array; got {classes.dtype} {classes.shape}"
        )
    return tuple(c.decode() if isinstance(c, bytes) else str(c) for c in classes.tolist())


def read_medmnist_npz(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """Read one split of a MedMNIST-layout npz (any 2-D MedMNIST dataset).

    Parameters
    ----------
    path
        npz with ``{split}_images`` ``(N, H, W)`` or ``(N, H, W, 3)`` and ``{split}_labels`` ``(N, 1)``,
        ``(N,)``, or ``(N, L)``.
    split
        ``"train"``, ``"val"`` or ``"test"`` (any prefix present in the file).

    Returns
    -------
    tuple
        ``(images (N, H, W, C), labels int64 (N,), classes or None)``; ``classes`` is read from an optional
        ``classes`` array.

    Raises
    ------
    DataFormatError
        Missing keys (the message lists the keys present), multi-label datasets, 3-D volumes.
    """
    path = Path(path)
    img_key, lab_key = f"{split}_images", f"{split}_labels"
    names, arrays = _load_npz(path, (img_key, lab_key, "classes"))
    if img_key not in arrays or lab_key not in arrays:
        raise DataFormatError(
            f"{path}: no split {split!r}: expected arrays {img_key!r} and {lab_key!r}; the file holds "
            f"{sorted(names)}"
        )
    images = _images_nhwc(arrays[img_key], f"{path} [{img_key}]")
    labels = arrays[lab_key]
    if labels.ndim == 2 and labels.shape[1] > 1:
        raise DataFormatError(
            f"{path}: {lab_key} has shape {labels.shape}: {labels.shape[1]} labels per image (a multi-label "
            "task such as ChestMNIST); gradleak supports single-label classification only"
        )
    return images, _labels_1d(labels, len(images), f"{path} [{lab_key}]"), _classes(arrays, str(path))


def read_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """Read a plain npz with ``images`` ``(N, H, W[, C])``, ``labels`` ``(N,)`` and optional ``classes``."""
    path = Path(path)
    names, arrays = _load_npz(path, ("images", "labels", "classes"))
    if "images" not in arrays or "labels" not in arrays:
        raise DataFormatError(
            f"{path}: expected arrays 'images' and 'labels'; the file holds {sorted(names)}"
        )
    images = _images_nhwc(arrays["images"], f"{path} [images]")
    return images, _labels_1d(arrays["labels"], len(images), f"{path} [labels]"), _classes(arrays, str(path))


# ----------------------------------------------------------------------------------------------- ImageFolder
def _read_image(path: Path) -> np.ndarray:
    """One image as ``(H, W)`` uint8 grey or ``(H, W, 3)`` uint8 RGB."""
    try:
        with Image.open(path) as opened:
            im: Image.Image = opened
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise DataFormatError(
                    f"{path}: {mode} images (16-bit or float) are not supported; save as 8-bit"
                )
            if mode in ("1", "L", "LA"):
                im = im.convert("L")
            elif mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB").convert("RGB")
            elif mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        if isinstance(exc, DataFormatError):
            raise
        raise DataFormatError(f"{path}: cannot read image ({exc})") from None


def read_image_folder(root: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read an ImageFolder tree: ``root/<class>/<image>.{png,jpg,jpeg}``.

    Classes are the sub-folder names, sorted; images within a class are sorted by file name. Grey images
    (mode L) give one channel and colour images three; if a folder mixes them, grey images are repeated to
    three channels. All images must share one size.

    Returns
    -------
    tuple
        ``(images uint8 (N, H, W, C), labels int64 (N,), classes)``.

    Raises
    ------
    DatasetNotFoundError
        ``root`` is not a directory.
    DataFormatError
        No class folders or no images, an unreadable file, or an image whose size differs (the message names
        the file).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"ImageFolder root {root} is not a directory")
    class_dirs = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name
    )
    if not class_dirs:
        raise DataFormatError(f"{root}: no class sub-folders; expected {root}/<class name>/<image>.png")
    pixels: list[np.ndarray] = []
    labels: list[int] = []
    first: Path | None = None
    for label, class_dir in enumerate(class_dirs):
        files = sorted(f for f in class_dir.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        for file in files:
            img = _read_image(file)
            if first is None:
                first = file
            elif img.shape[:2] != pixels[0].shape[:2]:
                h, w = img.shape[:2]
                fh, fw = pixels[0].shape[:2]
                raise DataFormatError(
                    f"{file}: image is {w}x{h} (WxH) but {first} is {fw}x{fh}; all images of an ImageFolder "
                    "dataset must have the same size (resize them first)"
                )
            pixels.append(img)
            labels.append(label)
    if not pixels:
        raise DataFormatError(
            f"{root}: no images with extensions {', '.join(IMAGE_EXTENSIONS)} in {len(class_dirs)} "
            "class folders"
        )
    if any(p.ndim == 3 for p in pixels):
        pixels = [np.repeat(p[..., None], 3, axis=2) if p.ndim == 2 else p for p in pixels]
        images = np.stack(pixels)
    else:
        images = np.stack(pixels)[..., None]
    return images, np.asarray(labels, dtype=np.int64), tuple(p.name for p in class_dirs)


def write_image_folder(dataset: ImageDataset, root: str | Path) -> Path:
    """Write ``dataset`` as an ImageFolder tree of lossless PNGs (``root/<class>/<index:06d>.png``).

    Every class gets a folder (empty classes too), so :func:`read_image_folder` gives back the same classes,
    labels and (for uint8 images) the same pixels in the same order. Float images are rounded to 8 bits.

    Raises
    ------
    DataFormatError
        ``root`` exists and is not empty, or a class name cannot be a folder name.
    """
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataFormatError(f"{root}: refusing to write an ImageFolder into an existing non-empty path")
    for name in dataset.classes:
        if name in ("", ".", "..") or "/" in name or "\\" in name or name.startswith("."):
            raise DataFormatError(f"class name {name!r} cannot be used as a folder name")
    if sorted(dataset.classes) != list(dataset.classes):
        raise DataFormatError(
            f"classes {dataset.classes} are not in sorted order, so reading the folder back would renumber "
            "the labels; relabel the dataset first"
        )
    images = dataset.images
    if images.dtype != np.uint8:
        images = np.round(images * 255.0).astype(np.uint8)
    if images.shape[3] not in (1, 3):
        raise DataFormatError(f"PNG export supports 1 or 3 channels; images have {images.shape[3]}")
    for name in dataset.classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(images, dataset.labels, strict=True)):
        pil = Image.fromarray(np.ascontiguousarray(img[..., 0] if img.shape[2] == 1 else img))
        pil.save(root / dataset.classes[label] / f"{i:06d}.png", format="PNG")
    return root
