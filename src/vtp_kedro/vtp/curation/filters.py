"""Filter raw image-caption shards into clean, deduplicated, re-sharded WebDataset shards.

Each sample is checked against the rules in :data:`REASONS` order and counted under the
first one it fails. Every step is a set of tasks on an executor (``vtp.curation.executors``: a
process pool or a Dask cluster), and memory stays bounded on any dataset size:

1. One task per input shard writes the shard's compact per-sample records (the failed
   per-sample rule, size, caption length and, when enabled, the CLIP score) and spreads its
   sha256 and pHash over the dedup partitions, on disk. No image bytes leave a task.
2. The dedup (``vtp.curation.dedup``) runs one task per partition and joins their verdicts into
   one byte per sample, the sequential rule in input order exactly, so the result depends on
   neither the number of workers nor the number of partitions.
3. One task per output shard re-reads the input shards it draws from and copies its kept
   samples, member bytes unchanged, into a temporary folder that is renamed into place.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import itertools
import logging
import sys
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import imagehash
import numpy as np
import scipy.fftpack
from PIL import Image
from pydantic import Field, model_validator

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.core.io import atomic_path, is_url, join
from vtp_kedro.vtp.curation.copy_detection import SIDE, thumbnail
from vtp_kedro.vtp.curation.dedup import DedupLayout, byte_map, deduplicate, write_partitions, write_thumbnails
from vtp_kedro.vtp.curation.executors import ExecutorKind, make_executor
from vtp_kedro.vtp.data.shards import (
    SHARD_ERROR_REASONS,
    SHARD_MANIFEST,
    ShardInfo,
    expand_urls,
    iter_shard_samples,
    write_shard,
)

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
_NO_THUMBNAIL = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)  # the row of a sample that is no near-dup candidate


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


class CopyCheck(Config):
    """Bounds of the aligned copy check (``vtp.curation.copy_detection``) that verifies each pair the
    perceptual hash proposes as near duplicates.

    Measured on the labelled set (docs/near-duplicates.md): a copy of a photograph lies at
    ``relative <= 0.50`` and distinct photographs at ``>= 0.95``; re-encoded (quality >= 75),
    resized, cropped and brightened copies of the embedded 32-px scenes at ``local <= 35`` and
    scenes that differ by an object at ``>= 59`` grey levels.
    """

    max_local: float = Field(40.0, gt=0)
    max_relative: float = Field(0.75, gt=0)


class FilterRules(Config):
    """Thresholds of the data-filtering rules; ``near_dup_hamming=None`` turns near-dedup off and
    ``near_dup_check=None`` leaves the hash alone to decide."""

    min_side: int = Field(32, gt=0)
    max_aspect_ratio: float = Field(3.0, ge=1.0)
    min_caption_words: int = Field(2, gt=0)
    max_caption_words: int = Field(77, gt=0)
    max_caption_bytes: int = Field(4096, gt=0)
    exact_dedup: bool = True
    near_dup_hamming: int | None = Field(8, ge=0, le=63)
    near_dup_crop_variants: bool = True  # hash crops of each image too (``CROP_VARIANTS``)
    near_dup_check: CopyCheck | None = CopyCheck()
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
    seconds: dict[str, float] = field(default_factory=dict, repr=False, compare=False)  # per phase; not saved

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able counts and output manifest."""
        return {
            "total": self.total,
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "shard_errors": dict(self.shard_errors),
            "shards": [asdict(info) for info in self.shards],
        }


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


RECORDS_DIR = "records"


