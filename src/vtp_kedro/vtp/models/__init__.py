"""VTP tokenizer models: ViT trunk, bottleneck and pixel decoder, text tower, heads, EMA teacher."""

from vtp_kedro.vtp.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize, tokenize
from vtp_kedro.vtp.models.ema import cosine_momentum, ema_update, make_teacher
from vtp_kedro.vtp.models.heads import CLIPProjection, DINOHead, LogitScale
from vtp_kedro.vtp.models.text import TEXT_PRESETS, TextConfig, TextEncoder, text_config
from vtp_kedro.vtp.models.tokenizer import PixelDecoder, TokenizerConfig, TokenizerFeatures, VisualTokenizer
from vtp_kedro.vtp.models.vit import (
    VIT_PRESETS,
    Attention,
    Block,
    VisionTransformer,
    ViTConfig,
    apply_rope,
    axial_rope,
    vit_config,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TEXT_PRESETS",
    "VIT_PRESETS",
    "Attention",
    "Block",
    "CLIPProjection",
    "DINOHead",
    "LogitScale",
    "PixelDecoder",
    "TextConfig",
    "TextEncoder",
    "TokenizerConfig",
    "TokenizerFeatures",
    "ViTConfig",
    "VisionTransformer",
    "VisualTokenizer",
    "apply_rope",
    "axial_rope",
    "cosine_momentum",
    "denormalize",
    "ema_update",
    "make_teacher",
    "normalize",
    "text_config",
    "tokenize",
    "vit_config",
]
