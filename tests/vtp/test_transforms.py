"""Batched multi-crop, iBOT block masks and sub-batch sampling: shapes, determinism, known values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from vtp_kedro.vtp.data.transforms import (
    MultiCrop,
    MultiCropConfig,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    block_masks,
    gaussian_blur,
    grayscale,
    mask_weights,
    random_resized_boxes,
    resized_crops,
    sample_subsets,
    solarize,
)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
NO_COLOUR = dict(color_jitter_probability=0.0, grayscale_probability=0.0, global_blur_probabilities=(0.0, 0.0),
                 local_blur_probability=0.0, global_solarize_probabilities=(0.0, 0.0))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - MEAN) / STD


def small_config(**overrides) -> MultiCropConfig:
    return MultiCropConfig(**{"global_size": 32, "local_size": 16, "local_crops": 3, **overrides})


def test_multicrop_shapes_and_determinism():
    images = normalised(torch.rand(4, 3, 48, 40, generator=gen(0)))
    multi_crop = MultiCrop(small_config())
    global_crops, local_crops = multi_crop(images, gen(1))
    assert [c.shape for c in global_crops] == [(4, 3, 32, 32)] * 2
    assert [c.shape for c in local_crops] == [(4, 3, 16, 16)] * 3
    again_global, again_local = multi_crop(images, gen(1))
    for a, b in zip(global_crops + local_crops, again_global + again_local):
        assert torch.equal(a, b)
    other_global, _ = multi_crop(images, gen(2))
    assert not torch.equal(global_crops[0], other_global[0])
    pixels = torch.cat([(c * STD + MEAN).flatten() for c in global_crops + local_crops])
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_multicrop_under_bf16_autocast_is_the_float32_augmentation():
    """The trainer's bf16 autocast (on by default on CUDA) must not reach the augmentation: the blur's
    conv2d returned bf16 into float32 crops and the vtp preset's first step failed (benchmarks/gpu_check.py)."""
    images = normalised(torch.rand(4, 3, 48, 40, generator=gen(0)))
    config = small_config(global_blur_probabilities=(1.0, 1.0), local_blur_probability=1.0)
    expected = MultiCrop(config)(images, gen(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = MultiCrop(config)(images, gen(1))
    for a, b in zip(sum(expected, []), sum(actual, [])):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)


def test_crops_of_a_constant_image_stay_constant():
    colour = torch.tensor([0.2, 0.5, 0.7]).view(1, 3, 1, 1)
    images = normalised(colour.expand(3, 3, 40, 40))
    # With every augmentation on, each crop stays spatially constant (colour ops act per image) ...
    for crop in sum(MultiCrop(small_config())(images, gen(0)), []):
        torch.testing.assert_close(crop, crop[..., :1, :1].expand_as(crop), atol=1e-5, rtol=0)
    # ... and with colour augmentation off it keeps the image's colour.
    for crop in sum(MultiCrop(small_config(**NO_COLOUR))(images, gen(0)), []):
        torch.testing.assert_close(crop * STD + MEAN, colour.expand_as(crop), atol=1e-5, rtol=0)


def test_full_image_crop_is_a_resize_and_flip_flips():
    images = normalised(torch.rand(2, 3, 64, 64, generator=gen(0)))
    whole = dict(global_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), local_crops=0, **NO_COLOUR)
    crops, _ = MultiCrop(small_config(flip_probability=0.0, **whole))(images, gen(0))
    torch.testing.assert_close(crops[0], F.interpolate(images, size=32, mode="area"), atol=1e-5, rtol=0)
    same_size, _ = MultiCrop(small_config(global_size=64, flip_probability=0.0, **whole))(images, gen(0))
    torch.testing.assert_close(same_size[0], images, atol=1e-5, rtol=0)
    flipped, _ = MultiCrop(small_config(global_size=64, flip_probability=1.0, **whole))(images, gen(0))
    torch.testing.assert_close(flipped[1], images.flip(-1), atol=1e-5, rtol=0)


def test_resized_crop_takes_the_box_region():
    images = torch.rand(2, 3, 20, 30, generator=gen(0))
    boxes = torch.tensor([[4.0, 2.0, 12.0, 10.0], [10.0, 0.0, 30.0, 20.0]])
    crops = resized_crops(images, boxes, 8)
    torch.testing.assert_close(crops[0], images[0, :, 2:10, 4:12], atol=1e-6, rtol=0)
    torch.testing.assert_close(crops[1], F.interpolate(images[1:, :, :, 10:], size=8, mode="bilinear",
                                                       antialias=True)[0], atol=0.1, rtol=0)


def test_random_resized_boxes_respect_scale_ratio_and_bounds():
    boxes = random_resized_boxes(2000, 48, 64, (0.05, 0.32), (3 / 4, 4 / 3), gen(0))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 48).all()
    assert torch.equal(boxes, boxes.round())
    area = w * h / (48 * 64)
    # Rounding the side lengths to whole pixels moves the area a little outside the drawn range.
    assert area.min() > 0.04 and area.max() < 0.34 and area.max() > 0.28
    assert ((w / h) > 0.7).all() and ((w / h) < 1.4).all()
    # A range no crop can meet falls back to the largest central crop of allowed ratio.
    fallback = random_resized_boxes(3, 40, 100, (1.0, 1.0), (1.0, 1.0), gen(0))
    assert torch.equal(fallback, torch.tensor([[30.0, 0.0, 70.0, 40.0]] * 3))