@dataclass(frozen=True)
class _ScanTask:
    """Pass 1 over one shard: the per-sample rules, hashes and CLIP scores; no image bytes leave it.

    Writes the shard's records (``records/s<shard>.npz``) and its dedup partitions, atomically
    under names of its own (a retried task replaces them), and returns its sample count and
    shard errors."""

    rules: FilterRules
    layout: DedupLayout

    def __call__(self, item: tuple[int, str]) -> tuple[int, dict[str, int]]:
        shard, url = item
        rules = self.rules
        errors: Counter = Counter()
        codes, widths, heights, words, digests, phashes, keys = [], [], [], [], [], [], []
        checked = self.layout.threshold is not None and self.layout.check is not None
        thumbnails: list[np.ndarray] = []
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
            keys.append(_key_hash(sample["__key__"]))
            reason, image, caption = check_sample(sample, rules)
            codes.append(_PASSED if reason is None else REASONS.index(reason) + 1)
            widths.append(image.size[0] if image is not None else 0)
            heights.append(image.size[1] if image is not None else 0)
            words.append(len(caption.split()) if caption is not None else -1)
            passed = reason is None
            digests.append(hashlib.sha256(sample[_image_ext(sample)]).digest() if passed and rules.exact_dedup else b"")
            phashes.append(_phashes(image, rules.near_dup_crop_variants) if passed and rules.near_dup_hamming is not None
                           else _NO_HASHES[:_hash_count(rules)])
            if checked:
                thumbnails.append(thumbnail(image) if passed else _NO_THUMBNAIL)
            scores.append(float("nan"))
            if passed and scorer is not None:
                pending.append((len(scores) - 1, scorer.preprocess(image), caption))
                if len(pending) == rules.clip_score.batch_size:
                    score_pending()
        if pending:
            score_pending()
        codes_array = np.asarray(codes, dtype=np.uint8)
        with atomic_path(self.layout.folder / RECORDS_DIR / f"s{shard:07d}.npz") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, codes=codes_array, widths=np.asarray(widths, dtype=np.int32),
                     heights=np.asarray(heights, dtype=np.int32), caption_words=np.asarray(words, dtype=np.int32),
                     clip_scores=np.asarray(scores, dtype=np.float32), key_hashes=np.asarray(keys, dtype=np.uint64))
        if checked:
            write_thumbnails(self.layout, shard, np.stack(thumbnails) if thumbnails
                             else np.empty((0, *_NO_THUMBNAIL.shape), np.uint8))
        write_partitions(self.layout, shard, np.flatnonzero(codes_array == _PASSED),
                         digests if rules.exact_dedup else None,
                         np.asarray(phashes, dtype=np.uint64).reshape(len(codes), _hash_count(rules)))
        return len(codes), dict(errors)


def _records(layout: DedupLayout, shard: int) -> dict[str, np.ndarray]:
    with np.load(layout.folder / RECORDS_DIR / f"s{shard:07d}.npz") as records:
        return {name: records[name] for name in records.files}


def _phash(image: Image.Image) -> int:
    """The 64-bit DCT perceptual hash of ``image`` as an integer."""
    return int(str(imagehash.phash(image)), 16)


# Crops (fractions off left, top, right, bottom) whose pHashes an image is indexed under too: a
# copy cropped by up to ~8% lies within a few bits of one of them (docs/near-duplicates.md).
CROP_VARIANTS: tuple[tuple[float, float, float, float], ...] = (
    (0.03, 0.03, 0.03, 0.03), (0.06, 0.06, 0.06, 0.06),
    (0.05, 0.05, 0.0, 0.0), (0.0, 0.05, 0.05, 0.0), (0.0, 0.0, 0.05, 0.05), (0.05, 0.0, 0.0, 0.05),
)
_VARIANT_SOURCE = 128  # crops are cut from a grey copy of this side, not from a full-size photo six times
_NO_HASHES = np.zeros(1 + len(CROP_VARIANTS), dtype=np.uint64)


def _hash_count(rules: FilterRules) -> int:
    return 1 + len(CROP_VARIANTS) * rules.near_dup_crop_variants


def _phashes(image: Image.Image, crop_variants: bool) -> np.ndarray:
    """``[_phash(image)]``, then, with ``crop_variants``, the same hash of each of ``CROP_VARIANTS``.

    The variants are ImageHash's pHash (a 32 x 32 grey resize, a 2-D DCT, the 8 x 8 lowest
    frequencies against their median), bit for bit, computed here on a stack because ImageHash
    hashes one image per call: the six crops cost one DCT call."""
    own = np.array([_phash(image)], dtype=np.uint64)
    if not crop_variants:
        return own
    grey = image.convert("L").resize((_VARIANT_SOURCE, _VARIANT_SOURCE), Image.Resampling.LANCZOS)
    side = _VARIANT_SOURCE
    crops = np.stack([np.asarray(grey.crop((round(side * left), round(side * top), side - round(side * right),
                                            side - round(side * bottom))).resize((32, 32), Image.Resampling.LANCZOS),
                                 dtype=np.float64)
                      for left, top, right, bottom in CROP_VARIANTS])
    low = scipy.fftpack.dct(scipy.fftpack.dct(crops, axis=1), axis=2)[:, :8, :8].reshape(len(crops), 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    variants = np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.uint64)  # row-major bits, as ImageHash's hex
    return np.concatenate([own, variants])


