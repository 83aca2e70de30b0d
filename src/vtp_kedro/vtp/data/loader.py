"""Streaming image-caption batches for tokenizer pre-training: sharded, shuffled, deterministic, resumable.

Order. Epoch ``e`` permutes the shard list with ``(seed, e)``; rank ``r`` reads
``shards[r::world_size]`` of it and its DataLoader worker ``w`` reads ``[w::W]`` of those
(``W = max(1, num_workers)``), so each shard is read by one worker of one rank per epoch. A
worker streams its shards' samples through a shuffle buffer seeded by ``(seed, e, r, w)``,
decodes, crops, flips and tokenises them, and yields whole batches, looping over epochs
without end (a batch may span two epochs). PyTorch's DataLoader takes worker outputs
round-robin, so global batch ``k`` is worker ``k % W``'s ``(k // W)``-th batch: the order
depends on the seed, the world size and the worker count, never on timing.

Resuming. Every batch carries where its worker stopped: ``(epoch, samples read in that
epoch)``, counting the samples it had to skip. The stream keeps, for the batches its
consumer has taken, the batch count and each worker's stop. A resumed stream gives the next
batch to DataLoader worker 0 by renumbering the workers, and each worker replays its epoch's
shard bytes and shuffle draws up to its stop without decoding an image, so the next batch
equals the one an uninterrupted run would have produced.
"""

from __future__ import annotations

import io
import logging
import random
from collections import Counter
from collections.abc import Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from pydantic import Field
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.data.preprocess import normalize, tokenize
from vtp_kedro.vtp.data.shards import expand_urls, iter_shard_samples

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")  # the first one present is the image

# SeedSequence domain tags, so that the shard permutation and a worker's sample stream never share entropy.
_SHARD_ORDER, _SAMPLE_ORDER = 0, 1
_DRAWS_PER_SAMPLE = 3  # crop x, crop y, flip: drawn for every sample read, so that skipping replays them exactly


class PretrainDataConfig(Config):
    """Where the shards are and how a rank's batches are made from them."""

    shards: str | list[str] = Field(description="path, directory, glob, brace pattern or fsspec URL (or a list)")
    image_size: int = Field(gt=0, description="side of the square output images")
    batch_size: int = Field(gt=0, description="samples per batch on each rank")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes; 0 reads in the main process")
    prefetch_factor: int = Field(2, ge=1, description="batches each worker prepares ahead")
    shuffle_buffer: int = Field(1000, ge=0, description="samples per worker's shuffle buffer; 0 keeps shard order")
    seed: int = Field(0, ge=0)
    context_length: int = Field(77, ge=2, description="caption tokens, start and end tokens included")
    captions: bool = Field(True, description="read and tokenise captions; False: images only (any image shards)")
    random_crop: bool = Field(True, description="random square crop after resizing the shorter side; else centre")
    flip_probability: float = Field(0.5, ge=0.0, le=1.0, description="probability of a horizontal flip")


class _WorkerBatches(IterableDataset):
    """One DataLoader worker's endless stream of ``(batch, progress)`` pairs; see the module docstring."""

    def __init__(self, config: PretrainDataConfig, urls: list[str], rank: int, world_size: int,
                 batches: int, positions: list[tuple[int, int]]) -> None:
        self.config = config
        self.urls = urls
        self.rank = rank
        self.world_size = world_size
        self.batches = batches
        self.positions = positions

    def shards(self, epoch: int, worker: int) -> list[str]:
        order = np.random.default_rng([self.config.seed, _SHARD_ORDER, epoch]).permutation(len(self.urls))
        return [self.urls[i] for i in order[self.rank::self.world_size][worker::len(self.positions)]]

    def epoch_samples(self, epoch: int, worker: int, errors: Counter) -> Iterator[tuple[dict, np.ndarray]]:
        """The raw samples of ``worker``'s shards in epoch ``epoch``, shuffled, each with its augmentation draws."""
        samples = (sample for url in self.shards(epoch, worker) for sample in iter_shard_samples(url, errors))
        shuffle_seed, augment_seed = np.random.SeedSequence(
            [self.config.seed, _SAMPLE_ORDER, epoch, self.rank, worker]).spawn(2)
        if self.config.shuffle_buffer:
            rng = random.Random(int.from_bytes(shuffle_seed.generate_state(4).tobytes(), "little"))
            buffer = self.config.shuffle_buffer
            samples = wds.filters.shuffle(bufsize=buffer, initial=buffer, rng=rng)(samples)
        augment = np.random.default_rng(augment_seed)
        for sample in samples:
            yield sample, augment.random(_DRAWS_PER_SAMPLE)

    def __iter__(self) -> Iterator[tuple[dict, dict]]:
        info = get_worker_info()
        worker = ((info.id if info is not None else 0) + self.batches) % len(self.positions)
        epoch, skip = self.positions[worker]
        size, batch_size = self.config.image_size, self.config.batch_size
        errors: Counter = Counter()
        batch: list[tuple[str, np.ndarray, str, bool]] = []
        while True:
            read = usable = 0
            for read, (sample, draws) in enumerate(self.epoch_samples(epoch, worker, errors), start=1):
                if read <= skip:
                    if read == skip:
                        errors.clear()  # those were counted before the data position was saved
                    continue
                item = _decode_sample(sample, draws, size, self.config.random_crop,
                                      self.config.flip_probability, self.config.captions, errors)
                if item is None:
                    continue
                usable += 1
                batch.append(item)
                if len(batch) == batch_size:
                    progress = {"worker": worker, "position": (epoch, read), "skipped": dict(errors)}
                    yield _collate(batch, self.config.context_length if self.config.captions else None), progress
                    batch = []
                    errors.clear()  # not a new Counter: the shard readers of this epoch hold this one
            if read < skip:
                raise RuntimeError(
                    f"cannot resume rank {self.rank} worker {worker}: the saved position is sample {skip} of "
                    f"epoch {epoch}, but its shards hold {read}; did the shards change since the state was saved?"
                )
            if usable == 0 and skip == 0:
                # An endless loop over unreadable shards would hang the trainer without a word.
                raise RuntimeError(
                    f"rank {self.rank} worker {worker} found no usable sample in epoch {epoch} in its shards "
                    f"{self.shards(epoch, worker)} (skipped: {dict(errors)})"
                )
            epoch, skip = epoch + 1, 0


def _skip(errors: Counter, reason: str, sample: dict, detail: str = "") -> None:
    errors[reason] += 1
    log.warning("skipping sample %s of %s (%s)%s", sample["__key__"], sample["__url__"], reason,
                f": {detail}" if detail else "")


def _decode_sample(sample: dict, draws: np.ndarray, size: int, random_crop: bool, flip_probability: float,
                   captions: bool, errors: Counter) -> tuple[str, np.ndarray, str, bool] | None:
    """A raw sample -> ``(key, HxWx3 uint8 pixels, caption or "", flip)``, or None (counted in ``errors``)."""
    image_bytes = next((sample[ext] for ext in IMAGE_EXTENSIONS if ext in sample), None)
    if image_bytes is None:
        _skip(errors, "missing_image", sample)
        return None
    caption = ""
    if captions and "txt" not in sample:
        _skip(errors, "missing_caption", sample)
        return None
    try:
        caption = sample["txt"].decode("utf-8") if captions else ""
    except UnicodeDecodeError as exc:
        _skip(errors, "undecodable_caption", sample, str(exc))
        return None
    try:
        image = Image.open(io.BytesIO(image_bytes))
        # A JPEG then decodes at the smallest 1/2^n scale still >= size: large images decode several times faster.
        image.draft("RGB", (size, size))
        image.load()  # the full decode, so a truncated file fails here and not as a grey band in a batch
        if image.mode != "RGB":
            image = image.convert("RGB")
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error... on malformed data
        _skip(errors, "undecodable_image", sample, f"{type(exc).__name__}: {exc}")
        return None
    width, height = image.size
    side = min(width, height)
    crop_x, crop_y = (draws[0], draws[1]) if random_crop else (0.5, 0.5)
    left, top = crop_x * (width - side), crop_y * (height - side)
    if image.size != (size, size):
        # Crop the square in source coordinates and resize it in one step: the same as resizing the
        # shorter side, then cropping.
        image = image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    return sample["__key__"], np.asarray(image), caption, bool(draws[2] < flip_probability)


def _collate(items: list[tuple[str, np.ndarray, str, bool]], context_length: int | None) -> dict:
    """Stack a batch; ``context_length`` None: images only, no ``tokens``."""
    keys, pixels, captions, flips = zip(*items)
    images = np.stack(pixels)
    flipped = np.array(flips)
    images[flipped] = images[flipped, :, ::-1]
    images = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
    batch = {"images": normalize(images.div_(255.0)), "keys": list(keys)}
    if context_length is not None:
        batch["tokens"] = tokenize(list(captions), context_length=context_length)
    return batch


class PretrainDataStream:
    """The endless batches one rank trains on: ``{"images", "tokens", "keys"}`` (no ``tokens`` when
    ``captions`` is off); see the module docstring.

    ``images`` are float32 ``(B, 3, S, S)``, ImageNet-normalised; ``tokens`` int64 ``(B, context_length)``
    BPE ids; ``keys`` the samples' ``__key__``. Each ``iter()`` continues from the current data
    position (after ``load_state_dict``, from the loaded one) and supersedes earlier iterators.
    Under DDP every rank has its own position: save each rank's ``state_dict()`` and load it on that rank.
    """

    def __init__(self, config: PretrainDataConfig, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.config = config
        self.rank = rank
        self.world_size = world_size
        self.urls = expand_urls(config.shards)
        self.workers = max(1, config.num_workers)
        if len(self.urls) < world_size * self.workers:
            raise ValueError(
                f"shards {config.shards!r} hold {len(self.urls)} shards, fewer than world_size ({world_size}) x "
                f"max(1, num_workers) ({self.workers}) = {world_size * self.workers}: every worker of every rank "
                f"needs a shard each epoch; write more, smaller shards or use fewer workers"
            )
        self._batches = 0
        self._positions: list[tuple[int, int]] = [(0, 0)] * self.workers
        self._skipped: Counter = Counter()
        self._generation = 0

    @property
    def batches(self) -> int:
        """Batches taken from this stream so far, counting those before a resume."""
        return self._batches

    @property
    def skipped(self) -> dict[str, int]:
        """Samples and shards skipped, by reason, while making the batches taken so far.

        Reasons: ``missing_image``, ``missing_caption``, ``undecodable_image``, ``undecodable_caption``
        and the shard-level ``shards.SHARD_ERROR_REASONS``. A damaged shard is counted when its reader
        reaches the damage, so with the batch made next.
        """
        return dict(self._skipped)

    def __iter__(self) -> Iterator[dict]:
        self._generation += 1
        return self._iterate(self._generation)

    def _iterate(self, generation: int) -> Iterator[dict]:
        dataset = _WorkerBatches(self.config, self.urls, self.rank, self.world_size,
                                 self._batches, list(self._positions))
        workers = self.config.num_workers
        loader = DataLoader(
            dataset,
            batch_size=None,  # the workers batch: a batch then never mixes workers, which the resume relies on
            num_workers=workers,
            prefetch_factor=self.config.prefetch_factor if workers else None,
            pin_memory=torch.cuda.is_available(),
            # persistent_workers is left off: workers never finish their endless stream, and a new
            # iterator needs new workers that know the current position.
            # Without a generator the DataLoader draws its worker seed from the global torch RNG,
            # shifting the trainer's random stream by when the iterator was made.
            generator=torch.Generator().manual_seed(self.config.seed),
        )
        for batch, progress in loader:
            if generation != self._generation:
                raise RuntimeError("this data iterator was superseded by a newer iter() or load_state_dict()")
            if progress["worker"] != self._batches % self.workers:
                raise RuntimeError(f"batch {self._batches} came from worker {progress['worker']}, expected "
                                   f"{self._batches % self.workers}: the DataLoader broke its round-robin order")
            self._positions[progress["worker"]] = tuple(progress["position"])
            self._batches += 1
            self._skipped.update(progress["skipped"])
            yield batch

    def _layout(self) -> dict[str, int]:
        """What decides which sample lands in which batch: a saved position means nothing under other values."""
        return {
            "seed": self.config.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "workers": self.workers,
            "batch_size": self.config.batch_size,
            "shuffle_buffer": self.config.shuffle_buffer,
            "shards": len(self.urls),
        }

    def state_dict(self) -> dict:
        """The data position after the batches taken so far: plain ints, lists and dicts."""
        return {
            "batches": self._batches,
            "positions": [list(position) for position in self._positions],
            "skipped": dict(self._skipped),
            "layout": self._layout(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position: the next batch is the one the saving run would have produced next."""
        missing = {"batches", "positions", "skipped", "layout"} - set(state)
        if missing:
            raise ValueError(f"data state lacks {sorted(missing)}; expected a PretrainDataStream.state_dict()")
        layout = self._layout()
        changed = {k: (state["layout"].get(k), v) for k, v in layout.items() if state["layout"].get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: saved {saved}, now {now}" for k, (saved, now) in changed.items())
            raise ValueError(f"cannot resume the data stream: the sample order depends on values that "
                             f"changed ({detail})")
        positions = [tuple(int(v) for v in position) for position in state["positions"]]
        if len(positions) != self.workers or any(len(p) != 2 or min(p) < 0 for p in positions):
            raise ValueError(f"data state positions must be {self.workers} (epoch, sample) pairs >= 0, "
                             f"got {state['positions']!r}")
        if int(state["batches"]) < 0:
            raise ValueError(f"data state batches must be >= 0, got {state['batches']}")
        self._batches = int(state["batches"])
        self._positions = positions
        self._skipped = Counter(state["skipped"])
        self._generation += 1
