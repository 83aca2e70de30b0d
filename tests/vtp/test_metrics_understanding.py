"""The linear probe (DINOv2's protocol), k-NN, zero-shot, the confusion matrix and the online probe."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from vtp_kedro.vtp.inference import load_clip_towers
from vtp_kedro.vtp.metrics.online_probe import OnlineProbe, OnlineProbeConfig
from vtp_kedro.vtp.metrics.understanding import (
    GENERIC_TEMPLATES,
    confusion_matrix,
    knn_accuracy,
    linear_probe,
    probe_features,
    zero_shot_classifier,
    zero_shot_logits,
    zero_shot_prompts,
)
from vtp_kedro.vtp.models.tokenizer import TokenizerFeatures


def _blobs(dim: int = 16, classes: int = 4, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(400) % classes
    centres = 3 * torch.randn(classes, dim, generator=generator)
    return centres[labels] + torch.randn(400, dim, generator=generator), torch.randn(400, dim, generator=generator), labels


def test_probes_separate_separable_features_and_stay_at_chance_on_noise():
    features, noise, labels = _blobs()
    train, val = slice(0, 300), slice(300, 400)
    probe = linear_probe(features[train], labels[train], features[val], labels[val], 4)
    assert probe.top1 == 1.0 and probe.train_top1 > 0.95 and probe.top5 is None
    assert len(probe.top1_per_lr) == 13 and probe.top1_per_lr[probe.lr] == probe.top1  # DINOv2's 13 rates
    assert knn_accuracy(features[train], labels[train], features[val], labels[val], 4) == 1.0
    chance = linear_probe(noise[train], labels[train], noise[val], labels[val], 4)
    assert chance.top1 < 0.4  # chance is 0.25; 100 val images
    assert knn_accuracy(noise[train], labels[train], noise[val], labels[val], 4) < 0.4


def test_probe_scales_dinov2_rates_by_batch_and_reports_top5_beyond_five_classes():
    features, _, labels = _blobs(classes=8)
    probe = linear_probe(features[:300], labels[:300], features[300:], labels[300:], 8, learning_rates=(1e-3, 1e-1),
                         batch_size=512, epochs=5)
    assert set(probe.top1_per_lr) == {2e-3, 2e-1}  # lr * 512 / 256, as dinov2 scales
    assert probe.top5 is not None and probe.top5 >= probe.top1


def test_probe_is_deterministic_for_a_seed():
    features, _, labels = _blobs()
    first = linear_probe(features[:300], labels[:300], features[300:], labels[300:], 4, epochs=3, seed=1)
    second = linear_probe(features[:300], labels[:300], features[300:], labels[300:], 4, epochs=3, seed=1)
    assert first.top1_per_lr == second.top1_per_lr and torch.equal(first.predictions, second.predictions)


def test_probe_features_bottleneck_and_trunk_shapes(tokenizer):
    images = torch.rand(3, 3, 32, 32)
    assert probe_features(tokenizer, images, "bottleneck").shape == (3, 4)  # latent_dim
    assert probe_features(tokenizer, images, "trunk").shape == (3, 2 * 32)  # [CLS ; mean patch] of width 32
    with pytest.raises(ValueError, match="bottleneck"):
        probe_features(tokenizer, images, "pixels")


class MatchedTowers(nn.Module):
    """Text of class k embeds to e_k; an image whose red channel is k / 10 embeds to e_k."""

    def __init__(self, classes: list[str]) -> None:
        super().__init__()
        self.classes = classes
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the module a device

    def tokenize(self, texts: list[str]) -> Tensor:
        return torch.tensor([next(k for k, name in enumerate(self.classes) if name in text) for text in texts])

    def encode_text(self, tokens: Tensor, normalize: bool = False) -> Tensor:
        return nn.functional.one_hot(tokens, len(self.classes)).float() + 0.01

    def encode_image(self, images: Tensor, normalize: bool = False) -> Tensor:
        index = (images[:, 0, 0, 0] * 10).round().long()
        embedding = nn.functional.one_hot(index, len(self.classes)).float() + 0.01
        return nn.functional.normalize(embedding, dim=-1) if normalize else embedding


def test_zero_shot_picks_the_class_whose_text_matches_the_image():
    classes = ["apple", "zebra", "violin"]
    towers = MatchedTowers(classes)
    weights, kind = zero_shot_classifier(towers, classes)
    assert kind == "generic" and weights.shape == (3, 3)
    labels = torch.tensor([2, 0, 1, 1])
    images = torch.zeros(4, 3, 8, 8)
    images[:, 0] = labels.float().view(-1, 1, 1) / 10
    logits = zero_shot_logits(towers, images, weights)
    assert torch.equal(logits.argmax(1), labels)
    assert logits.max().item() == pytest.approx(100.0, rel=1e-5)  # identical directions: 100 x cosine 1


def test_imagenet_folders_get_openai_templates_and_readable_names():
    wnids = [f"n{index:08d}" for index in range(1000)]
    names, templates, kind = zero_shot_prompts(wnids)
    assert kind == "openai_imagenet_80" and len(templates) == 80 and names[0] == "tench"
    names, templates, kind = zero_shot_prompts(["red_panda", "zebra"])
    assert kind == "generic" and names == ["red panda", "zebra"] and templates == GENERIC_TEMPLATES


def test_confusion_matrix_rows_are_true_classes():
    matrix = confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 2]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_clip_towers_need_a_pretraining_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="pre-training checkpoint"):
        load_clip_towers(tmp_path)


def test_online_probe_scores_an_encoder_on_the_labelled_subset(image_root, tokenizer):
    probe = OnlineProbe(OnlineProbeConfig(image_root=str(image_root), train_per_class=4, knn_k=3, linear_epochs=2), 32)
    assert probe.train[0].shape == (12, 3, 32, 32) and probe.val[0].shape == (6, 3, 32, 32)
    with torch.no_grad():  # as the trainer calls it
        first, second = probe(tokenizer.net), probe(tokenizer.net)
    assert set(first) == {"probe/knn_top1", "probe/linear_top1"} and first == second
    assert all(0 <= value <= 1 for value in first.values())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OnlineProbe(OnlineProbeConfig(image_root=str(image_root / "missing")), 32)


# --- the online probe against known answers --------------------------------------------------------
PROBE_CLASSES = 4
PER_CLASS = 50  # train and val images per class


class PatchColourEncoder(nn.Module):
    """A stand-in tokenizer whose latent is each 8x8 patch's mean (normalised) colour, its trunk the
    same tokens after a CLS of their mean: the probe's features are then the image's mean colour."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives it a device

    def forward_features(self, images: Tensor) -> TokenizerFeatures:
        patches = nn.functional.avg_pool2d(images, 8)  # (B, 3, 4, 4)
        tokens = patches.flatten(2).transpose(1, 2)
        tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)
        return TokenizerFeatures(trunk=tokens, latent_tokens=tokens, grid=(4, 4))


