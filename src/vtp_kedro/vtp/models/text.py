"""The text tower for VTP's image-text contrastive loss: open_clip's TextTransformer, from scratch.

Causal transformer over 77 BPE tokens, final LayerNorm, pooled at the end-of-text token
(the highest token id, hence argmax pooling), projected to the joint embedding size. The
tokenizer is open_clip's bundled BPE vocabulary (49408 tokens), read from the installed
wheel: nothing is downloaded.
"""

from __future__ import annotations

from open_clip.transformer import TextTransformer
from pydantic import Field
from torch import Tensor, nn

from vtp_kedro.vtp.core.config import Config, from_preset

BPE_VOCAB_SIZE = 49408  # open_clip's bundled bpe_simple_vocab_16e6 plus <start_of_text>, <end_of_text>


class TextConfig(Config):
    """Size of the text transformer; ``TEXT_PRESETS`` holds the named sizes."""

    width: int = Field(768, gt=0)
    heads: int = Field(12, gt=0)
    layers: int = Field(12, gt=0)
    context_length: int = Field(77, ge=2, description="tokens per caption, start and end tokens included")
    vocab_size: int = Field(BPE_VOCAB_SIZE, ge=BPE_VOCAB_SIZE, description="at least the bundled BPE vocabulary")


TEXT_PRESETS: dict[str, dict] = {
    # Small enough for CPU tests and the tiny tokenizer; the 49408 x 256 token table dominates its size.
    "tiny": dict(width=256, heads=4, layers=4),
    "paper": dict(width=768, heads=12, layers=12),
}


def text_config(preset: str, **overrides) -> TextConfig:
    """The ``TextConfig`` of a named preset, with any field overridden."""
    return from_preset(TextConfig, TEXT_PRESETS, preset, **overrides)


class TextEncoder(nn.Module):
    """Token ids (B, context_length) -> text embeddings (B, embed_dim), not normalised."""

    def __init__(self, config: TextConfig, embed_dim: int) -> None:
        super().__init__()
        if config.width % config.heads:
            raise ValueError(f"text width ({config.width}) must be divisible by heads ({config.heads})")
        self.config = config
        self.transformer = TextTransformer(
            context_length=config.context_length,
            vocab_size=config.vocab_size,
            width=config.width,
            heads=config.heads,
            layers=config.layers,
            output_dim=embed_dim,
            pool_type="argmax",
        )

    def forward(self, tokens: Tensor) -> Tensor:
        expected = self.config.context_length
        if tokens.ndim != 2 or tokens.shape[1] != expected or tokens.dtype.is_floating_point:
            raise ValueError(
                f"tokens must be integer ids of shape (B, {expected}) from tokenize(); "
                f"got {tokens.dtype} {tuple(tokens.shape)}"
            )
        return self.transformer(tokens)
