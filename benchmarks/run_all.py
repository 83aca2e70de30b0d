"""Every benchmark, then one table of its targets: stage, measure, measured, target, ratio.

    python benchmarks/run_all.py [--only tokenizer_step latent_extraction ...] [--quick]

Runs each benchmark script in its own process (its full output goes to the console as it
runs), gathers the rows they ``record_target`` (``benchmarks/summary.py``) and prints them together;
a ratio >= 1 means the target is met. ``dit_samples`` judges the samples of a finished run, so
it needs ``make run`` first and is skipped without them. ``--quick`` passes each benchmark its
smallest settings (a smoke test of the table, not numbers to quote). Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from summary import SUMMARY_ENV

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# name: the arguments of --quick (without it each benchmark runs at its own defaults)
BENCHMARKS: dict[str, list[str]] = {
    "embedded_task": ["--epochs", "1", "--skip-pixels"],
    "data_filtering": ["--samples", "512", "--samples-per-shard", "128"],
    "dedup": ["--samples", "20000"],
    "near_duplicates": ["--embedded", "50"],
    "tokenizer_step": ["--steps", "3"],
    "decoder_gan_step": ["--steps", "3"],
    "latent_extraction": ["--per-class", "20", "--repeats", "1", "--dit-steps", "2"],
    "dit_samples": ["--epochs", "1"],
}
NEEDS_A_RUN = {"dit_samples": ROOT / "data/07_model_output/dit_samples/samples.npz"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="smallest settings: checks the table, not the numbers")
    args = parser.parse_args()
    failed = []
    with tempfile.TemporaryDirectory() as scratch:
        summary = Path(scratch) / "summary.jsonl"
        env = {**os.environ, SUMMARY_ENV: str(summary)}
        for name in args.only:
            needed = NEEDS_A_RUN.get(name)
            if needed is not None and not needed.exists():
                print(f"== {name}: skipped, {needed} does not exist (make run first)\n", flush=True)
                continue
            print(f"== {name}", flush=True)
            quick = BENCHMARKS[name] if args.quick else []
            result = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *quick], env=env)
            if result.returncode != 0:
                failed.append(name)
            print(flush=True)
        rows = [json.loads(line) for line in summary.read_text().splitlines()] if summary.exists() else []
    print(f"{'stage':<22}{'measure':<50}{'measured':>10}  {'target':<9}{'ratio':>7}")
    for row in rows:
        print(f"{row['stage']:<22}{row['measure']:<50}{row['measured']:>10.3f}  {row['target']:<9}{row['ratio']:>7.2f}"
              f"{'' if row['ratio'] >= 1 else '  (not met)'}")
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
