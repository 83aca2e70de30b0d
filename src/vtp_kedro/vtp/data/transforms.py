"""SSL views built on the training device: DINO multi-crop, iBOT block masks, sub-batch sampling.

The data loader ships one normalised image per sample; the SSL views of the sampled SSL
sub-batch are made here, batched on the device, with every random choice drawn from an
explicit ``torch.Generator``. A CPU generator is best: the random parameters are then
drawn without waiting on the device, and are the same whatever the device type.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor
from torchvision.ops import roi_align

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.data.preprocess import IMAGENET_MEAN, IMAGENET_STD


def _check_range(name: str, value: tuple[float, float], low: float, high: float) -> None:
    if not low < value[0] <= value[1] <= high:
        raise ValueError(f"{name} must satisfy {low} < min <= max <= {high}, got {value}")


class MultiCropConfig(Config):
    """Multi-crop augmentation settings: DINOv2's defaults, except 6 local crops (DINOv2: 8)."""

    global_crops: int = Field(2, ge=1)
    global_size: int = Field(224, gt=0)
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_crops: int = Field(6, ge=0, description="e.g. 6 at paper scale, 2 for small runs")
    local_size: int = Field(96, gt=0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = Field(0.5, ge=0.0, le=1.0)
    color_jitter_probability: float = Field(0.8, ge=0.0, le=1.0)
    brightness: float = Field(0.4, ge=0.0)
    contrast: float = Field(0.4, ge=0.0)
    saturation: float = Field(0.2, ge=0.0)
    hue: float = Field(0.1, ge=0.0, le=0.5)
    grayscale_probability: float = Field(0.2, ge=0.0, le=1.0)
    blur_kernel_size: int = Field(9, gt=0)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    global_blur_probabilities: tuple[float, ...] = (1.0, 0.1)
    local_blur_probability: float = Field(0.5, ge=0.0, le=1.0)
    global_solarize_probabilities: tuple[float, ...] = (0.0, 0.2)

    @model_validator(mode="after")
    def _check(self) -> MultiCropConfig:
        _check_range("global_scale", self.global_scale, 0.0, 1.0)
        _check_range("local_scale", self.local_scale, 0.0, 1.0)
        _check_range("crop_ratio", self.crop_ratio, 0.0, math.inf)
        _check_range("blur_sigma", self.blur_sigma, 0.0, math.inf)
        if self.blur_kernel_size % 2 == 0:
            raise ValueError(f"blur_kernel_size must be odd, got {self.blur_kernel_size}")
        for name in ("global_blur_probabilities", "global_solarize_probabilities"):
            values = getattr(self, name)
            if len(values) != self.global_crops or not all(0 <= p <= 1 for p in values):
                raise ValueError(f"{name} needs one probability in [0, 1] per global crop "
                                 f"(global_crops={self.global_crops}), got {values}")
        return self


def _uniform(generator: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=generator.device)


def _bernoulli(generator: torch.Generator, batch: int, probability: float) -> Tensor:
    return torch.rand(batch, generator=generator, device=generator.device) < probability


def random_resized_boxes(batch: int, height: int, width: int, scale: tuple[float, float],
                         ratio: tuple[float, float], generator: torch.Generator, attempts: int = 10) -> Tensor:
    """Crop boxes ``(x1, y1, x2, y2)`` in pixels (B, 4), drawn as torchvision's RandomResizedCrop does.

    Each image tries ``attempts`` (area fraction, log-uniform aspect ratio) draws and keeps the
    first that fits; an image with none falls back to the largest central crop within ``ratio``.
    """
    area = height * width
    target_area = area * _uniform(generator, (batch, attempts), *scale)
    aspect = torch.exp(_uniform(generator, (batch, attempts), math.log(ratio[0]), math.log(ratio[1])))
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)
    w, h, found = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1), fits.any(dim=1)

    if width / height < ratio[0]:
        fallback_w, fallback_h = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        fallback_w, fallback_h = round(height * ratio[1]), height
    else:
        fallback_w, fallback_h = width, height
    w = torch.where(found, w, torch.full_like(w, fallback_w))
    h = torch.where(found, h, torch.full_like(h, fallback_h))
    top = torch.where(found, torch.floor(_uniform(generator, (batch,), 0, 1) * (height - h + 1)),
                      torch.div(height - h, 2, rounding_mode="floor"))
    left = torch.where(found, torch.floor(_uniform(generator, (batch,), 0, 1) * (width - w + 1)),
                       torch.div(width - w, 2, rounding_mode="floor"))
    return torch.stack([left, top, left + w, top + h], dim=1)


