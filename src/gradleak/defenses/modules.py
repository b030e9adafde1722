"""Model-stage defenses: dropout, PRECODE and the convolutional variational bottleneck (CVB).

Their randomness (dropout masks, the bottleneck's ε) is drawn from :mod:`gradleak.fl.noise`, so the client
samples it, a well-informed attacker is handed it, and VBIA/DIA optimise it. ``apply(model)`` returns a new
model and leaves its argument untouched. A :class:`~gradleak.records.ModelSpec` rebuilds a defended
architecture from ``options["model_defenses"] = [defense.to_json(), ...]``.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradleak.defenses.base import DEFENSES, ModelDefense
from gradleak.fl import noise as noise_mod

__all__ = ["CVB", "PRECODE", "ConvBottleneck", "DropoutDefense", "FlatBottleneck", "LinearBottleneck",
           "VariationalBottleneck"]


def _kl_standard_normal(mu: Tensor, sigma: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) summed over the latent channels (dim 1), averaged over everything else: the
    batch, and for a convolutional bottleneck the spatial positions (as the CVB authors' released loss)."""
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 1.0 - 2.0 * torch.log(sigma + 1e-12))
    return kl.sum(1).mean()


class VariationalBottleneck(nn.Module):
    """β ~ N(μ, σ²) by reparameterisation (Kingma & Welling 2014); ε from the injectable noise; KL·beta is
    added to the training loss. In eval mode the mean μ is used."""

    def __init__(self, beta: float, noise_name: str) -> None:
        super().__init__()
        self.beta, self.noise_name = beta, noise_name

    def sample(self, mu: Tensor, sigma: Tensor) -> Tensor:
        if not self.training:
            return mu
        eps = noise_mod.draw(self.noise_name, lambda g: torch.randn(mu.shape, generator=g, dtype=mu.dtype,
                                                                    device=mu.device))
        noise_mod.add_loss(self.beta * _kl_standard_normal(mu, sigma))
        return mu + sigma * eps


class LinearBottleneck(VariationalBottleneck):
    """PRECODE (Scheliga et al. 2022): fully connected encoder to μ and softplus σ of ``latent`` units, a
    fully connected decoder back to ``in_features``."""

    def __init__(self, in_features: int, latent: int = 256, beta: float = 1e-3, noise_name: str = "precode"):
        super().__init__(beta, noise_name)
        self.encoder = nn.Linear(in_features, 2 * latent)
        self.decoder = nn.Linear(latent, in_features)

    def forward(self, z: Tensor) -> Tensor:
        mu, s = self.encoder(z).chunk(2, dim=1)
        return self.decoder(self.sample(mu, F.softplus(s)))


class FlatBottleneck(LinearBottleneck):
    """PRECODE on any feature map: ``(N, *shape)`` is flattened to ``in_features`` values, passed through
    :class:`LinearBottleneck` and reshaped back."""

    def forward(self, z: Tensor) -> Tensor:
        if z[0].numel() != self.encoder.in_features:
            raise ValueError(f"precode: the module before it puts out {tuple(z.shape[1:])} = {z[0].numel()} values "
                             f"per example, not features={self.encoder.in_features}")
        return super().forward(z.flatten(1)).view(z.shape)


