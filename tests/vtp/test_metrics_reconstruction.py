"""PSNR, SSIM and LPIPS of reconstructions, and rFID with the class accuracy of a reference classifier."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import lpips
import numpy as np
import pytest
import skimage.metrics
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn
from torchvision.models import vgg

from vtp_kedro.vtp.data.imagefolder import LabelledSplit
from vtp_kedro.vtp.losses.reconstruction import VGG16_WEIGHTS
from vtp_kedro.vtp.metrics.fidelity import reference_space
from vtp_kedro.vtp.metrics.reconstruction import ReconstructionMetrics, measure_reconstruction, to_uint8
from vtp_kedro.vtp.metrics.reference import (
    ReferenceClassifierConfig,
    train_reference_classifier,
    write_reference_classifier,
)


def test_psnr_of_a_known_perturbation_and_ssim_of_identical_images():
    generator = torch.Generator().manual_seed(0)
    original = torch.rand(4, 3, 16, 16, generator=generator) * 0.8
    metrics = ReconstructionMetrics("random")
    metrics.update(original + 0.1, original)  # MSE = 0.01 everywhere: PSNR = 10 log10(1 / 0.01) = 20 dB
    assert metrics.compute()["psnr"] == pytest.approx(20.0, abs=1e-4)
    same = ReconstructionMetrics("random")
    same.update(original, original)
    result = same.compute()
    assert result["ssim"] == pytest.approx(1.0, abs=1e-6) and result["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert math.isinf(result["psnr"]) or result["psnr"] > 80
    with pytest.raises(ValueError, match="11 px window"):  # no window inside: no SSIM
        same.update(original[..., :10, :10], original[..., :10, :10])


def test_uint8_rounding_is_what_a_png_writer_does():
    assert to_uint8(torch.tensor([0.0, 0.5, 1.0, 1.2, -0.1])).tolist() == [0, 128, 255, 255, 0]


def test_measure_reconstruction_reads_uint8_batches_with_labels(tokenizer):
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    report = measure_reconstruction({"post_gan": tokenizer}, [(images, torch.zeros(3, dtype=torch.long))], "random")
    assert report["post_gan"]["images"] == 3 and set(report) == {"post_gan"}
    with pytest.raises(TypeError, match="uint8"):
        measure_reconstruction({"post_gan": tokenizer}, [(images.float(), torch.zeros(3))], "random")


# --- against independent references, on random pairs ----------------------------------------------
class BlendingTokenizer(nn.Module):
    """A stand-in tokenizer: its "reconstruction" of x is 0.7 x + 0.3 (an unrelated random image)
    + Gaussian noise, partly outside [0, 1]; it keeps every (reconstruction, original) pair."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives it a device
        self.generator = torch.Generator().manual_seed(1)
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, images: torch.Tensor) -> torch.Tensor:
        other = torch.rand(images.shape, generator=self.generator)
        reconstruction = 0.7 * images + 0.3 * other + 0.05 * torch.randn(images.shape, generator=self.generator)
        self.pairs.append((reconstruction, images))
        return reconstruction


