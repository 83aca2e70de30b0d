"""ImageNet-style labelled image folders: ``root/<split>/<class>/*.{JPEG,jpg,png,webp}``.

Classes are the sorted sub-folder names of the split, numbered from 0 in that order (as
torchvision's ``ImageFolder`` numbers them, and as ImageNet's sorted WordNet ids give its
class indices). The later stages read them: latent extraction, the linear probe and FID.

Decoding always reads the whole file, so a truncated image fails here rather than as a
grey band in a training batch. ``iter_labelled_images`` skips and counts bad files under
a named reason; ``LabelledImageFolder[i]`` raises an error naming the file.
"""

from __future__ import annotations

import collections
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import DatasetFolder

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpeg", ".jpg", ".png", ".webp")  # matched case-insensitively


class UnreadableImageError(OSError):
    """An image file that cannot be decoded; ``reason`` is one of the counted skip reasons."""

    def __init__(self, path: str | Path, reason: str, detail: str):
        super().__init__(f"cannot read image {path} ({reason}): {detail}")
        self.path = str(path)
        self.reason = reason


def decode_image_file(path: str | Path) -> Image.Image:
    """Fully decode ``path`` to an RGB image, or raise ``UnreadableImageError``.

    Reasons: ``unreadable_file`` (the file cannot be read), ``empty_file`` (zero bytes),
    ``not_an_image`` (PIL recognises no format), ``truncated`` (the data ends early),
    ``decode_error`` (any other decoder failure).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UnreadableImageError(path, "unreadable_file", str(exc)) from exc
    if not data:
        raise UnreadableImageError(path, "empty_file", "zero bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            # convert() forces the full decode; Image.open alone reads only the header.
            return image.convert("RGB")
    except Image.UnidentifiedImageError as exc:
        raise UnreadableImageError(path, "not_an_image", "no known image format") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error... on malformed data
        reason = "truncated" if "truncated" in str(exc).lower() else "decode_error"
        raise UnreadableImageError(path, reason, f"{type(exc).__name__}: {exc}") from exc


def _split_dir(root: str | Path, split: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"labelled image folder {root} does not exist")
    split_dir = root / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"split folder {split_dir} does not exist")
    return split_dir


class LabelledImageFolder(DatasetFolder):
    """A labelled split: ``.classes``, ``.class_to_idx``, ``.samples`` (path, label) and ``(image, label)`` items."""

    def __init__(self, root: str | Path, split: str, transform: Callable[[Image.Image], Any] | None = None):
        split_dir = _split_dir(root, split)
        try:
            super().__init__(str(split_dir), loader=decode_image_file, extensions=IMAGE_EXTENSIONS, transform=transform)
        except FileNotFoundError as exc:  # torchvision's "no class folder" / "no valid file" errors
            raise ValueError(f"labelled split {split_dir} has no usable images: {exc}") from exc
        self.split_dir = split_dir


def iter_labelled_images(
    root: str | Path, split: str, errors: collections.Counter | None = None,
) -> Iterator[tuple[str, Image.Image, int]]:
    """Yield ``(key, RGB image, label)`` in a fixed order; ``key`` is the path under the split, without suffix.

    Unreadable files are skipped and counted in ``errors`` under their reason.
    """
    folder = LabelledImageFolder(root, split)
    for path, label in folder.samples:
        try:
            image = decode_image_file(path)
        except UnreadableImageError as exc:
            if errors is not None:
                errors[exc.reason] += 1
            continue
        yield Path(path).relative_to(folder.split_dir).with_suffix("").as_posix(), image, label


def center_crop_arr(image: Image.Image, image_size: int) -> np.ndarray:
    """ADM's ``center_crop_arr``: box-halve while the short side >= 2x the target, bicubic resize, centre crop."""
    while min(*image.size) >= 2 * image_size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.Resampling.BOX)
    scale = image_size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.Resampling.BICUBIC)
    array = np.asarray(image.convert("RGB"))
    top, left = (array.shape[0] - image_size) // 2, (array.shape[1] - image_size) // 2
    return array[top:top + image_size, left:left + image_size]


class CroppedImages(Dataset):
    """``(uint8 (3, S, S) pixels, label)`` of (path, label) samples, through ``center_crop_arr``."""

    def __init__(self, samples: list[tuple[str, int]], image_size: int) -> None:
        self.samples, self.image_size = samples, image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        pixels = center_crop_arr(decode_image_file(path), self.image_size)
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1), label


def cropped_batches(root: str | Path, split: str, image_size: int, batch_size: int, max_images: int | None = None,
                    num_workers: int = 0, per_class: int | None = None,
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(uint8 (B, 3, S, S), labels (B,))`` batches of a split in the folder's fixed order (the first
    ``per_class`` images of each class, then the first ``max_images``; None: all), preprocessed as
    latent extraction does (``center_crop_arr``), decoded by ``num_workers`` processes."""
    samples = LabelledImageFolder(root, split).samples
    if per_class is not None:
        taken: collections.Counter = collections.Counter()
        kept = []
        for path, label in samples:
            if taken[label] < per_class:
                taken[label] += 1
                kept.append((path, label))
        samples = kept
    yield from DataLoader(CroppedImages(samples[:max_images], image_size), batch_size=batch_size,
                          num_workers=num_workers)


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


def image_tensor(image: Image.Image) -> Tensor:
    """An image as uint8 ``(3, H, W)``."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)


def load_labelled_split(root: str | Path, split: str) -> LabelledSplit:
    """Read ``root/<split>/<class>/*`` (an ImageNet-style folder) into memory."""
    folder = LabelledImageFolder(root, split)
    images, labels = [], []
    for index in range(len(folder)):
        image, label = folder[index]
        images.append(image_tensor(image))
        labels.append(label)
    return LabelledSplit(torch.stack(images), torch.tensor(labels, dtype=torch.int64), tuple(folder.classes))
