"""Latent shards: ADM's centre crop, deterministic resumable extraction, flipped latents, channel stats."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.vtp.conftest import CLASSES
from vtp_kedro.vtp.data.imagefolder import center_crop_arr
from vtp_kedro.vtp.data.latents import (
    LatentExtractionConfig,
    extract_latents,
    iter_latent_shards,
    latent_stats,
    load_latent_stats,
)


def config(**overrides) -> LatentExtractionConfig:
    return LatentExtractionConfig(**{"image_size": 32, "batch_size": 4, "shard_size": 6, "num_workers": 0,
                                     "stats_samples": 10, **overrides})


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_center_crop_arr_halves_then_resizes_then_crops():
    image = Image.fromarray(np.zeros((130, 300, 3), dtype=np.uint8))
    assert center_crop_arr(image, 32).shape == (32, 32, 3)
    # A stripe in the middle column survives the centre crop of a wide image.
    pixels = np.zeros((40, 120, 3), dtype=np.uint8)
    pixels[:, 55:65] = 255
    crop = center_crop_arr(Image.fromarray(pixels), 40)
    assert crop[:, 15:25].mean() > 200 and crop[:, :10].mean() < 20


def test_extraction_is_deterministic_resumable_and_keeps_the_folder_s_classes(image_root, tokenizer, tmp_path):
    summary = extract_latents(tokenizer, image_root, tmp_path / "a", config())
    assert summary["splits"]["train"] == {**summary["splits"]["train"], "images": 15, "shards": 3, "written": 3}
    record = json.loads((tmp_path / "a" / "classes.json").read_text())
    assert record["classes"] == sorted(CLASSES) and record["latent_shape"] == [4, 4, 4]
    extract_latents(tokenizer, image_root, tmp_path / "b", config())
    assert digests(tmp_path / "a") == digests(tmp_path / "b")  # byte-identical from the same inputs
    # A rerun skips finished shards; a deleted shard is rebuilt identically.
    (tmp_path / "a" / "train" / "shard_00001.safetensors").unlink()
    again = extract_latents(tokenizer, image_root, tmp_path / "a", config())
    assert again["splits"]["train"]["written"] == 1 and again["splits"]["train"]["skipped"] == 2
    assert digests(tmp_path / "a") == digests(tmp_path / "b")


def test_shards_hold_flipped_latents_labels_and_keys(image_root, tokenizer, tmp_path):
    extract_latents(tokenizer, image_root, tmp_path, config(splits=("val",)))
    (shard,) = list(iter_latent_shards(tmp_path / "val"))
    assert shard["keys"][:2] == ["apple/0", "apple/1"] and shard["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    image = torch.from_numpy(center_crop_arr(Image.open(image_root / "val/apple/0.png"), 32).copy())
    image = image.permute(2, 0, 1)[None].float() / 255
    assert torch.equal(shard["latents"][:1], tokenizer.encode(image))
    assert torch.equal(shard["latents_flip"][:1], tokenizer.encode(image.flip(-1)))
    assert not (tmp_path / "stats.safetensors").exists()  # no training split, no stats


def test_stats_are_per_channel_over_the_first_training_latents(image_root, tokenizer, tmp_path):
    extract_latents(tokenizer, image_root, tmp_path, config())
    latents = torch.cat([s["latents"] for s in iter_latent_shards(tmp_path / "train")])[:10].double()
    stats = load_latent_stats(tmp_path)
    assert stats["mean"].shape == stats["std"].shape == (1, 4, 1, 1)
    torch.testing.assert_close(stats["mean"].double(), latents.mean(dim=(0, 2, 3), keepdim=True), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["std"].double(), latents.std(dim=(0, 2, 3), keepdim=True), rtol=1e-5, atol=1e-6)
    everything = latent_stats(tmp_path / "train", 10_000)  # small sets: all of them
    assert not torch.equal(everything["mean"], stats["mean"])
    with pytest.raises(FileNotFoundError, match="no latent statistics"):
        load_latent_stats(tmp_path / "train")


def test_shards_of_another_tokenizer_are_not_reused(image_root, tokenizer, tmp_path):
    extract_latents(tokenizer, image_root, tmp_path, config(splits=("val",)), identity={"tokenizer": "a"})
    same = extract_latents(tokenizer, image_root, tmp_path, config(splits=("val",)), identity={"tokenizer": "a"})
    assert same["splits"]["val"]["written"] == 0
    other = extract_latents(tokenizer, image_root, tmp_path, config(splits=("val",)), identity={"tokenizer": "b"})
    assert other["splits"]["val"]["written"] == 1
    assert json.loads((tmp_path / "extraction.json").read_text())["identity"]["tokenizer"] == "b"


def test_a_killed_extraction_resumes_from_its_finished_shards(image_root, tokenizer, tmp_path, monkeypatch):
    import vtp_kedro.vtp.data.latents as latents

    encode = latents._encode_shard
    calls = []

    def dies_on_the_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is killed while the second shard is encoded
        return encode(*args, **kwargs)

    monkeypatch.setattr(latents, "_encode_shard", dies_on_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        extract_latents(tokenizer, image_root, tmp_path / "a", config(), identity={"tokenizer": "a"})
    monkeypatch.setattr(latents, "_encode_shard", encode)
    resumed = extract_latents(tokenizer, image_root, tmp_path / "a", config(), identity={"tokenizer": "a"})
    assert resumed["splits"]["train"]["skipped"] == 1 and resumed["splits"]["train"]["written"] == 2
    extract_latents(tokenizer, image_root, tmp_path / "b", config(), identity={"tokenizer": "a"})
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