def smooth_images(count: int, seed: int) -> torch.Tensor:
    """uint8 (count, 3, 32, 32): bilinear upsamplings of 8x8 noise, so SSIM and LPIPS see structure."""
    coarse = torch.rand(count, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return to_uint8(F.interpolate(coarse, size=32, mode="bilinear", align_corners=False))


def random_vgg16_file(folder: Path) -> nn.Sequential:
    """A torchvision VGG16 ``features`` trunk with seeded random weights, saved as the file the weights
    resolver looks for (the ImageNet one cannot be fetched here); returns the trunk."""
    torch.manual_seed(3)
    features = vgg.make_layers(vgg.cfgs["D"])
    torch.save({f"features.{key}": value for key, value in features.state_dict().items()}, folder / VGG16_WEIGHTS)
    return features.eval()


def reference_lpips(features: nn.Sequential, monkeypatch: pytest.MonkeyPatch) -> lpips.LPIPS:
    """The lpips package's own LPIPS-VGG around ``features``: lpips slices ``tv.vgg16().features`` itself,
    so this trunk reaches it without our key renaming; its linear heads are the ones it ships."""
    monkeypatch.setattr(lpips.pretrained_networks, "tv", SimpleNamespace(vgg16=lambda **_: SimpleNamespace(
        features=features)))
    return lpips.LPIPS(net="vgg", pretrained=True, verbose=False).eval()


def scipy_frechet_distance(first: np.ndarray, second: np.ndarray) -> float:
    """FID = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)), S the unbiased covariance of (N, D) features."""
    mu_1, mu_2 = first.mean(0), second.mean(0)
    sigma_1, sigma_2 = np.cov(first, rowvar=False), np.cov(second, rowvar=False)
    root = linalg.sqrtm(sigma_1 @ sigma_2).real
    return float((mu_1 - mu_2) @ (mu_1 - mu_2) + np.trace(sigma_1 + sigma_2 - 2 * root))


@pytest.fixture(scope="module")
def reference_classifier_folder(tmp_path_factory) -> Path:
    """A small trained reference classifier: its 16-d pool layer is the feature space of rFID_ref."""
    def split(count: int, seed: int) -> LabelledSplit:
        labels = torch.arange(count) % 3
        images = smooth_images(count, seed) // 2
        images[torch.arange(count), labels] += 120  # the class shows in the colour
        return LabelledSplit(images, labels, ("apple", "zebra", "violin"))

    folder = tmp_path_factory.mktemp("reference")
    model, record = train_reference_classifier(split(96, 10), split(30, 11),
                                               ReferenceClassifierConfig(width=4, epochs=3, batch_size=16, lr=1e-2))
    write_reference_classifier(folder, model, record)
    return folder


def test_reconstruction_metrics_agree_with_scikit_image_lpips_and_scipy_on_random_pairs(
        tmp_path, monkeypatch, reference_classifier_folder):
    trunk = random_vgg16_file(tmp_path)
    space = reference_space(reference_classifier_folder)
    tokenizer = BlendingTokenizer()
    batches = [(smooth_images(16, seed), torch.zeros(16, dtype=torch.long)) for seed in (20, 21)]
    report = measure_reconstruction({"blend": tokenizer}, batches, "vgg", weights_dir=str(tmp_path),
                                    spaces=[space])["blend"]

    reconstructions = torch.cat([r for r, _ in tokenizer.pairs]).clamp(0, 1).double()
    originals = torch.cat([o for _, o in tokenizer.pairs]).double()
    assert report["images"] == len(originals) == 32
    pairs = list(zip(reconstructions.numpy(), originals.numpy()))
    psnr = np.mean([skimage.metrics.peak_signal_noise_ratio(o, r, data_range=1.0) for r, o in pairs])
    # Wang et al.'s SSIM as the project computes it (torchmetrics' defaults): an 11x11 Gaussian window
    # of sigma 1.5 (skimage: truncate 3.5 sigma -> radius 5), population covariances, K = (0.01, 0.03),
    # the mean over the valid (uncropped-by-the-window) region of every channel.
    ssim = np.mean([skimage.metrics.structural_similarity(o, r, data_range=1.0, channel_axis=0, gaussian_weights=True,
                                                          sigma=1.5, use_sample_covariance=False, K1=0.01, K2=0.03)
                    for r, o in pairs])
    with torch.no_grad():
        lpips_value = reference_lpips(trunk, monkeypatch)(reconstructions.float() * 2 - 1, originals.float() * 2 - 1)
    extractor = space.create()
    features = {name: extractor.convert_features_tuple_to_dict(extractor(images))[space.fid_layer].double().numpy()
                for name, images in (("original", torch.cat([b for b, _ in batches])),
                                     ("blend", (reconstructions * 255).round().to(torch.uint8)))}
    rfid = scipy_frechet_distance(features["original"], features["blend"])

    assert 10 < psnr < 30 and 0.1 < ssim < 0.9 and rfid > 0.01  # far from identical images
    assert report["psnr"] == pytest.approx(psnr, rel=1e-5)
    assert report["ssim"] == pytest.approx(ssim, abs=1e-5)
    assert report["lpips"] == pytest.approx(float(lpips_value.mean()), rel=1e-5)
    assert report["rfid_ref"] == pytest.approx(rfid, rel=1e-6)
