"""SSIM / PSNR / MSE against scikit-image and numpy (the slow references), plus LPIPS' file handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from gradleak.metrics import METRICS, MetricInputError, MissingWeightsError, lpips, mse, pairwise, psnr, ssim
from tests.metrics._images import noisy, photo_crops

SHAPES = [(1, 32, 32), (3, 32, 32), (1, 28, 40), (3, 28, 40)]


def reference_ssim(a: np.ndarray, b: np.ndarray, **options: object) -> np.ndarray:
    """scikit-image, one pair at a time, channels on axis 0."""
    defaults = {"data_range": 1.0, "gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
    return np.array(
        [structural_similarity(x, y, channel_axis=0, **(defaults | options)) for x, y in zip(a, b, strict=True)]
    )


def image_pairs(rng: np.random.Generator, shape: tuple[int, int, int], n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs mixing photo crops + noise of several strengths, contrast changes, and uniform noise."""
    quarter = n // 4
    photos = photo_crops(rng, 2 * quarter, *shape)
    sigmas = rng.uniform(0.01, 0.4, size=(quarter, 1, 1, 1))
    first = np.concatenate([photos[:quarter], photos[quarter:], rng.random((n - 2 * quarter, *shape))])
    second = np.concatenate(
        [
            np.clip(photos[:quarter] + sigmas * rng.standard_normal(photos[:quarter].shape), 0, 1),  # noise
            0.5 * photos[quarter:] + 0.25,  # contrast and brightness change
            rng.random((quarter, *shape)),  # unrelated noise
            noisy(rng, first[3 * quarter :], 0.1),
        ]
    )
    return first, second


@pytest.mark.parametrize("shape", SHAPES)
def test_ssim_equals_skimage(rng: np.random.Generator, shape: tuple[int, int, int]) -> None:
    a, b = image_pairs(rng, shape, 25)  # 4 shapes x 25 = 100 pairs
    ours = ssim(torch.from_numpy(a), torch.from_numpy(b))
    assert ours.dtype == torch.float64 and ours.shape == (25,)
    np.testing.assert_allclose(ours.numpy(), reference_ssim(a, b), rtol=0, atol=1e-6)
    assert ours.min() < 0.3 and ours.max() > 0.9  # the pairs span the range, so the check is not vacuous


@pytest.mark.parametrize(
    "options",
    [
        {"win_size": 7},
        {"sigma": 1.0},
        {"use_sample_covariance": True},
        {"gaussian_weights": False, "use_sample_covariance": True},  # skimage's defaults: 7x7 uniform window
        {"K1": 0.02, "K2": 0.05, "data_range": 2.0},
    ],
)
def test_ssim_options_equal_skimage(rng: np.random.Generator, options: dict[str, object]) -> None:
    a, b = image_pairs(rng, (3, 28, 40), 8)
    ours_options = {("gaussian" if k == "gaussian_weights" else k): v for k, v in options.items()}
    np.testing.assert_allclose(ssim(a, b, **ours_options).numpy(), reference_ssim(a, b, **options), atol=1e-6, rtol=0)


def test_ssim_small_image_reflects_beyond_one_period(rng: np.random.Generator) -> None:
    # radius 5 on a 7-pixel side: scipy's 'reflect' extension wraps around more than once
    a, b = rng.random((3, 1, 7, 9)), rng.random((3, 1, 7, 9))
    np.testing.assert_allclose(ssim(a, b, win_size=7).numpy(), reference_ssim(a, b, win_size=7), atol=1e-6, rtol=0)


