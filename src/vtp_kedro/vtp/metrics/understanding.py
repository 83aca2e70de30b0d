"""How much of the label a tokenizer's features hold: DINOv2's linear probe and CLIP zero-shot.

Linear probe, DINOv2's protocol (features extracted once, many heads trained together):

    features    bottleneck: the latent Z mean-pooled over the grid (d dims; the paper's protocol)
                trunk:      [CLS ; mean of the patch tokens] after the last block (2 x width; the
                            authors' script)
    heads       one linear layer per learning rate, all on the same batches; SGD, momentum 0.9,
                no weight decay, lr_t = lr * (1 + cos(pi t / T)) / 2 per step, weights N(0, 0.01^2)
    rates       DINOv2's grid scaled by batch_size / 256, as dinov2 scales it
    reported    the best val top-1 over the rates, with its rate (and that head's top-5)

The features are standardised with the train split's mean and std first, so that one grid of
rates suits the d = 64 bottleneck and a 1024-wide trunk alike; a linear head absorbs the affine
map, so the classifiers it can express are unchanged.

Zero-shot (CLIP): every class name in every prompt template through the text tower, averaged
per class and L2-normalised (open_clip's ``build_zero_shot_classifier``); logits = 100 cos(image,
class). ImageNet's classes (1000 WordNet-id folders) get OpenAI's 80 templates and readable
names from open_clip; any other folder gets ``GENERIC_TEMPLATES`` with its folder names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from matplotlib.figure import Figure
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
from torch import Tensor, nn
from torch.nn import functional as F

from vtp_kedro.vtp.models.tokenizer import TokenizerFeatures

if TYPE_CHECKING:  # types only: the metrics read features, they do not load tokenizers
    from vtp_kedro.vtp.inference import CLIPTowers, Tokenizer

ProbeFeatures = Literal["bottleneck", "trunk"]
DINOV2_LEARNING_RATES = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)
GENERIC_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}.", "a drawing of a {}.")
ZERO_SHOT_SCALE = 100.0


@torch.no_grad()
def probe_features(tokenizer: Tokenizer, images: Tensor, source: ProbeFeatures = "bottleneck") -> Tensor:
    """Frozen features (B, D) of images in [0, 1] (module docstring)."""
    return pooled_features(tokenizer.features(images), source)


def pooled_features(features: TokenizerFeatures, source: ProbeFeatures) -> Tensor:
    """(B, D) probe features of one encoder pass: the mean-pooled latent, or [CLS ; mean patch] of the trunk."""
    if source == "bottleneck":
        return features.latent().mean(dim=(2, 3))
    if source == "trunk":
        return torch.cat([features.trunk[:, 0], features.trunk[:, 1:].mean(dim=1)], dim=1)
    raise ValueError(f"probe features must be 'bottleneck' or 'trunk'; got {source!r}")


def top_k_accuracy(logits: Tensor, labels: Tensor, k: int) -> float:
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return float((top == labels[:, None]).any(dim=1).float().mean())


@dataclass(frozen=True)
class LinearProbeResult:
    top1: float
    top5: float | None  # None with 5 classes or fewer
    train_top1: float  # the best head's, on the standardised train features
    lr: float  # the best head's (scaled) rate
    top1_per_lr: dict[float, float]
    predictions: Tensor  # the best head's val predictions


def linear_probe(train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, num_classes: int, *,
                 learning_rates: Sequence[float] = DINOV2_LEARNING_RATES, epochs: int = 20, batch_size: int = 256,
                 seed: int = 0) -> LinearProbeResult:
    """DINOv2's linear evaluation on frozen (N, D) features (module docstring)."""
    if len(train_x) != len(train_y) or len(val_x) != len(val_y) or train_x.shape[1] != val_x.shape[1]:
        raise ValueError(f"features and labels disagree: train {tuple(train_x.shape)} / {len(train_y)}, "
                         f"val {tuple(val_x.shape)} / {len(val_y)}")
    generator = torch.Generator().manual_seed(seed)
    mean, std = train_x.float().mean(0), train_x.float().std(0).clamp_min(1e-6)
    xt, xv = (train_x.detach().float() - mean) / std, (val_x.detach().float() - mean) / std
    rates = [lr * batch_size / 256 for lr in learning_rates]
    heads = nn.ModuleList(nn.Linear(xt.shape[1], num_classes) for _ in rates)
    for head in heads:
        nn.init.normal_(head.weight, std=0.01, generator=generator)
        nn.init.zeros_(head.bias)
    optimizer = torch.optim.SGD([{"params": head.parameters(), "lr": lr} for head, lr in zip(heads, rates)],
                                momentum=0.9, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(xt) / batch_size)
    total = epochs * steps_per_epoch
    step = 0
    with torch.enable_grad():  # the heads train even when called under no_grad (the trainer's evaluations)
        for _ in range(epochs):
            order = torch.randperm(len(xt), generator=generator)
            for first in range(0, len(order), batch_size):
                index = order[first:first + batch_size]
                for group, lr in zip(optimizer.param_groups, rates):
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
                x, y = xt[index], train_y[index]
                loss = sum(F.cross_entropy(head(x), y) for head in heads)  # heads share no parameter
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
    with torch.no_grad():
        logits = [head(xv) for head in heads]
        top1 = [top_k_accuracy(value, val_y, 1) for value in logits]
        best = int(np.argmax(top1))  # the first of equals: the smallest rate
        return LinearProbeResult(top1=top1[best],
                                 top5=top_k_accuracy(logits[best], val_y, 5) if num_classes > 5 else None,
                                 train_top1=top_k_accuracy(heads[best](xt), train_y, 1), lr=rates[best],
                                 top1_per_lr=dict(zip(rates, top1)), predictions=logits[best].argmax(1))


