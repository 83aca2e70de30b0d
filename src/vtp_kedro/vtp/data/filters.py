"""Filter raw image-caption shards into clean, deduplicated, re-sharded WebDataset shards.

Each sample is checked against the rules in :data:`REASONS` order and counted under the
first one it fails. Two passes keep memory bounded on any dataset size:

1. Worker processes scan the input shards (one task per shard) and return compact
   per-sample records: the failed per-sample rule, size, caption length, sha256, pHash and,
   when enabled, the CLIP score. No image bytes leave a worker.
2. The parent deduplicates the records in input order (so the result cannot depend on the
   number of workers), then re-reads the input shards and copies the kept samples, member
   bytes unchanged, into fixed-size output shards built in a temporary folder that is
   renamed into place.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import logging
import multiprocessing
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image
from pydantic import Field, model_validator

from vtp_kedro.vtp.config import Config
from vtp_kedro.vtp.data.shards import (
    SHARD_ERROR_REASONS,
    ShardInfo,
    expand_urls,
    iter_shard_samples,
    write_shards,
)
from vtp_kedro.vtp.io import atomic_path

log = logging.getLogger(__name__)

REASONS: tuple[str, ...] = (
    "missing_image",
    "undecodable_image",
    "missing_caption",
    "invalid_caption",
    "empty_caption",
    "too_small",
    "aspect_ratio",
    "caption_words",
    "exact_duplicate",
    "near_duplicate",
    "clip_score",
)
"""Rule names in the order they are checked; a dropped sample counts under the first it fails."""

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
"""Members taken as the sample's image, the first present in this order."""
CAPTION_EXTENSION = "txt"
_ALLOWED_CONTROL_CHARACTERS = frozenset("\t\n\r")
_PASSED = 0  # record code of a sample that passed every per-sample rule; rule i is code i + 1
_UNDECODABLE_CODES = (REASONS.index("missing_image") + 1, REASONS.index("undecodable_image") + 1)


class ClipScoreRule(Config):
    """Drop pairs whose CLIP score, cosine(image, caption) as in DataComp, is below ``min_score``.

    The model is built offline from a local open_clip checkpoint file; nothing is downloaded.
    """

    enabled: bool = False
    model: str = "ViT-B-32"
    checkpoint: str | None = None
    min_score: float = Field(0.28, ge=-1.0, le=1.0)
    batch_size: int = Field(64, gt=0)

    @model_validator(mode="after")
    def _checkpoint_when_enabled(self) -> ClipScoreRule:
        if self.enabled and not self.checkpoint:
            raise ValueError("checkpoint must name a local open_clip checkpoint file when enabled is true")
        return self


class FilterRules(Config):
    """Thresholds of the data-filtering rules; ``near_dup_hamming=None`` turns near-dedup off."""

    min_side: int = Field(32, gt=0)
    max_aspect_ratio: float = Field(3.0, ge=1.0)
    min_caption_words: int = Field(2, gt=0)
    max_caption_words: int = Field(77, gt=0)
    max_caption_bytes: int = Field(4096, gt=0)
    exact_dedup: bool = True
    near_dup_hamming: int | None = Field(4, ge=0, le=63)
    clip_score: ClipScoreRule = ClipScoreRule()

    @model_validator(mode="after")
    def _word_bounds_ordered(self) -> FilterRules:
        if self.min_caption_words > self.max_caption_words:
            raise ValueError(
                f"min_caption_words ({self.min_caption_words}) must be <= "
                f"max_caption_words ({self.max_caption_words})"
            )
        return self


