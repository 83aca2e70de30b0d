"""Throughput of the data-filtering engine for 1 and 2 worker processes on generated shards.

    PYTHONPATH=src python benchmarks/data_filtering.py --samples 4096 --samples-per-shard 256

Prints one row per worker count: samples read, wall seconds, samples per second and kept
samples. The time includes starting the worker processes (spawn imports the library anew).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from vtp_kedro.vtp.data.filters import FilterRules, filter_shards
from vtp_kedro.vtp.data.synthetic import SyntheticConfig, write_captioned_shards
from summary import record_target  # benchmarks/summary.py: the row run_all.py gathers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4096, help="samples to generate")
    parser.add_argument("--samples-per-shard", type=int, default=256, help="input and output shard size")
    parser.add_argument("--image-size", type=int, default=32, help="generated image side in pixels")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "raw"
        write_captioned_shards(raw, SyntheticConfig(image_size=args.image_size, seed=0),
                               args.samples, args.samples_per_shard)
        rules = FilterRules(min_side=min(32, args.image_size))
        rows = []
        for workers in args.workers:
            start = time.perf_counter()
            report = filter_shards(str(raw), Path(scratch) / f"filtered_{workers}", rules,
                                   args.samples_per_shard, num_workers=workers)
            seconds = time.perf_counter() - start
            rows.append((workers, report.total, seconds, report.total / seconds, report.kept))

    print(f"{'workers':>7} {'samples':>8} {'seconds':>8} {'samples/s':>10} {'kept':>7}")
    for workers, total, seconds, rate, kept in rows:
        print(f"{workers:>7} {total:>8} {seconds:>8.2f} {rate:>10.1f} {kept:>7}")
    rates = {workers: rate for workers, _, _, rate, _ in rows}
    if 1 in rates and 2 in rates:
        record_target("data_filtering", "2 workers / 1 worker (samples/s)", rates[2] / rates[1], 1.6, True)


if __name__ == "__main__":
    main()
