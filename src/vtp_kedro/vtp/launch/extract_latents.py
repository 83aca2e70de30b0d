"""Latent extraction on one or several devices: each rank encodes every ``world_size``-th shard.

``python -m vtp_kedro.vtp.launch --config job.json`` (or ``torchrun ... -m``), where
``job.json`` is an ``ExtractionJobConfig``. Rank 0 writes the statistics and records once all
shards exist (``vtp.data.latents.extract_latents``) and ``result.json`` with the counts summed
over ranks and the slowest rank's seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.core.distributed import DeviceKind, all_gather_objects, barrier, is_main_process, rank, world_size
from vtp_kedro.vtp.data.latents import LatentExtractionConfig, extract_latents
from vtp_kedro.vtp.inference import load_tokenizer
from vtp_kedro.vtp.launch.launcher import Job, job_process, write_result


class ExtractionJobConfig(Config):
    job: Literal["extract_latents"] = "extract_latents"
    tokenizer: str = Field(description="a folder load_tokenizer opens")
    image_root: str = Field(description="an ImageNet-style folder: <split>/<class>/*")
    output: str = Field(description="the latent folder")
    extraction: LatentExtractionConfig
    identity: dict[str, Any] = {}
    device: DeviceKind = "auto"


def merge_summaries(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary from every rank's: shard counts summed, seconds of the slowest rank."""
    merged = json.loads(json.dumps(summaries[0]))
    for split, counts in merged["splits"].items():
        per_rank = [summary["splits"][split] for summary in summaries]
        for key in ("written", "skipped", "encoded"):
            counts[key] = sum(c[key] for c in per_rank)
        counts["seconds"] = max(c["seconds"] for c in per_rank)
    merged["world_size"] = len(summaries)
    return merged


def run(config_path: Path, output_dir: Path) -> None:
    config = ExtractionJobConfig.model_validate_json(Path(config_path).read_text())
    with job_process(output_dir, config.device) as device:
        tokenizer = load_tokenizer(config.tokenizer, device)
        with torch.inference_mode():
            summary = extract_latents(tokenizer, config.image_root, config.output, config.extraction, rank=rank(),
                                      world_size=world_size(), identity=config.identity, barrier=barrier)
        summaries = all_gather_objects(summary)
        if is_main_process():
            write_result(output_dir, merge_summaries(summaries))


JOB = Job("extract_latents", run,
          lambda path: ExtractionJobConfig.model_validate_json(Path(path).read_text()))
