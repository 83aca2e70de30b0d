"""How well a tokenizer reconstructs held-out images: PSNR, SSIM and LPIPS, and a picture to look at.

    PSNR  = 10 log10(1 / MSE(x', x))        per image, pixels in [0, 1], then averaged
    SSIM  = Wang et al. 2004: the mean of the local SSIM over every 11x11 Gaussian window (sigma 1.5)
            that lies inside the image (their "valid" filtering, as scikit-image's), per image, averaged
    LPIPS = Zhang et al. 2018, VGG16 trunk and shipped linear heads, on [-1, 1] images

rFID (``measure_reconstruction`` with feature spaces): the Fréchet distance between the features of
the originals and of their reconstructions, quantised to uint8 as saved images would be
(``metrics.fidelity``; ``rfid`` in Inception space, ``rfid_ref`` in the reference classifier's).

LPIPS needs ImageNet VGG16 weights from the weights resolver; with ``backbone="random"`` (the
CPU default, where none can be fetched) it is a distance in random VGG features, and the
report says so beside the number.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from vtp_kedro.vtp.losses.reconstruction import build_lpips
from vtp_kedro.vtp.metrics.fidelity import FeatureSpace, extract_features, fid_statistics, frechet_distance

if TYPE_CHECKING:  # types only: the metrics take tokenizers, they do not load them
    from vtp_kedro.vtp.inference import Tokenizer


# Wang et al.'s window: a Gaussian of sigma 1.5 truncated at 3.5 sigma, radius 5 (11 x 11).
SSIM_SIGMA = 1.5
SSIM_RADIUS = int(3.5 * SSIM_SIGMA + 0.5)


def ssim_per_image(x: Tensor, y: Tensor) -> Tensor:
    """(B,) SSIM of two (B, C, H, W) batches in [0, 1]: the mean over channels and over the pixels whose
    window lies inside the image of

        SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)),
        C1 = (0.01)^2, C2 = (0.03)^2, moments Gaussian-weighted, covariances not Bessel-corrected.

    torchmetrics' map has a value at every pixel, its border windows reaching into a reflect-padded
    copy of the image, and averaging those too moves SSIM (on blends of random images, by up to 0.05
    at 32 px and 0.002 at 256 px): the border of width ``SSIM_RADIUS`` is cropped, as in Wang et al.'s
    code and scikit-image.
    """
    if min(x.shape[-2:]) <= 2 * SSIM_RADIUS:
        raise ValueError(f"SSIM needs images larger than its {2 * SSIM_RADIUS + 1} px window; got {tuple(x.shape)}")
    _, ssim_map = structural_similarity_index_measure(x, y, sigma=SSIM_SIGMA, data_range=1.0, reduction="none",
                                                      return_full_image=True)
    r = SSIM_RADIUS
    return ssim_map[..., r:-r, r:-r].mean(dim=(1, 2, 3))


class ReconstructionMetrics:
    """Running means of PSNR, SSIM and LPIPS over batches of (reconstruction, original) in [0, 1]."""

    def __init__(self, lpips_backbone: Literal["vgg", "random"] = "vgg", weights_dir: str | None = None) -> None:
        self.lpips_backbone = lpips_backbone
        self.lpips = build_lpips(lpips_backbone, weights_dir)
        self.sums = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0}
        self.count = 0

    @torch.no_grad()
    def update(self, reconstruction: Tensor, original: Tensor) -> None:
        if reconstruction.shape != original.shape or reconstruction.ndim != 4:
            raise ValueError(f"expected two (B, 3, H, W) batches of one shape; got {tuple(reconstruction.shape)} "
                             f"and {tuple(original.shape)}")
        x, y = reconstruction.float().clamp(0, 1), original.float()
        psnr = peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))
        ssim = ssim_per_image(x, y)
        lpips = self.lpips.to(x.device)(x * 2 - 1, y * 2 - 1).flatten()
        for name, values in (("psnr", psnr), ("ssim", ssim), ("lpips", lpips)):
            self.sums[name] += float(values.double().sum())
        self.count += len(x)

    def compute(self) -> dict[str, float]:
        if not self.count:
            raise ValueError("no images were measured")
        return {name: total / self.count for name, total in self.sums.items()}


def to_uint8(images: Tensor) -> Tensor:
    """Images in [0, 1] -> uint8, rounded as a PNG writer would."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8)


