"""Fixtures shared by the library tests: a labelled folder with foreign classes and a tiny tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vtp_kedro.vtp.inference import Tokenizer
from vtp_kedro.vtp.models.tokenizer import TokenizerConfig
from vtp_kedro.vtp.models.vit import vit_config

CLASSES = ("apple", "zebra", "violin")  # not the embedded shapes: nothing may assume those


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, count in (("train", 5), ("val", 2)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                size = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                pixels[..., label] = 255  # the class shows in the colour
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    torch.manual_seed(0)
    config = TokenizerConfig(encoder=vit_config("tiny", width=32, heads=1, depth=1, patch_size=8, image_size=32),
                             latent_dim=4, decoder_width=32, decoder_depth=1, decoder_heads=1)
    return Tokenizer(config, 32)