class ConvBottleneck(VariationalBottleneck):
    """CVB (Scheliga et al. 2024b): ``kernel_size`` convolutions ('same' padding) to μ and σ with ``latent``
    channels (C/2 by default), a 1×1 convolution back to ``channels``. σ = softplus(clamp(s, -5, 5)) as in the
    authors' released code (the clamp bounds σ)."""

    def __init__(self, channels: int, latent: int | None = None, beta: float = 0.1, noise_name: str = "cvb",
                 kernel_size: int = 5, bias: bool = False):
        super().__init__(beta, noise_name)
        latent = latent or max(1, channels // 2)
        pad = kernel_size // 2
        self.mu = nn.Conv2d(channels, latent, kernel_size, padding=pad, bias=bias)
        self.sigma = nn.Conv2d(channels, latent, kernel_size, padding=pad, bias=bias)
        self.decoder = nn.Conv2d(latent, channels, 1, bias=bias)

    def forward(self, z: Tensor) -> Tensor:
        return self.decoder(self.sample(self.mu(z), F.softplus(self.sigma(z).clamp(-5.0, 5.0))))


def _get(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        names = [n for n, _ in model.named_modules() if n][:20]
        raise ValueError(f"the model has no module {path!r}; some of its modules: {names}") from exc


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(_get(model, parent) if parent else model, leaf, module)


def _classifier_path(model: nn.Module) -> str:
    for name in ("classifier", "fc", "head"):
        if isinstance(getattr(model, name, None), nn.Linear):
            return name
    raise ValueError("cannot find the final linear layer (attribute classifier, fc or head); "
                     "pass `before=` with its module path")


@DEFENSES.register("dropout")
@dataclass(frozen=True)
class DropoutDefense(ModelDefense):
    """Dropout before the classifier at rate ``rate`` (Scheliga et al. 2023; default 0.25 as in 2024).

    Uses the zoo models' ``dropout`` slot; masks are drawn per local step from the injectable noise.
    """

    rate: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"dropout: rate must be in [0, 1), got {self.rate}")

    def apply(self, model: nn.Module) -> nn.Module:
        out = copy.deepcopy(model)
        slots = [m for m in out.modules() if isinstance(m, nn.Dropout)]
        if not slots:
            raise ValueError("dropout: the model has no nn.Dropout module (zoo models have one: `dropout`)")
        for m in slots:
            m.p = self.rate
        return out


@DEFENSES.register("precode")
@dataclass(frozen=True)
class PRECODE(ModelDefense):
    """PRECODE before the classifier (Scheliga et al. 2022): latent 256, KL weight ``beta``.

    The combined-defenses paper uses the settings recommended by Scheliga et al. (2024b), which our paper
    extract does not state; we use K = 256 (given) and β = 1e-3.

    ``before`` places it before another ``nn.Linear``. ``after`` places it after any module instead, e.g. the
    first conv block (``after="features.block1"``, ``features=16 * 14 * 14`` on the MNIST ``cnn``): the
    module's output is flattened, passed through the bottleneck and reshaped back. Scheliga et al. (2024b)
    find that a PRECODE before the classifier is bypassed by leaving out the gradients after it (``pig``) and
    that variational modeling must sit early in the network to resist that. ``features`` (the values the
    module puts out per example, C·H·W) is required with ``after``: the defense does not know the input size.
    """

    latent: int = 256
    beta: float = 1e-3
    before: str | None = None
    after: str | None = None
    features: int | None = None

    def __post_init__(self) -> None:
        if self.latent < 1 or self.beta < 0:
            raise ValueError(f"precode: latent must be >= 1 and beta >= 0, got {self.latent}, {self.beta}")
        if self.before is not None and self.after is not None:
            raise ValueError("precode: give before= or after=, not both")
        if (self.after is None) != (self.features is None):
            raise ValueError("precode: after= needs features=, the number of values the module puts out per "
                             "example (C·H·W), and features= is only used with after=")
        if self.features is not None and self.features < 1:
            raise ValueError(f"precode: features must be >= 1, got {self.features}")

    def apply(self, model: nn.Module) -> nn.Module:
        out = copy.deepcopy(model)
        if self.after is not None:
            assert self.features is not None
            block = _get(out, self.after)
            vb = FlatBottleneck(self.features, self.latent, self.beta, noise_name="precode")
            _set(out, self.after, nn.Sequential(OrderedDict(block=block, precode=vb)))
            return out
        path = self.before or _classifier_path(out)
        head = _get(out, path)
        if not isinstance(head, nn.Linear):
            raise ValueError(f"precode: {path!r} must be a Linear layer, got {type(head).__name__}")
        linear = LinearBottleneck(head.in_features, self.latent, self.beta, noise_name="precode")
        _set(out, path, nn.Sequential(OrderedDict(precode=linear, linear=head)))
        return out


@DEFENSES.register("cvb")
@dataclass(frozen=True)
class CVB(ModelDefense):
    """Convolutional variational bottleneck after ``after`` (default: the CNN's first conv block), with C/2
    latent channels.

    Defaults are the CVB paper's recommended configuration as released by its authors (Scheliga et al.
    2024b, ``configs/models/CNNCVB.yaml`` of dAI-SY-Group/ConvolutionalVariationalBottleneck, the
    configuration the combined-defenses paper cites): KL weight ``beta`` 0.1, 5×5 encoder convolutions
    (``kernel_size``), no biases (``bias``), placed after the first conv block. The KL term is the exact
    KL(N(μ, σ²) ‖ N(0, 1)) summed over the latent channels and averaged over positions and the batch, as
    in the authors' released loss (β = 0.1 per position is β/(H·W) ≈ 5e-4 per latent unit on the CNN's
    14×14 map).
    """

    after: str = "features.block1"
    beta: float = 0.1
    kernel_size: int = 5
    bias: bool = False

    def __post_init__(self) -> None:
        if self.beta < 0:
            raise ValueError(f"cvb: beta must be >= 0, got {self.beta}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"cvb: kernel_size must be a positive odd number, got {self.kernel_size}")

    def apply(self, model: nn.Module) -> nn.Module:
        out = copy.deepcopy(model)
        block = _get(out, self.after)
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError(f"cvb: {self.after!r} holds no Conv2d to take the channel count from")
        vb = ConvBottleneck(convs[-1].out_channels, beta=self.beta, noise_name="cvb", kernel_size=self.kernel_size,
                            bias=self.bias)
        _set(out, self.after, nn.Sequential(OrderedDict(block=block, cvb=vb)))
        return out
