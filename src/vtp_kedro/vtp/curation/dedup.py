"""Dataset-level deduplication with bounded memory: records on disk, partitioned by hash, verdicts joined.

The rule is the sequential one, sample by sample in input order (global index ``i``):

- *exact duplicate*: an earlier sample that passed the per-sample rules has the same sha256;
- *near duplicate*: among the samples left, an earlier *near-admitted* one (not an exact or
  near duplicate itself) lies within ``threshold`` bits of its 64-bit perceptual hash and, when
  the layout has a ``check``, passes the aligned copy check of ``vtp.curation.copy_detection`` on
  the two samples' thumbnails (the hash proposes, the check decides).

A sequential pass needs every hash in memory. Here each record is written to disk once per
partition it belongs to: one *exact* partition (``sha256 mod P``: exact duplicates meet in one)
and ``threshold + 1`` *band* partitions (the hash cut into ``threshold + 1`` bands; two hashes
within ``threshold`` bits agree exactly on at least one band, the pigeonhole argument of
``HammingIndex``, so near duplicates share at least one band partition). With crop variants,
an image's record carries the hashes of a few crops of it too, each banded alike: a copy
cropped by a few percent has an own hash near one of its original's crop hashes, and a pair
counts when one image's own hash lies within ``threshold`` of the other's own or crop hash.
Each partition is then a task that needs only its own records:

1. exact tasks return the indices of the exact duplicates (all of a sha256 group but its first);
2. band tasks return the *edges* ``(i, j)``, ``j < i``, between candidate samples that share a
   band value, lie within ``threshold`` bits and pass the check (thumbnails are read from each
   shard's file, memory-mapped, for the task's candidate pairs only);
3. the join walks the edges in increasing ``i`` and decides ``admitted[i] = not any(admitted[j])``
   (every ``j < i`` is decided by then): the sequential rule, exactly, since a sample's verdict
   depends only on its earlier neighbours.

The verdict arrays are memory-mapped files of one byte per sample; a worker holds one partition.
The result is the same for any number of workers and partitions.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vtp_kedro.vtp.core.io import atomic_path
from vtp_kedro.vtp.curation.copy_detection import SIDE, is_copy

EXACT_DIR, BAND_DIR, EDGE_DIR, THUMBNAIL_DIR = "exact", "bands", "edges", "thumbnails"
_EXACT = np.dtype([("index", "<i8"), ("sha256", "S32")])
# band: band id << 56 | value; base: 1 for the image's own hash, 0 for one of its crop variants
_BAND = np.dtype([("index", "<i8"), ("band", "<u8"), ("phash", "<u8"), ("base", "u1")])
_EDGE = np.dtype([("i", "<i8"), ("j", "<i8")])
_BLOCK = 2048  # rows of a band group compared at once: a block's distance matrix stays a few MB
_CHECKED_PAIRS = 4096  # candidate pairs whose thumbnails are read and checked at once: 25 MB


def pigeonhole_bands(threshold: int) -> list[tuple[int, int]]:
    """``threshold + 1`` (shift, mask) pairs covering the 64 bits, as even as possible."""
    if not 0 <= threshold <= 63:
        raise ValueError(f"threshold must be in 0..63, got {threshold}")
    widths = [64 // (threshold + 1) + (i < 64 % (threshold + 1)) for i in range(threshold + 1)]
    starts = itertools.accumulate(widths, initial=0)
    return [(start, (1 << width) - 1) for start, width in zip(starts, widths)]


@dataclass(frozen=True)
class DedupLayout:
    """Where one dedup's partitions live and how records are spread over them."""

    folder: Path
    partitions: int
    threshold: int | None  # None: no near-duplicate rule
    check: tuple[float, float] | None = None  # (max_local, max_relative) of the copy check; None: hash only

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {self.partitions}")

    def thumbnails(self, shard: int) -> Path:
        """One shard's copy-check thumbnails, uint8 [samples, SIDE, SIDE, 3] by position in the shard."""
        return self.folder / THUMBNAIL_DIR / f"s{shard:07d}.npy"

    def shard_dir(self, kind: str, shard: int) -> Path:
        """One shard's files of one kind, one per partition (written together, atomically)."""
        return self.folder / kind / f"s{shard:07d}"

    def parts(self, kind: str, partition: int) -> list[Path]:
        """Every shard's file of one partition."""
        return sorted((self.folder / kind).glob(f"s*/p{partition:05d}.npy"))


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def sample_key(shard: int, positions: np.ndarray) -> np.ndarray:
    """``shard << 32 | position``: ordered as the input is, and known to a shard's task before the
    other shards are counted (``dense_index`` turns it into the global index)."""
    return (np.int64(shard) << np.int64(32)) | positions.astype(np.int64)


