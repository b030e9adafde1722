"""A small Vision Transformer written out explicitly, so it is twice differentiable everywhere.

Attention is computed as ``softmax(q kᵀ / √d) v`` with plain matmuls instead of
``nn.MultiheadAttention`` / ``F.scaled_dot_product_attention``, whose fused kernels may lack double
backward; gradient-inversion attacks differentiate the parameter gradient with respect to the input.

References
----------
Dosovitskiy et al. "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale", ICLR 2021.
Hatamizadeh et al. "GradViT: Gradient Inversion of Vision Transformers", CVPR 2022.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gradleak.models._common import ModelConfigError, check_dropout, check_input_shape, check_positive_int
from gradleak.models.zoo import MODELS

__all__ = ["Attention", "TransformerBlock", "ViT"]


class Attention(nn.Module):
    """Multi-head self-attention with explicit ``q``, ``k``, ``v`` and output ``proj`` linear layers."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ModelConfigError(f"hidden size {dim} must be divisible by the number of heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: Tensor) -> Tensor:  # (..., N, D) -> (..., heads, N, head_dim)
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(-3, -2)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens ``(..., N, D)`` to tokens ``(..., N, D)``."""
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        return self.proj((weights @ v).transpose(-3, -2).flatten(-2))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))`` (GELU MLP)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        """Tokens ``(..., N, D)`` to tokens ``(..., N, D)``."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@MODELS.register("vit")
class ViT(nn.Module):
    """Small Vision Transformer (Dosovitskiy et al. 2021): patch 4, 4 pre-LN blocks, hidden 256, 16 heads.

    Architecture: non-overlapping ``patch_size`` patches embedded by a strided convolution
    (``patch_embed``), a learned class token (``cls_token``) prepended, a learned positional embedding
    (``pos_embed``) added, ``depth`` pre-LayerNorm blocks (``blocks``; multi-head attention with explicit
    q/k/v, then an MLP ``dim → mlp_dim → dim`` with GELU), a final LayerNorm (``norm``), the class token's
    output, dropout and a linear classifier. Defaults: patch 4, depth 4, dim 256, 16 heads (head size 16),
    MLP dim 512; a 32×32 image gives 64 patches + 1 class token.

    Parameters
    ----------
    num_classes
        Number of output logits.
    in_channels
        Input channels.
    image_size
        Input height and width; must be a multiple of ``patch_size``.
    patch_size, depth, dim, heads, mlp_dim
        Patch side, number of blocks, hidden size, attention heads, MLP hidden size.
    dropout
        Rate of the ``nn.Dropout`` (attribute ``dropout``) before the classifier.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        image_size: int = 32,
        patch_size: int = 4,
        depth: int = 4,
        dim: int = 256,
        heads: int = 16,
        mlp_dim: int = 512,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in [
            ("num_classes", num_classes),
            ("in_channels", in_channels),
            ("image_size", image_size),
            ("patch_size", patch_size),
            ("depth", depth),
            ("dim", dim),
            ("heads", heads),
            ("mlp_dim", mlp_dim),
        ]:
            check_positive_int(name, value)
        if image_size % patch_size:
            raise ModelConfigError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
        num_patches = (image_size // patch_size) ** 2
        self.image_shape = (in_channels, image_size, image_size)
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp_dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(check_dropout(dropout))
        self.classifier = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # ViT / timm initialisation: truncated normal (std 0.02) for embeddings and linear weights
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, C, H, W)``."""
        check_input_shape(x, self.image_shape, "ViT", "Pass in_channels and image_size to create_model.")
        tokens = self.patch_embed(x).flatten(-2).transpose(-2, -1)  # (..., P, D)
        cls = self.cls_token.expand(*tokens.shape[:-2], 1, tokens.shape[-1])
        tokens = torch.cat([cls, tokens], dim=-2) + self.pos_embed.squeeze(0)
        tokens = self.norm(self.blocks(tokens))
        return self.classifier(self.dropout(tokens[..., 0, :]))
