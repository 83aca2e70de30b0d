"""Analytic FLOPs of one VTP training step, for FLOPs budgets and the scaling plots (paper Figs. 4-6).

Only matrix products are counted (linear layers, convolutions, attention's QK^T and AV), as
``torch.utils.flop_counter.FlopCounterMode`` does; a multiply-add is 2 FLOPs. A layer's
backward costs twice its forward (input and weight gradients), its weight gradient alone
once (the first layer, whose input needs no gradient), its input gradient alone once (the
frozen LPIPS network on the reconstruction), and nothing when it runs under no_grad (the
EMA teacher, LPIPS on the target). The iBOT masked-token count is its expectation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtp_kedro.vtp.models.text import TextConfig
from vtp_kedro.vtp.models.vit import ViTConfig

if TYPE_CHECKING:  # the stage imports this module to count its steps
    from vtp_kedro.vtp.stages.tokenizer_pretraining import VTPConfig

# LPIPS' VGG16 convolutions up to relu5_3: (in, out) channels per 3x3 conv, per resolution stage.
_VGG16_STAGES = (
    ((3, 64), (64, 64)),
    ((64, 128), (128, 128)),
    ((128, 256), (256, 256), (256, 256)),
    ((256, 512), (512, 512), (512, 512)),
    ((512, 512), (512, 512), (512, 512)),
)


def ffn_flops(tokens: int, width: int, mlp_ratio: float, ffn: str) -> float:
    hidden = int(width * mlp_ratio)
    if ffn == "mlp":
        return 2 * tokens * 2 * width * hidden
    hidden = int(hidden * 2 / 3)
    hidden = (hidden + 7) // 8 * 8  # timm SwiGLU's align_to=8
    return 2 * tokens * 3 * width * hidden


def transformer_flops(sequences: int, tokens: int, width: int, depth: int, mlp_ratio: float, ffn: str) -> float:
    """Forward FLOPs of ``depth`` pre-norm blocks over ``sequences`` sequences of ``tokens`` tokens."""
    n = sequences * tokens
    attention_projections = 2 * n * 4 * width * width  # qkv (3 w^2) and output (w^2)
    attention_scores = sequences * 4 * tokens * tokens * width  # QK^T and AV
    return depth * (attention_projections + attention_scores + ffn_flops(n, width, mlp_ratio, ffn))


def vit_flops(config: ViTConfig, images: int, size: int) -> tuple[float, float]:
    """(patch embedding, blocks) forward FLOPs of the encoder on ``images`` images of ``size`` px."""
    patches = (size // config.patch_size) ** 2
    embed = 2 * images * patches * 3 * config.patch_size**2 * config.width
    blocks = transformer_flops(images, patches + 1, config.width, config.depth, config.mlp_ratio, config.ffn)
    return embed, blocks


def text_flops(config: TextConfig, embed_dim: int, captions: int) -> float:
    """Forward FLOPs of open_clip's text transformer (GELU MLP, ratio 4) and its projection."""
    blocks = transformer_flops(captions, config.context_length, config.width, config.layers, 4.0, "mlp")
    return blocks + 2 * captions * config.width * embed_dim


def vgg16_flops(images: int, size: int) -> float:
    flops, side = 0.0, size
    for stage in _VGG16_STAGES:
        flops += sum(2 * images * side * side * 9 * c_in * c_out for c_in, c_out in stage)
        side //= 2
    return flops


def training_step_flops(config: VTPConfig, batch_size: int, image_size: int) -> dict[str, float]:
    """Forward+backward FLOPs of ``VTPModel.training_step`` on a batch, per part and in total."""
    lambda_rec, lambda_ssl, lambda_clip = config.lambdas
    enc, tok = config.tokenizer.encoder, config.tokenizer
    trunk_dim = enc.width
    semantic_dim = trunk_dim if config.semantic_features == "trunk" else tok.latent_dim
    grid = (image_size // enc.patch_size) ** 2
    parts: dict[str, float] = {}

    semantic_bottleneck = config.semantic_features == "bottleneck"

    def encoder_train(images: int, size: int, bottleneck: bool) -> float:
        embed, blocks = vit_flops(enc, images, size)
        tokens = images * ((size // enc.patch_size) ** 2 + 1)
        latent = 2 * tokens * trunk_dim * tok.latent_dim if bottleneck else 0
        return 2 * embed + 3 * (blocks + latent)  # patch embedding: forward + weight gradient

    b_rec = max(1, round(config.rec_fraction * batch_size))
    if lambda_clip > 0:
        # One encoder pass (bottleneck included) serves CLIP and the reconstruction's latents.
        parts["clip"] = (
            encoder_train(batch_size, image_size, bottleneck=True)
            + 3 * 2 * batch_size * semantic_dim * config.embed_dim
            + 3 * text_flops(config.text, config.embed_dim, batch_size)
        )
        rec_encoder = 0.0
    else:
        rec_encoder = encoder_train(b_rec, image_size, bottleneck=True)
    decoder = (
        2 * b_rec * grid * tok.latent_dim * tok.decoder_width
        + transformer_flops(b_rec, grid, tok.decoder_width, tok.decoder_depth, enc.mlp_ratio, enc.ffn)
        + 2 * b_rec * grid * tok.decoder_width * 3 * enc.patch_size**2
    )
    perceptual = 0.0
    if config.reconstruction.perceptual_weight > 0:
        # VGG forward on reconstruction and target, input gradient on the reconstruction.
        perceptual = 3 * vgg16_flops(b_rec, image_size)
    parts["reconstruction"] = rec_encoder + 3 * decoder + perceptual

    if lambda_ssl > 0:
        crops, head = config.multicrop, config.dino_head
        b_ssl = max(2, round(config.ssl_fraction * batch_size))
        n_global = b_ssl * crops.global_crops
        n_local = b_ssl * crops.local_crops
        global_grid = (crops.global_size // enc.patch_size) ** 2
        low, high = config.masking.ratio_range
        masked_tokens = n_global * config.masking.probability * (low + high) / 2 * global_grid

        def head_flops(rows: float) -> float:
            return 2 * rows * (semantic_dim * head.hidden_dim + head.hidden_dim**2
                               + head.hidden_dim * head.bottleneck_dim + head.bottleneck_dim * head.prototypes)

        embed_g, blocks_g = vit_flops(enc, n_global, crops.global_size)
        global_bottleneck = 2 * n_global * (global_grid + 1) * trunk_dim * tok.latent_dim * semantic_bottleneck
        teacher = embed_g + blocks_g + global_bottleneck + head_flops(n_global + masked_tokens)
        student = (encoder_train(n_global, crops.global_size, semantic_bottleneck)
                   + (encoder_train(n_local, crops.local_size, semantic_bottleneck) if n_local else 0)
                   + 3 * head_flops(n_global + n_local + masked_tokens))
        parts["ssl"] = teacher + student
    parts["total"] = sum(parts.values())
    return parts
