"""The Vision Transformer trunk of the VTP tokenizer (and the block its pixel decoder reuses).

A pre-norm ViT with a CLS token, 2D axial rotary position embedding (or learned absolute
embeddings), per-head RMSNorm QK-norm, SwiGLU or GELU-MLP feed-forward, optional LayerScale
and stochastic depth, and a learnable mask token for iBOT's masked inputs. Built from timm's
layers. Matches the VTP reference trunk (a DINOv3-style ViT: DINOv3 RoPE, RMSNorm blocks,
SwiGLU with biases, trunc-normal(0.02) init); QK-norm, on by default here, is the paper's
stability choice and an addition over that reference's attention.

References: ViT (Dosovitskiy et al. 2021), DINOv2 (Oquab et al. 2023), DINOv3 (Simeoni et
al. 2025) for the RoPE, timm's EVA for RoPE on patch tokens only behind a CLS token.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from timm.layers import (
    DropPath,
    LayerScale,
    Mlp,
    PatchEmbed,
    RotaryEmbeddingDinoV3,
    SwiGLU,
    apply_rot_embed_cat,
    calculate_drop_path_rates,
    resample_abs_pos_embed,
)
from torch import Tensor, nn

from vtp_kedro.vtp.core.config import Config, from_preset

# DINOv3's RoPE period base over coordinates normalised to [-1, 1], as VTP's reference trunk
# uses: a 96 px local crop and a 224 px global crop then span the same coordinate range.
ROPE_BASE = 100.0

NormKind = Literal["rmsnorm", "layernorm"]
FFNKind = Literal["mlp", "swiglu"]


class ViTConfig(Config):
    """Size and options of a ViT trunk; ``VIT_PRESETS`` holds the paper's sizes."""

    width: int = Field(gt=0)
    depth: int = Field(gt=0)
    heads: int = Field(gt=0)
    patch_size: int = Field(16, gt=0)
    image_size: int = Field(256, gt=0, description="training size; learned position embeddings are made for it")
    mlp_ratio: float = Field(4.0, gt=0)
    ffn: FFNKind = "swiglu"
    norm: NormKind = "rmsnorm"
    pos_embed: Literal["rope", "learned"] = "rope"
    qk_norm: bool = True
    layer_scale: float | None = Field(None, gt=0, description="LayerScale init value; None disables it")
    drop_path: float = Field(0.0, ge=0, lt=1, description="stochastic depth rate of the last block")

    @model_validator(mode="after")
    def _check_divisibility(self) -> ViTConfig:
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        if self.pos_embed == "rope" and self.head_dim % 4:
            raise ValueError(
                f"2D RoPE needs width / heads divisible by 4 (an x and a y rotation pair per frequency); "
                f"got width={self.width}, heads={self.heads}, head dim {self.head_dim}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        return self

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side


VIT_PRESETS: dict[str, dict] = {
    # ViT-Tiny's width and heads (head dim 64, as every paper size, so RoPE frequencies match)
    # at depth 4 and patch 4 on 32 px images: an 8x8 token grid that trains in seconds on a
    # 2-core CPU while keeping every architectural piece of the paper model.
    "tiny": dict(width=192, depth=4, heads=3, patch_size=4, image_size=32),
    "S": dict(width=384, depth=12, heads=6),
    "B": dict(width=768, depth=12, heads=12),
    "L": dict(width=1024, depth=24, heads=16),
}


def vit_config(preset: str, **overrides) -> ViTConfig:
    """The ``ViTConfig`` of a named size preset, with any field overridden."""
    return from_preset(ViTConfig, VIT_PRESETS, preset, **overrides)


def make_norm(kind: NormKind, dim: int) -> nn.Module:
    """RMSNorm (eps 1e-5, the reference trunk's) or LayerNorm (eps 1e-6, its decoder's)."""
    return nn.RMSNorm(dim, eps=1e-5) if kind == "rmsnorm" else nn.LayerNorm(dim, eps=1e-6)


def make_ffn(kind: FFNKind, width: int, mlp_ratio: float) -> nn.Module:
    """GELU MLP of hidden ``mlp_ratio * width``, or SwiGLU of hidden 2/3 of that rounded up to 8.

    The 2/3 keeps SwiGLU's three matrices at the parameter count of the MLP's two (DINOv2/v3).
    """
    hidden = int(width * mlp_ratio)
    if kind == "mlp":
        return Mlp(width, hidden, act_layer=nn.GELU)
    return SwiGLU(width, int(hidden * 2 / 3), align_to=8)


def axial_rope(head_dim: int) -> RotaryEmbeddingDinoV3:
    """2D axial RoPE: half of each head rotates with the row, half with the column coordinate.

    ``.get_embed((h, w))`` gives the (h*w, 2*head_dim) sin|cos table for an h x w grid in
    row-major order, with coordinates at patch centres normalised to [-1, 1] per side.
    """
    return RotaryEmbeddingDinoV3(head_dim, temperature=ROPE_BASE, rotate_half=True)


def apply_rope(x: Tensor, rope: Tensor) -> Tensor:
    """Rotate the last ``len(rope)`` tokens of ``x`` (..., N, head_dim); leading (CLS) tokens stay as they are."""
    prefix = x.shape[-2] - rope.shape[0]
    if prefix < 0:
        raise ValueError(f"RoPE table has {rope.shape[0]} positions but the sequence only {x.shape[-2]} tokens")
    rotated = apply_rot_embed_cat(x[..., prefix:, :], rope, half=True)
    return torch.cat([x[..., :prefix, :], rotated], dim=-2)


class Attention(nn.Module):
    """Multi-head self-attention: per-head RMSNorm on q and k, then RoPE on the patch tokens, then SDPA."""

    def __init__(self, width: int, heads: int, qk_norm: bool = True) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        self.heads = heads
        head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width)
        # Normalising q and k bounds the attention logits, which keeps large-batch bf16 training stable.
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, rope: Tensor | None = None) -> Tensor:
        """x (B, N, width); rope (n, 2*head_dim) for the last n <= N tokens, or None for no rotation."""
        batch, tokens, width = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(LS(Attn(norm(x)))), then x + DropPath(LS(FFN(norm(x))))."""

    def __init__(
        self,
        width: int,
        heads: int,
        *,
        mlp_ratio: float = 4.0,
        ffn: FFNKind = "swiglu",
        norm: NormKind = "rmsnorm",
        qk_norm: bool = True,
        layer_scale: float | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, width)
        self.attn = Attention(width, heads, qk_norm=qk_norm)
        self.ls1 = LayerScale(width, layer_scale) if layer_scale else nn.Identity()
        self.drop_path1 = DropPath(drop_path)  # a no-op at rate 0; kept so that set_drop_path can raise it
        self.norm2 = make_norm(norm, width)
        self.mlp = make_ffn(ffn, width, mlp_ratio)
        self.ls2 = LayerScale(width, layer_scale) if layer_scale else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor, rope: Tensor | None = None) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), rope)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def init_vit_weights(module: nn.Module) -> None:
    """ViT/DINOv2 (and VTP reference) init: linear weights trunc-normal(std 0.02), biases zero."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class VisionTransformer(nn.Module):
    """ViT trunk: images (B, 3, H, W) -> tokens (B, 1 + H/p * W/p, width) after the final norm, CLS first.

    Patch tokens are in row-major order of the (H/p, W/p) grid. Any H, W that are multiples
    of the patch size work: RoPE is computed for the actual grid, learned embeddings are
    resampled (bicubic) from the ``config.image_size`` grid.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.patch_embed = PatchEmbed(
            img_size=config.image_size,
            patch_size=config.patch_size,
            in_chans=3,
            embed_dim=width,
            output_fmt="NHWC",
            strict_img_size=False,
        )
        self.cls_token = nn.Parameter(torch.empty(1, 1, width))
        self.mask_token = nn.Parameter(torch.empty(1, 1, width))
        if config.pos_embed == "learned":
            # Patch positions only: the CLS token has no position (timm's no_embed_class).
            self.pos_embed = nn.Parameter(torch.empty(1, config.grid_size[0] * config.grid_size[1], width))
            self.rope = None
        else:
            self.pos_embed = None
            self.rope = axial_rope(config.head_dim)
        drop_rates = calculate_drop_path_rates(config.drop_path, config.depth)
        self.blocks = nn.ModuleList(
            Block(
                width,
                config.heads,
                mlp_ratio=config.mlp_ratio,
                ffn=config.ffn,
                norm=config.norm,
                qk_norm=config.qk_norm,
                layer_scale=config.layer_scale,
                drop_path=rate,
            )
            for rate in drop_rates
        )
        self.norm = make_norm(config.norm, width)
        self.apply(init_vit_weights)
        nn.init.normal_(self.cls_token, std=0.02)
        # Like the other tokens: a zero mask token enters the first RMSNorm as exact zeros, and its
        # gradient then dwarfs every other one, so global clipping freezes the rest of the encoder.
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth from now on: ``rate`` at the last block, linearly less towards the first
        (timm's schedule). VTP sets it before each objective's pass (``VTPConfig.drop_path``)."""
        for block, block_rate in zip(self.blocks, calculate_drop_path_rates(rate, len(self.blocks))):
            block.drop_path1.drop_prob = block.drop_path2.drop_prob = block_rate

    def grid_size(self, images: Tensor) -> tuple[int, int]:
        """The (H/p, W/p) token grid of a batch of images, after checking its shape."""
        p = self.config.patch_size
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W); got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")
        return height // p, width // p

    def forward(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        """images (B, 3, H, W), normalised; mask (B, N) bool, True = replace that patch by the mask token."""
        grid = self.grid_size(images)
        x = self.patch_embed(images).flatten(1, 2)
        if mask is not None:
            if mask.shape != x.shape[:2] or mask.dtype != torch.bool:
                raise ValueError(
                    f"mask must be a bool tensor of shape {tuple(x.shape[:2])} (batch, patches); "
                    f"got {mask.dtype} {tuple(mask.shape)}"
                )
            # Before position encoding (iBOT/DINOv2): the model knows where a masked patch is, not what.
            x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        rope = None
        if self.pos_embed is not None:
            x = x + resample_abs_pos_embed(self.pos_embed, list(grid), self.config.grid_size, num_prefix_tokens=0)
        else:
            rope = self.rope.get_embed(grid)
        # "+ 0 * mask_token" keeps the mask token in the graph when no mask is given, so DDP
        # needs no find_unused_parameters (the reference trunk does the same).
        cls_token = self.cls_token if mask is not None else self.cls_token + 0 * self.mask_token
        x = torch.cat([cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        for block in self.blocks:
            x = block(x, rope)
        return self.norm(x)