@pytest.mark.parametrize(("ours", "theirs", "factors"), [
    (adjust_brightness, TF.adjust_brightness, (0.6, 1.4)),
    (adjust_contrast, TF.adjust_contrast, (0.6, 1.4)),
    (adjust_saturation, TF.adjust_saturation, (0.0, 1.2)),
    (adjust_hue, TF.adjust_hue, (-0.1, 0.45)),
])
def test_colour_ops_match_torchvision_per_image(ours, theirs, factors):
    images = torch.rand(2, 3, 9, 7, generator=gen(0))
    images[0, :, 0, 0] = 0.5  # a gray pixel: hue undefined
    result = ours(images, torch.tensor(factors))
    for image, factor, out in zip(images, factors, result):
        torch.testing.assert_close(out, theirs(image, factor), atol=1e-5, rtol=0)


def test_blur_grayscale_solarize_match_torchvision():
    images = torch.rand(2, 3, 12, 10, generator=gen(0))
    sigmas = (0.3, 1.7)
    blurred = gaussian_blur(images, torch.tensor(sigmas), 9)
    for image, sigma, out in zip(images, sigmas, blurred):
        torch.testing.assert_close(out, TF.gaussian_blur(image, [9, 9], [sigma, sigma]), atol=1e-5, rtol=0)
    torch.testing.assert_close(grayscale(images), TF.rgb_to_grayscale(images))
    torch.testing.assert_close(solarize(images), TF.solarize(images, 128 / 255))


def test_multicrop_rejects_bad_input_and_config():
    with pytest.raises(ValueError, match="expected float images"):
        MultiCrop(small_config())(torch.zeros(2, 1, 8, 8), gen(0))
    with pytest.raises(ValueError, match="global_scale"):
        MultiCropConfig(global_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="global_blur_probabilities"):
        MultiCropConfig(global_crops=3)
    with pytest.raises(ValueError, match="flip_probability"):
        MultiCropConfig(flip_probability=1.5)


def test_block_masks_ratios_and_masked_fraction():
    grid = (16, 16)
    masks = block_masks(64, grid, generator=gen(0))
    assert masks.shape == (64, 256) and masks.dtype == torch.bool
    counts = masks.sum(1)
    masked = counts[counts > 0]
    assert len(masked) == 32  # mask_probability 0.5
    ratios = masked.float() / 256
    assert ratios.max() <= 0.5
    # DINOv2's generator may stop a few patches short of a target when no block fits any more.
    assert ratios.min() >= 0.1 - 4 / 256
    # Targets are spread over the range: the sorted ratios climb from ~0.1 to ~0.5.
    assert ratios.sort().values[:4].max() < 0.16 and ratios.sort().values[-4:].min() > 0.44
    # The masked images are shuffled among the batch, not all first.
    assert (counts[:32] > 0).sum() < 32
    assert torch.equal(masks, block_masks(64, grid, generator=gen(0)))
    assert not torch.equal(masks, block_masks(64, grid, generator=gen(1)))


def test_block_masks_are_rectangles_unions():
    mask = block_masks(2, (14, 14), generator=gen(3), mask_probability=1.0, mask_ratio_range=(0.3, 0.3))
    for image in mask.view(2, 14, 14):
        rows, cols = image.any(1).nonzero(), image.any(0).nonzero()
        assert image.sum() <= (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert 0.3 * 196 - 4 <= image.sum() <= int(0.3 * 196)


def test_mask_weights_sum_to_one_per_masked_image():
    masks = block_masks(16, (8, 8), generator=gen(0))
    weights = mask_weights(masks)
    assert len(weights) == masks.sum()
    image_of_token = torch.arange(16).unsqueeze(1).expand_as(masks)[masks]
    per_image = torch.zeros(16).index_add_(0, image_of_token, weights)
    torch.testing.assert_close(per_image, (masks.sum(1) > 0).float())


def test_sample_subsets_sizes_and_determinism():
    ssl, rec = sample_subsets(64, 0.25, 0.125, gen(0))
    assert len(ssl) == 16 and len(rec) == 8
    assert len(set(ssl.tolist())) == 16 and len(set(rec.tolist())) == 8
    assert ssl.min() >= 0 and ssl.max() < 64
    again = sample_subsets(64, 0.25, 0.125, gen(0))
    assert torch.equal(ssl, again[0]) and torch.equal(rec, again[1])
    assert not torch.equal(ssl, sample_subsets(64, 0.25, 0.125, gen(1))[0])


def test_sample_subsets_minimums_and_skips():
    ssl, rec = sample_subsets(8, 0.01, 0.01, gen(0))
    assert len(ssl) == 2 and len(rec) == 1  # KoLeo needs a neighbour
    ssl, rec = sample_subsets(8, 0.0, 1.0, gen(0))
    assert len(ssl) == 0 and torch.equal(rec, torch.arange(8))
    with pytest.raises(ValueError, match="ssl_fraction"):
        sample_subsets(1, 0.5, 0.5, gen(0))
    with pytest.raises(ValueError, match="rec_fraction"):
        sample_subsets(8, 0.5, 1.5, gen(0))


def test_block_masks_validates():
    with pytest.raises(ValueError, match="mask_ratio_range"):
        block_masks(4, (4, 4), generator=gen(0), mask_ratio_range=(0.6, 0.2))
    assert math.isclose(block_masks(4, (4, 4), generator=gen(0), mask_probability=0.0).sum().item(), 0)
