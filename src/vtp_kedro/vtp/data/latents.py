"""Latent shards: a labelled image folder encoded once by a tokenizer, for DiT training and evaluation.

Preprocessing is ADM's / LightningDiT's ``center_crop_arr``: halve the image with a box filter
while its shorter side is at least twice the target, resize bicubically so the shorter side
equals the target, crop the centre square. Every image is encoded as is and flipped left-right.

Output folder::

    classes.json                      {"classes": [...sorted folder names...], "image_size", "latent_shape", "images"}
    <split>/shard_00000.safetensors   latents (N, C, h, w), latents_flip (N, C, h, w), labels (N,) int64;
                                      the images' keys (paths under the split) in the file's metadata
    stats.safetensors                 mean, std (1, C, 1, 1) over up to ``stats_samples`` non-flipped
                                      training latents (all of them for small sets)

A shard is written atomically and skipped when it exists, so an interrupted extraction resumes;
shard ``i`` of a split is encoded by rank ``i % world_size``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import Field
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vtp_kedro.vtp.config import Config
from vtp_kedro.vtp.data.imagefolder import LabelledImageFolder, decode_image_file
from vtp_kedro.vtp.io import atomic_path
from vtp_kedro.vtp.tensors import load_tensors, save_tensors

log = logging.getLogger(__name__)

CLASSES_FILE = "classes.json"
STATS_FILE = "stats.safetensors"
SHARD_PATTERN = "shard_{:05d}.safetensors"


def center_crop_arr(image: Image.Image, image_size: int) -> np.ndarray:
    """ADM's ``center_crop_arr``: box-halve while the short side >= 2x the target, bicubic resize, centre crop."""
    while min(*image.size) >= 2 * image_size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.Resampling.BOX)
    scale = image_size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.Resampling.BICUBIC)
    array = np.asarray(image.convert("RGB"))
    top, left = (array.shape[0] - image_size) // 2, (array.shape[1] - image_size) // 2
    return array[top:top + image_size, left:left + image_size]


class LatentExtractionConfig(Config):
    image_size: int = Field(gt=0, description="images are centre-cropped to this side before encoding")
    batch_size: int = Field(64, gt=0)
    shard_size: int = Field(4096, gt=0, description="images per shard (a multiple of batch_size reads best)")
    num_workers: int = Field(2, ge=0, description="image-decoding worker processes")
    splits: tuple[str, ...] = ("train", "val")
    stats_samples: int = Field(10_000, gt=0, description="non-flipped training latents the channel stats use")


class _CroppedImages(Dataset):
    def __init__(self, samples: list[tuple[str, int]], image_size: int) -> None:
        self.samples, self.image_size = samples, image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        pixels = center_crop_arr(decode_image_file(path), self.image_size)
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1), label


def _progress(total: int, description: str) -> tqdm:
    return tqdm(total=total, desc=description, unit="img", disable=not sys.stderr.isatty(), dynamic_ncols=True)


