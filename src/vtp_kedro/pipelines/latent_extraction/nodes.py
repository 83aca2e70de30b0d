"""Nodes of the latent_extraction pipeline: a thin call into ``vtp.data.latents``."""

from __future__ import annotations

from pathlib import Path

import mlflow
from pydantic import Field

from vtp_kedro.datasets.folder import StagedFolder, write_now
from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.core.distributed import DeviceKind
from vtp_kedro.vtp.core.io import atomic_path, folder_digest, project_relative
from vtp_kedro.vtp.data.latents import LatentExtractionConfig
from vtp_kedro.vtp.inference import load_tokenizer
from vtp_kedro.vtp.launch.extract_latents import JOB as EXTRACTION
from vtp_kedro.vtp.launch.extract_latents import ExtractionJobConfig
from vtp_kedro.vtp.launch.launcher import LauncherConfig, job_folder, launch_job


class ExtractionParams(LatentExtractionConfig):
    image_size: int | None = Field(None, gt=0, description="None: the size the tokenizer was trained at")


class LatentExtractionParams(Config):
    # null: the embedded labelled split (catalog entry raw_labelled_images); else any ImageNet-style
    # folder with train/<class>/* and val/<class>/* (class names from the folder names, sorted).
    image_root: str | None = None
    tokenizer: str | None = None  # null: the decoder_gan output (gan_tokenizer); else any tokenizer folder
    extraction: ExtractionParams
    device: DeviceKind = "auto"
    launcher: LauncherConfig = LauncherConfig()  # torchrun with nproc_per_node N: images split over N devices


def encode_labelled_images(gan_tokenizer: Path, raw_labelled_images: Path,
                           params: LatentExtractionParams) -> StagedFolder:
    """Encode the labelled images into a latent folder that the catalog's save moves into place.

    The folder is staged at a fixed place (``data/.staging/latents``) and its finished shards stay
    there (the save hard-links them into place), so a killed extraction resumes where it stopped
    and a rerun with the same tokenizer, images and settings encodes nothing."""
    tokenizer_path = Path(params.tokenizer or gan_tokenizer)
    image_root = Path(params.image_root or raw_labelled_images)
    tokenizer = load_tokenizer(tokenizer_path, "cpu")  # a wrong folder fails now, before any process starts
    config = LatentExtractionConfig(**{**params.extraction.model_dump(),
                                       "image_size": params.extraction.image_size or tokenizer.image_size})
    identity = {"tokenizer": folder_digest(tokenizer_path), "image_root": str(project_relative(image_root.resolve()))}

    def write(folder: Path) -> None:
        job = ExtractionJobConfig(tokenizer=str(tokenizer_path), image_root=str(image_root), output=str(folder),
                                  extraction=config, identity=identity, device=params.device)
        job_dir = job_folder(folder)
        with atomic_path(job_dir / "job.json") as tmp:
            tmp.write_text(job.model_dump_json(indent=2))
        summary = launch_job(job_dir / "job.json", job_dir, params.launcher, EXTRACTION)
        if mlflow.active_run() is not None:
            metrics = {f"latent_extraction.{split}.{key}": float(value)
                       for split, counts in summary["splits"].items() for key, value in counts.items()}
            metrics |= {f"latent_extraction.{split}.images_per_s": counts["images"] / max(counts["seconds"], 1e-9)
                        for split, counts in summary["splits"].items() if counts["written"]}
            mlflow.log_metrics(metrics)

    return write_now(write, "latents", resume=True)