@dataclass
class FilterReport:
    """Counts, output manifest and the per-sample arrays behind the report plots.

    The arrays cover the input samples whose image decoded; ``caption_words`` is -1 where the
    caption was missing or invalid, and ``kept`` marks the samples written out.
    """

    total: int
    kept: int
    dropped: dict[str, int]
    shard_errors: dict[str, int]
    shards: list[ShardInfo]
    widths: np.ndarray = field(repr=False)
    heights: np.ndarray = field(repr=False)
    caption_words: np.ndarray = field(repr=False)
    kept_mask: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able counts and output manifest."""
        return {
            "total": self.total,
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "shard_errors": dict(self.shard_errors),
            "shards": [asdict(info) for info in self.shards],
        }


class HammingIndex:
    """Finds whether a stored 64-bit hash lies within ``threshold`` bits of a query, sub-linearly.

    Pigeonhole banding: the 64 bits are cut into ``threshold + 1`` bands; two hashes that differ
    in at most ``threshold`` bits agree exactly on at least one band, so only hashes sharing a
    band value with the query are compared.
    """

    def __init__(self, threshold: int) -> None:
        if not 0 <= threshold <= 63:
            raise ValueError(f"threshold must be in 0..63, got {threshold}")
        self.threshold = threshold
        widths = [64 // (threshold + 1) + (i < 64 % (threshold + 1)) for i in range(threshold + 1)]
        starts = itertools.accumulate(widths, initial=0)
        self._bands = [(start, (1 << width) - 1) for start, width in zip(starts, widths)]
        self._buckets: list[dict[int, list[int]]] = [{} for _ in self._bands]

    def add(self, value: int) -> None:
        for (shift, mask), bucket in zip(self._bands, self._buckets):
            bucket.setdefault((value >> shift) & mask, []).append(value)

    def contains_near(self, value: int) -> bool:
        for (shift, mask), bucket in zip(self._bands, self._buckets):
            for other in bucket.get((value >> shift) & mask, ()):
                if (value ^ other).bit_count() <= self.threshold:
                    return True
        return False


class ClipScorer:
    """CLIP score as in DataComp: cosine similarity of normalised image and caption embeddings."""

    def __init__(self, rule: ClipScoreRule) -> None:
        # Imported here: workers that do not score need neither torch nor open_clip.
        import open_clip
        import torch

        checkpoint = _checked_checkpoint(rule)
        self._torch = torch
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            rule.model, pretrained=str(checkpoint)
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(rule.model)

    def __call__(self, images: Sequence[Any], captions: Sequence[str]) -> np.ndarray:
        """Scores of the pairs; an image may be a PIL image or already ``self.preprocess``-ed."""
        torch = self._torch
        with torch.inference_mode():
            pixels = torch.stack([im if isinstance(im, torch.Tensor) else self.preprocess(im) for im in images])
            image_features = self.model.encode_image(pixels, normalize=True)
            text_features = self.model.encode_text(self.tokenizer(list(captions)), normalize=True)
        return (image_features * text_features).sum(dim=-1).float().numpy()


def _checked_checkpoint(rule: ClipScoreRule) -> Path:
    checkpoint = Path(rule.checkpoint or "")
    if not checkpoint.is_file():
        raise FileNotFoundError(f"clip_score.checkpoint: open_clip checkpoint file not found: {checkpoint}")
    return checkpoint


@functools.lru_cache(maxsize=1)
def _scorer_for(rule: ClipScoreRule) -> ClipScorer:
    """One model per process, built on first use."""
    return ClipScorer(rule)


def _image_ext(sample: Mapping[str, Any]) -> str | None:
    return next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)


def _decode_image(data: bytes) -> Image.Image | None:
    """Fully decode ``data`` (a lazy open would accept a truncated file); None if it cannot be."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    # PIL signals a broken file with many exception types (OSError, SyntaxError, ValueError,
    # struct.error, DecompressionBombError...): any of them means the image is undecodable.
    except Exception:
        return None
    return image


def _check_caption(raw: bytes | None, rules: FilterRules) -> tuple[str | None, str | None]:
    """(failed rule or None, decoded caption) for the caption rules, in REASONS order."""
    if raw is None:
        return "missing_caption", None
    if len(raw) > rules.max_caption_bytes:
        return "invalid_caption", None
    try:
        caption = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_caption", None
    if any(unicodedata.category(ch) == "Cc" and ch not in _ALLOWED_CONTROL_CHARACTERS for ch in caption):
        return "invalid_caption", None
    if not caption.strip():
        return "empty_caption", caption
    return None, caption