def dense_index(keys: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Global indices of ``sample_key``s, ``offsets[s]`` being shard ``s``'s first one."""
    return offsets[keys >> np.int64(32)] + (keys & np.int64(0xFFFFFFFF))


def write_partitions(layout: DedupLayout, shard: int, candidates: np.ndarray,
                     sha256: Sequence[bytes] | None, phash: np.ndarray) -> None:
    """Spread one shard's candidate samples (those that passed the per-sample rules) over the
    partitions; ``candidates`` are their positions in the shard, ``sha256`` and ``phash`` the
    whole shard's (``sha256`` None: no exact rule). ``phash`` is [samples] or [samples, 1 + V]:
    each image's own hash, then the hashes of V crops of it, so that a cropped copy of an image
    meets it (its own hash lies near one of the image's crop variants; only pairs with at least
    one own hash are compared).

    A shard's files of each kind, one per partition (empty ones too), appear together in one
    atomic rename: a shard task that is retried replaces them and nothing is counted twice."""
    index = sample_key(shard, candidates)
    P = layout.partitions
    if sha256 is not None:
        digests = np.array([sha256[c] for c in candidates], dtype="S32")
        owner = np.array([int.from_bytes(d[:8], "little") % P for d in digests], dtype=np.int64)
        with atomic_path(layout.shard_dir(EXACT_DIR, shard)) as folder:
            folder.mkdir()
            for p in range(P):
                chosen = owner == p
                records = np.empty(int(chosen.sum()), dtype=_EXACT)
                records["index"], records["sha256"] = index[chosen], digests[chosen]
                np.save(folder / f"p{p:05d}.npy", records)
    if layout.threshold is not None:
        hashes = (phash[:, None] if phash.ndim == 1 else phash)[candidates].astype(np.uint64)
        per_partition: list[list[np.ndarray]] = [[] for _ in range(P)]
        for band, (shift, mask) in enumerate(pigeonhole_bands(layout.threshold)):
            for variant in range(hashes.shape[1]):
                value = (hashes[:, variant] >> np.uint64(shift)) & np.uint64(mask)
                key = (np.uint64(band) << np.uint64(56)) | value
                records = np.empty(len(index), dtype=_BAND)
                records["index"], records["band"], records["phash"] = index, key, hashes[:, variant]
                records["base"] = variant == 0
                owner = (_mix(key) % np.uint64(P)).astype(np.int64)
                for p in range(P):
                    per_partition[p].append(records[owner == p])
        with atomic_path(layout.shard_dir(BAND_DIR, shard)) as folder:
            folder.mkdir()
            for p in range(P):
                np.save(folder / f"p{p:05d}.npy", np.concatenate(per_partition[p]))


def write_thumbnails(layout: DedupLayout, shard: int, thumbnails: np.ndarray) -> None:
    """One shard's thumbnails (a row per sample, zeros where a sample is no candidate), atomically."""
    if thumbnails.shape[1:] != (SIDE, SIDE, 3) or thumbnails.dtype != np.uint8:
        raise ValueError(f"thumbnails must be uint8 [n, {SIDE}, {SIDE}, 3], got {thumbnails.dtype} {thumbnails.shape}")
    layout.thumbnails(shard).parent.mkdir(parents=True, exist_ok=True)
    _save(layout.thumbnails(shard), thumbnails)


def _thumbnails_of(layout: DedupLayout, indices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The thumbnails of global ``indices``, read shard by shard from memory-mapped files."""
    shards = np.searchsorted(offsets, indices, side="right") - 1
    result = np.empty((len(indices), SIDE, SIDE, 3), dtype=np.uint8)
    for shard in np.unique(shards):
        rows = shards == shard
        result[rows] = np.load(layout.thumbnails(int(shard)), mmap_mode="r")[indices[rows] - offsets[shard]]
    return result


def _mix(values: np.ndarray) -> np.ndarray:
    """A 64-bit integer mix (splitmix64's finaliser), so that band values spread evenly over partitions."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _load(paths: Iterable[Path], dtype: np.dtype) -> np.ndarray:
    arrays = [np.load(path) for path in paths]
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=dtype)


def exact_duplicates(layout: DedupLayout, partition: int, offsets: np.ndarray) -> np.ndarray:
    """Task: the global indices of one exact partition's duplicates (every sample of a sha256
    group but the earliest), sorted."""
    records = _load(layout.parts(EXACT_DIR, partition), _EXACT)
    records["index"] = dense_index(records["index"], offsets)
    order = np.lexsort((records["index"], records["sha256"]))
    digests, index = records["sha256"][order], records["index"][order]
    repeated = np.zeros(len(index), dtype=bool)
    repeated[1:] = digests[1:] == digests[:-1]
    return np.sort(index[repeated])


def near_edges(layout: DedupLayout, partition: int, offsets: np.ndarray, excluded: np.ndarray) -> int:
    """Task: write one band partition's edges ``(i, j)``, ``j < i``, between samples that share a
    band value, lie within the threshold and pass the layout's copy check (samples flagged in the
    ``excluded`` byte map, the exact duplicates, take no part), sorted by ``(i, j)``; returns how many."""
    records = _load(layout.parts(BAND_DIR, partition), _BAND)
    records["index"] = dense_index(records["index"], offsets)
    records = records[excluded[records["index"]] == 0]
    records = records[np.lexsort((records["index"], records["band"]))]
    starts = np.flatnonzero(np.r_[True, records["band"][1:] != records["band"][:-1]])
    sizes = np.diff(np.r_[starts, len(records)])
    bands = pigeonhole_bands(layout.threshold)
    edges = []
    for start, size in zip(starts[sizes > 1], sizes[sizes > 1]):
        group = records[start:start + size]
        band_id = int(group["band"][0] >> np.uint64(56))
        for block in range(0, size, _BLOCK):  # rows [block, block + _BLOCK) against all earlier rows
            rows = group[block:block + _BLOCK]
            earlier_rows = group[:block + len(rows)]
            differing = rows["phash"][:, None] ^ earlier_rows["phash"][None, :]
            close = np.bitwise_count(differing) <= layout.threshold
            # Two hashes meet in every band they agree on, and each band may sit in another
            # partition: a pair of hashes is taken only in the first band they agree on, so that
            # it is copy-checked once in the whole dedup, not once per shared band.
            for shift, mask in bands[:band_id]:
                close &= ((differing >> np.uint64(shift)) & np.uint64(mask)) != 0
            close &= np.arange(block + len(rows))[None, :] < np.arange(block, block + len(rows))[:, None]
            close &= (rows["base"][:, None] | earlier_rows["base"][None, :]).astype(bool)  # an own hash in each pair
            close &= rows["index"][:, None] != earlier_rows["index"][None, :]  # an image and its own crop
            later, earlier = np.nonzero(close)
            found = np.empty(len(later), dtype=_EDGE)
            found["i"], found["j"] = rows["index"][later], group["index"][earlier]
            edges.append(found)
    found = np.concatenate(edges) if edges else np.empty(0, dtype=_EDGE)
    found = np.unique(found)  # sorted by (i, j); a pair that shares two bands is one edge
    if layout.check is not None and len(found):
        max_local, max_relative = layout.check
        copies = np.concatenate([
            is_copy(_thumbnails_of(layout, chunk["i"], offsets), _thumbnails_of(layout, chunk["j"], offsets),
                    max_local, max_relative)
            for chunk in np.array_split(found, -(-len(found) // _CHECKED_PAIRS))])
        found = found[copies]
    _save(layout.folder / EDGE_DIR / f"p{partition:05d}.npy", found)
    return len(found)


def _edges_in_order(layout: DedupLayout) -> Iterator[tuple[int, int]]:
    """Every partition's edges merged in increasing ``(i, j)``, streamed from memory-mapped files."""
    files = sorted((layout.folder / EDGE_DIR).glob("p*.npy"))
    streams = [((int(i), int(j)) for i, j in np.load(path, mmap_mode="r")) for path in files]
    return heapq.merge(*streams)


def byte_map(path: Path, size: int) -> np.memmap:
    """A zeroed uint8 array of ``size`` entries backed by ``path`` (the OS pages it, not the heap)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(max(size, 1),))


MapTasks = Callable[[Callable, Sequence], list]


def deduplicate(layout: DedupLayout, offsets: np.ndarray, candidate: np.ndarray,
                map_tasks: MapTasks) -> tuple[np.memmap, np.memmap]:
    """Exact and near verdicts of the samples whose per-sample rules passed where the byte map
    ``candidate`` is 1; ``offsets`` holds each shard's first global index and, last, the total.
    ``map_tasks(fn, items)`` runs a partition's task on each item (a process pool, a Dask cluster).
    Returns the byte maps ``exact`` (1: exact duplicate) and ``admitted`` (1: a candidate that is
    neither an exact nor a near duplicate)."""
    partitions, total = list(range(layout.partitions)), int(offsets[-1])
    exact = byte_map(layout.folder / "exact_duplicate.npy", total)
    if (layout.folder / EXACT_DIR).is_dir():
        for dropped in map_tasks(_ExactTask(layout, offsets), partitions):
            exact[dropped] = 1
        exact.flush()
    admitted = byte_map(layout.folder / "admitted.npy", total)
    admitted[:total] = candidate[:total] & (1 - exact[:total])
    if layout.threshold is not None:
        map_tasks(_NearTask(layout, offsets, layout.folder / "exact_duplicate.npy"), partitions)
        for i, neighbours in itertools.groupby(_edges_in_order(layout), key=lambda edge: edge[0]):
            if admitted[i] and any(admitted[j] for _, j in neighbours):
                admitted[i] = 0
    admitted.flush()
    return exact, admitted


@dataclass(frozen=True)
class _ExactTask:
    """Picklable partition task (a process pool or a Dask worker runs it)."""

    layout: DedupLayout
    offsets: np.ndarray

    def __call__(self, partition: int) -> np.ndarray:
        return exact_duplicates(self.layout, partition, self.offsets)


@dataclass(frozen=True)
class _NearTask:
    layout: DedupLayout
    offsets: np.ndarray
    exact_map: Path

    def __call__(self, partition: int) -> int:
        return near_edges(self.layout, partition, self.offsets, np.load(self.exact_map, mmap_mode="r"))
