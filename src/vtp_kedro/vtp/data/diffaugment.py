"""DiffAugment (Zhao et al. 2020): random, differentiable augmentation of every image the discriminator sees.

Real and generated images go through the same kind of augmentation (each call draws its own random numbers),
so the discriminator cannot overfit a small data set, and because the augmentation is differentiable the
generator's gradient passes through it and the generator never learns to produce augmented images.

A policy is a comma-separated list of these, applied in order, with one random draw per image and op:

    color:        x <- x + b                                  b ~ U(-0.5, 0.5)      (brightness)
                  x <- (x - mean_c x) * s + mean_c x          s ~ U(0, 2)           (saturation; mean over channels)
                  x <- (x - mean_chw x) * k + mean_chw x      k ~ U(0.5, 1.5)       (contrast; mean over the image)
    translation:  x[i, j] <- x[i + dy, j + dx], 0 outside     dy ~ U{-r_h..r_h}, r_h = round(H / 8) (same for x)
    cutout:       x <- 0 on a round(H/2) x round(W/2) rectangle at a uniform position, clipped at the border

As mit-han-lab/data-efficient-gans' DiffAugment_pytorch.py, which works on [-1, 1] images. Our images are
ImageNet-normalised (timm's mean/std), so they are mapped to [-1, 1], augmented exactly as there, and mapped
back: brightness +-0.5 is a quarter of the range and the 0 fill of translation and cutout is mid-grey, as in
the reference. All random numbers come from the given ``torch.Generator`` (on its device, CPU by default)
and are moved to the images' device, so one seed gives one augmentation on any device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor

TRANSLATION_RATIO = 1 / 8
CUTOUT_RATIO = 1 / 2


def _uniform(images: Tensor, generator: torch.Generator, low: float, high: float) -> Tensor:
    """One U(low, high) draw per image, shaped (B, 1, 1, 1) for broadcasting."""
    draw = torch.rand(images.shape[0], 1, 1, 1, generator=generator, device=generator.device)
    return (draw * (high - low) + low).to(device=images.device, dtype=images.dtype)


def _randint(images: Tensor, generator: torch.Generator, low: int, high: int) -> Tensor:
    """One integer in [low, high) per image, shaped (B, 1)."""
    draw = torch.randint(low, high, (images.shape[0], 1), generator=generator, device=generator.device)
    return draw.to(images.device)


def brightness(x: Tensor, generator: torch.Generator) -> Tensor:
    return x + _uniform(x, generator, -0.5, 0.5)


def saturation(x: Tensor, generator: torch.Generator) -> Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * _uniform(x, generator, 0.0, 2.0) + mean


def contrast(x: Tensor, generator: torch.Generator) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _uniform(x, generator, 0.5, 1.5) + mean


def translation(x: Tensor, generator: torch.Generator, ratio: float = TRANSLATION_RATIO) -> Tensor:
    batch, _, height, width = x.shape
    shift_h, shift_w = int(height * ratio + 0.5), int(width * ratio + 0.5)
    dy = _randint(x, generator, -shift_h, shift_h + 1)
    dx = _randint(x, generator, -shift_w, shift_w + 1)
    # Indices into the image padded by one zero pixel; anything shifted in from outside reads the padding.
    rows = (torch.arange(height, device=x.device) + dy + 1).clamp(0, height + 1)
    cols = (torch.arange(width, device=x.device) + dx + 1).clamp(0, width + 1)
    padded = F.pad(x, (1, 1, 1, 1))
    index = torch.arange(batch, device=x.device)[:, None, None]
    return padded[index, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def cutout(x: Tensor, generator: torch.Generator, ratio: float = CUTOUT_RATIO) -> Tensor:
    _, _, height, width = x.shape
    size_h, size_w = int(height * ratio + 0.5), int(width * ratio + 0.5)
    # The reference's centre range: an even-sized rectangle may also start one past the last pixel.
    top = _randint(x, generator, 0, height + (1 - size_h % 2)) - size_h // 2
    left = _randint(x, generator, 0, width + (1 - size_w % 2)) - size_w // 2
    rows = torch.arange(height, device=x.device)
    cols = torch.arange(width, device=x.device)
    inside_rows = (rows >= top) & (rows < top + size_h)
    inside_cols = (cols >= left) & (cols < left + size_w)
    keep = ~(inside_rows[:, :, None] & inside_cols[:, None, :])
    return x * keep.unsqueeze(1).to(x.dtype)


AUGMENTATIONS: dict[str, tuple[Callable[[Tensor, torch.Generator], Tensor], ...]] = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}
DIFF_AUGMENT_POLICIES: tuple[str, ...] = tuple(AUGMENTATIONS)


def parse_policy(policy: str | None) -> tuple[str, ...]:
    """``"color,translation"`` -> ``("color", "translation")``; None or "" -> () (no augmentation)."""
    if not policy:
        return ()
    names = tuple(name.strip() for name in policy.split(","))
    for name in names:
        if name not in AUGMENTATIONS:
            raise ValueError(
                f"unknown DiffAugment policy {name!r} in {policy!r}; choose a comma-separated list of "
                f"{', '.join(DIFF_AUGMENT_POLICIES)}"
            )
    return names


def diff_augment(images: Tensor, policy: str | None, generator: torch.Generator) -> Tensor:
    """Augment ImageNet-normalised images (B, 3, H, W) by ``policy`` (module docstring); differentiable.

    Returns ``images`` itself when the policy is None or "".
    """
    names = parse_policy(policy)
    if not names:
        return images
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W); got {tuple(images.shape)}")
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    x = (images * std + mean) * 2 - 1
    for name in names:
        for augment in AUGMENTATIONS[name]:
            x = augment(x, generator)
    return (((x + 1) / 2 - mean) / std).contiguous()
