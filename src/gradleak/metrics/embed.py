"""Feature extractors for identifiability and embedding metrics, and t-SNE maps of embeddings.

A feature extractor is any callable ``images (N, C, H, W) in [0, 1] -> features (N, D)``. Three are provided:
raw pixels, a hook on a layer of any model (e.g. the FL model itself), and the ImageNet ResNet-18 that
Hatamizadeh et al. (2022) use for IIP and their t-SNE figure (512-d penultimate features) — from a local
weights file only; gradleak never downloads weights.

Examples
--------
>>> extract = model_features(model, "penultimate")              # doctest: +SKIP
>>> original_xy, recon_xy = tsne(extract(truth), extract(recon), seed=0)   # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradleak.metrics._checks import as_images
from gradleak.metrics.errors import MetricInputError, MissingWeightsError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FeatureExtractor",
    "model_features",
    "pixel_features",
    "torchvision_resnet18_features",
    "tsne",
]

FeatureExtractor = Callable[[Tensor], Tensor]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESNET18_FILE = "resnet18-f37072fd.pth"


def pixel_features(x: Tensor | np.ndarray) -> Tensor:
    """Images flattened to vectors: ``(N, C, H, W) -> (N, C*H*W)`` float64."""
    return as_images(x).flatten(1)


def model_features(
    model: nn.Module,
    layer: str = "penultimate",
    *,
    transform: Callable[[Tensor], Tensor] | None = None,
    batch_size: int = 256,
) -> FeatureExtractor:
    """An extractor returning the (flattened) activations of one layer of ``model``.

    Parameters
    ----------
    model
        Any module. It is run in eval mode without gradients; its training flag is restored afterwards and the
        hook removed, so the model is left exactly as it was.
    layer
        A name from ``model.named_modules()`` (its output is taken), or ``"penultimate"``: the input of the last
        ``nn.Linear`` in module order (the features the classifier head sees).
    transform
        Applied to the ``[0, 1]`` images before the model (e.g. the model's normalisation), if any.
    batch_size
        Images per forward pass.

    Returns
    -------
    FeatureExtractor
        ``images -> (N, D)`` tensor; images are cast to the model's dtype and device.

    Raises
    ------
    MetricInputError
        ``layer`` is not a module of ``model`` (the message lists some names), or there is no ``nn.Linear`` for
        ``"penultimate"``.
    """
    modules = dict(model.named_modules())
    if layer == "penultimate":
        linears = [m for m in modules.values() if isinstance(m, nn.Linear)]
        if not linears:
            raise MetricInputError("layer='penultimate' needs an nn.Linear head; name a layer from named_modules()")
        target, take_input = linears[-1], True
    elif layer in modules and layer:
        target, take_input = modules[layer], False
    else:
        names = [n for n in modules if n][:20]
        raise MetricInputError(f"model has no layer {layer!r}; layers include {names}")
    if batch_size < 1:
        raise MetricInputError(f"batch_size must be >= 1, got {batch_size}")

    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    def extract(images: Tensor) -> Tensor:
        images = as_images(images, dtype=dtype)
        if param is not None:
            images = images.to(param.device)
        captured: list[Tensor] = []
        if take_input:
            handle = target.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0].flatten(1)))
        else:
            handle = target.register_forward_hook(lambda _m, _i, output: captured.append(output.flatten(1)))
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                for start in range(0, images.shape[0], batch_size):
                    chunk = images[start : start + batch_size]
                    model(transform(chunk) if transform is not None else chunk)
        finally:
            handle.remove()
            model.train(was_training)
        return torch.cat(captured)

    return extract


def torchvision_resnet18_features(
    weights_path: str | os.PathLike[str] | None,
    *,
    resize: int | None = 224,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> FeatureExtractor:
    """The 512-d penultimate features of torchvision's ImageNet ResNet-18, loaded from a local file.

    Images in ``[0, 1]`` are repeated to RGB if grey, resized (bilinear, antialiased) to ``resize × resize``
    unless ``resize`` is ``None``, and normalised with the ImageNet mean and std.

    Parameters
    ----------
    weights_path
        torchvision's ``resnet18-f37072fd.pth`` (``ResNet18_Weights.IMAGENET1K_V1``) or any state dict of
        ``torchvision.models.resnet18()`` (safetensors or ``torch.save``; never unpickled).
    resize, batch_size, device
        Input side, images per forward pass, and where the network runs.

    Raises
    ------
    MissingWeightsError
        No path, or no file at it; the message names the file to fetch.
    gradleak.models.WeightsFileError
        The file does not hold a ResNet-18 state dict.
    """
    if weights_path is None or not Path(weights_path).is_file():
        where = "no weights_path given" if weights_path is None else f"{weights_path}: no such file"
        raise MissingWeightsError(
            f"{where}. ResNet-18 features need torchvision's ImageNet weights '{_RESNET18_FILE}' "
            f"(https://download.pytorch.org/models/{_RESNET18_FILE}); gradleak never downloads weights: "
            "fetch it on a connected machine and pass its local path"
        )
    import torchvision

    from gradleak.models.weights import load_weights

    with torch.device("meta"):  # every tensor is overwritten by the file: skip the random initialisation
        network = torchvision.models.resnet18(weights=None)
    network = network.to_empty(device="cpu")
    load_weights(network, weights_path)
    network.fc = nn.Identity()
    network = network.eval().to(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def extract(images: Tensor) -> Tensor:
        x = as_images(images, dtype=torch.float32).to(device)
        if x.shape[1] not in (1, 3):
            raise MetricInputError(f"ResNet-18 features need 1- or 3-channel images, got {x.shape[1]}")
        out = []
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                chunk = x[start : start + batch_size].expand(-1, 3, -1, -1)
                if resize is not None:
                    chunk = F.interpolate(chunk, size=(resize, resize), mode="bilinear", antialias=True)
                out.append(network((chunk - mean) / std))
        return torch.cat(out)

    return extract


def tsne(
    original_emb: Tensor | np.ndarray,
    recon_emb: Tensor | np.ndarray,
    *,
    seed: int,
    perplexity: float = 30.0,
    metric: str = "euclidean",
    max_iter: int = 1000,
    num_threads: int | None = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Joint two-dimensional t-SNE map of original and reconstruction embeddings (Hatamizadeh et al., Fig. 8).

    Both sets are embedded together (so distances between them mean something) with scikit-learn's
    :class:`~sklearn.manifold.TSNE` (PCA initialisation, automatic learning rate).

    Parameters
    ----------
    original_emb, recon_emb
        Features ``(N, D)`` and ``(M, D)``.
    seed
        ``random_state`` of t-SNE: the map is deterministic for a seed.
    perplexity
        Clipped to ``N + M - 1`` (scikit-learn requires it below the number of points).
    metric
        Distance in feature space (``"euclidean"``, ``"cosine"``, ...).
    max_iter
        Optimisation iterations (scikit-learn's default 1000; at least 250).
    num_threads
        OpenMP threads for scikit-learn's gradient. 1 by default: with torch loaded in the same process, the
        shared libgomp pool makes small maps many times slower on a busy machine.
        ``None`` leaves the thread pool as it is (worth it for many thousands of points on an idle machine).

    Returns
    -------
    tuple of numpy.ndarray
        Coordinates ``(N, 2)`` of the originals and ``(M, 2)`` of the reconstructions.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    first, second = _as_matrix(original_emb, "original_emb"), _as_matrix(recon_emb, "recon_emb")
    if first.shape[1] != second.shape[1]:
        raise MetricInputError(f"embeddings differ in dimension: {first.shape[1]} and {second.shape[1]}")
    points = np.concatenate([first, second])
    if points.shape[0] < 3:
        raise MetricInputError(f"t-SNE needs at least 3 points in all, got {points.shape[0]}")
    if perplexity <= 0:
        raise MetricInputError(f"perplexity must be positive, got {perplexity}")
    init = "pca" if points.shape[1] >= 2 else "random"
    model = TSNE(
        n_components=2,
        perplexity=min(float(perplexity), points.shape[0] - 1.0),
        metric=metric,
        init=init,
        learning_rate="auto",
        random_state=seed,
        max_iter=max_iter,
    )
    if num_threads is None:
        coords = model.fit_transform(points)
    else:
        with threadpool_limits(limits=num_threads, user_api="openmp"):
            coords = model.fit_transform(points)
    return coords[: first.shape[0]], coords[first.shape[0] :]


def _as_matrix(values: Tensor | np.ndarray, name: str) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise MetricInputError(f"{name} must be a non-empty (N, D) matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise MetricInputError(f"{name} holds NaN or inf")
    return matrix
