"""The VTP visual tokenizer: ViT encoder, linear bottleneck to the latent Z, ViT pixel decoder.

    images (B, 3, H, W) --ViT--> tokens (B, 1+N, width) --Linear(width, d, no bias)--> Z (B, d, H/p, W/p)
    Z --1x1 conv--> (B, N, dec_width) --RoPE ViT blocks, norm--> 1x1 conv to 3*p*p --PixelShuffle(p)--> (B, 3, H, W)

No KL term and no quantiser (paper Section 3.2, reference code). Images are ImageNet-
normalised in and out (``vtp.data.preprocess``: ``normalize`` / ``denormalize``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator
from torch import Tensor, nn

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.models.vit import (
    Block,
    FFNKind,
    NormKind,
    VisionTransformer,
    ViTConfig,
    axial_rope,
    init_vit_weights,
    make_norm,
)


class TokenizerConfig(Config):
    """Encoder, bottleneck width d and pixel decoder size. The decoder reuses the encoder's FFN, mlp_ratio and QK-norm."""

    encoder: ViTConfig
    latent_dim: int = Field(64, gt=0, description="bottleneck channels d: 64 in the paper, 256 in its ablation")
    decoder_width: int = Field(gt=0)
    decoder_depth: int = Field(4, gt=0, description="4 for the fast setting, up to 24")
    decoder_heads: int = Field(gt=0)
    decoder_norm: NormKind = "layernorm"

    @model_validator(mode="after")
    def _check_decoder_heads(self) -> TokenizerConfig:
        if self.decoder_width % self.decoder_heads or (self.decoder_width // self.decoder_heads) % 4:
            raise ValueError(
                f"decoder_width ({self.decoder_width}) / decoder_heads ({self.decoder_heads}) must be an "
                "integer head dim divisible by 4 (the decoder uses 2D RoPE)"
            )
        return self

    def check_image_size(self, size: int, key: str) -> None:
        """Raise, naming ``key``, unless ``size`` is a whole number of patches."""
        if size % self.encoder.patch_size:
            raise ValueError(f"{key} ({size}) must be a multiple of the patch size ({self.encoder.patch_size})")


class PixelDecoder(nn.Module):
    """Z (B, d, h, w) -> images (B, 3, h*p, w*p) in normalised space.

    1x1 conv lifts d to ``width``; ViT blocks with 2D RoPE over the h x w grid; norm; 1x1 conv
    to 3*p*p channels, where channel ``c*p*p + i*p + j`` is pixel offset (i, j) of colour c
    inside the token's p x p patch; ``nn.PixelShuffle(p)`` places it there.
    """

    def __init__(
        self,
        latent_dim: int,
        width: int,
        depth: int,
        heads: int,
        patch_size: int,
        *,
        mlp_ratio: float = 4.0,
        ffn: FFNKind = "swiglu",
        norm: NormKind = "layernorm",
        qk_norm: bool = True,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.proj_in = nn.Conv2d(latent_dim, width, kernel_size=1)
        self.rope = axial_rope(width // heads)
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio=mlp_ratio, ffn=ffn, norm=norm, qk_norm=qk_norm) for _ in range(depth)
        )
        self.norm = make_norm(norm, width)
        self.proj_out = nn.Conv2d(width, 3 * patch_size * patch_size, kernel_size=1)
        self.pixel_shuffle = nn.PixelShuffle(patch_size)
        self.apply(init_vit_weights)
        for conv in (self.proj_in, self.proj_out):
            nn.init.trunc_normal_(conv.weight, std=0.02)
            nn.init.zeros_(conv.bias)

    def forward(self, z: Tensor) -> Tensor:
        if z.ndim != 4 or z.shape[1] != self.latent_dim:
            raise ValueError(f"latent must have shape (B, {self.latent_dim}, h, w); got {tuple(z.shape)}")
        batch, _, height, width = z.shape
        x = self.proj_in(z).flatten(2).transpose(1, 2)
        rope = self.rope.get_embed((height, width))
        for block in self.blocks:
            x = block(x, rope)
        x = self.norm(x).transpose(1, 2).reshape(batch, -1, height, width)
        return self.pixel_shuffle(self.proj_out(x))


@dataclass(frozen=True)
class TokenizerFeatures:
    """One encoder pass, everything the heads and the decoder need.

    trunk: (B, 1+N, width) after the final norm, CLS first; latent_tokens: (B, 1+N, d) =
    bottleneck(trunk), CLS included; grid: the (h, w) patch grid, N = h*w, row-major.
    """

    trunk: Tensor
    latent_tokens: Tensor
    grid: tuple[int, int]

    def latent(self) -> Tensor:
        """The latent Z (B, d, h, w): the patch rows of ``latent_tokens`` laid out on the grid."""
        batch, _, dim = self.latent_tokens.shape
        return self.latent_tokens[:, 1:].transpose(1, 2).reshape(batch, dim, *self.grid)


class VisualTokenizer(nn.Module):
    """Encoder + bias-free linear bottleneck + pixel decoder. ``encode``/``decode`` are the public API."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        enc = config.encoder
        self.encoder = VisionTransformer(enc)
        self.bottleneck = nn.Linear(enc.width, config.latent_dim, bias=False)
        nn.init.trunc_normal_(self.bottleneck.weight, std=0.02)
        self.decoder = PixelDecoder(
            config.latent_dim,
            config.decoder_width,
            config.decoder_depth,
            config.decoder_heads,
            enc.patch_size,
            mlp_ratio=enc.mlp_ratio,
            ffn=enc.ffn,
            norm=config.decoder_norm,
            qk_norm=enc.qk_norm,
        )

    @property
    def patch_size(self) -> int:
        return self.config.encoder.patch_size

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def forward_features(self, images: Tensor, mask: Tensor | None = None) -> TokenizerFeatures:
        """Encode normalised images (mask: (B, N) bool for masked-image modelling) into trunk and latent tokens."""
        grid = self.encoder.grid_size(images)
        trunk = self.encoder(images, mask)
        return TokenizerFeatures(trunk=trunk, latent_tokens=self.bottleneck(trunk), grid=grid)

    def encode(self, images: Tensor) -> Tensor:
        """Normalised images (B, 3, H, W) -> latent Z (B, d, H/p, W/p)."""
        grid = self.encoder.grid_size(images)
        patches = self.encoder(images)[:, 1:]
        z = self.bottleneck(patches)
        return z.transpose(1, 2).reshape(z.shape[0], self.latent_dim, *grid)

    def decode(self, z: Tensor) -> Tensor:
        """Latent Z (B, d, h, w) -> normalised images (B, 3, h*p, w*p)."""
        return self.decoder(z)

    def forward(self, images: Tensor) -> Tensor:
        """Reconstruction ``decode(encode(images))``."""
        return self.decode(self.encode(images))

    @staticmethod
    def semantic_features(feats: TokenizerFeatures, source: Literal["trunk", "bottleneck"]) -> Tensor:
        """Tokens (B, 1+N, C) the CLIP/DINO heads read: the trunk (C = width) or the bottleneck (C = d).

        The paper's linear probe reads the bottleneck; the reference code's heads read the trunk.
        """
        if source == "trunk":
            return feats.trunk
        if source == "bottleneck":
            return feats.latent_tokens
        raise ValueError(f"semantic feature source must be 'trunk' or 'bottleneck'; got {source!r}")