def test_ssim_identity_symmetry_and_gradient(rng: np.random.Generator) -> None:
    a = torch.from_numpy(photo_crops(rng, 4, 3, 32, 32))
    b = torch.from_numpy(noisy(rng, a.numpy(), 0.2)).requires_grad_(True)
    torch.testing.assert_close(ssim(a, a), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(ssim(a, b), ssim(b, a))
    ssim(a, b).sum().backward()
    assert b.grad is not None and torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0


def test_ssim_rejects_bad_input() -> None:
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(MetricInputError, match="same shape"):
        ssim(x, x[:1])
    with pytest.raises(MetricInputError, match=r"\(N, C, H, W\)"):
        ssim(x[0], x[0])
    with pytest.raises(MetricInputError, match="odd"):
        ssim(x, x, win_size=6)
    with pytest.raises(MetricInputError, match="exceeds the image extent"):
        ssim(x[..., :8, :8], x[..., :8, :8])


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 28, 40)])
def test_psnr_and_mse_equal_references(rng: np.random.Generator, shape: tuple[int, int, int]) -> None:
    a, b = image_pairs(rng, shape, 12)
    expected_psnr = [peak_signal_noise_ratio(x, y, data_range=1.0) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(psnr(a, b).numpy(), expected_psnr, rtol=1e-12)
    np.testing.assert_allclose(mse(a, b).numpy(), ((a - b) ** 2).mean(axis=(1, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(psnr(a, b, data_range=2.0).numpy(), np.array(expected_psnr) + 20 * np.log10(2))


def test_psnr_of_identical_images_is_inf() -> None:
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(psnr(x, x), torch.full((3,), torch.inf, dtype=torch.float64))


@pytest.mark.parametrize("metric", ["ssim", "psnr", "mse"])
def test_pairwise_matrix_equals_per_pair_metric(rng: np.random.Generator, metric: str) -> None:
    recon, truth = rng.random((5, 3, 28, 40)), photo_crops(rng, 4, 3, 28, 40)
    matrix = pairwise(metric, recon, truth)
    assert matrix.shape == (5, 4)
    fn = METRICS.get(metric)
    expected = torch.stack([fn(np.repeat(r[None], 4, axis=0), truth) for r in recon])
    torch.testing.assert_close(matrix, expected, rtol=1e-12, atol=1e-12)


def test_metrics_registry_lists_per_image_metrics() -> None:
    assert METRICS.names() == ["mse", "psnr", "ssim"]
    with pytest.raises(KeyError, match="Valid metrics: mse, psnr, ssim"):
        METRICS.get("ssmi")


def test_lpips_without_weights_names_the_files() -> None:
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(MissingWeightsError, match=r"weights/v0\.1/alex\.pth"):
        lpips(x, x)
    with pytest.raises(MissingWeightsError, match=r"alexnet-owt-7be5be79\.pth"):
        lpips(x, x, weights_path=__file__)
    with pytest.raises(MissingWeightsError, match="no such file"):
        lpips(x, x, weights_path="/nonexistent/alex.pth", backbone_path=__file__)


def test_lpips_matches_a_hook_based_reference(tmp_path) -> None:
    """With random (seeded) AlexNet and linear weights, LPIPS equals the paper's formula computed via hooks."""
    import torchvision

    with torch.device("meta"):
        features = torchvision.models.alexnet(weights=None).features.eval()
    features = features.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    for param in features.parameters():
        param.data.copy_(0.05 * torch.randn(param.shape, generator=generator))
    backbone = tmp_path / "alexnet.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, backbone)
    widths = (64, 192, 384, 256, 256)
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator) for i, c in enumerate(widths)}
    weights = tmp_path / "alex.pth"
    torch.save(lin, weights)
    a = torch.rand(3, 3, 36, 36, generator=torch.Generator().manual_seed(1))
    b = (a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)

    ours = lpips(a, b, weights_path=weights, backbone_path=backbone)

    taps: list[torch.Tensor] = []
    hooks = [features[i].register_forward_hook(lambda _m, _i, out: taps.append(out)) for i in (1, 4, 7, 9, 11)]
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    with torch.no_grad():
        features[:12]((2 * a - 1 - shift) / scale)
        features[:12]((2 * b - 1 - shift) / scale)
    for h in hooks:
        h.remove()
    expected = torch.zeros(3)
    for i, (fa, fb) in enumerate(zip(taps[:5], taps[5:], strict=True)):
        na = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
        nb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
        expected += ((na - nb) ** 2 * lin[f"lin{i}.model.1.weight"]).sum(dim=1).mean(dim=(1, 2))
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)
    assert (ours > 0).all()
    torch.testing.assert_close(lpips(a, a, weights_path=weights, backbone_path=backbone), torch.zeros(3))
