"""Peak memory and samples/s of the partitioned dedup (vtp.curation.dedup) against the in-memory sequential rule.

    python benchmarks/dedup.py [--samples 100000 1000000] [--partitions 16] [--workers 2]

Synthetic pass-1 records (sha256 and a 64-bit pHash per sample, 10% exact copies and 20% near
copies of earlier samples, shards of 10k generated one at a time) go through (a) the in-memory
rule filter_shards used before (a set of digests and a pigeonhole index of every admitted hash,
both growing with the dataset) and (b) ``write_partitions`` per shard + ``deduplicate`` on a
process pool. Peak memory is the Python heap's (tracemalloc, which sees numpy's buffers) in the
process that holds the dataset-wide state; (b)'s partition tasks run in worker processes that
each hold one partition, reported beside it. Both give the same verdicts (checked). Prints a
table; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from summary import record_target  # benchmarks/summary.py: the row run_all.py gathers

from vtp_kedro.vtp.curation.dedup import DedupLayout, deduplicate, pigeonhole_bands, write_partitions
from vtp_kedro.vtp.curation.executors import ProcessExecutor

SHARD = 10_000
THRESHOLD = 4


def shard_records(shard: int, size: int) -> tuple[list[bytes], np.ndarray]:
    """Shard ``shard``'s digests and hashes; copies point at earlier samples of the same shard or the one before."""
    rng = np.random.default_rng(shard)
    digests = [rng.bytes(32) for _ in range(size)]
    hashes = rng.integers(0, 2**63, size, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    for i in range(1, size):
        kind = rng.random()
        j = int(rng.integers(0, i))
        if kind < 0.1:
            digests[i], hashes[i] = digests[j], hashes[j]
        elif kind < 0.3:
            hashes[i] = hashes[j] ^ np.uint64(1 << int(rng.integers(0, 64)))
    return digests, hashes


def sequential(samples: int) -> tuple[np.ndarray, float, int]:
    """The rule in memory, as before: (admitted mask, seconds, peak heap bytes)."""
    tracemalloc.start()
    start = time.perf_counter()
    seen: set[bytes] = set()
    bands = pigeonhole_bands(THRESHOLD)
    buckets: list[dict[int, list[int]]] = [{} for _ in bands]
    admitted = np.zeros(samples, dtype=np.uint8)
    for shard, offset in enumerate(range(0, samples, SHARD)):
        digests, hashes = shard_records(shard, min(SHARD, samples - offset))
        for i, (digest, value) in enumerate(zip(digests, hashes.tolist())):
            if digest in seen:
                continue
            seen.add(digest)
            near = any((value ^ other).bit_count() <= THRESHOLD for (shift, mask), bucket in zip(bands, buckets)
                       for other in bucket.get((value >> shift) & mask, ()))
            if not near:
                admitted[offset + i] = 1
                for (shift, mask), bucket in zip(bands, buckets):
                    bucket.setdefault((value >> shift) & mask, []).append(value)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return admitted, seconds, peak


def partitioned(samples: int, partitions: int, workers: int, folder: Path) -> tuple[np.ndarray, float, int, int]:
    """(admitted mask, seconds, peak heap bytes of the joining process, largest partition's records)."""
    layout = DedupLayout(folder, partitions, THRESHOLD)
    tracemalloc.start()
    start = time.perf_counter()
    starts = list(range(0, samples, SHARD))
    for shard, offset in enumerate(starts):  # pass 1 does this inside each shard's task
        digests, hashes = shard_records(shard, min(SHARD, samples - offset))
        write_partitions(layout, shard, np.arange(len(digests)), digests, hashes)
    offsets = np.array([*starts, samples], dtype=np.int64)
    candidate = np.ones(samples, dtype=np.uint8)
    with ProcessExecutor(workers) as pool:
        _, admitted = deduplicate(layout, offsets, candidate, pool.map)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    largest = max(sum(np.load(p, mmap_mode="r").shape[0] for p in layout.parts("bands", p)) for p in range(partitions))
    return np.asarray(admitted[:samples]), seconds, peak, largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"{'records':>9} {'method':<24} {'seconds':>8} {'samples/s':>10} {'peak MiB':>9}  note")
    for samples in args.samples:
        expected, seconds, peak = sequential(samples)
        print(f"{samples:>9} {'in-memory sequential':<24} {seconds:>8.1f} {samples / seconds:>10.0f} {peak / 2**20:>9.1f}")
        with tempfile.TemporaryDirectory() as scratch:
            admitted, seconds, joined_peak, largest = partitioned(samples, args.partitions, args.workers, Path(scratch))
        same = "same verdicts" if np.array_equal(admitted, expected) else "VERDICTS DIFFER"
        print(f"{samples:>9} {f'partitioned ({args.partitions} parts)':<24} {seconds:>8.1f} {samples / seconds:>10.0f} "
              f"{joined_peak / 2**20:>9.1f}  {same}; largest partition {largest} band records "
              f"({largest * 24 / 2**20:.1f} MiB) per task")
        record_target("data_filtering", f"dedup of {samples} records: in-memory / partitioned peak", peak / joined_peak,
                      1.0, True)


if __name__ == "__main__":
    main()