def check_sample(
    sample: Mapping[str, Any], rules: FilterRules
) -> tuple[str | None, Image.Image | None, str | None]:
    """Apply the per-sample rules: (first failed rule or None, decoded image, valid caption).

    The image is returned whenever it decoded and the caption whenever it is valid UTF-8 text,
    even when a later rule failed, so the report can describe every decodable sample.
    """
    image_ext = _image_ext(sample)
    if image_ext is None:
        return "missing_image", None, None
    image = _decode_image(sample[image_ext])
    if image is None:
        return "undecodable_image", None, None
    reason, caption = _check_caption(sample.get(CAPTION_EXTENSION), rules)
    if reason is not None:
        return reason, image, caption
    short, long = sorted(image.size)
    if short < rules.min_side:
        return "too_small", image, caption
    if long / short > rules.max_aspect_ratio:
        return "aspect_ratio", image, caption
    if not rules.min_caption_words <= len(caption.split()) <= rules.max_caption_words:
        return "caption_words", image, caption
    return None, image, caption


@dataclass
class _ShardScan:
    """Pass-1 records of one shard, one entry per sample in reading order."""

    url: str
    codes: np.ndarray  # uint8: _PASSED or 1 + index in REASONS of the failed per-sample rule
    widths: np.ndarray  # int32, 0 where undecodable
    heights: np.ndarray
    caption_words: np.ndarray  # int32, -1 where the caption is missing or invalid
    sha256: list[bytes]  # empty unless the sample passed and exact dedup is on
    phash: np.ndarray  # uint64, set where the sample passed and near dedup is on
    clip_scores: np.ndarray  # float32, NaN unless scored
    errors: Counter


def _scan_shard(url: str, rules: FilterRules) -> _ShardScan:
    """Pass 1 over one shard: per-sample rules, hashes and CLIP scores, no image bytes kept."""
    errors: Counter = Counter()
    codes, widths, heights, words, digests, phashes = [], [], [], [], [], []
    scores: list[float] = []
    scorer = _scorer_for(rules.clip_score) if rules.clip_score.enabled else None
    # Samples awaiting a CLIP batch, preprocessed at once: small tensors, not full-size pictures.
    pending: list[tuple[int, Any, str]] = []

    def score_pending() -> None:
        batch_scores = scorer([image for _, image, _ in pending], [caption for _, _, caption in pending])
        for (index, _, _), score in zip(pending, batch_scores):
            scores[index] = float(score)
        pending.clear()

    for sample in iter_shard_samples(url, errors):
        reason, image, caption = check_sample(sample, rules)
        codes.append(_PASSED if reason is None else REASONS.index(reason) + 1)
        widths.append(image.size[0] if image is not None else 0)
        heights.append(image.size[1] if image is not None else 0)
        words.append(len(caption.split()) if caption is not None else -1)
        passed = reason is None
        digests.append(hashlib.sha256(sample[_image_ext(sample)]).digest() if passed and rules.exact_dedup else b"")
        phashes.append(_phash(image) if passed and rules.near_dup_hamming is not None else 0)
        scores.append(float("nan"))
        if passed and scorer is not None:
            pending.append((len(scores) - 1, scorer.preprocess(image), caption))
            if len(pending) == rules.clip_score.batch_size:
                score_pending()
    if pending:
        score_pending()
    return _ShardScan(
        url=url,
        codes=np.asarray(codes, dtype=np.uint8),
        widths=np.asarray(widths, dtype=np.int32),
        heights=np.asarray(heights, dtype=np.int32),
        caption_words=np.asarray(words, dtype=np.int32),
        sha256=digests,
        phash=np.asarray(phashes, dtype=np.uint64),
        clip_scores=np.asarray(scores, dtype=np.float32),
        errors=errors,
    )


def _phash(image: Image.Image) -> int:
    """The 64-bit DCT perceptual hash of ``image`` as an integer."""
    return int(str(imagehash.phash(image)), 16)


def _init_worker(clip_enabled: bool) -> None:
    if clip_enabled:
        import torch

        torch.set_num_threads(1)  # one process per core already: more threads would oversubscribe


def _scan_all(urls: Sequence[str], rules: FilterRules, num_workers: int) -> Iterator[_ShardScan]:
    """Pass-1 scans in input order, from ``num_workers`` processes (in-process for one)."""
    workers = min(num_workers, len(urls))
    if workers <= 1:
        yield from (_scan_shard(url, rules) for url in urls)
        return
    # spawn: the same start method everywhere, and safe with torch's threads (fork is not).
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(rules.clip_score.enabled,)
    ) as pool:
        yield from pool.map(_scan_shard, urls, itertools.repeat(rules))


