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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
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


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """The shorter side resized to ``size`` (bicubic), then the centre ``size`` x ``size`` square."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))


def labelled_image_batches(root: str | Path, split: str, image_size: int, batch_size: int,
                           max_images: int | None = None) -> Iterator[torch.Tensor]:
    """Batches (B, 3, S, S) of a split's images in [0, 1], in the folder's fixed order (the first
    ``max_images`` of them; None: all), resized and centre-cropped to ``image_size``."""
    batch: list[np.ndarray] = []
    for index, (_, image, _) in enumerate(iter_labelled_images(root, split)):
        if max_images is not None and index >= max_images:
            break
        batch.append(np.asarray(resize_center_crop(image, image_size)))
        if len(batch) == batch_size:
            yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div(255)
            batch = []
    if batch:
        yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div(255)
