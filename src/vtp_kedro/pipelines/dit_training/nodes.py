"""Nodes of the dit_training pipeline: train through the run plumbing, then sample with the EMA weights."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from pydantic import Field

from vtp_kedro.datasets.folder import FolderWriter
from vtp_kedro.vtp.config import Config
from vtp_kedro.vtp.data.latents import CLASSES_FILE, LatentDataConfig
from vtp_kedro.vtp.inference import load_tokenizer
from vtp_kedro.vtp.losses.flow import FlowConfig
from vtp_kedro.vtp.metrics.reconstruction import plot_image_grid
from vtp_kedro.vtp.models.dit import DiTConfig
from vtp_kedro.vtp.sampling import SamplerConfig, balanced_labels, initial_noise, random_labels
from vtp_kedro.vtp.train.curves import plot_curves
from vtp_kedro.vtp.train.dit_training import TASK_FACTORY, DiTTrainingConfig, FlowDiT
from vtp_kedro.vtp.train.distributed import DeviceKind, resolve_device
from vtp_kedro.vtp.train.launcher import LauncherConfig
from vtp_kedro.vtp.train.runs import train_stage
from vtp_kedro.vtp.train.trainer import TrainerConfig

DIT_PANELS = (("losses", ("loss", "mse", "cosine")), ("optimisation", ("lr", "grad_norm")))


class DiTArchitecture(Config):
    """``DiTConfig`` without what the latents decide (channels, grid, classes)."""

    width: int = Field(gt=0)
    depth: int = Field(gt=0)
    heads: int = Field(gt=0)
    patch_size: int = Field(1, gt=0)
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    qk_norm: bool = False
    rope: bool = True
    mlp_ratio: float = 4.0


class LatentStreamParams(Config):
    batch_size: int = Field(gt=0)
    seed: int = Field(0, ge=0)
    flip_probability: float = Field(0.5, ge=0, le=1)


class SamplingParams(SamplerConfig):
    num_samples: int = Field(100, gt=0)
    batch_size: int = Field(100, gt=0)
    labels: Literal["balanced", "random"] = Field("balanced", description="equal per class, or random")
    grid_per_class: int = Field(8, gt=0, description="samples per class in the grid PNG")
    device: DeviceKind = "auto"


class DiTTrainingParams(Config):
    runs_dir: str
    model: DiTArchitecture
    flow: FlowConfig = FlowConfig()
    data: LatentStreamParams
    class_dropout: float = 0.1
    latent_multiplier: float = 1.0
    ema_decay: float = 0.9999
    seed: int = 0
    trainer: TrainerConfig
    launcher: LauncherConfig = LauncherConfig()
    sampling: SamplingParams = SamplingParams()


def _latent_record(latents: Path) -> dict[str, Any]:
    path = Path(latents) / CLASSES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the latent_extraction pipeline first")
    return json.loads(path.read_text())


def train_dit(latents: Path, params: DiTTrainingParams) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train the DiT on the training latents; the run is named by the config and the latents' content."""
    record = _latent_record(latents)
    channels, height, width = record["latent_shape"]
    if height != width:
        raise ValueError(f"{latents}: latents of {height}x{width} are not square")
    model = DiTConfig(in_channels=channels, input_size=height, num_classes=len(record["classes"]),
                      **params.model.model_dump())
    task = DiTTrainingConfig(model=model, flow=params.flow, data=LatentDataConfig(latents=str(latents),
                             **params.data.model_dump()), class_dropout=params.class_dropout,
                             latent_multiplier=params.latent_multiplier, ema_decay=params.ema_decay, seed=params.seed)
    run = train_stage(params.runs_dir, params.trainer, TASK_FACTORY, task, {"latents": Path(latents)}, params.launcher)
    return run.checkpoint, run.metrics


def plot_dit_curves(dit_training_log: list[dict[str, Any]]) -> Figure:
    return plot_curves(dit_training_log, title="LightningDiT training (flow matching)", panels=DIT_PANELS)


@torch.no_grad()
def sample_dit(dit_checkpoint: dict[str, Any], gan_tokenizer: Path, latents: Path,
               params: DiTTrainingParams) -> tuple[FolderWriter, Figure]:
    """Class-conditional samples from the EMA weights, decoded by the tokenizer: PNGs, ADM's NPZ
    (``arr_0`` uint8 [N, H, W, 3], ``labels``), the settings beside them, and a per-class grid."""
    settings = params.sampling
    classes = _latent_record(latents)["classes"]
    device = resolve_device(settings.device)
    config = DiTTrainingConfig.model_validate(dit_checkpoint["config"]["task"])
    model = FlowDiT(config, torch.zeros(1, config.model.in_channels, 1, 1), torch.ones(1, config.model.in_channels, 1, 1))
    model.load_state_dict(dit_checkpoint["model"])
    model.to(device).eval()
    tokenizer = load_tokenizer(gan_tokenizer, device)
    labels = (balanced_labels(settings.num_samples, len(classes)) if settings.labels == "balanced"
              else random_labels(settings.num_samples, len(classes), torch.Generator().manual_seed(settings.seed)))
    shape = (config.model.in_channels, config.model.input_size, config.model.input_size)
    noise = initial_noise(settings.num_samples, shape, settings.seed)
    images = []
    for start in range(0, settings.num_samples, settings.batch_size):
        z = model.sample_latents(noise[start:start + settings.batch_size].to(device),
                                 labels[start:start + settings.batch_size].to(device), settings)
        images.append((tokenizer.decode(z).clamp(0, 1) * 255).round().to(torch.uint8).cpu())
    pixels = torch.cat(images).permute(0, 2, 3, 1).numpy()
    record = {"sampler": SamplerConfig(**{k: v for k, v in settings.model_dump().items()
                                          if k in SamplerConfig.model_fields}).model_dump(mode="json"),
              "num_samples": settings.num_samples, "labels": settings.labels, "weights": "ema",
              "classes": classes, "dit_step": dit_checkpoint["step"], "tokenizer": str(gan_tokenizer)}
    per_class = min(settings.grid_per_class, settings.num_samples // len(classes))
    rows = {name: torch.from_numpy(pixels[labels.numpy() == k][:per_class]).permute(0, 3, 1, 2).float() / 255
            for k, name in enumerate(classes)}
    grid = plot_image_grid(rows, title=f"class-conditional samples (cfg {settings.cfg_scale}, "
                                                f"{settings.num_steps} {settings.solver} steps)")
    return partial(_write_samples, pixels=pixels, labels=labels.numpy(), classes=classes, record=record), grid


def _write_samples(folder: Path, pixels: np.ndarray, labels: np.ndarray, classes: list[str],
                   record: dict[str, Any]) -> None:
    for index, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        Image.fromarray(image).save(folder / f"{index:06d}_{classes[label]}.png")
    with open(folder / "samples.npz", "wb") as handle:
        np.savez(handle, arr_0=pixels, labels=labels)
    (folder / "sampling.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