@torch.no_grad()
def extract_latents(tokenizer: Any, image_root: str | Path, output_dir: str | Path, config: LatentExtractionConfig,
                    rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Encode ``image_root``'s splits into ``output_dir`` (module docstring); returns counts and timings.

    ``tokenizer`` is a ``vtp.inference.Tokenizer`` (``encode`` on [0, 1] images) on its device.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = next(tokenizer.parameters()).device
    summary: dict[str, Any] = {"splits": {}}
    classes = None
    for split in config.splits:
        folder = LabelledImageFolder(image_root, split)
        if classes is None:
            classes = folder.classes
        elif folder.classes != classes:
            raise ValueError(f"{folder.split_dir} has classes {folder.classes}, but {config.splits[0]} has {classes}")
        samples = [(path, label) for path, label in folder.samples]
        shards = [samples[i:i + config.shard_size] for i in range(0, len(samples), config.shard_size)]
        written = skipped = 0
        start = time.perf_counter()
        bar = _progress(sum(len(s) for i, s in enumerate(shards) if i % world_size == rank), f"encoding {split}")
        for index, shard in enumerate(shards):
            if index % world_size != rank:
                continue
            path = output_dir / split / SHARD_PATTERN.format(index)
            if path.is_file():  # finished by an earlier run
                skipped += 1
                bar.update(len(shard))
                continue
            _encode_shard(tokenizer, shard, folder.split_dir, path, config, device, bar)
            written += 1
        bar.close()
        seconds = time.perf_counter() - start
        encoded = sum(len(s) for i, s in enumerate(shards) if i % world_size == rank)
        log.info("%s: %d images in %d shards (%d written, %d already there) in %.1f s",
                 split, encoded, written + skipped, written, skipped, seconds)
        summary["splits"][split] = {"images": len(samples), "shards": len(shards), "written": written,
                                    "skipped": skipped, "seconds": seconds}
    latent_shape = list(tokenizer.latent_shape(config.image_size))
    record = {"classes": classes, "image_size": config.image_size, "latent_shape": latent_shape,
              "images": {s: summary["splits"][s]["images"] for s in config.splits}}
    with atomic_path(output_dir / CLASSES_FILE) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    if rank == 0 and "train" in config.splits:
        stats = latent_stats(output_dir / "train", config.stats_samples)
        with atomic_path(output_dir / STATS_FILE) as tmp:
            save_latent_stats(stats, tmp)
    summary.update(record)
    return summary


def _encode_shard(tokenizer: Any, shard: list[tuple[str, int]], split_dir: Path, path: Path,
                  config: LatentExtractionConfig, device: torch.device, bar: tqdm) -> None:
    loader = DataLoader(_CroppedImages(shard, config.image_size), batch_size=config.batch_size,
                        num_workers=config.num_workers, persistent_workers=False)
    latents, flipped, labels = [], [], []
    for pixels, batch_labels in loader:
        images = pixels.to(device, non_blocking=True).float().div_(255)
        latents.append(tokenizer.encode(images).float().cpu())
        flipped.append(tokenizer.encode(images.flip(-1)).float().cpu())
        labels.append(batch_labels.long())
        bar.update(len(pixels))
    keys = [Path(p).relative_to(split_dir).with_suffix("").as_posix() for p, _ in shard]
    with atomic_path(path) as tmp:
        save_tensors({"latents": torch.cat(latents), "latents_flip": torch.cat(flipped), "labels": torch.cat(labels)},
                     tmp, metadata={"keys": json.dumps(keys)})


def iter_latent_shards(split_dir: str | Path) -> Iterator[dict[str, Any]]:
    """Each shard of a split, in order: ``{"latents", "latents_flip", "labels", "keys", "path"}``."""
    paths = sorted(Path(split_dir).glob("shard_*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"no latent shards (shard_*.safetensors) in {split_dir}")
    for path in paths:
        with safe_open(str(path), framework="pt") as handle:
            keys = json.loads((handle.metadata() or {}).get("keys", "[]"))
        yield {**load_tensors(path), "keys": keys, "path": path}


def latent_stats(split_dir: str | Path, max_samples: int) -> dict[str, torch.Tensor]:
    """Per-channel mean and std, shaped (1, C, 1, 1), over the first ``max_samples`` non-flipped latents."""
    total, chunks = 0, []
    for shard in iter_latent_shards(split_dir):
        take = shard["latents"][: max_samples - total]
        chunks.append(take.double())
        total += len(take)
        if total >= max_samples:
            break
    latents = torch.cat(chunks)
    mean = latents.mean(dim=(0, 2, 3), keepdim=True)
    std = latents.std(dim=(0, 2, 3), keepdim=True)
    return {"mean": mean.float(), "std": std.float()}


def save_latent_stats(stats: dict[str, torch.Tensor], path: str | Path) -> None:
    save_tensors(stats, path)


def load_latent_stats(latent_dir: str | Path) -> dict[str, torch.Tensor]:
    path = Path(latent_dir) / STATS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no latent statistics {path}: run latent_extraction on a split named 'train'")
    return load_tensors(path)