def _dedup_and_score(scans: Sequence[_ShardScan], rules: FilterRules, dropped: Counter) -> list[np.ndarray]:
    """Apply the dataset-level rules in input order; returns one keep mask per shard."""
    seen_sha256: set[bytes] = set()
    near_index = HammingIndex(rules.near_dup_hamming) if rules.near_dup_hamming is not None else None
    masks = []
    for scan in scans:
        keep = np.zeros(len(scan.codes), dtype=bool)
        for i, code in enumerate(scan.codes):
            if code != _PASSED:
                dropped[REASONS[code - 1]] += 1
                continue
            if rules.exact_dedup:
                if scan.sha256[i] in seen_sha256:
                    dropped["exact_duplicate"] += 1
                    continue
                seen_sha256.add(scan.sha256[i])
            if near_index is not None:
                phash = int(scan.phash[i])
                if near_index.contains_near(phash):
                    dropped["near_duplicate"] += 1
                    continue
                near_index.add(phash)
            if rules.clip_score.enabled and scan.clip_scores[i] < rules.clip_score.min_score:
                dropped["clip_score"] += 1
                continue
            keep[i] = True
        masks.append(keep)
    return masks


def _kept_samples(scans: Sequence[_ShardScan], masks: Sequence[np.ndarray]) -> Iterator[dict]:
    """Pass 2: re-read the input shards and yield the kept samples, members untouched."""
    for scan, keep in zip(scans, masks):
        count = 0
        for index, sample in enumerate(iter_shard_samples(scan.url, Counter())):
            count = index + 1
            if count > len(keep):
                break
            if keep[index]:
                yield {name: value for name, value in sample.items() if name != "__url__"}
        if count != len(keep):
            raise RuntimeError(
                f"shard {scan.url} changed during filtering: {len(keep)} samples on the first read, "
                f"{'more' if count > len(keep) else count} on the second"
            )


def filter_shards(
    urls: str | Sequence[str],
    output_dir: str | Path,
    rules: FilterRules,
    samples_per_shard: int,
    num_workers: int = 1,
) -> FilterReport:
    """Filter the shards ``urls`` names into ``output_dir/{00000..}.tar`` and report what happened.

    ``urls`` is anything :func:`expand_urls` takes. The output folder is replaced atomically
    and its bytes do not depend on ``num_workers``.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if rules.clip_score.enabled:
        _scorer_for(rules.clip_score)  # a missing checkpoint or unknown model fails before any data is read
    shard_urls = expand_urls(urls)
    log.info("filtering %d shards with %d workers into %s", len(shard_urls), num_workers, output_dir)

    scans = list(_scan_all(shard_urls, rules, num_workers))
    dropped: Counter = Counter()
    masks = _dedup_and_score(scans, rules, dropped)
    with atomic_path(output_dir) as tmp:
        tmp.mkdir()
        shards = write_shards(tmp, _kept_samples(scans, masks), samples_per_shard)

    shard_errors: Counter = sum((scan.errors for scan in scans), Counter())
    codes = np.concatenate([scan.codes for scan in scans])  # expand_urls never returns no shard
    decodable = ~np.isin(codes, _UNDECODABLE_CODES)

    def decodable_values(name: str) -> np.ndarray:
        return np.concatenate([getattr(scan, name) for scan in scans])[decodable]

    report = FilterReport(
        total=len(codes),
        kept=int(sum(mask.sum() for mask in masks)),
        dropped={reason: dropped[reason] for reason in REASONS},
        shard_errors={reason: shard_errors[reason] for reason in SHARD_ERROR_REASONS},
        shards=shards,
        widths=decodable_values("widths"),
        heights=decodable_values("heights"),
        caption_words=decodable_values("caption_words"),
        kept_mask=np.concatenate(masks)[decodable],
    )
    log.info("kept %d of %d samples in %d shards; dropped %s", report.kept, report.total, len(shards),
             {reason: count for reason, count in report.dropped.items() if count})
    return report
