"""The reference classifier: a feature space for FID-type metrics where no Inception weights exist.

Without ImageNet Inception weights (offline machines, or labelled data far from ImageNet) the
evaluation trains ``SmallCNN`` (below) on the labelled train split and measures
FID, IS and precision/recall in its feature space instead; those numbers carry the ``_ref``
suffix (``rfid_ref``, ``gfid_ref``, ...) and are never reported as ``rfid``/``gfid``. The
classifier also says how often a generated sample shows the class it was asked for
(``gen_class_acc``).

A saved classifier is a folder: ``classifier.safetensors`` and ``classifier.json`` (classes,
image size, width, its val accuracy). It is registered with torch-fidelity as the feature
extractor ``vtp-reference-classifier``, with the folder passed as
``feature_extractor_weights_path`` exactly as Inception's weights file is, and provides

    "pool"    global-average-pooled last conv features (4 * width dims): FID and precision/recall
    "logits"  class logits: Inception Score and gen_class_acc
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.core.tensors import load_tensors, save_tensors
from vtp_kedro.vtp.data.imagefolder import LabelledSplit

log = logging.getLogger(__name__)

REFERENCE_EXTRACTOR = "vtp-reference-classifier"
WEIGHTS_FILE = "classifier.safetensors"
RECORD_FILE = "classifier.json"
RECORD_FORMAT = "vtp_kedro.reference_classifier/1"


class ReferenceClassifierConfig(Config):
    """``train_cnn``'s settings (AdamW, warm-up + cosine, random flips) and what it trains on."""

    image_size: int | None = Field(None, gt=0, description="None: the tokenizer's; the extractor resizes any input")
    train_per_class: int | None = Field(None, gt=0, description="the first N training images of each class; "
                                                                "None: all (ImageNet: set one, the split sits in memory)")
    width: int = Field(32, gt=0)
    epochs: int = Field(20, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    seed: int = Field(0, ge=0)


def train_reference_classifier(train: LabelledSplit, val: LabelledSplit, config: ReferenceClassifierConfig,
                               device: str | torch.device = "cpu") -> tuple[SmallCNN, dict[str, Any]]:
    """Train on ``train`` and measure on ``val``; returns the model (on the CPU) and the record saved beside it."""
    result = train_cnn(train, val, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                       weight_decay=config.weight_decay, width=config.width, seed=config.seed, device=device)
    record = {"format": RECORD_FORMAT, "classes": list(train.classes), "image_size": int(train.images.shape[-1]),
              "width": config.width, "val_top1": result.val_top1, "train_top1": result.train_top1,
              "train_images": len(train.labels), "val_images": len(val.labels),
              "chance": val.chance, "config": config.model_dump(mode="json")}
    return result.model, record


def write_reference_classifier(folder: str | Path, model: SmallCNN, record: dict[str, Any]) -> None:
    """Write the classifier's files into the existing ``folder`` (the caller makes it atomic)."""
    save_tensors(model.state_dict(), Path(folder) / WEIGHTS_FILE)
    (Path(folder) / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_reference_record(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a reference classifier: {RECORD_FILE} is missing "
                                "(run the evaluation pipeline's train_reference_classifier node)")
    record = json.loads(path.read_text())
    if record.get("format") != RECORD_FORMAT:
        raise ValueError(f"{path}: format {record.get('format')!r} is not {RECORD_FORMAT!r}")
    return record


def load_reference_classifier(folder: str | Path) -> tuple[SmallCNN, dict[str, Any]]:
    record = read_reference_record(folder)
    model = SmallCNN(len(record["classes"]), width=record["width"])
    model.load_state_dict(load_tensors(Path(folder) / WEIGHTS_FILE))
    return model.eval(), record


class ReferenceFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity's view of the reference classifier: uint8 (B, 3, H, W) -> ("pool", "logits").

    Images of another size are resized to the classifier's with antialiased bilinear
    interpolation before the classifier's own standardisation.
    """

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{REFERENCE_EXTRACTOR} needs feature_extractor_weights_path: a folder written by "
                             "train_reference_classifier")
        self.classifier, record = load_reference_classifier(feature_extractor_weights_path)
        self.image_size = record["image_size"]
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return "pool", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": "pool", "kid": "pool", "prc": "pool"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> Tensor:
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (B, 3, H, W); got {images.dtype} {tuple(images.shape)}")
        x = standardize_pixels(images)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        pool = self.classifier.features(x).mean(dim=(2, 3))
        features = {"pool": pool, "logits": self.classifier.head(pool)}
        return tuple(features[name] for name in self.features_list)


if REFERENCE_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:  # a module reload must not register twice
    register_feature_extractor(REFERENCE_EXTRACTOR, ReferenceFeatureExtractor)


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