def _init_worker() -> None:
    import os

    # one process per core already: torch (the CLIP scorer) must not start a thread per core too
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _key_hash(key: str) -> int:
    """8 bytes naming a sample, so that pass 2 can tell a shard changed since pass 1."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class _WriteTask:
    """Pass 2 for a run of consecutive output shards: read each input shard they draw from once, up
    to its last kept sample, and copy the kept samples, members untouched, into ``<output>/<index>.tar``."""

    urls: Sequence[str]
    output_dir: str | Path
    layout: DedupLayout
    offsets: np.ndarray

    def __call__(self, outputs: list[tuple[int, list[tuple[int, int, int]]]]) -> list[ShardInfo]:
        keep = np.load(self.layout.folder / "keep.npy", mmap_mode="r")
        wanted: dict[int, np.ndarray] = {}  # input shard -> its kept positions this run writes
        for _, ranges in outputs:
            for shard, first, last in ranges:
                span = slice(int(self.offsets[shard]), int(self.offsets[shard + 1]))
                positions = np.flatnonzero(keep[span])[first:last]
                wanted[shard] = np.concatenate([wanted.get(shard, np.empty(0, np.int64)), positions])
        stream = self._kept_samples(wanted)  # one pass over the inputs, in output order
        return [write_shard(join(self.output_dir, f"{index:05d}.tar"),
                            itertools.islice(stream, sum(last - first for _, first, last in ranges)))
                for index, ranges in outputs]

    def _kept_samples(self, wanted: dict[int, np.ndarray]) -> Iterator[dict]:
        for shard in sorted(wanted):
            positions, expected = wanted[shard], _records(self.layout, shard)["key_hashes"]
            todo = iter(positions.tolist())
            target = next(todo, None)
            for position, sample in enumerate(iter_shard_samples(self.urls[shard], Counter())):
                if target is None:
                    break
                if position == target:
                    if _key_hash(sample["__key__"]) != int(expected[position]):
                        raise RuntimeError(f"shard {self.urls[shard]} changed during filtering: sample {position} "
                                           f"is {sample['__key__']!r}, another key on the first read")
                    yield {name: value for name, value in sample.items() if name != "__url__"}
                    target = next(todo, None)
            if target is not None:
                raise RuntimeError(f"shard {self.urls[shard]} changed during filtering: it ends before sample "
                                   f"{target}, which the first read found")


def _output_plan(kept_per_shard: Sequence[int], samples_per_shard: int) -> list[tuple[int, list[tuple[int, int, int]]]]:
    """Each output shard's sources: ``(input shard, first, last)`` ranges of kept ranks, in order."""
    plan: list[tuple[int, list[tuple[int, int, int]]]] = []
    current: list[tuple[int, int, int]] = []
    room = samples_per_shard
    for shard, kept in enumerate(kept_per_shard):
        taken = 0
        while taken < kept:
            step = min(room, kept - taken)
            current.append((shard, taken, taken + step))
            taken, room = taken + step, room - step
            if room == 0:
                plan.append((len(plan), current))
                current, room = [], samples_per_shard
    if current:
        plan.append((len(plan), current))
    return plan


@contextlib.contextmanager
def _output_folder(output_dir: str | Path) -> Iterator[str | Path]:
    """Where pass 2 writes. A local folder is filled under a temporary name and renamed onto
    ``output_dir`` at the end. An object store has no rename: the earlier output is deleted (its
    report first, so no report ever describes other shards) and the shards are uploaded in place;
    the filter report, written last (``write_filter_report``), marks the output complete."""
    if not is_url(output_dir):
        with atomic_path(output_dir) as tmp:
            tmp.mkdir()
            yield tmp
        return
    fs, root = fsspec.core.url_to_fs(str(output_dir))
    if fs.exists(root):
        report = f"{root.rstrip('/')}/{SHARD_MANIFEST}"
        if fs.exists(report):
            fs.rm_file(report)
        fs.rm(root, recursive=True)
    fs.makedirs(root, exist_ok=True)
    yield str(output_dir)


class _PhaseClock:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self._last = now