def knn_accuracy(train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, classes: int, *, k: int = 20,
                 temperature: float = 0.07) -> float:
    """Weighted k-NN top-1 (DINO's): cosine similarity ``s`` of centred features, votes ``exp(s / T)`` of the k nearest."""
    mean = train_x.mean(0)
    xt = F.normalize(train_x - mean, dim=1)
    xv = F.normalize(val_x - mean, dim=1)
    correct = 0
    for first in range(0, len(xv), 512):
        similarity, index = (xv[first:first + 512] @ xt.T).topk(min(k, len(xt)), dim=1)
        votes = torch.zeros(len(index), classes).scatter_add_(1, train_y[index], (similarity / temperature).exp())
        correct += int((votes.argmax(1) == val_y[first:first + 512]).sum())
    return correct / len(val_y)


# ---- zero-shot ----------------------------------------------------------------------------------


def zero_shot_prompts(classes: Sequence[str]) -> tuple[list[str], tuple[str, ...], str]:
    """(class names, templates, which set) for the folder's classes (module docstring)."""
    if len(classes) == len(IMAGENET_CLASSNAMES) and all(re.fullmatch(r"n\d{8}", c) for c in classes):
        return list(IMAGENET_CLASSNAMES), tuple(OPENAI_IMAGENET_TEMPLATES), "openai_imagenet_80"
    return [c.replace("_", " ") for c in classes], GENERIC_TEMPLATES, "generic"


def zero_shot_classifier(towers: CLIPTowers, classes: Sequence[str]) -> tuple[Tensor, str]:
    """(D, C) class embeddings and the name of the template set."""
    names, templates, kind = zero_shot_prompts(classes)
    device = next(towers.parameters()).device
    weights = build_zero_shot_classifier(towers, towers.tokenize, names, templates, num_classes_per_batch=10,
                                         device=device)
    return weights, kind


def zero_shot_logits(towers: CLIPTowers, images: Tensor, classifier: Tensor) -> Tensor:
    """``100 * cos(image, class)`` of images in [0, 1]: (B, C)."""
    return ZERO_SHOT_SCALE * towers.encode_image(images, normalize=True) @ classifier


# ---- confusion matrix ---------------------------------------------------------------------------


def confusion_matrix(predictions: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(C, C) counts; row = true class, column = predicted class."""
    return torch.bincount(labels * num_classes + predictions, minlength=num_classes ** 2).reshape(num_classes, -1)


def plot_confusion_matrix(matrix: Tensor, classes: Sequence[str], title: str) -> Figure:
    """Row-normalised confusion matrix (each true class sums to 1); labels only up to 40 classes."""
    rates = (matrix.double() / matrix.sum(1, keepdim=True).clamp_min(1)).numpy()
    size = min(12.0, 2.5 + 0.45 * len(classes))
    figure = Figure(figsize=(size, size))
    ax = figure.subplots()
    image = ax.imshow(rates, vmin=0, vmax=1, cmap="viridis")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if len(classes) <= 40:
        ax.set_xticks(range(len(classes)), classes, rotation=90)
        ax.set_yticks(range(len(classes)), classes)
        if len(classes) <= 15:
            for (row, column), value in np.ndenumerate(rates):
                ax.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value < 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    figure.tight_layout()
    return figure


def pixel_features(images: Tensor) -> Tensor:
    """Raw pixels as vectors in [0, 1]: ``(N, 3 * H * W)``."""
    return images.reshape(images.shape[0], -1).float() / 255.0
