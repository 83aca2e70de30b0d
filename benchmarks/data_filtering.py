"""Throughput of the data-filtering engine for 1 and 2 workers, on the process pool and on Dask.

    python benchmarks/data_filtering.py [--samples 65536] [--samples-per-shard 256] [--executors processes dask]

Generates embedded-style shards, then filters them with each executor and worker count and
prints one row per run: samples, wall seconds (worker start-up included), samples/s, the time
of each phase (pass 1 scan, dedup, verdicts, pass 2 write) and kept samples. Then the profile of
the one-worker run (everything in this process): the functions with the most cumulative time,
which is where a faster filter has to win. Target: 2 workers >= 1.6x one worker on each
executor. Asserts nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from pathlib import Path

from summary import record_target  # benchmarks/summary.py: the row run_all.py gathers

from vtp_kedro.vtp.curation.filters import FilterRules, filter_shards
from vtp_kedro.vtp.synthetic.generator import SyntheticConfig, write_captioned_shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=65536,
                        help="samples to generate (at 16384 the ~0.4 s worker start-up still costs 0.1x of the ratio)")
    parser.add_argument("--samples-per-shard", type=int, default=256, help="input and output shard size")
    parser.add_argument("--image-size", type=int, default=32, help="generated image side in pixels")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    parser.add_argument("--executors", nargs="+", default=["processes", "dask"], choices=["processes", "dask"])
    parser.add_argument("--profile-top", type=int, default=15, help="profile rows to print (0: no profile)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "raw"
        write_captioned_shards(raw, SyntheticConfig(image_size=args.image_size, seed=0),
                               args.samples, args.samples_per_shard, defect_fraction=0.03)
        # pHash <= 4 alone: the near-duplicate rule these numbers have always been measured with. The
        # filter's rule (crop variants and the copy check) adds ~0.8 ms of hashing per sample to pass 1
        # and ~0.9 ms per candidate pair to the dedup, and on embedded-style scenes, which all look
        # alike, its candidates grow with the square of the data (benchmarks/near_duplicates.py).
        rules = FilterRules(min_side=min(32, args.image_size), near_dup_hamming=4, near_dup_crop_variants=False,
                            near_dup_check=None)
        rows = []
        for executor in args.executors:
            for workers in args.workers:
                start = time.perf_counter()
                report = filter_shards(str(raw), Path(scratch) / f"filtered_{executor}_{workers}", rules,
                                       args.samples_per_shard, num_workers=workers, executor=executor)
                seconds = time.perf_counter() - start
                rows.append((executor, workers, report, seconds))
        profile = None
        if args.profile_top:
            profiler = cProfile.Profile()
            profiler.enable()
            filter_shards(str(raw), Path(scratch) / "profiled", rules, args.samples_per_shard, num_workers=1)
            profiler.disable()
            profile = io.StringIO()
            pstats.Stats(profiler, stream=profile).sort_stats("cumulative").print_stats(args.profile_top)

    phases = list(rows[0][2].seconds)
    print(f"{'executor':<10}{'workers':>8}{'samples':>9}{'seconds':>9}{'samples/s':>11}"
          + "".join(f"{name[:14]:>16}" for name in phases) + f"{'kept':>7}")
    for executor, workers, report, seconds in rows:
        print(f"{executor:<10}{workers:>8}{report.total:>9}{seconds:>9.2f}{report.total / seconds:>11.1f}"
              + "".join(f"{report.seconds.get(name, 0.0):>16.2f}" for name in phases) + f"{report.kept:>7}")
    for executor in args.executors:
        rates = {workers: report.total / seconds for ex, workers, report, seconds in rows if ex == executor}
        if 1 in rates and 2 in rates:
            print(f"{executor}: 2 workers / 1 worker = {rates[2] / rates[1]:.2f}x")
            record_target("data_filtering", f"{executor}: 2 workers / 1 worker (samples/s)", rates[2] / rates[1],
                          1.6, True)
    if profile is not None:
        print("\nprofile of the one-worker run (cumulative seconds):")
        print("\n".join(line for line in profile.getvalue().splitlines()[:args.profile_top + 12] if line.strip()))


if __name__ == "__main__":
    main()