def measure_reconstruction(tokenizers: dict[str, Tokenizer], batches: Iterable[tuple[Tensor, Tensor]],
                           lpips_backbone: Literal["vgg", "random"] = "vgg", weights_dir: str | None = None,
                           spaces: Sequence[FeatureSpace] = (), classifier: FeatureSpace | None = None,
                           device: str | torch.device = "cpu") -> dict[str, dict[str, float]]:
    """``{name: {"psnr", "ssim", "lpips", "images", "rfid<suffix>" per space}}`` of ``decode(encode(x))``
    for every tokenizer (on its own device), in one pass over ``(uint8 images, labels)`` batches; the
    feature extractors run on ``device``.

    With a ``classifier`` (the reference classifier's space), also ``class_acc_ref``: how often it
    still recognises the label in the reconstructions, and on the originals under ``"original"``
    (the ceiling of what a decoder can keep, and of a generator's gen_class_acc).
    """
    metrics = {name: ReconstructionMetrics(lpips_backbone, weights_dir) for name in tokenizers}
    extractors = {space.name: space.create(device) for space in (*spaces, *([classifier] if classifier else []))}
    features: dict[tuple[str, str], list[Tensor]] = {}
    correct = dict.fromkeys(("original", *tokenizers), 0)
    for images, labels in batches:
        if images.dtype != torch.uint8:
            raise TypeError(f"reconstruction metrics read uint8 images; got {images.dtype}")
        originals = images.float() / 255
        pairs = {"original": images}
        for name, tokenizer in tokenizers.items():
            on = next(tokenizer.parameters()).device
            reconstruction = tokenizer.decode(tokenizer.encode(originals.to(on)))
            metrics[name].update(reconstruction, originals.to(on))
            pairs[name] = to_uint8(reconstruction)
        for name, pixels in pairs.items():
            # One pass per extractor: the reference space's own pass also gives the classifier's logits.
            outputs = {space: extract_features(extractor, [pixels]) for space, extractor in extractors.items()}
            for space in spaces:
                features.setdefault((space.name, name), []).append(outputs[space.name][space.fid_layer])
            if classifier is not None:
                logits = outputs[classifier.name][classifier.isc_layer]
                correct[name] += int((logits.argmax(1) == labels).sum())
    report: dict[str, dict[str, float]] = {}
    for name in tokenizers:
        report[name] = {**metrics[name].compute(), "images": metrics[name].count}
        for space in spaces:
            original = fid_statistics(torch.cat(features[(space.name, "original")]))
            report[name][f"rfid{space.suffix}"] = frechet_distance(
                original, fid_statistics(torch.cat(features[(space.name, name)])))
    if classifier is not None:
        count = report[next(iter(tokenizers))]["images"]
        report["original"] = {"class_acc_ref": correct["original"] / count}
        for name in tokenizers:
            report[name]["class_acc_ref"] = correct[name] / count
    return report


def plot_image_grid(rows: dict[str, Tensor], title: str = "") -> Figure:
    """One labelled row of images per entry (original | pre-GAN | post-GAN; samples per class), each (N, 3, H, W) in [0, 1]."""
    count = {len(images) for images in rows.values()}
    if len(count) != 1:
        raise ValueError(f"every row needs the same number of images; got {sorted(count)}")
    columns = count.pop()
    figure = Figure(figsize=(1.2 * columns + 1.2, 1.3 * len(rows) + 0.4))
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for row, (label, images) in enumerate(rows.items()):
        pixels = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round()
        for column in range(columns):
            ax = axes[row, column]
            ax.imshow(pixels[column].astype(np.uint8), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
        axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure
