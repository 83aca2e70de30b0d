"""Latent shards: a labelled image folder encoded once by a tokenizer, for DiT training and evaluation.

Preprocessing is ADM's / LightningDiT's ``center_crop_arr`` (``data.imagefolder``): halve the image with a box filter
while its shorter side is at least twice the target, resize bicubically so the shorter side
equals the target, crop the centre square. Every image is encoded as is and flipped left-right.

Output folder::

    classes.json                      {"classes": [...sorted folder names...], "image_size", "latent_shape", "images"}
    <split>/shard_00000.safetensors   latents (N, C, h, w), latents_flip (N, C, h, w), labels (N,) int64;
                                      the images' keys (paths under the split) in the file's metadata
    stats.safetensors                 mean, std (1, C, 1, 1) over up to ``stats_samples`` non-flipped
                                      training latents (all of them for small sets)

A shard is written atomically and skipped when it exists, so an interrupted extraction resumes
(``extraction.json`` names what made the shards from the first one on);
shard ``i`` of a split is encoded by rank ``i % world_size``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from safetensors import safe_open
from torch.utils.data import DataLoader

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.core.io import atomic_path
from vtp_kedro.vtp.core.progress import Progress
from vtp_kedro.vtp.core.tensors import load_tensors, save_tensors
from vtp_kedro.vtp.data.imagefolder import CroppedImages, LabelledImageFolder

log = logging.getLogger(__name__)

CLASSES_FILE = "classes.json"
STATS_FILE = "stats.safetensors"
EXTRACTION_FILE = "extraction.json"  # what made the shards (identity) and the counts
SHARD_PATTERN = "shard_{:05d}.safetensors"


class LatentExtractionConfig(Config):
    image_size: int = Field(gt=0, description="images are centre-cropped to this side before encoding")
    batch_size: int = Field(64, gt=0)
    shard_size: int = Field(4096, gt=0, description="images per shard (a multiple of batch_size reads best)")
    num_workers: int = Field(2, ge=0, description="image-decoding worker processes")
    splits: tuple[str, ...] = ("train", "val")
    stats_samples: int = Field(10_000, gt=0, description="non-flipped training latents the channel stats use")


@torch.no_grad()
def extract_latents(tokenizer: Any, image_root: str | Path, output_dir: str | Path, config: LatentExtractionConfig,
                    rank: int = 0, world_size: int = 1, identity: dict[str, Any] | None = None,
                    barrier: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Encode ``image_root``'s splits into ``output_dir`` (module docstring); returns counts and timings.

    ``tokenizer`` is a ``vtp.inference.Tokenizer`` (``encode`` on [0, 1] images) on its device.
    ``identity`` (e.g. the tokenizer's content digest, the image folder and the config) is kept in
    ``extraction.json``: shards left by an extraction of another identity are deleted, not reused.
    With several ranks, every rank calls this with its ``rank`` and the process group's
    ``barrier``; the counts returned are this rank's, and rank 0 writes the statistics and
    records once every shard is there.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    identity = {"config": config.model_dump(mode="json"), **(identity or {})}
    record_path = output_dir / EXTRACTION_FILE
    previous = json.loads(record_path.read_text()).get("identity") if record_path.is_file() else None
    if previous != identity and rank == 0:
        for stale in output_dir.glob("*/shard_*.safetensors"):
            stale.unlink()
        # The identity goes down before the first shard, so that a killed extraction's shards are
        # known as this identity's and kept by the next run; the counts are added at the end.
        with atomic_path(record_path) as tmp:
            tmp.write_text(json.dumps({"identity": identity}, indent=2, sort_keys=True) + "\n")
    barrier()  # no rank may write a shard before the stale ones are gone
    device = next(tokenizer.parameters()).device
    summary: dict[str, Any] = {"splits": {}}
    classes = None
    for split in config.splits:
        folder = LabelledImageFolder(image_root, split)
        if classes is None:
            classes = folder.classes
        elif folder.classes != classes:
            raise ValueError(f"{folder.split_dir} has classes {folder.classes}, but {config.splits[0]} has {classes}")
        samples = [(path, label) for path, label in folder.samples]
        shards = [samples[i:i + config.shard_size] for i in range(0, len(samples), config.shard_size)]
        written = skipped = 0
        start = time.perf_counter()
        bar = Progress(sum(len(s) for i, s in enumerate(shards) if i % world_size == rank), f"encoding {split}",
                       logger=log)
        for index, shard in enumerate(shards):
            if index % world_size != rank:
                continue
            path = output_dir / split / SHARD_PATTERN.format(index)
            if path.is_file():  # finished by an earlier run
                skipped += 1
                bar.update(len(shard))
                continue
            _encode_shard(tokenizer, shard, folder.split_dir, path, config, device, bar)
            written += 1
        bar.close()
        seconds = time.perf_counter() - start
        encoded = sum(len(s) for i, s in enumerate(shards) if i % world_size == rank)
        log.info("%s: %d images in %d shards (%d written, %d already there) in %.1f s",
                 split, encoded, written + skipped, written, skipped, seconds)
        summary["splits"][split] = {"images": len(samples), "shards": len(shards), "written": written,
                                    "skipped": skipped, "seconds": seconds, "encoded": encoded}
    latent_shape = list(tokenizer.latent_shape(config.image_size))
    record = {"classes": classes, "image_size": config.image_size, "latent_shape": latent_shape,
              "images": {s: summary["splits"][s]["images"] for s in config.splits}}
    summary.update(record)
    barrier()  # every rank's shards are written
    if rank != 0:
        return summary
    with atomic_path(output_dir / CLASSES_FILE) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    if "train" in config.splits:
        stats = latent_stats(output_dir / "train", config.stats_samples)
        with atomic_path(output_dir / STATS_FILE) as tmp:
            save_latent_stats(stats, tmp)
    with atomic_path(record_path) as tmp:  # no timings here: equal latents must give an equal folder
        tmp.write_text(json.dumps({"identity": identity, **record}, indent=2, sort_keys=True) + "\n")
    return summary


def _encode_shard(tokenizer: Any, shard: list[tuple[str, int]], split_dir: Path, path: Path,
                  config: LatentExtractionConfig, device: torch.device, bar: Progress) -> None:
    loader = DataLoader(CroppedImages(shard, config.image_size), batch_size=config.batch_size,
                        num_workers=config.num_workers, persistent_workers=False)
    latents, flipped, labels = [], [], []
    for pixels, batch_labels in loader:
        images = pixels.to(device, non_blocking=True).float().div_(255)
        latents.append(tokenizer.encode(images).float().cpu())
        flipped.append(tokenizer.encode(images.flip(-1)).float().cpu())
        labels.append(batch_labels.long())
        bar.update(len(pixels))
    keys = [Path(p).relative_to(split_dir).with_suffix("").as_posix() for p, _ in shard]
    with atomic_path(path) as tmp:
        save_tensors({"latents": torch.cat(latents), "latents_flip": torch.cat(flipped), "labels": torch.cat(labels)},
                     tmp, metadata={"keys": json.dumps(keys)})


def iter_latent_shards(split_dir: str | Path) -> Iterator[dict[str, Any]]:
    """Each shard of a split, in order: ``{"latents", "latents_flip", "labels", "keys", "path"}``."""
    paths = sorted(Path(split_dir).glob("shard_*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"no latent shards (shard_*.safetensors) in {split_dir}")
    for path in paths:
        with safe_open(str(path), framework="pt") as handle:
            keys = json.loads((handle.metadata() or {}).get("keys", "[]"))
        yield {**load_tensors(path), "keys": keys, "path": path}


def latent_stats(split_dir: str | Path, max_samples: int) -> dict[str, torch.Tensor]:
    """Per-channel mean and std, shaped (1, C, 1, 1), over the first ``max_samples`` non-flipped latents."""
    total, chunks = 0, []
    for shard in iter_latent_shards(split_dir):
        take = shard["latents"][: max_samples - total]
        chunks.append(take.double())
        total += len(take)
        if total >= max_samples:
            break
    latents = torch.cat(chunks)
    mean = latents.mean(dim=(0, 2, 3), keepdim=True)
    std = latents.std(dim=(0, 2, 3), keepdim=True)
    return {"mean": mean.float(), "std": std.float()}


def save_latent_stats(stats: dict[str, torch.Tensor], path: str | Path) -> None:
    save_tensors(stats, path)


def load_latent_stats(latent_dir: str | Path) -> dict[str, torch.Tensor]:
    path = Path(latent_dir) / STATS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no latent statistics {path}: run latent_extraction on a split named 'train'")
    return load_tensors(path)


# --- the latent stream the DiT trains on -------------------------------------------------------
# SeedSequence domain tags, so that the shard order, the row order and the flips never share entropy.
_LATENT_SHARD_ORDER, _LATENT_ROW_ORDER, _LATENT_FLIPS = 0, 1, 2
_FLIP_REPLAY_CHUNK = 1 << 20  # flip draws replayed per call on resume: bounds the memory a resume takes


class LatentDataConfig(Config):
    """Which latent shards one rank's DiT batches come from, and how they are ordered and flipped."""

    latents: str = Field(min_length=1, description="a latent folder written by extract_latents")
    split: str = Field("train", min_length=1, description="the sub-folder of shards to read")
    batch_size: int = Field(gt=0, description="samples per batch on each rank")
    seed: int = Field(0, ge=0, description="of the shard order, the row order and the flips")
    flip_probability: float = Field(0.5, ge=0.0, le=1.0,
                                    description="probability of taking an image's latents_flip instead of its latents")
    shuffle: bool = Field(True, description="permute shards and rows each epoch; False: file order (flips still drawn)")


def _read_latent_shard(path: Path) -> dict[str, torch.Tensor]:
    """One shard's ``latents``, ``latents_flip`` and ``labels`` in memory (the stream's only full read)."""
    tensors = load_tensors(path)
    return {"latents": tensors["latents"].float(), "latents_flip": tensors["latents_flip"].float(),
            "labels": tensors["labels"].long()}


def _shard_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shapes of a shard's tensors, read from its header: no tensor data is loaded."""
    with safe_open(str(path), framework="pt") as handle:
        aliases = json.loads((handle.metadata() or {}).get("aliases", "{}"))
        names = set(handle.keys()) | set(aliases)
        missing = {"latents", "latents_flip", "labels"} - names
        if missing:
            raise ValueError(f"latent shard {path} lacks {sorted(missing)}: not written by extract_latents?")
        return {name: tuple(handle.get_slice(aliases.get(name, name)).get_shape())
                for name in ("latents", "latents_flip", "labels")}


class LatentDataStream:
    """One rank's batches of latents for DiT training, one epoch per ``iter()``, resumable mid-epoch.

    Batches are ``{"latents": (B, C, h, w) float32, "labels": (B,) int64}``. Each item is its
    image's ``latents`` or, with probability ``flip_probability``, its ``latents_flip`` (the
    encoded left-right flip: LightningDiT's random flip, done at extraction). Latents are raw;
    normalising them with ``load_latent_stats`` is the DiT task's job.

    Order. Shards are the split's ``shard_*.safetensors`` in name order, ``i`` a shard's index in
    that list. Epoch ``e`` permutes the list with ``(seed, e)``; rank ``r`` takes
    ``order[r::world_size]``, and its epoch stream is those shards' rows, each shard's rows
    permuted with ``(seed, e, i)``. Batches are consecutive ``batch_size`` rows of that stream,
    so a batch may span two shards; the rows after the last full batch are dropped (each rank
    drops its own tail, fewer than ``batch_size`` rows per epoch). Row ``k`` of the stream is
    flipped when ``u_k < flip_probability``, ``u`` the uniform draws of a generator seeded with
    ``(seed, e, r)``, one per row in stream order: ``p = 0`` never flips, ``p = 1`` always does.
    ``shuffle=False`` keeps shards and rows in file order. With ``world_size > 1`` a rank's rows
    per epoch, hence its steps per epoch, vary with the shards the permutation deals it.

    Memory. Row counts come from the shards' headers; a shard is read when its first row is
    needed and released before the next one is read, so at most one shard (plus one batch) is in
    memory, whatever the split's size. The read happens in the consuming thread: a shard
    boundary costs one shard's read time.

    Resuming. ``state_dict()`` is ``{"epoch": e, "position": rows of this rank's epoch stream
    already yielded}``; after the last full batch of an epoch it is ``{"epoch": e + 1,
    "position": 0}``. ``load_state_dict`` moves there: the next ``iter()`` skips whole shards by
    their row counts without reading them, starts inside the shard that holds the position, and
    replays the flip draws of the skipped rows in bulk, so the next batch equals the one an
    uninterrupted stream would have produced. The position counts rows, not batches, so a resume
    with another ``batch_size`` continues at the same row. Seed, world size and the shards must
    be those of the saving run; the state cannot tell (only a position beyond this rank's rows
    fails). Under DDP save each rank's ``state_dict()`` and load it on that rank.
    """

    def __init__(self, config: LatentDataConfig, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.config, self.rank, self.world_size = config, rank, world_size
        root = Path(config.latents)
        if not root.is_dir():
            raise FileNotFoundError(f"latent folder {root} does not exist: run latent extraction first")
        self.split_dir = root / config.split
        self.paths = sorted(self.split_dir.glob("shard_*.safetensors"))
        if not self.paths:
            raise FileNotFoundError(f"no latent shards (shard_*.safetensors) in {self.split_dir}")
        self.rows: list[int] = []
        shape: tuple[int, ...] | None = None
        for path in self.paths:
            shapes = _shard_shapes(path)
            (rows,) = shapes["labels"]
            if shapes["latents"][:1] != (rows,) or shapes["latents_flip"] != shapes["latents"]:
                raise ValueError(f"latent shard {path} has latents {shapes['latents']}, latents_flip "
                                 f"{shapes['latents_flip']} and labels {shapes['labels']}: they must agree")
            if shape is not None and shapes["latents"][1:] != shape:
                raise ValueError(f"latent shard {path} holds latents of shape {shapes['latents'][1:]}, "
                                 f"but {self.paths[0]} holds {shape}")
            shape = shapes["latents"][1:]
            self.rows.append(rows)
        self.latent_shape: tuple[int, ...] = shape
        if self.num_samples == 0:
            raise ValueError(f"the latent shards in {self.split_dir} hold no rows")
        if len(self.paths) < world_size:
            raise ValueError(f"{self.split_dir} holds {len(self.paths)} latent shards, fewer than world_size "
                             f"({world_size}): rank {world_size - 1} would get none; write smaller shards")
        # Every epoch must give each rank a batch, or iter() would yield nothing and the trainer stop.
        fewest = self._rank_rows(self._rank_shards(0)) if not config.shuffle else sum(
            sorted(self.rows)[: len(self.paths) // world_size])
        if fewest < config.batch_size:
            raise ValueError(f"rank {rank} of {world_size} may get only {fewest} rows of {self.split_dir} in an "
                             f"epoch, fewer than batch_size ({config.batch_size})")
        self._epoch = 0
        self._position = 0
        self._generation = 0

    # -- sizes ---------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """Rows of the split, all ranks together."""
        return sum(self.rows)

    def rows_in_epoch(self, epoch: int | None = None) -> int:
        """Rows this rank's stream holds in ``epoch`` (default: the current one), the dropped tail included."""
        return self._rank_rows(self._rank_shards(self._epoch if epoch is None else epoch))

    def steps_per_epoch(self, epoch: int | None = None) -> int:
        """Batches this rank yields in ``epoch`` (default: the current one); constant when world_size is 1."""
        return self.rows_in_epoch(epoch) // self.config.batch_size

    # -- order ---------------------------------------------------------------------------
    def _rank_shards(self, epoch: int) -> list[int]:
        """Indices (into ``paths``) of this rank's shards in ``epoch``, in stream order."""
        if self.config.shuffle:
            order = np.random.default_rng([self.config.seed, _LATENT_SHARD_ORDER, epoch]).permutation(len(self.paths))
        else:
            order = np.arange(len(self.paths))
        return [int(i) for i in order[self.rank::self.world_size]]

    def _rank_rows(self, shards: list[int]) -> int:
        return sum(self.rows[i] for i in shards)

    def _row_order(self, epoch: int, shard: int) -> np.ndarray:
        rows = self.rows[shard]
        if not self.config.shuffle:
            return np.arange(rows)
        return np.random.default_rng([self.config.seed, _LATENT_ROW_ORDER, epoch, shard]).permutation(rows)

    # -- iteration -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self._generation += 1
        return self._iterate(self._generation)

    def _iterate(self, generation: int) -> Iterator[dict[str, torch.Tensor]]:
        epoch, position = self._epoch, self._position
        batch_size, probability = self.config.batch_size, self.config.flip_probability
        shards = self._rank_shards(epoch)
        end = self._epoch_end(epoch, position)  # rows from here on are the dropped tail
        if end <= position:
            raise RuntimeError(f"rank {self.rank} has no full batch left in epoch {epoch} at row {position}")
        flips = np.random.default_rng([self.config.seed, _LATENT_FLIPS, epoch, self.rank])
        for done in range(0, position, _FLIP_REPLAY_CHUNK):  # the skipped rows' draws, discarded
            flips.random(min(_FLIP_REPLAY_CHUNK, position - done))
        pieces: list[tuple[torch.Tensor, torch.Tensor]] = []
        pending = 0  # rows in pieces
        shard_start = 0  # stream row of the current shard's first row
        for index in shards:
            rows = self.rows[index]
            first, last = max(position - shard_start, 0), min(rows, end - shard_start)
            shard_start += rows
            if first >= last:
                if shard_start >= end:
                    break  # only the dropped tail is left: its shards are never read
                continue  # yielded before the resume: skipped by its row count, never read
            order = self._row_order(epoch, index)[first:last]
            flipped = flips.random(last - first) < probability
            # Gathered with numpy, single-threaded: a batch is a few hundred KB, and torch's
            # intra-op thread pool costs more than the copy (ms per op on a busy 2-core machine).
            shard = {name: tensor.numpy() for name, tensor in _read_latent_shard(self.paths[index]).items()}
            cursor = 0
            while cursor < len(order):
                take = min(batch_size - pending, len(order) - cursor)
                rows_taken, flip_taken = order[cursor:cursor + take], flipped[cursor:cursor + take]
                latents = shard["latents"][rows_taken]  # an indexed copy: no view keeps the shard alive
                if flip_taken.any():
                    latents[flip_taken] = shard["latents_flip"][rows_taken[flip_taken]]
                pieces.append((latents, shard["labels"][rows_taken]))
                pending += take
                cursor += take
                if pending == batch_size:
                    if generation != self._generation:
                        raise RuntimeError("this latent iterator was superseded by a newer iter() or "
                                           "load_state_dict()")
                    batch = {key: torch.from_numpy(np.concatenate([p[i] for p in pieces]) if len(pieces) > 1
                                                   else pieces[0][i])
                             for i, key in enumerate(("latents", "labels"))}
                    pieces, pending = [], 0
                    position += batch_size
                    # The state after this batch; past the last full batch it is the next epoch's start.
                    self._epoch, self._position = (epoch + 1, 0) if position >= end else (epoch, position)
                    yield batch
            shard = None  # released before the next shard is read: one shard in memory at a time

    def _epoch_end(self, epoch: int, position: int) -> int:
        """The stream row where ``epoch``'s last full batch from ``position`` ends."""
        total = self.rows_in_epoch(epoch)
        return total - (total - position) % self.config.batch_size if position <= total else position

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """The position after the last batch yielded: ``{"epoch", "position"}`` (rows of this rank's epoch)."""
        return {"epoch": self._epoch, "position": self._position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position: the next ``iter()`` yields what the saving stream would have."""
        missing = {"epoch", "position"} - set(state)
        if missing:
            raise ValueError(f"latent data state lacks {sorted(missing)}; expected a LatentDataStream.state_dict()")
        epoch, position = state["epoch"], state["position"]
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in (epoch, position)):
            raise ValueError(f"latent data state epoch and position must be ints >= 0, got {dict(state)!r}")
        total = self.rows_in_epoch(epoch)
        if position > total:
            raise ValueError(f"cannot resume rank {self.rank}: the saved position is row {position} of epoch "
                             f"{epoch}, but its shards of {self.split_dir} hold {total} rows then; did the "
                             f"shards, the seed or the world size change since the state was saved?")
        if self._epoch_end(epoch, position) <= position:  # only a dropped tail left: the next epoch
            epoch, position = epoch + 1, 0
        self._epoch, self._position = epoch, position
        self._generation += 1
