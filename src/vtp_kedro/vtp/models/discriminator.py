"""Discriminators of the decoder GAN stage: a PatchGAN, or trainable heads on a frozen ViT.

Both read ImageNet-normalised images (B, 3, H, W) and return logits, one per patch or token.

PatchGAN (pix2pix, Isola et al. 2017; taming-transformers; VA-VAE), with C = ``base_channels``,
L = ``layers`` and m(n) = min(2^n, 8):

    Conv(3 -> C, k4 s2 p1), LeakyReLU(0.2)
    for n = 1 .. L-1:  Conv(C m(n-1) -> C m(n), k4 s2 p1, no bias), BatchNorm, LeakyReLU(0.2)
    Conv(C m(L-1) -> C m(L), k4 s1 p1, no bias), BatchNorm, LeakyReLU(0.2)
    Conv(C m(L) -> 1, k4 s1 p1)

Each logit judges one 9 * 2^L - 2 px square (the receptive field: 70 px for L = 3); an H x W input gives
(floor(H / 2^L) - 2) x (floor(W / 2^L) - 2) logits: 30 x 30 at 256 px, 2 x 2 at 32 px (L = 3).

ViT heads (StyleGAN-T, Sauer et al. 2023, as RAE, Zheng et al. 2025, uses it): the images run through a
frozen ViT; the patch tokens (B, N, width) after each chosen block feed their own head, a 1-D conv net over
the token sequence (SN = spectral norm, BN = BatchNorm1d, LReLU slope 0.2):

    h = LReLU(BN(SNConv1d_k1(tokens)))                   width -> head_channels
    h = (h + LReLU(BN(SNConv1d_k9(h)))) / sqrt(2)        circular padding 4
    logits = SNConv1d_k1(h)                              head_channels -> 1, one per token

The heads' logits are concatenated: (B, n_heads * N). The trunk has no trainable parameters but is not run
under no_grad, so the generator's gradient reaches the images through it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field, field_validator
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.models.vit import VisionTransformer

DEFAULT_HEADS = 4


class NLayerDiscriminator(nn.Module):
    """PatchGAN: images (B, in_channels, H, W) -> patch logits (B, 1, h, w); see the module docstring.

    Layer names (``main.<i>``) and init follow taming-transformers, so its checkpoints load as they are.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        if in_channels < 1 or base_channels < 1 or layers < 1:
            raise ValueError(f"in_channels, base_channels and layers must be >= 1; "
                             f"got {in_channels}, {base_channels}, {layers}")
        self.layers = layers
        sequence: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = base_channels
        for n in range(1, layers + 1):
            out = base_channels * min(2**n, 8)
            # Stride 2 down to the last block, which keeps the resolution; BatchNorm makes a conv bias redundant.
            stride = 2 if n < layers else 1
            sequence += [nn.Conv2d(channels, out, 4, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out),
                         nn.LeakyReLU(0.2)]
            channels = out
        sequence.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*sequence)
        self.apply(_taming_init)

    @property
    def receptive_field(self) -> int:
        """Side in pixels of the square one logit sees: 9 * 2^layers - 2."""
        return 9 * 2**self.layers - 2

    def forward(self, images: Tensor) -> Tensor:
        smallest = 3 * 2**self.layers
        if images.ndim != 4 or min(images.shape[-2:]) < smallest:
            raise ValueError(f"a {self.layers}-layer PatchGAN needs (B, C, H, W) images with H, W >= {smallest}; "
                             f"got {tuple(images.shape)}")
        return self.main(images)


def _taming_init(module: nn.Module) -> None:
    """taming's ``weights_init``: conv weights N(0, 0.02); BatchNorm weights N(1, 0.02), biases 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _sn_block(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, padding_mode="circular")
    # StyleGAN-T normalises over virtual batches of 8 ("BatchNormLocal"); plain BatchNorm1d here.
    return nn.Sequential(spectral_norm(conv), nn.BatchNorm1d(out_channels), nn.LeakyReLU(0.2))


class TokenHead(nn.Module):
    """StyleGAN-T's discriminator head: tokens (B, N, in_channels) -> one logit per token (B, N)."""

    def __init__(self, in_channels: int, channels: int = 64, kernel_size: int = 9) -> None:
        super().__init__()
        self.proj = _sn_block(in_channels, channels, 1)
        self.residual = _sn_block(channels, channels, kernel_size)
        self.to_logits = spectral_norm(nn.Conv1d(channels, 1, 1))

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.proj(tokens.transpose(1, 2))
        h = (h + self.residual(h)) / math.sqrt(2)
        return self.to_logits(h).squeeze(1)


