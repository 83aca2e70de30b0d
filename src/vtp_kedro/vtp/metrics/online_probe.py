"""The online probe: how much of the label the encoder holds, measured while it trains.

Every ``trainer.evaluate_every`` steps (and at the end) the pre-training task runs the current
student encoder, in eval mode and without gradients, over a fixed labelled subset held in memory,
pools the features the evaluation pipeline probes (``metrics.understanding.pooled_features``) and
reports

    probe/knn_top1      DINOv2's weighted k-NN (k = 20, T = 0.07) of the val images among the train images
    probe/linear_top1   the evaluation's linear probe (DINOv2's protocol) on the same features

so accuracy can be read against steps, samples and FLOPs from one run. The subset is the first
``train_per_class`` training images of each class and the val split, at the training image size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from torch import Tensor

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.data.imagefolder import LabelledImageFolder, cropped_batches
from vtp_kedro.vtp.data.preprocess import normalize
from vtp_kedro.vtp.metrics.understanding import ProbeFeatures, knn_accuracy, linear_probe, pooled_features
from vtp_kedro.vtp.models.tokenizer import VisualTokenizer

# The trainer logs the probe under this prefix; the reports keep its records apart.
PROBE_PREFIX = "probe/"


class OnlineProbeConfig(Config):
    image_root: str = Field(description="a labelled folder (train/<class>/*, val/<class>/*)")
    features: ProbeFeatures = "bottleneck"
    train_per_class: int | None = Field(100, gt=0, description="None: the whole train split")
    val_per_class: int | None = Field(None, gt=0, description="None: the whole val split")
    knn_k: int = Field(20, gt=0)
    knn_temperature: float = Field(0.07, gt=0)
    linear_epochs: int = Field(20, gt=0)
    batch_size: int = Field(250, gt=0)


def _split(root: Path, split: str, image_size: int, per_class: int | None, batch_size: int) -> tuple[Tensor, Tensor]:
    images, labels = zip(*cropped_batches(root, split, image_size, batch_size, per_class=per_class))
    return torch.cat(images), torch.cat(labels)


class OnlineProbe:
    """Holds the labelled subset (uint8) and scores a ``VisualTokenizer`` on it (module docstring)."""

    def __init__(self, config: OnlineProbeConfig, image_size: int) -> None:
        root = Path(config.image_root)
        self.config = config
        self.classes = LabelledImageFolder(root, "train").classes  # a missing folder fails at start, naming it
        self.train = _split(root, "train", image_size, config.train_per_class, config.batch_size)
        self.val = _split(root, "val", image_size, config.val_per_class, config.batch_size)

    @torch.no_grad()
    def _features(self, tokenizer: VisualTokenizer, images: Tensor) -> Tensor:
        device = next(tokenizer.parameters()).device
        parts = []
        for first in range(0, len(images), self.config.batch_size):
            pixels = images[first:first + self.config.batch_size].to(device).float() / 255
            parts.append(pooled_features(tokenizer.forward_features(normalize(pixels)), self.config.features).float().cpu())
        return torch.cat(parts)

    def __call__(self, tokenizer: VisualTokenizer) -> dict[str, float]:
        cfg, classes = self.config, len(self.classes)
        train_x, val_x = self._features(tokenizer, self.train[0]), self._features(tokenizer, self.val[0])
        (train_y, val_y) = self.train[1], self.val[1]
        knn = knn_accuracy(train_x, train_y, val_x, val_y, classes, k=cfg.knn_k, temperature=cfg.knn_temperature)
        linear = linear_probe(train_x, train_y, val_x, val_y, classes, epochs=cfg.linear_epochs)
        return {f"{PROBE_PREFIX}knn_top1": knn, f"{PROBE_PREFIX}linear_top1": linear.top1}
