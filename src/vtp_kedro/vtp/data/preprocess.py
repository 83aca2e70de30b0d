"""What every image and caption goes through before a model sees it: the lowest floor of the library.

Images: ``normalize`` maps [0, 1] pixels to ImageNet-normalised ``(x - mean) / std`` per
channel (the tokenizer's input and output space); ``denormalize`` maps back, clamped.
Captions: ``tokenize`` turns them into open_clip's BPE ids (vocabulary bundled in its wheel).
Data readers and models both import from here, so the data never imports the models.
"""

from __future__ import annotations

import torch
from open_clip.tokenizer import tokenize as _bpe_tokenize
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor

IMAGENET_MEAN: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
IMAGENET_STD: tuple[float, float, float] = IMAGENET_DEFAULT_STD


def _channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    if x.ndim < 3 or x.shape[-3] != 3:
        raise ValueError(f"expected RGB images shaped (..., 3, H, W); got {tuple(x.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(3, 1, 1)
    return mean, std


def normalize(images01: Tensor) -> Tensor:
    """Images in [0, 1] -> ImageNet-normalised ``(x - mean) / std`` per channel."""
    mean, std = _channel_stats(images01)
    return (images01 - mean) / std


def denormalize(x: Tensor) -> Tensor:
    """ImageNet-normalised images -> [0, 1], clamped (for saving and pixel metrics)."""
    mean, std = _channel_stats(x)
    return (x * std + mean).clamp(0.0, 1.0)


def tokenize(captions: list[str], context_length: int = 77) -> Tensor:
    """Captions -> BPE token ids (len(captions), context_length), long; too-long captions are truncated, ending in EOT."""
    if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
        raise TypeError(f"captions must be a list of str; got {type(captions).__name__}")
    return _bpe_tokenize(list(captions), context_length=context_length)
