"""A labelled near-duplicate set and the precision and recall of a near-duplicate rule on it.

A web crawl holds the same picture many times over: re-encoded, resized, cropped by a few
percent, brightened. A near-duplicate rule must flag those copies and nothing else. This module
builds the labelled set such a rule is judged on: every original, and for each transformation
in ``TRANSFORMS`` one copy of every original. For one transformation ``t`` the pairs are all
pairs of its images (originals and their ``t``-copies); a pair is *positive* when it is an
original and its own copy, *negative* otherwise (two distinct originals, or an original and
another's copy). With ``flagged(a, b)`` the rule's verdict,

    recall_t    = |flagged positive pairs| / |positive pairs|
    precision_t = |flagged positive pairs| / |flagged pairs|      (1.0 when nothing is flagged)

so precision counts every distinct pair the rule confuses, at the prevalence the set has. The
originals come from the caller: real photographs shipped in installed packages (scikit-image's
``skimage.data``) and the embedded generator's images (``real_photographs``, the tests).

The rule under judgement is one or more hashes per image (each an integer of at most 64 bits:
``hasher`` returns a tuple) and a Hamming threshold for each; a pair is flagged when every hash
lies within its threshold, so hash kinds combine (structure and colour, say), and, given a
``check``, when the check passes the two images' thumbnails too (the filter's rule: pHash bands
propose, ``vtp.curation.copy_detection`` decides; ``vtp.curation.dedup``).
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from vtp_kedro.vtp.curation.copy_detection import thumbnail


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _resize(image: Image.Image, factor: float) -> Image.Image:
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.BICUBIC)


def _crop(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    """Crop the given fractions of the width and height off each side."""
    w, h = image.size
    return image.crop((round(w * left), round(h * top), w - round(w * right), h - round(h * bottom)))


# The copies a crawl holds of one picture; each a deterministic function of the image.
TRANSFORMS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "jpeg_q50": lambda im: _jpeg(im, 50),
    "jpeg_q75": lambda im: _jpeg(im, 75),
    "resize_0.5x": lambda im: _resize(im, 0.5),
    "resize_1.5x": lambda im: _resize(im, 1.5),
    "crop_2pct_sides": lambda im: _crop(im, 0.02, 0.02, 0.02, 0.02),
    "crop_4pct_sides": lambda im: _crop(im, 0.04, 0.04, 0.04, 0.04),
    "crop_6pct_corner": lambda im: _crop(im, 0.06, 0.06, 0.0, 0.0),
    "brightness_+10pct": lambda im: ImageEnhance.Brightness(im).enhance(1.1),
    "brightness_-10pct": lambda im: ImageEnhance.Brightness(im).enhance(0.9),
    "contrast_+10pct": lambda im: ImageEnhance.Contrast(im).enhance(1.1),
    "contrast_-10pct": lambda im: ImageEnhance.Contrast(im).enhance(0.9),
}


@dataclass(frozen=True)
class Scores:
    """One transformation's verdict counts and the rates they give."""

    positives: int
    flagged_positives: int
    flagged_negatives: int

    @property
    def recall(self) -> float:
        return self.flagged_positives / self.positives if self.positives else 1.0

    @property
    def precision(self) -> float:
        flagged = self.flagged_positives + self.flagged_negatives
        return self.flagged_positives / flagged if flagged else 1.0


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between two vectors of uint64 hashes: shape [len(a), len(b)]."""
    return np.bitwise_count(a.astype(np.uint64)[:, None] ^ b.astype(np.uint64)[None, :])


Hasher = Callable[[Image.Image], tuple[int, ...]]


def _hashes(images: list[Image.Image], hasher: Hasher) -> np.ndarray:
    return np.array([hasher(image) for image in images], dtype=np.uint64)


def flagged_by_hashes(hashes: np.ndarray, thresholds: tuple[int, ...], crop_variants: bool = False) -> np.ndarray:
    """[n, n] booleans: every hash kind (column of ``hashes``) within its threshold; with
    ``crop_variants``, the columns are one kind (an own hash, then crop hashes) and a pair is
    flagged when the own hash of one lies within ``thresholds[0]`` of any hash of the other."""
    if crop_variants:
        close = np.zeros((len(hashes), len(hashes)), dtype=bool)
        for column in range(hashes.shape[1]):
            close |= hamming(hashes[:, 0], hashes[:, column]) <= thresholds[0]
        return close | close.T
    if hashes.shape[1] != len(thresholds):
        raise ValueError(f"{len(thresholds)} thresholds for {hashes.shape[1]} hashes per image")
    close = np.ones((len(hashes), len(hashes)), dtype=bool)
    for kind, threshold in enumerate(thresholds):
        close &= hamming(hashes[:, kind], hashes[:, kind]) <= threshold
    return close


Check = Callable[[np.ndarray, np.ndarray], np.ndarray]  # thumbnails [n, ...] twice -> booleans [n]


def evaluate(originals: Mapping[str, Image.Image], hasher: Hasher, thresholds: tuple[int, ...],
             transforms: Mapping[str, Callable[[Image.Image], Image.Image]] = TRANSFORMS,
             check: Check | None = None, crop_variants: bool = False) -> dict[str, Scores]:
    """Precision and recall, per transformation, of "every hash within its threshold (and the
    ``check`` passes)" on ``originals``; ``crop_variants``: see ``flagged_by_hashes``."""
    if len(originals) < 2:
        raise ValueError(f"a near-duplicate set needs at least two originals, got {len(originals)}")
    images = list(originals.values())
    base = _hashes(images, hasher)
    n = len(images)
    positive = np.zeros((2 * n, 2 * n), dtype=bool)
    positive[np.arange(n), np.arange(n) + n] = True
    upper = np.triu(np.ones((2 * n, 2 * n), dtype=bool), k=1)  # each unordered pair once
    base_thumbnails = np.stack([thumbnail(image) for image in images]) if check else None
    scores = {}
    for name, transform in transforms.items():
        copied = [transform(image) for image in images]
        flagged = flagged_by_hashes(np.concatenate([base, _hashes(copied, hasher)]), thresholds, crop_variants) & upper
        if check is not None:
            thumbnails = np.concatenate([base_thumbnails, np.stack([thumbnail(image) for image in copied])])
            i, j = np.nonzero(flagged)
            flagged[i, j] = check(thumbnails[i], thumbnails[j])
        scores[name] = Scores(positives=n, flagged_positives=int((flagged & positive).sum()),
                              flagged_negatives=int((flagged & upper & ~positive).sum()))
    return scores


