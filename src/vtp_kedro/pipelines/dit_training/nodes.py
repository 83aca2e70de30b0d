"""Nodes of the dit_training pipeline: train through the run plumbing, then sample with the EMA weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from pydantic import Field

from vtp_kedro.datasets.folder import StagedFolder, write_now
from vtp_kedro.vtp.core.distributed import DeviceKind
from vtp_kedro.vtp.core.io import atomic_path
from vtp_kedro.vtp.data.latents import CLASSES_FILE, LatentDataConfig
from vtp_kedro.vtp.engine.curves import plot_curves
from vtp_kedro.vtp.engine.trainer import TrainerConfig
from vtp_kedro.vtp.inference import load_tokenizer
from vtp_kedro.vtp.launch.launcher import LauncherConfig, job_folder, launch_job
from vtp_kedro.vtp.launch.runs import train_stage
from vtp_kedro.vtp.launch.sample_dit import JOB as SAMPLING
from vtp_kedro.vtp.launch.sample_dit import SAME_AS_KEY, SETTINGS_FILE, SamplingJobConfig, samples_per_class
from vtp_kedro.vtp.metrics.reconstruction import plot_image_grid
from vtp_kedro.vtp.models.dit import DiTArchitecture
from vtp_kedro.vtp.sampling import SampleSetConfig
from vtp_kedro.vtp.stages.dit import STAGE as DIT
from vtp_kedro.vtp.stages.dit import DiTTrainingConfig

DIT_PANELS = (("losses", ("loss", "mse", "cosine")), ("optimisation", ("lr", "grad_norm")))


class LatentStreamParams(LatentDataConfig):
    latents: None = Field(None, description="set by the node: the latent_extraction output (catalog entry latents)")


class SamplingParams(SampleSetConfig):
    grid_per_class: int = Field(8, gt=0, description="samples per class in the grid PNG")
    device: DeviceKind = "auto"
    launcher: LauncherConfig = LauncherConfig()  # torchrun with nproc_per_node N: samples split over N devices


class DiTTrainingParams(DiTTrainingConfig):
    """The stage's task config (``DiTTrainingConfig``: what it computes) with the architecture only,
    since the latents decide channels, grid and classes, and where and how it runs."""

    runs_dir: str
    model: DiTArchitecture
    data: LatentStreamParams
    trainer: TrainerConfig
    launcher: LauncherConfig = LauncherConfig()
    sampling: SamplingParams = SamplingParams()

    def task_config(self, latents: Path, record: dict[str, Any]) -> DiTTrainingConfig:
        """The stage's config on the latent folder ``latents`` (its ``classes.json`` is ``record``)."""
        channels, height, width = record["latent_shape"]
        if height != width:
            raise ValueError(f"{latents}: latents of {height}x{width} are not square")
        task = self.model_dump(include=set(DiTTrainingConfig.model_fields))
        return DiTTrainingConfig(**{**task, "model": self.model.for_latents(channels, height, len(record["classes"])),
                                    "data": {**task["data"], "latents": str(latents)}})


def _latent_record(latents: Path) -> dict[str, Any]:
    path = Path(latents) / CLASSES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the latent_extraction pipeline first")
    return json.loads(path.read_text())


def train_dit(latents: Path, params: DiTTrainingParams) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train the DiT on the training latents; the run is named by the config and the latents' content."""
    task = params.task_config(latents, _latent_record(latents))
    run = train_stage(params.runs_dir, params.trainer, DIT, task, {"latents": Path(latents)}, params.launcher)
    return run.checkpoint, run.metrics


def plot_dit_curves(dit_training_log: list[dict[str, Any]]) -> Figure:
    return plot_curves(dit_training_log, title="LightningDiT training (flow matching)", panels=DIT_PANELS)


def _sample_set(dit_checkpoint: dict[str, Any], gan_tokenizer: Path, latents: Path, params: DiTTrainingParams,
                samples: SampleSetConfig, job_name: str) -> StagedFolder:
    classes = _latent_record(latents)["classes"]
    task = DiTTrainingConfig.model_validate(dit_checkpoint["config"]["task"])
    load_tokenizer(gan_tokenizer, "cpu")  # a wrong folder fails now, before any process starts

    def write(folder: Path) -> None:
        job_dir = job_folder(Path(params.runs_dir) / job_name)
        job = SamplingJobConfig(task=task, weights=dit_checkpoint["path"], tokenizer=str(gan_tokenizer),
                                classes=classes, output=str(folder), device=params.sampling.device, samples=samples,
                                record={"dit_step": dit_checkpoint["step"], "tokenizer": str(gan_tokenizer)})
        with atomic_path(job_dir / "job.json") as tmp:
            tmp.write_text(job.model_dump_json(indent=2))
        launch_job(job_dir / "job.json", job_dir, params.sampling.launcher, SAMPLING)

    return write_now(write, f"dit_{job_name}")


def _sample_settings(params: DiTTrainingParams, **overrides: Any) -> SampleSetConfig:
    settings = {k: getattr(params.sampling, k) for k in SampleSetConfig.model_fields}
    return SampleSetConfig(**{**settings, **overrides})


def sample_dit(dit_checkpoint: dict[str, Any], gan_tokenizer: Path, latents: Path,
               params: DiTTrainingParams) -> StagedFolder:
    """The sample folder, sampled here: class-conditional samples from the EMA weights, decoded by the
    tokenizer (``vtp.launch.sample_dit``: PNGs, ADM's NPZ, the settings), on the launcher's devices."""
    return _sample_set(dit_checkpoint, gan_tokenizer, latents, params, _sample_settings(params), "samples")


def sample_dit_unguided(dit_checkpoint: dict[str, Any], gan_tokenizer: Path, latents: Path,
                        params: DiTTrainingParams) -> StagedFolder:
    """The same samples without guidance (CFG scale 1), which evaluation scores beside the guided ones.

    When the configured scale is already 1 the guided set is this set: only ``sampling.json``
    is written, pointing there (``SAME_AS_KEY``), so paper-scale runs do not sample 50k twice.
    """
    if params.sampling.cfg_scale == 1.0:
        def point_to_guided(folder: Path) -> None:
            record = {SAME_AS_KEY: "dit_samples", "reason": "sampling.cfg_scale is 1.0: the guided set has no guidance"}
            (folder / SETTINGS_FILE).write_text(json.dumps(record, indent=2) + "\n")
        return write_now(point_to_guided, "dit_samples_unguided")
    return _sample_set(dit_checkpoint, gan_tokenizer, latents, params, _sample_settings(params, cfg_scale=1.0),
                       "samples_unguided")


def plot_dit_samples(dit_samples: Path, params: DiTTrainingParams) -> Figure:
    """One row per class: the first ``grid_per_class`` samples of each."""
    rows, record = samples_per_class(dit_samples, params.sampling.grid_per_class)
    sampler = record["sampler"]
    return plot_image_grid(rows, title=f"class-conditional samples (cfg {sampler['cfg_scale']}, "
                                       f"{sampler['num_steps']} {sampler['solver']} steps)")