def filter_shards(
    urls: str | Sequence[str],
    output_dir: str | Path,
    rules: FilterRules,
    samples_per_shard: int,
    num_workers: int = 1,
    executor: ExecutorKind = "processes",
    scheduler_address: str | None = None,
    dedup_partitions: int = 16,
    work_dir: str | Path | None = None,
) -> FilterReport:
    """Filter the shards ``urls`` names into ``output_dir/{00000..}.tar`` and report what happened.

    ``urls`` is anything :func:`expand_urls` takes. Pass 1 (one task per input shard) writes
    each shard's records and dedup partitions to a scratch folder in ``work_dir`` (a shared
    filesystem for a multi-machine Dask cluster; default: the system's temporary folder); the
    dedup runs one task per partition (``vtp.curation.dedup``); pass 2 runs a few tasks per worker,
    each writing a run of consecutive output shards. ``output_dir`` is a local folder, replaced atomically, or any fsspec URL (``s3://``,
    ``gs://``, ``file://``), replaced shard by shard (see ``_output_folder``). Its bytes depend
    neither on the executor nor on ``num_workers`` or ``dedup_partitions``.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if rules.clip_score.enabled:
        _scorer_for(rules.clip_score)  # a missing checkpoint or unknown model fails before any data is read
    shard_urls = expand_urls(urls)
    log.info("filtering %d shards with %d %s workers into %s", len(shard_urls), num_workers, executor, output_dir)
    clock = _PhaseClock()
    with tempfile.TemporaryDirectory(prefix="vtp-filter-", dir=work_dir) as scratch, \
            make_executor(executor, num_workers, scheduler_address, _init_worker) as pool:
        clock.lap("start workers")
        check = (rules.near_dup_check.max_local, rules.near_dup_check.max_relative) if rules.near_dup_check else None
        layout = DedupLayout(Path(scratch), dedup_partitions, rules.near_dup_hamming, check)
        scanned = pool.map(_ScanTask(rules, layout), list(enumerate(shard_urls)))
        clock.lap("pass 1: scan shards")
        offsets = np.cumsum([0, *[count for count, _ in scanned]], dtype=np.int64)
        candidate = byte_map(layout.folder / "candidate.npy", int(offsets[-1]))
        for shard in range(len(shard_urls)):
            candidate[offsets[shard]:offsets[shard + 1]] = _records(layout, shard)["codes"] == _PASSED
        exact, admitted = deduplicate(layout, offsets, candidate, pool.map)
        clock.lap("dedup")

        dropped: Counter = Counter()
        keep = byte_map(layout.folder / "keep.npy", int(offsets[-1]))
        report_parts: dict[str, list[np.ndarray]] = {name: [] for name in ("widths", "heights", "caption_words", "kept")}
        for shard in range(len(shard_urls)):
            records, span = _records(layout, shard), slice(offsets[shard], offsets[shard + 1])
            codes = records["codes"]
            dropped.update(REASONS[code - 1] for code in codes[codes != _PASSED])
            shard_exact, shard_admitted = np.asarray(exact[span], bool), np.asarray(admitted[span], bool)
            near = (codes == _PASSED) & ~shard_exact & ~shard_admitted
            low_score = shard_admitted & (records["clip_scores"] < rules.clip_score.min_score
                                          if rules.clip_score.enabled else False)
            dropped.update({"exact_duplicate": int(shard_exact.sum()), "near_duplicate": int(near.sum()),
                            "clip_score": int(low_score.sum())})
            kept = shard_admitted & ~low_score
            keep[span] = kept
            decodable = ~np.isin(codes, _UNDECODABLE_CODES)
            for name in ("widths", "heights", "caption_words"):
                report_parts[name].append(records[name][decodable])
            report_parts["kept"].append(kept[decodable])
        keep.flush()
        kept_per_shard = [int(np.count_nonzero(keep[offsets[s]:offsets[s + 1]])) for s in range(len(shard_urls))]
        with _output_folder(output_dir) as tmp:
            plan = _output_plan(kept_per_shard, samples_per_shard)
            runs = max(1, min(len(plan), 4 * num_workers))  # a few runs per worker: balance, few boundary re-reads
            size = -(-len(plan) // runs) if plan else 1
            clock.lap("verdicts")
            written = pool.map(_WriteTask(shard_urls, tmp, layout, offsets),
                               [plan[start:start + size] for start in range(0, len(plan), size)])
            shards = [info for run in written for info in run]
        clock.lap("pass 2: write shards")

    shard_errors: Counter = sum((Counter(errors) for _, errors in scanned), Counter())
    report = FilterReport(
        total=int(offsets[-1]),
        kept=sum(kept_per_shard),
        dropped={reason: dropped[reason] for reason in REASONS},
        shard_errors={reason: shard_errors[reason] for reason in SHARD_ERROR_REASONS},
        shards=shards,
        widths=np.concatenate(report_parts["widths"]),
        heights=np.concatenate(report_parts["heights"]),
        caption_words=np.concatenate(report_parts["caption_words"]),
        kept_mask=np.concatenate(report_parts["kept"]),
        seconds=clock.laps,
    )
    log.info("kept %d of %d samples in %d shards; dropped %s", report.kept, report.total, len(shards),
             {reason: count for reason, count in report.dropped.items() if count})
    return report