def default_block_indices(depth: int, heads: int = DEFAULT_HEADS) -> tuple[int, ...]:
    """``heads`` evenly spaced 0-based block indices ending at the last block (fewer for shallower trunks).

    Depth 12 gives (2, 5, 8, 11), StyleGAN-T's hooks on ViT-S; depth 4 gives (0, 1, 2, 3).
    """
    n = min(heads, depth)
    return tuple((i + 1) * depth // n - 1 for i in range(n))


class ViTDiscriminator(nn.Module):
    """Frozen ViT trunk + one ``TokenHead`` per chosen block: images -> logits (B, n_heads * N).

    The trunk is ``trunk`` itself, frozen in place: in the GAN stage it is the tokenizer's encoder, frozen
    there anyway, so sharing it costs no memory and checkpoints store it once (as aliases). It stays frozen
    and in eval mode whatever ``train()`` or ``requires_grad_()`` is called with.
    ``block_indices`` are 0-based indices into ``trunk.blocks``; None: ``default_block_indices``.
    """

    def __init__(self, trunk: VisionTransformer, block_indices: Sequence[int] | None = None,
                 head_channels: int = 64) -> None:
        super().__init__()
        depth = len(trunk.blocks)
        indices = default_block_indices(depth) if block_indices is None else tuple(block_indices)
        if not indices or len(set(indices)) != len(indices):
            raise ValueError(f"block_indices must be distinct and not empty; got {indices}")
        out_of_range = [i for i in indices if not 0 <= i < depth]
        if out_of_range:
            raise ValueError(f"block_indices {out_of_range} out of range for a ViT trunk of depth {depth}: "
                             f"use 0 .. {depth - 1}")
        if head_channels < 1:
            raise ValueError(f"head_channels must be >= 1; got {head_channels}")
        self.block_indices = indices
        self.trunk = trunk.requires_grad_(False).eval()
        self.heads = nn.ModuleList(TokenHead(trunk.config.width, head_channels) for _ in indices)

    def train(self, mode: bool = True) -> ViTDiscriminator:
        super().train(mode)
        self.trunk.eval()  # frozen features: DropPath must stay off
        return self

    def requires_grad_(self, requires_grad: bool = True) -> ViTDiscriminator:
        # GAN loops toggle the discriminator's gradients each step; that must never unfreeze the trunk.
        super().requires_grad_(requires_grad)
        self.trunk.requires_grad_(False)
        return self

    def block_tokens(self, images: Tensor) -> list[Tensor]:
        """The patch tokens (B, N, width) after each block of ``block_indices``, in that order.

        Mirrors ``VisionTransformer.forward`` without a mask, stopping after the deepest chosen block.
        """
        trunk = self.trunk
        grid = trunk.grid_size(images)
        x = trunk.patch_embed(images).flatten(1, 2)
        rope = None
        if trunk.pos_embed is not None:
            x = x + resample_abs_pos_embed(trunk.pos_embed, list(grid), trunk.config.grid_size, num_prefix_tokens=0)
        else:
            rope = trunk.rope.get_embed(grid)
        x = torch.cat([trunk.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        tokens = {}
        for index, block in enumerate(trunk.blocks[: max(self.block_indices) + 1]):
            x = block(x, rope)
            if index in self.block_indices:
                tokens[index] = x[:, 1:]
        return [tokens[index] for index in self.block_indices]

    def forward(self, images: Tensor) -> Tensor:
        logits = [head(tokens) for head, tokens in zip(self.heads, self.block_tokens(images), strict=True)]
        return torch.cat(logits, dim=1)


class DiscriminatorConfig(Config):
    """Which discriminator ``build_discriminator`` makes, and its size."""

    kind: Literal["patchgan", "vit_heads"] = "patchgan"
    base_channels: int = Field(64, gt=0, description="PatchGAN: channels of its first conv")
    layers: int = Field(3, gt=0, description="PatchGAN: stride-2 convs; receptive field 9 * 2^layers - 2 px")
    block_indices: tuple[int, ...] | None = Field(
        None, description="vit_heads: 0-based trunk blocks read by a head; None: 4 evenly spaced ending at the last"
    )
    head_channels: int = Field(64, gt=0, description="vit_heads: channels of each head")

    @field_validator("block_indices")
    @classmethod
    def _check_block_indices(cls, indices: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if indices is None:
            return None
        if not indices or len(set(indices)) != len(indices) or min(indices) < 0:
            raise ValueError(f"block_indices must be distinct 0-based block indices, not empty; got {list(indices)}")
        return indices


def build_discriminator(config: DiscriminatorConfig, trunk: VisionTransformer | None = None) -> nn.Module:
    """A PatchGAN on 3-channel images, or ``ViTDiscriminator`` heads on ``trunk`` (frozen in place)."""
    if config.kind == "patchgan":
        return NLayerDiscriminator(3, config.base_channels, config.layers)
    if trunk is None:
        raise ValueError("discriminator kind 'vit_heads' needs a ViT trunk (the tokenizer's encoder); got None")
    return ViTDiscriminator(trunk, config.block_indices, config.head_channels)