def distances(originals: Mapping[str, Image.Image], hasher: Hasher,
              transforms: Mapping[str, Callable[[Image.Image], Image.Image]] = TRANSFORMS) -> dict[str, np.ndarray]:
    """Per transformation, each original's Hamming distance to its copy, per hash kind ([n, kinds]);
    under ``"distinct"``, every pair of distinct originals' distances, in ``itertools.combinations``
    order ([pairs, kinds]). The thresholds' raw material."""
    images = list(originals.values())
    base = _hashes(images, hasher)
    result = {name: np.bitwise_count(base ^ _hashes([transform(image) for image in images], hasher))
              for name, transform in transforms.items()}
    pairs = np.array(list(itertools.combinations(range(len(images)), 2)), dtype=np.int64).reshape(-1, 2)
    result["distinct"] = np.bitwise_count(base[pairs[:, 0]] ^ base[pairs[:, 1]])
    return result


def closest_distinct_pairs(originals: Mapping[str, Image.Image], hasher: Hasher,
                           count: int = 3) -> list[tuple[tuple[int, ...], str, str]]:
    """The ``count`` pairs of distinct originals whose hashes lie closest (by the largest of
    their per-kind distances): (distances, name, name)."""
    found = distances(originals, hasher, transforms={})["distinct"]
    pairs = [(tuple(int(d) for d in row), a, b)
             for row, (a, b) in zip(found, itertools.combinations(list(originals), 2))]
    return sorted(pairs, key=lambda pair: (max(pair[0]), pair[0]))[:count]


# Photographs of scikit-image's bundled data (no download). Left out: drawings, text, synthetic
# test patterns and the stereo pair's right view (the left and right views of one scene are, to
# any global hash, a shifted copy: a near duplicate by construction, not a distinct photograph).
SKIMAGE_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
                  "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
                  "microaneurysms.png", "moon.png", "motorcycle_left.png", "retina.jpg", "rocket.jpg")


def real_photographs(max_side: int = 256) -> dict[str, Image.Image]:
    """scikit-image's bundled photographs, RGB, downsized to ``max_side`` (web-image sizes);
    raises ImportError naming the package when scikit-image is not installed."""
    try:
        import skimage
    except ImportError as error:
        raise ImportError("the labelled near-duplicate set's photographs come from scikit-image's bundled "
                          "data: pip install scikit-image") from error
    folder = Path(skimage.__file__).parent / "data"
    photos = {}
    for name in SKIMAGE_PHOTOS:
        with Image.open(folder / name) as image:
            image = image.convert("RGB")
        scale = max_side / max(image.size)
        photos[name] = _resize(image, scale) if scale < 1 else image
    return photos