def write_colour_folder(root: Path, separable: bool) -> Path:
    """train/ and val/ with ``PER_CLASS`` 32x32 images of each of 4 classes, each a flat colour plus
    pixel noise. Separable: class k's colours scatter (sd 0.05) around its own corner of the colour
    cube, 0.6 from the others'. Noise: every image's colour is drawn from one distribution, whatever its class."""
    rng = np.random.default_rng(0)
    corners = np.array([[0.2, 0.2, 0.2], [0.8, 0.2, 0.2], [0.2, 0.8, 0.2], [0.2, 0.2, 0.8]])
    for split in ("train", "val"):
        for label in range(PROBE_CLASSES):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True)
            for index in range(PER_CLASS):
                colour = corners[label] + rng.normal(0, 0.05, 3) if separable else rng.uniform(0.2, 0.8, 3)
                pixels = np.clip(colour + rng.uniform(-0.1, 0.1, (32, 32, 3)), 0, 1)
                Image.fromarray((pixels * 255).round().astype(np.uint8)).save(folder / f"{index}.png")
    return root


@pytest.mark.parametrize("features", ["bottleneck", "trunk"])
def test_online_probe_finds_separable_classes_and_stays_at_chance_on_noise(tmp_path, features):
    config = dict(features=features, train_per_class=PER_CLASS, knn_k=10, linear_epochs=10)
    encoder = PatchColourEncoder()
    with torch.no_grad():  # as the trainer calls it
        separable = OnlineProbe(OnlineProbeConfig(image_root=str(write_colour_folder(tmp_path / "separable", True)),
                                                  **config), 32)(encoder)
        noise = OnlineProbe(OnlineProbeConfig(image_root=str(write_colour_folder(tmp_path / "noise", False)),
                                              **config), 32)(encoder)
    assert min(separable.values()) >= 0.9, separable
    # chance is 1/4; on 200 val images one binomial standard error is sqrt(1/4 * 3/4 / 200) = 0.031
    chance, error = 1 / PROBE_CLASSES, math.sqrt(0.25 * 0.75 / (PROBE_CLASSES * PER_CLASS))
    assert all(abs(value - chance) <= 3 * error for value in noise.values()), noise
