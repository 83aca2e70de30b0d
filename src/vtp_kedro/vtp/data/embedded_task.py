"""How learnable the embedded labelled task is: a small supervised CNN and raw-pixel baselines.

The labelled split of the embedded dataset (``synthetic.write_labelled_folder``) is only a
useful yardstick for tokenizers if it sits between two bounds:

* **learnable**: a small CNN trained from scratch on the split reaches a high accuracy,
  so the labels are visible in the pixels;
* **not a template**: a linear classifier on raw pixels stays low, so a probe needs a
  representation (position, colour and background must be factored out).

A tokenizer's linear probe on its bottleneck latents should land between them. This module
holds the supervised reference (``train_cnn``) and the helpers that load a split as tensors;
the probes on frozen features are ``metrics.understanding``'s, and
``benchmarks/embedded_task.py`` prints all of them as a table.
Everything is seeded and runs on CPU in minutes.
"""

from __future__ import annotations

import io
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F

from vtp_kedro.vtp.data.imagefolder import LabelledImageFolder
from vtp_kedro.vtp.data.synthetic import SHAPES, SyntheticConfig, encode_jpeg, render_sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledSplit:
    """A split as tensors: ``images`` uint8 ``(N, 3, H, W)``, ``labels`` int64 ``(N,)``, class names."""

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]

    @property
    def chance(self) -> float:
        """Top-1 of always answering the most frequent class: ``max_c n_c / N``."""
        return float(torch.bincount(self.labels, minlength=len(self.classes)).max()) / len(self.labels)


def _to_tensor(image: Image.Image) -> Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)


def load_labelled_split(root: str | Path, split: str) -> LabelledSplit:
    """Read ``root/<split>/<class>/*`` (an ImageNet-style folder) into memory."""
    folder = LabelledImageFolder(root, split)
    images, labels = [], []
    for index in range(len(folder)):
        image, label = folder[index]
        images.append(_to_tensor(image))
        labels.append(label)
    return LabelledSplit(torch.stack(images), torch.tensor(labels, dtype=torch.int64), tuple(folder.classes))


def render_labelled_split(config: SyntheticConfig, split: str, per_class: int) -> LabelledSplit:
    """The images ``write_labelled_folder`` would write for ``split``, decoded from the same JPEG bytes."""
    images, labels = [], []
    for label, shape in enumerate(SHAPES):
        for index in range(per_class):
            jpeg = encode_jpeg(render_sample(config, split, index, main_shape=shape).image)
            images.append(_to_tensor(Image.open(io.BytesIO(jpeg))))
            labels.append(label)
    return LabelledSplit(torch.stack(images), torch.tensor(labels, dtype=torch.int64), SHAPES)


def coarsened(split: LabelledSplit, factor: int = 2) -> LabelledSplit:
    """The split downsampled ``factor`` times (antialiased bilinear) and upsampled back (bilinear):
    what a reconstruction that keeps only a ``factor``-times coarser grid can show. A classifier
    of the originals that still reads these knows the class from its coarse shape."""
    x = split.images.float()
    small = F.interpolate(x, scale_factor=1 / factor, mode="bilinear", antialias=True, align_corners=False)
    back = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return LabelledSplit(back.round().clamp(0, 255).to(torch.uint8), split.labels, split.classes)


def pixel_features(images: Tensor) -> Tensor:
    """Raw pixels as vectors in [0, 1]: ``(N, 3 * H * W)``."""
    return images.reshape(images.shape[0], -1).float() / 255.0


# ---- the supervised CNN ----------------------------------------------------------------------


class SmallCNN(nn.Module):
    """Three conv blocks (3x3 conv, BatchNorm, ReLU, 2x2 max-pool), global average pool, linear head.

    Channel widths ``width * (1, 2, 4)``. Global average pooling makes it blind to where the
    object sits, which the embedded task needs (objects roam a 3x3 grid).
    """

    def __init__(self, classes: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for multiple in (1, 2, 4):
            out = width * multiple
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))


@dataclass(frozen=True)
class CNNResult:
    model: SmallCNN
    val_top1: float
    train_top1: float
    seconds: float
    epochs: int


def standardize_pixels(images: Tensor) -> Tensor:
    """uint8 pixels -> roughly zero-mean, unit-variance floats: (x / 255 - 0.5) / 0.25, what SmallCNN reads."""
    x = images.float() / 255.0
    return (x - 0.5) / 0.25


def train_cnn(train: LabelledSplit, val: LabelledSplit, *, epochs: int = 20, batch_size: int = 64, lr: float = 3e-3,
              weight_decay: float = 0.05, width: int = 32, seed: int = 0,
              device: str | torch.device = "cpu", log_every_s: float | None = 20.0) -> CNNResult:
    """Train ``SmallCNN`` from scratch with AdamW, a one-cycle cosine schedule and random horizontal flips.

    The learning rate warms up linearly over the first 10% of steps, then follows
    ``lr_t = lr * (1 + cos(pi * progress)) / 2``. Returns the final epoch's val top-1 (no early stopping)
    and the model on the CPU; the split stays in memory as uint8 and each batch moves to ``device``.
    Progress (epoch, mean loss, elapsed, ETA) is logged at the end of an epoch when ``log_every_s``
    seconds have passed since the last line, and after the last epoch; None: silent.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SmallCNN(len(train.classes), width=width).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train.labels) / batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, total // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))),
    )
    start = last_log = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        losses = []
        order = torch.randperm(len(train.labels), generator=generator)
        for first in range(0, len(order), batch_size):
            index = order[first:first + batch_size]
            x, y = standardize_pixels(train.images[index]).to(device), train.labels[index].to(device)
            flip = (torch.rand(len(index), generator=generator) < 0.5).to(device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.detach())
        now = time.perf_counter()
        if log_every_s is not None and (now - last_log >= log_every_s or epoch == epochs - 1):
            last_log, elapsed = now, now - start
            log.info("SmallCNN epoch %d/%d: loss %.4g, %.0f s elapsed, about %.0f s to go", epoch + 1, epochs,
                     torch.stack(losses).mean().item(), elapsed, elapsed / (epoch + 1) * (epochs - epoch - 1))
    seconds = time.perf_counter() - start
    return CNNResult(
        model=model.eval().cpu(), val_top1=cnn_accuracy(model, val), train_top1=cnn_accuracy(model, train),
        seconds=seconds, epochs=epochs,
    )


@torch.no_grad()
def cnn_accuracy(model: nn.Module, split: LabelledSplit, batch_size: int = 256) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for first in range(0, len(split.labels), batch_size):
        logits = model(standardize_pixels(split.images[first:first + batch_size]).to(device)).cpu()
        correct += int((logits.argmax(1) == split.labels[first:first + batch_size]).sum())
    return correct / len(split.labels)
