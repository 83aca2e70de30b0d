"""LightningDiT: the class-conditional latent diffusion transformer VTP's generation results use.

A DiT (Peebles & Xie 2023) with LightningDiT's upgrades (Yao et al. 2025, "Reconstruction vs.
Generation", hustvl/LightningDiT): SwiGLU feed-forward, RMSNorm, 2D rotary embedding on q and k,
optional QK-norm, trained as a SiT-style flow model that predicts the velocity. Latents
x (B, C, H, W) are cut into p x p patches, N = (H/p)(W/p) tokens of width D:

    c      = MLP(freq(t)) + E[y]                       freq(t) = [cos(t w_k), sin(t w_k)], w_k = 10000^(-k/128), k < 128
    h_0    = PatchEmbed(x) + P_sincos                  fixed 2D sin-cos position embedding (MAE/DiT layout)
    (b1, g1, a1, b2, g2, a2) = Linear(SiLU(c))         per block, adaLN-Zero: the Linear starts at zero
    h     <- h + a1 * Attn(norm(h) * (1 + g1) + b1)    RoPE on q, k; SDPA
    h     <- h + a2 * SwiGLU(norm(h) * (1 + g2) + b2)
    (b, g) = Linear(SiLU(c));  v = Unpatchify(Linear(norm(h) * (1 + g) + b))   both Linears start at zero

``norm`` has no affine weight (the adaLN scale does that job), so a fresh model outputs exactly
zero and every block starts as the identity. t is the flow time in [0, 1], embedded as is (as SiT
and LightningDiT do: no rescaling to 0..1000). Row ``num_classes`` of the class table is the
classifier-free-guidance null class; the caller drops labels to it, the model has no randomness.

RoPE: the same frequencies (10000^(-k/(head_dim/4))) and integer row/column positions as
LightningDiT's VisionRotaryEmbeddingFast (EVA), half of each head rotating with the row and half
with the column. LightningDiT pairs channels (2i, 2i+1); this module pairs (i, i + head_dim/2) to
reuse ``vit.Attention``/``apply_rope``. The two differ by a fixed permutation of q/k channels inside
each head, which the learned qkv projection absorbs: same function class, but checkpoints of the
reference do not load as they are.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from timm.layers import PatchEmbed, RotaryEmbeddingCat, SwiGLU
from torch import Tensor, nn

from vtp_kedro.vtp.core.config import Config, from_preset
from vtp_kedro.vtp.models.vit import Attention

# DiT/SiT: the sinusoidal timestep features the MLP reads, and their longest period.
FREQ_EMBED_DIM = 256
MAX_PERIOD = 10000.0
# LightningDiT's RoPE base (EVA's "lang" frequencies over integer token positions).
ROPE_THETA = 10000.0


DIT_PRESETS: dict[str, dict] = {
    # ViT-Tiny's width and heads (head dim 64, as B and L) at depth 4: a training step on 16x8x8
    # latents at batch 64 is about 46 GFLOP (3x the forward), seconds at most on a 2-core CPU,
    # with every architectural piece of XL.
    "tiny": dict(depth=4, width=192, heads=3),
    "B": dict(depth=12, width=768, heads=12),
    "L": dict(depth=24, width=1024, heads=16),
    "XL": dict(depth=28, width=1152, heads=16),
}


class DiTArchitecture(Config):
    """What a user chooses of a LightningDiT: a size preset (``DIT_PRESETS``) or explicit width, depth
    and heads (which override a preset's), and its options. ``DiTConfig`` adds what the latents decide.

    Sizes stay as given (None: the preset's), so that overriding ``preset`` later takes its sizes."""

    preset: Literal["tiny", "B", "L", "XL"] | None = Field(None, description="width, depth and heads of DIT_PRESETS")
    width: int | None = Field(None, gt=0, description="None: the preset's")
    depth: int | None = Field(None, gt=0, description="None: the preset's")
    heads: int | None = Field(None, gt=0, description="None: the preset's")
    patch_size: int = Field(1, gt=0, description="1 for f16 latents, as VTP and LightningDiT-XL/1 use")
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    qk_norm: bool = False
    rope: bool = True
    mlp_ratio: float = Field(4.0, gt=0)

    @model_validator(mode="after")
    def _check_sizes(self) -> DiTArchitecture:
        if type(self) is DiTArchitecture:  # DiTConfig checks its own; here: when the run starts
            missing = [k for k in ("width", "depth", "heads") if getattr(self, k) is None]
            if self.preset is None and missing:
                raise ValueError(f"a DiT needs a preset or all of width, depth and heads (missing {missing})")
            self.for_latents(in_channels=1, input_size=self.patch_size, num_classes=1)
        return self

    def sizes(self) -> dict[str, int]:
        """Width, depth and heads: the preset's, overridden by those given."""
        given = {k: getattr(self, k) for k in ("width", "depth", "heads") if getattr(self, k) is not None}
        return {**(DIT_PRESETS[self.preset] if self.preset else {}), **given}

    def for_latents(self, in_channels: int, input_size: int, num_classes: int) -> DiTConfig:
        """This architecture on latents of ``in_channels`` x ``input_size`` x ``input_size`` with ``num_classes``."""
        return DiTConfig(**{**self.model_dump(), **self.sizes()}, in_channels=in_channels, input_size=input_size,
                         num_classes=num_classes)


class DiTConfig(DiTArchitecture):
    """A LightningDiT's whole config: its architecture, sizes resolved, and what the latents decide."""

    width: int = Field(gt=0)
    depth: int = Field(gt=0)
    heads: int = Field(gt=0)
    in_channels: int = Field(gt=0, description="latent channels (64 for VTP's tokenizer)")
    input_size: int = Field(gt=0, description="latent grid side (16 for 256 px at f16)")
    num_classes: int = Field(gt=0, description="real classes; one more embedding row is the CFG null class")

    @model_validator(mode="after")
    def _check_divisibility(self) -> DiTConfig:
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size ({self.input_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        if self.width % 4:
            raise ValueError(
                f"width ({self.width}) must be divisible by 4 (2D sin-cos position embedding: a sin and a cos "
                "half per axis)"
            )
        if self.rope and self.head_dim % 4:
            raise ValueError(
                f"2D RoPE needs width / heads divisible by 4 (an x and a y rotation pair per frequency); "
                f"got width={self.width}, heads={self.heads}, head dim {self.head_dim}"
            )
        if self.ffn_hidden < 1:
            raise ValueError(f"mlp_ratio ({self.mlp_ratio}) leaves the SwiGLU with no hidden units")
        return self

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def grid_size(self) -> int:
        """Tokens per side at ``input_size``."""
        return self.input_size // self.patch_size

    @property
    def ffn_hidden(self) -> int:
        """LightningDiT's SwiGLU hidden width: int(2/3 * int(width * mlp_ratio)), no rounding to a multiple.

        The 2/3 keeps SwiGLU's three matrices at the parameter count of a GELU MLP's two.
        """
        return int(2 / 3 * int(self.width * self.mlp_ratio))


def dit_config(preset: str, **overrides) -> DiTConfig:
    """The ``DiTConfig`` of a size preset; pass ``in_channels``, ``input_size`` and ``num_classes`` as overrides."""
    return from_preset(DiTConfig, DIT_PRESETS, preset, **overrides)


def dit_forward_flops(config: DiTConfig) -> int:
    """Forward FLOPs of one sample at ``input_size``: 2 * MACs of every matmul (linears, patch conv, attention).

    Norms, activations, modulation, softmax and RoPE (all O(N * width)) are left out.
    """
    n, d, hidden = config.grid_size**2, config.width, config.ffn_hidden
    patch_dim = config.in_channels * config.patch_size**2
    block_macs = (
        6 * d * d  # adaLN modulation, once per sample
        + n * 3 * d * d  # qkv
        + 2 * n * n * d  # q k^T and attn v
        + n * d * d  # attention output projection
        + n * 3 * d * hidden  # SwiGLU: gate, value, output
    )
    macs = (
        n * patch_dim * d  # patch embedding
        + FREQ_EMBED_DIM * d + d * d  # timestep MLP
        + config.depth * block_macs
        + 2 * d * d  # final adaLN
        + n * d * patch_dim  # final linear
    )
    return 2 * macs


def sincos_pos_embed_2d(width: int, grid: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """DiT/MAE fixed position embedding (h*w, width), row-major tokens.

    Channels are [sin(col w), cos(col w), sin(row w), cos(row w)], each width/4 wide with
    w_k = 10000^(-k/(width/4)) (DiT's meshgrid puts the column coordinate first).
    """
    quarter = width // 4
    omega = 1.0 / MAX_PERIOD ** (torch.arange(quarter, dtype=torch.float64, device=device) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float64, device=device),
        torch.arange(grid[1], dtype=torch.float64, device=device),
        indexing="ij",
    )
    parts = []
    for coord in (cols.reshape(-1), rows.reshape(-1)):
        angles = coord[:, None] * omega[None]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x (B, N, D) * (1 + scale) + shift, per sample (B, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _plain_norm(kind: Literal["rmsnorm", "layernorm"], width: int) -> nn.Module:
    # No affine weight: the adaLN (1 + scale) multiplies right after (DiT; LightningDiT's RMSNorm
    # keeps a weight, which the modulation Linear can absorb, so dropping it loses nothing).
    if kind == "rmsnorm":
        return nn.RMSNorm(width, eps=1e-6, elementwise_affine=False)
    return nn.LayerNorm(width, eps=1e-6, elementwise_affine=False)


class TimestepEmbedder(nn.Module):
    """t (B,) -> (B, width): 256 sinusoidal features [cos, sin] of t, then Linear-SiLU-Linear (DiT)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQ_EMBED_DIM, width), nn.SiLU(), nn.Linear(width, width))

    @staticmethod
    def frequency_embedding(t: Tensor, dim: int = FREQ_EMBED_DIM) -> Tensor:
        """(B,) -> (B, dim) float32: [cos(t w_k), sin(t w_k)], w_k = MAX_PERIOD^(-k/(dim/2))."""
        half = dim // 2
        freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([args.cos(), args.sin()], dim=-1)

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.frequency_embedding(t).to(self.mlp[0].weight.dtype))


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation by the conditioning c (B, width)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        width = config.width
        self.norm1 = _plain_norm(config.norm, width)
        self.attn = Attention(width, config.heads, qk_norm=config.qk_norm)
        self.norm2 = _plain_norm(config.norm, width)
        self.mlp = SwiGLU(width, config.ffn_hidden)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: Tensor, c: Tensor, rope: Tensor | None = None) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1), rope)
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """Modulated norm, then a Linear to the p*p*C values of each patch."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        width = config.width
        self.norm_final = _plain_norm(config.norm, width)
        self.linear = nn.Linear(width, config.patch_size**2 * config.in_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class LightningDiT(nn.Module):
    """Velocity model v(x_t, t, y): latents (B, C, H, W), flow time (B,), labels (B,) -> (B, C, H, W).

    Any H, W that are multiples of the patch size work: the sin-cos embedding and RoPE are
    functions of integer token positions, built for the actual grid.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.x_embedder = PatchEmbed(
            img_size=config.input_size,
            patch_size=config.patch_size,
            in_chans=config.in_channels,
            embed_dim=width,
            output_fmt="NHWC",
            strict_img_size=False,
        )
        self.t_embedder = TimestepEmbedder(width)
        self.y_embedder = nn.Embedding(config.num_classes + 1, width)
        # Fixed, so a buffer (LightningDiT: a frozen Parameter); other grids are built on the fly.
        side = config.grid_size
        self.register_buffer("pos_embed", sincos_pos_embed_2d(width, (side, side)), persistent=False)
        # rotate_half: the (i, i + head_dim/2) pairing vit.apply_rope expects; see the module docstring.
        self.rope = (
            RotaryEmbeddingCat(config.head_dim, temperature=ROPE_THETA, in_pixels=False, rotate_half=True)
            if config.rope
            else None
        )
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.depth))
        self.final_layer = FinalLayer(config)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's init: xavier-uniform Linears (patch conv too, as a Linear), N(0, 0.02) embeddings, adaLN-Zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        proj = self.x_embedder.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        nn.init.normal_(self.y_embedder.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # Zero gates make every block the identity and the zero output layer makes v = 0 at the
        # start, so early training only has to learn corrections (DiT's adaLN-Zero).
        zero_init = [block.adaLN_modulation[-1] for block in self.blocks]
        zero_init += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for linear in zero_init:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    @property
    def null_class(self) -> int:
        """The label that selects the unconditional (CFG) embedding."""
        return self.config.num_classes

    def flops_per_sample(self) -> int:
        """Forward FLOPs of one sample at ``config.input_size`` (``dit_forward_flops``)."""
        return dit_forward_flops(self.config)

    def _check_inputs(self, x: Tensor, t: Tensor, y: Tensor) -> tuple[int, int]:
        c, p = self.config.in_channels, self.config.patch_size
        if x.ndim != 4 or x.shape[1] != c:
            raise ValueError(f"latents must have shape (B, {c}, H, W); got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height % p or width % p:
            raise ValueError(f"latent size {height}x{width} is not a multiple of the patch size {p}")
        batch = x.shape[0]
        if t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},) (one flow time per sample); got {tuple(t.shape)}")
        if y.shape != (batch,) or y.is_floating_point():
            raise ValueError(f"y must be integer labels of shape ({batch},); got {y.dtype} {tuple(y.shape)}")
        return height // p, width // p

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """The (h*w, width) sin-cos table of a token grid, cached for the ``input_size`` grid."""
        side = self.config.grid_size
        if grid == (side, side):
            return self.pos_embed
        return sincos_pos_embed_2d(self.config.width, grid, device=self.pos_embed.device)

    def unpatchify(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, h*w, p*p*C) -> (B, C, h*p, w*p); each token's values are ordered (row in patch, column, channel)."""
        p, c = self.config.patch_size, self.config.in_channels
        h, w = grid
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """x (B, C, H, W) noisy latents; t (B,) flow time in [0, 1]; y (B,) labels, ``null_class`` for none."""
        grid = self._check_inputs(x, t, y)
        tokens = self.x_embedder(x).flatten(1, 2)
        tokens = tokens + self.position_embedding(grid).to(tokens.dtype)
        c = self.t_embedder(t) + self.y_embedder(y)
        rope = self.rope.get_embed(grid) if self.rope is not None else None
        for block in self.blocks:
            tokens = block(tokens, c, rope)
        return self.unpatchify(self.final_layer(tokens, c), grid)