def resized_crops(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Crop box ``boxes[b]`` of ``images[b]`` and resize it to (size, size), for the whole batch at once.

    ``roi_align`` does it in one batched kernel (no per-image Python loop, crops of any size
    in one call). It samples bilinearly and averages ceil(box / size) samples per output pixel,
    so downscaling is anti-aliased by a box filter (DINOv2 resizes PIL crops bicubically).
    """
    indexed = torch.cat([torch.arange(len(boxes), dtype=boxes.dtype, device=boxes.device)[:, None], boxes], dim=1)
    return roi_align(images, indexed.to(images), output_size=(size, size), spatial_scale=1.0,
                     sampling_ratio=-1, aligned=True)


# Per-image colour operations on [0, 1] images (B, 3, H, W) with per-image factors (B,).
# Written by hand because torchvision's colour functions take a single factor per call;
# they follow torchvision.transforms.functional (tests compare against it image by image).
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def grayscale(images: Tensor) -> Tensor:
    """ITU-R 601 luma, (B, 1, H, W), as torchvision's rgb_to_grayscale."""
    weights = images.new_tensor(_GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    factor = factor.view(-1, 1, 1, 1)
    return (factor * images + (1 - factor) * other).clamp(0, 1)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    return _blend(images, torch.zeros_like(images), factor)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    return _blend(images, grayscale(images).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    return _blend(images, grayscale(images), factor)


def adjust_hue(images: Tensor, factor: Tensor) -> Tensor:
    """Rotate the HSV hue by ``factor`` (a fraction of a turn, in [-0.5, 0.5])."""
    r, g, b = images.unbind(dim=1)
    value, argmax = images.max(dim=1)
    chroma = value - images.min(dim=1).values
    safe_chroma = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    saturation = chroma / torch.where(value > 0, value, torch.ones_like(value))
    hue = torch.where(argmax == 0, (g - b) / safe_chroma,
                      torch.where(argmax == 1, 2 + (b - r) / safe_chroma, 4 + (r - g) / safe_chroma))
    hue = torch.where(chroma > 0, hue / 6, torch.zeros_like(hue))
    hue = torch.remainder(hue + factor.view(-1, 1, 1), 1.0)
    # HSV -> RGB: channel n = v - v*s*clamp(min(k, 4 - k), 0, 1) with k = (n + 6h) mod 6, n = 5, 3, 1.
    k = torch.remainder(torch.stack([hue * 6 + 5, hue * 6 + 3, hue * 6 + 1], dim=1), 6)
    ramp = torch.minimum(k, 4 - k).clamp(0, 1)
    return (value.unsqueeze(1) * (1 - saturation.unsqueeze(1) * ramp)).clamp(0, 1)


def gaussian_blur(images: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur with a per-image sigma and reflect padding, as torchvision's."""
    batch, channels, height, width = images.shape
    half = kernel_size // 2
    x = torch.arange(-half, half + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x[None] / sigma.to(images)[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    flat = F.pad(images.reshape(1, batch * channels, height, width), [half] * 4, mode="reflect")
    flat = F.conv2d(flat, kernel.view(-1, 1, 1, kernel_size), groups=batch * channels)
    flat = F.conv2d(flat, kernel.view(-1, 1, kernel_size, 1), groups=batch * channels)
    return flat.view(batch, channels, height, width)


def solarize(images: Tensor, threshold: float = 128 / 255) -> Tensor:
    """Invert pixels at or above ``threshold`` (DINO's 128 on uint8 images)."""
    return torch.where(images >= threshold, 1 - images, images)


class MultiCrop:
    """DINOv2's multi-crop augmentation, batched: ``G`` global and ``N`` local views of every image.

    Each view: random resized crop, horizontal flip, colour jitter (brightness, contrast,
    saturation, hue in a random order per image, with probability 0.8), grayscale, Gaussian
    blur (per-view probability), solarize (second global view). Called as
    ``multi_crop(images, generator) -> (global_crops, local_crops)``, lists of (B, 3, S, S)
    ImageNet-normalised tensors, from ImageNet-normalised (B, 3, H, W) images.
    """

    def __init__(self, config: MultiCropConfig) -> None:
        self.config = config

    @torch.compiler.disable  # random per-batch augmentation from a CPU generator: nothing to fuse, endless recompiles
    def __call__(self, images: Tensor, generator: torch.Generator) -> tuple[list[Tensor], list[Tensor]]:
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"expected float images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        cfg = self.config
        mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
        pixels = (images.float() * std + mean).clamp(0, 1)  # colour ops in float32, on [0, 1] pixels
        # Under the trainer's bf16 autocast the blur's conv2d would return bf16 into float32 crops
        # (an index_put of mismatched dtypes): the augmentation stays in float32 throughout.
        with torch.autocast(images.device.type, enabled=False):
            global_crops = [
                self.view(pixels, cfg.global_size, cfg.global_scale, blur, solarize_p, generator)
                for blur, solarize_p in zip(cfg.global_blur_probabilities, cfg.global_solarize_probabilities)
            ]
            local_crops = [
                self.view(pixels, cfg.local_size, cfg.local_scale, cfg.local_blur_probability, 0.0, generator)
                for _ in range(cfg.local_crops)
            ]
        def renormalise(crop: Tensor) -> Tensor:
            return ((crop - mean) / std).to(images.dtype)

        return [renormalise(c) for c in global_crops], [renormalise(c) for c in local_crops]

    def view(self, pixels: Tensor, size: int, scale: tuple[float, float], blur_probability: float,
             solarize_probability: float, generator: torch.Generator) -> Tensor:
        """One augmented view of [0, 1] images, in [0, 1]."""
        cfg = self.config
        batch, _, height, width = pixels.shape
        boxes = random_resized_boxes(batch, height, width, scale, cfg.crop_ratio, generator)
        crops = resized_crops(pixels, boxes.to(pixels.device), size)
        flip = _bernoulli(generator, batch, cfg.flip_probability).to(pixels.device)
        crops = torch.where(flip.view(-1, 1, 1, 1), crops.flip(-1), crops)
        crops = self.color_jitter(crops, generator)
        gray = _bernoulli(generator, batch, cfg.grayscale_probability).to(pixels.device)
        crops = torch.where(gray.view(-1, 1, 1, 1), grayscale(crops).expand_as(crops), crops)
        blur = _bernoulli(generator, batch, blur_probability)
        sigma = _uniform(generator, (batch,), *cfg.blur_sigma)
        if blur.any():
            index = blur.nonzero().squeeze(1).to(pixels.device)
            crops[index] = gaussian_blur(crops[index], sigma[blur].to(pixels.device), cfg.blur_kernel_size)
        solarized = _bernoulli(generator, batch, solarize_probability).to(pixels.device)
        return torch.where(solarized.view(-1, 1, 1, 1), solarize(crops), crops)

    def color_jitter(self, crops: Tensor, generator: torch.Generator) -> Tensor:
        """torchvision's ColorJitter with its factor ranges, per image, applied with probability p."""
        cfg = self.config
        batch = len(crops)
        jitter = _bernoulli(generator, batch, cfg.color_jitter_probability)
        operations = [
            (adjust_brightness, _uniform(generator, (batch,), max(0.0, 1 - cfg.brightness), 1 + cfg.brightness),
             cfg.brightness > 0),
            (adjust_contrast, _uniform(generator, (batch,), max(0.0, 1 - cfg.contrast), 1 + cfg.contrast),
             cfg.contrast > 0),
            (adjust_saturation, _uniform(generator, (batch,), max(0.0, 1 - cfg.saturation), 1 + cfg.saturation),
             cfg.saturation > 0),
            (adjust_hue, _uniform(generator, (batch,), -cfg.hue, cfg.hue), cfg.hue > 0),
        ]
        order = torch.rand((batch, len(operations)), generator=generator, device=generator.device).argsort(dim=1)
        crops = crops.clone()
        for position in range(len(operations)):
            for op_index, (operation, factors, enabled) in enumerate(operations):
                selected = jitter & (order[:, position] == op_index)
                if enabled and selected.any():
                    index = selected.nonzero().squeeze(1).to(crops.device)
                    crops[index] = operation(crops[index], factors[selected].to(crops.device))
        return crops


def _add_block(mask: np.ndarray, max_patches: int, min_block_patches: int,
               log_aspect: tuple[float, float], rng: np.random.Generator) -> int:
    """Try up to 10 random rectangles; set the first that adds 1..max_patches new patches."""
    height, width = mask.shape
    for _ in range(10):
        # As Python's random.uniform in DINOv2: the bounds may be reversed near the end of a mask.
        target_area = min_block_patches + (max_patches - min_block_patches) * rng.random()
        aspect = math.exp(rng.uniform(*log_aspect))
        block_h = int(round(math.sqrt(target_area * aspect)))
        block_w = int(round(math.sqrt(target_area / aspect)))
        if block_w < width and block_h < height:
            top = int(rng.integers(0, height - block_h, endpoint=True))
            left = int(rng.integers(0, width - block_w, endpoint=True))
            block = mask[top:top + block_h, left:left + block_w]
            added = block_h * block_w - int(block.sum())
            if 0 < added <= max_patches:
                block[...] = True
                return added
    return 0


def block_mask(grid_hw: tuple[int, int], n_patches: int, rng: np.random.Generator, *,
               min_block_patches: int = 4, min_aspect: float = 0.3, max_block_patches: int | None = None) -> np.ndarray:
    """DINOv2's MaskingGenerator: rectangles of log-uniform aspect until ``n_patches`` are masked.

    Stops early (a little under target) when no rectangle that fits can be added.
    """
    mask = np.zeros(grid_hw, dtype=bool)
    max_block = max_block_patches if max_block_patches is not None else int(0.5 * grid_hw[0] * grid_hw[1])
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    count = 0
    while count < n_patches:
        added = _add_block(mask, min(n_patches - count, max_block), min_block_patches, log_aspect, rng)
        if added == 0:
            break
        count += added
    return mask


def block_masks(batch_size: int, grid_hw: tuple[int, int], *, generator: torch.Generator,
                mask_ratio_range: tuple[float, float] = (0.1, 0.5), mask_probability: float = 0.5,
                min_block_patches: int = 4, min_aspect: float = 0.3) -> Tensor:
    """iBOT masks for the student's global crops as DINOv2's collate: (B, h*w) bool, on the CPU.

    ``int(B * mask_probability)`` images get masks; their target ratios are spread over
    ``mask_ratio_range`` (image i draws from the i-th of equal sub-intervals), then the
    images are shuffled. Per-token loss weights: ``mask_weights``.
    """
    if not 0 <= mask_ratio_range[0] <= mask_ratio_range[1] <= 1:
        raise ValueError(f"mask_ratio_range must satisfy 0 <= min <= max <= 1, got {mask_ratio_range}")
    if not 0 <= mask_probability <= 1:
        raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability}")
    if batch_size < 0 or min(grid_hw) < 1:
        raise ValueError(f"need batch_size >= 0 and a grid of at least 1x1, got {batch_size}, {grid_hw}")
    # numpy draws are much cheaper than torch scalars in this per-rectangle loop; seeded from ``generator``.
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=generator)))
    n_tokens = grid_hw[0] * grid_hw[1]
    n_masked_images = int(batch_size * mask_probability)
    bounds = np.linspace(*mask_ratio_range, n_masked_images + 1)
    masks = np.zeros((batch_size, *grid_hw), dtype=bool)
    for i in range(n_masked_images):
        target = int(n_tokens * rng.uniform(bounds[i], bounds[i + 1]))
        masks[i] = block_mask(grid_hw, target, rng, min_block_patches=min_block_patches, min_aspect=min_aspect)
    masks = masks[rng.permutation(batch_size)]
    return torch.from_numpy(masks.reshape(batch_size, n_tokens))


def mask_weights(masks: Tensor) -> Tensor:
    """Loss weight 1 / (masked tokens of its image) for each masked token, in ``masks[masks]`` order."""
    per_image = 1.0 / masks.sum(dim=-1).clamp(min=1).float()
    return per_image.unsqueeze(-1).expand_as(masks)[masks]


def _subset_size(batch_size: int, fraction: float, minimum: int, name: str) -> int:
    if not 0 <= fraction <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {fraction}")
    if fraction == 0:
        return 0
    size = max(minimum, round(fraction * batch_size))
    if size > batch_size:
        raise ValueError(f"{name}={fraction} needs at least {minimum} samples, but the batch holds {batch_size}")
    return size


def sample_subsets(batch_size: int, ssl_fraction: float, rec_fraction: float,
                   generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Sorted random indices of the SSL and reconstruction sub-batches (CLIP uses the whole batch).

    Each subset is drawn without replacement, independently (they may overlap), of size
    ``round(fraction * B)`` but at least 2 for SSL (KoLeo needs a neighbour) and 1 for
    reconstruction; a fraction of 0 gives an empty index: that objective is skipped.
    """
    n_ssl = _subset_size(batch_size, ssl_fraction, 2, "ssl_fraction")
    n_rec = _subset_size(batch_size, rec_fraction, 1, "rec_fraction")
    ssl = torch.randperm(batch_size, generator=generator, device=generator.device)[:n_ssl]
    rec = torch.randperm(batch_size, generator=generator, device=generator.device)[:n_rec]
    return ssl.sort().values, rec.sort().values
