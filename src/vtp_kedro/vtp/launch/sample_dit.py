"""Class-conditional samples from a trained DiT, decoded by the tokenizer, on one or several devices.

``python -m vtp_kedro.vtp.launch --config job.json`` (or under ``torchrun``), where
``job.json`` is a ``SamplingJobConfig``. Samples are numbered ``0 .. N-1``; sample ``i`` has
label ``labels[i]`` and the noise ``initial_noise`` gives index ``i``, so the set is the same
for any batch size and any number of ranks. Batch ``b`` (samples ``b*B .. (b+1)*B - 1``) is
drawn by rank ``b % world_size``. The output folder::

    000000_<class>.png ...          every sample, uint8 RGB
    samples.npz                     arr_0 uint8 [N, H, W, 3] (ADM's evaluator layout), labels int64 [N]
    sampling.json                   the settings (steps, solver, shift, CFG, N, seed), the classes, the DiT step
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.core.distributed import DeviceKind, barrier, is_main_process, rank, world_size
from vtp_kedro.vtp.core.io import atomic_path
from vtp_kedro.vtp.core.progress import Progress
from vtp_kedro.vtp.engine.checkpoint import load_state_strictly, read_weights
from vtp_kedro.vtp.inference import load_tokenizer
from vtp_kedro.vtp.launch.launcher import Job, job_process, write_result
from vtp_kedro.vtp.sampling import SamplerConfig, SampleSetConfig, initial_noise
from vtp_kedro.vtp.stages.dit import DiTTrainingConfig, FlowDiT

SAMPLES_FILE = "samples.npz"
SETTINGS_FILE = "sampling.json"
SAME_AS_KEY = "same_as"  # a sampling.json holding only this names the catalog entry that holds the set


class SamplingJobConfig(Config):
    job: Literal["sample_dit"] = "sample_dit"
    task: DiTTrainingConfig = Field(description="the DiT's training config (its architecture)")
    weights: str = Field(description="FlowDiT's state (DiT, EMA, latent statistics): a checkpoint folder "
                                     "or a .safetensors file")
    tokenizer: str = Field(description="the tokenizer folder that decodes the latents")
    classes: list[str] = Field(min_length=1)
    output: str
    samples: SampleSetConfig
    record: dict[str, Any] = Field({}, description="written into sampling.json beside the settings")
    device: DeviceKind = "auto"


def _part_path(output_dir: Path, rank_index: int) -> Path:
    return output_dir / f"samples_rank{rank_index:04d}.npz"


@torch.no_grad()
def run(config_path: Path, output_dir: Path) -> None:
    config = SamplingJobConfig.model_validate_json(Path(config_path).read_text())
    settings, classes, output = config.samples, config.classes, Path(config.output)
    if config.task.model.num_classes != len(classes):
        raise ValueError(f"the DiT has {config.task.model.num_classes} classes but {len(classes)} class names were given")
    with job_process(output_dir, config.device) as device:
        channels, side = config.task.model.in_channels, config.task.model.input_size
        model = FlowDiT(config.task, torch.zeros(1, channels, 1, 1), torch.ones(1, channels, 1, 1))
        load_state_strictly(model, read_weights(config.weights), config.weights)
        model.to(device).eval()
        tokenizer = load_tokenizer(config.tokenizer, device)
        labels = settings.sample_labels(len(classes))
        sampler = SamplerConfig(**{k: getattr(settings, k) for k in SamplerConfig.model_fields})
        starts = list(range(0, settings.num_samples, settings.batch_size))[rank()::world_size()]
        mine = sum(min(settings.batch_size, settings.num_samples - start) for start in starts)
        indices, images = [], []
        output.mkdir(parents=True, exist_ok=True)
        with Progress(mine, "sampling", unit="img") as progress:
            for start in starts:
                count = min(settings.batch_size, settings.num_samples - start)
                noise = initial_noise(count, (channels, side, side), settings.seed, device=device, start=start)
                z = model.sample_latents(noise, labels[start:start + count].to(device), sampler)
                pixels = (tokenizer.decode(z).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                for offset, image in enumerate(pixels):
                    index = start + offset
                    Image.fromarray(image).save(output / f"{index:06d}_{classes[labels[index]]}.png")
                indices.append(np.arange(start, start + count))
                images.append(pixels)
                progress.update(count)
        with atomic_path(_part_path(output_dir, rank())) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, index=np.concatenate(indices) if indices else np.zeros(0, np.int64),
                     arr_0=np.concatenate(images) if images else np.zeros((0, 1, 1, 3), np.uint8))
        barrier()
        if not is_main_process():
            return
        _merge_parts(output_dir, output, labels.numpy(), world_size())
        record = {"sampler": sampler.model_dump(mode="json"), "num_samples": settings.num_samples,
                  "labels": settings.labels, "weights": "ema", "classes": classes,
                  **config.record}
        with atomic_path(output / SETTINGS_FILE) as tmp:
            tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        write_result(output_dir, {"samples": settings.num_samples, "output": str(output)})


def _merge_parts(output_dir: Path, output: Path, labels: np.ndarray, ranks: int) -> None:
    """Rank 0: every rank's samples, in sample order, into one ADM-layout NPZ."""
    parts = [np.load(_part_path(output_dir, r)) for r in range(ranks)]
    index = np.concatenate([p["index"] for p in parts])
    pixels = np.concatenate([p["arr_0"] for p in parts if len(p["index"])])
    if not np.array_equal(np.sort(index), np.arange(len(labels))):
        raise RuntimeError(f"the ranks' parts hold {len(index)} samples, not 0..{len(labels) - 1} once each")
    with atomic_path(output / SAMPLES_FILE) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, arr_0=pixels[np.argsort(index)], labels=labels)
    for r in range(ranks):
        _part_path(output_dir, r).unlink()


def read_samples(folder: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(arr_0 uint8 [N, H, W, 3], labels [N], sampling.json)`` of a sample folder."""
    folder = Path(folder)
    for name in (SAMPLES_FILE, SETTINGS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} does not exist: sample the DiT first (dit_training pipeline)")
    with np.load(folder / SAMPLES_FILE) as npz:
        return npz["arr_0"], npz["labels"], json.loads((folder / SETTINGS_FILE).read_text())


def samples_per_class(folder: str | Path, per_class: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``({class: the first per_class samples, (n, 3, H, W) in [0, 1]}, sampling.json)`` for a per-class grid."""
    pixels, labels, record = read_samples(folder)
    count = max(1, min(per_class, len(labels) // len(record["classes"])))
    rows = {name: torch.from_numpy(pixels[labels == k][:count]).permute(0, 3, 1, 2).float() / 255
            for k, name in enumerate(record["classes"])}
    return rows, record


JOB = Job("sample_dit", run,
          lambda path: SamplingJobConfig.model_validate_json(Path(path).read_text()))
