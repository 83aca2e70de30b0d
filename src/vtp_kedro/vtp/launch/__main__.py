"""``python -m vtp_kedro.vtp.launch --config job.json [--output-dir DIR]``: the one entry point of every job.

Runs one process, or one rank when started by ``torchrun`` (see ``launcher``). The config file's
``job`` says which job: ``train`` (a ``RunConfig``: a registered stage), ``extract_latents`` (an
``ExtractionJobConfig``) or ``sample_dit`` (a ``SamplingJobConfig``). Rank 0 writes
``result.json`` into the output folder (by default the config file's folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vtp_kedro.vtp.launch import extract_latents, sample_dit
from vtp_kedro.vtp.launch.launcher import TRAINING, console_logging, read_job_file

JOBS = {job.name: job for job in (TRAINING, extract_latents.JOB, sample_dit.JOB)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vtp_kedro.vtp.launch",
                                     description="Run one process, or one torchrun rank, of a job "
                                                 f"({', '.join(JOBS)}) from its config file.")
    parser.add_argument("--config", required=True, help="the job's fully resolved config (JSON)")
    parser.add_argument("--output-dir", default=None,
                        help="checkpoints, logs and result.json (default: the config's folder)")
    args = parser.parse_args(argv)
    config = Path(args.config)
    name = read_job_file(config).get("job")
    if name not in JOBS:
        parser.error(f"{config}: 'job' is {name!r}; it must be one of {sorted(JOBS)}")
    console_logging()
    JOBS[name].run(config, Path(args.output_dir) if args.output_dir else config.parent)


if __name__ == "__main__":
    main()
