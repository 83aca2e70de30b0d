"""PSNR, SSIM and LPIPS of reconstructions, and rFID with the class accuracy of a reference classifier."""

from __future__ import annotations

import math

import pytest
import torch

from vtp_kedro.vtp.metrics.reconstruction import ReconstructionMetrics, measure_reconstruction, to_uint8


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


def test_uint8_rounding_is_what_a_png_writer_does():
    assert to_uint8(torch.tensor([0.0, 0.5, 1.0, 1.2, -0.1])).tolist() == [0, 128, 255, 255, 0]


def test_measure_reconstruction_reads_uint8_batches_with_labels(tokenizer):
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    report = measure_reconstruction({"post_gan": tokenizer}, [(images, torch.zeros(3, dtype=torch.long))], "random")
    assert report["post_gan"]["images"] == 3 and set(report) == {"post_gan"}
    with pytest.raises(TypeError, match="uint8"):
        measure_reconstruction({"post_gan": tokenizer}, [(images.float(), torch.zeros(3))], "random")
