"""The pre-training data stream: decoded values, shard split by rank, determinism, exact mid-epoch resume, bad data."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
from PIL import Image

from vtp_kedro.vtp.data import loader
from vtp_kedro.vtp.data.loader import PretrainDataConfig, PretrainDataStream
from vtp_kedro.vtp.data.preprocess import normalize, tokenize
from vtp_kedro.vtp.data.shards import expand_urls, iter_shard_samples, write_shard
from vtp_kedro.vtp.synthetic.generator import SyntheticConfig, write_captioned_shards

SHARDS = 8
PER_SHARD = 16
BROKEN = {"train_00000050", "train_00000053", "train_00000057"}  # in shard 00003
TRUNCATED_AT = 107  # shard 00006 is cut inside this sample: it and the 4 after it are lost


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loader") / "shards"
    write_captioned_shards(root, SyntheticConfig(image_size=32, seed=0), SHARDS * PER_SHARD, PER_SHARD)
    return root


@pytest.fixture(scope="module")
def raw_samples(shard_dir: Path) -> dict[str, dict]:
    return {s["__key__"]: s for url in expand_urls(str(shard_dir)) for s in iter_shard_samples(url)}


@pytest.fixture(scope="module")
def messy_dir(shard_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clean shards, but shard 00003 holds a garbage image, a truncated JPEG and a sample without caption,
    and shard 00006 is cut short."""
    root = tmp_path_factory.mktemp("loader") / "messy"
    shutil.copytree(shard_dir, root)
    samples = [{k: v for k, v in s.items() if k != "__url__"} for s in iter_shard_samples(str(root / "00003.tar"))]
    by_key = {s["__key__"]: s for s in samples}
    by_key["train_00000050"]["jpg"] = b"not an image at all"
    by_key["train_00000053"]["jpg"] = by_key["train_00000053"]["jpg"][:200]
    del by_key["train_00000057"]["txt"]
    write_shard(root / "00003.tar", samples)
    data = (root / "00006.tar").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        cut = tar.getmember(f"train_{TRUNCATED_AT:08d}.jpg").offset_data + 100
    (root / "00006.tar").write_bytes(data[:cut])
    return root


def config(shards: Path, **overrides) -> PretrainDataConfig:
    return PretrainDataConfig(**{"shards": str(shards), "image_size": 32, "batch_size": 8, "num_workers": 0,
                                 "shuffle_buffer": 20, **overrides})


def take(stream: PretrainDataStream, count: int) -> list[dict]:
    batches = iter(stream)
    return [next(batches) for _ in range(count)]


def shard_of(key: str) -> int:
    return int(key.split("_")[1]) // PER_SHARD


def assert_same_batches(left: list[dict], right: list[dict]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert a["keys"] == b["keys"]
        assert torch.equal(a["images"], b["images"])
        assert torch.equal(a["tokens"], b["tokens"])


def decoded(sample: dict) -> torch.Tensor:
    """The reference decode of a stored sample: PIL, RGB, [0, 1], (3, H, W)."""
    pixels = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"))
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("flip_probability", [0.0, 1.0])
def test_batches_hold_normalised_decoded_images_and_caption_tokens(shard_dir, raw_samples, flip_probability):
    stream = PretrainDataStream(config(shard_dir, batch_size=6, shuffle_buffer=0, random_crop=False,
                                       flip_probability=flip_probability))
    batch = take(stream, 1)[0]

    assert batch["images"].dtype == torch.float32 and batch["images"].shape == (6, 3, 32, 32)
    assert batch["tokens"].dtype == torch.int64 and batch["tokens"].shape == (6, 77)
    indices = [int(k.split("_")[1]) for k in batch["keys"]]
    assert indices == list(range(indices[0], indices[0] + 6))  # no shuffle buffer: shard order
    expected = torch.stack([decoded(raw_samples[k]) for k in batch["keys"]])
    if flip_probability:
        expected = expected.flip(-1)
    torch.testing.assert_close(batch["images"], normalize(expected), rtol=0, atol=1e-6)
    captions = [raw_samples[k]["txt"].decode() for k in batch["keys"]]
    assert torch.equal(batch["tokens"], tokenize(captions))


def test_square_images_are_resized_to_image_size(shard_dir, raw_samples):
    stream = PretrainDataStream(config(shard_dir, image_size=16, flip_probability=0.0))
    batch = take(stream, 1)[0]

    assert batch["images"].shape == (8, 3, 16, 16)
    reference = torch.stack([
        torch.from_numpy(np.asarray(Image.open(io.BytesIO(raw_samples[k]["jpg"])).resize(
            (16, 16), Image.Resampling.BICUBIC)).copy()).permute(2, 0, 1).float() / 255
        for k in batch["keys"]
    ])
    # The loader lets libjpeg decode at half scale (draft) instead of decoding fully and resizing:
    # the same picture, off by about 1.8 grey levels on average on these sharp-edged scenes.
    difference = (batch["images"] - normalize(reference)) * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
    assert difference.abs().mean() < 3


@pytest.fixture(scope="module")
def ramp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One shard of 64x32 lossless images whose red channel is 4 * column: a crop shows where it was taken."""
    root = tmp_path_factory.mktemp("loader") / "ramp"
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[..., 0] = 4 * np.arange(64)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    write_shard(root / "00000.tar", [{"__key__": f"ramp_{i:03d}", "png": buffer.getvalue(), "txt": "a red ramp"}
                                     for i in range(32)])
    return root


def test_centre_crop_takes_the_middle_and_random_crop_moves(ramp_dir):
    centre = take(PretrainDataStream(config(ramp_dir, random_crop=False, flip_probability=0.0)), 1)[0]
    red = centre["images"][:, 0] * 0.229 + 0.485  # back to [0, 1]
    expected = torch.tensor(4 * np.arange(16, 48) / 255, dtype=torch.float32).expand(8, 32, 32)
    torch.testing.assert_close(red, expected, rtol=0, atol=1e-6)

    random = take(PretrainDataStream(config(ramp_dir, batch_size=32, flip_probability=0.0)), 1)[0]
    first_column = (random["images"][:, 0, :, 0] * 0.229 + 0.485) * 255 / 4  # the crop's left edge, in columns
    assert torch.all(first_column[:, 0].round() >= 0) and torch.all(first_column[:, 0].round() <= 32)
    assert first_column[:, 0].std() > 5  # left edges spread over [0, 32]
    steps = (random["images"][:, 0, 0, 1:] - random["images"][:, 0, 0, :-1]) * 0.229 * 255
    torch.testing.assert_close(steps[:, 2:-2], torch.full_like(steps[:, 2:-2], 4.0), rtol=0, atol=0.6)


def test_each_epoch_reshuffles_the_samples(ramp_dir):
    epochs = take(PretrainDataStream(config(ramp_dir, batch_size=32)), 2)  # the one shard holds 32 samples
    assert sorted(epochs[0]["keys"]) == sorted(epochs[1]["keys"])
    assert epochs[0]["keys"] != epochs[1]["keys"]


def test_same_seed_gives_the_same_batches_and_another_seed_does_not(shard_dir):
    first = take(PretrainDataStream(config(shard_dir, num_workers=2)), 6)
    again = take(PretrainDataStream(config(shard_dir, num_workers=2)), 6)
    other = take(PretrainDataStream(config(shard_dir, num_workers=2, seed=1)), 6)

    assert_same_batches(first, again)
    assert [b["keys"] for b in first] != [b["keys"] for b in other]


def test_ranks_read_disjoint_shards_that_cover_every_shard_each_epoch(shard_dir):
    # 2 ranks x 2 workers x 2 shards of 16 samples: each worker's epoch is exactly 4 batches of 8.
    per_rank = [take(PretrainDataStream(config(shard_dir, num_workers=2), rank=r, world_size=2), 16) for r in (0, 1)]

    epochs_shards = []
    for epoch in (0, 1):
        shards = []
        for batches in per_rank:
            keys = [k for b in batches[8 * epoch:8 * (epoch + 1)] for k in b["keys"]]
            assert len(set(keys)) == len(keys) == 4 * PER_SHARD  # every sample of its 4 shards, once
            shards.append({shard_of(k) for k in keys})
        assert len(shards[0]) == len(shards[1]) == 4 and not shards[0] & shards[1]
        assert shards[0] | shards[1] == set(range(SHARDS))
        epochs_shards.append(shards)
    assert epochs_shards[0] != epochs_shards[1]  # each epoch permutes the shards anew


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_continues_with_the_uninterrupted_batches(messy_dir, num_workers):
    # 12 samples per batch never divides a worker's epoch, so batches span epochs; 5 is not a multiple of 2 workers.
    settings = config(messy_dir, batch_size=12, num_workers=num_workers)
    uninterrupted_stream = PretrainDataStream(settings)
    uninterrupted = take(uninterrupted_stream, 13)

    interrupted = PretrainDataStream(settings)
    take(interrupted, 5)
    state = json.loads(json.dumps(interrupted.state_dict()))  # plain values: any checkpoint format holds them
    resumed = PretrainDataStream(settings)
    resumed.load_state_dict(state)
    assert_same_batches(take(resumed, 8), uninterrupted[5:])
    assert resumed.batches == 13
    assert resumed.skipped == uninterrupted_stream.skipped
    assert resumed.state_dict() == uninterrupted_stream.state_dict()


def test_resuming_skips_the_consumed_samples_without_decoding_them(shard_dir, monkeypatch):
    settings = config(shard_dir)
    stream = PretrainDataStream(settings)
    take(stream, 10)
    resumed = PretrainDataStream(settings)
    resumed.load_state_dict(stream.state_dict())

    calls = []
    decode = loader._decode_sample
    monkeypatch.setattr(loader, "_decode_sample", lambda *args: calls.append(1) or decode(*args))
    take(resumed, 1)
    assert len(calls) == 8


def test_corrupt_samples_are_skipped_and_counted(messy_dir):
    # 128 samples less the 3 broken and the 5 truncated ones: one epoch is exactly 24 batches of 5.
    stream = PretrainDataStream(config(messy_dir, batch_size=5))
    keys = [k for b in take(stream, 24) for k in b["keys"]]

    lost = BROKEN | {f"train_{i:08d}" for i in range(TRUNCATED_AT, 7 * PER_SHARD)}
    expected = {f"train_{i:08d}" for i in range(SHARDS * PER_SHARD)} - lost
    assert len(keys) == len(set(keys)) and set(keys) == expected
    assert stream.skipped == {"undecodable_image": 2, "missing_caption": 1, "truncated_shard": 1}


def test_a_worker_without_any_usable_sample_fails_instead_of_hanging(tmp_path, raw_samples):
    write_shard(tmp_path / "00000.tar", [{"__key__": f"bad_{i}", "jpg": b"garbage", "txt": "x"} for i in range(3)])
    with pytest.raises(RuntimeError, match="no usable sample in epoch 0"):
        take(PretrainDataStream(config(tmp_path)), 1)


def test_too_few_shards_for_the_ranks_and_workers_fails_at_construction(shard_dir):
    with pytest.raises(ValueError, match=rf"{shard_dir}.* 8 shards, fewer than .* = 9"):
        PretrainDataStream(config(shard_dir, num_workers=3), rank=0, world_size=3)
    PretrainDataStream(config(shard_dir, num_workers=0), rank=7, world_size=8)  # one shard each is enough


def test_load_state_dict_rejects_a_state_of_another_layout(shard_dir):
    state = PretrainDataStream(config(shard_dir)).state_dict()
    with pytest.raises(ValueError, match="seed: saved 0, now 1"):
        PretrainDataStream(config(shard_dir, seed=1)).load_state_dict(state)
    with pytest.raises(ValueError, match="rank: saved 0, now 1"):
        PretrainDataStream(config(shard_dir), rank=1, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="lacks"):
        PretrainDataStream(config(shard_dir)).load_state_dict({"batches": 3})


def test_an_older_iterator_stops_once_superseded(shard_dir):
    stream = PretrainDataStream(config(shard_dir))
    older = iter(stream)
    next(older)
    newer = iter(stream)
    assert next(newer)["keys"] == take(PretrainDataStream(config(shard_dir)), 2)[1]["keys"]
    with pytest.raises(RuntimeError, match="superseded"):
        next(older)


def test_iterating_leaves_the_global_torch_rng_alone(shard_dir):
    before = torch.random.get_rng_state()
    take(PretrainDataStream(config(shard_dir)), 2)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_impossible_settings_are_rejected(shard_dir):
    with pytest.raises(pydantic.ValidationError, match="batch_size"):
        config(shard_dir, batch_size=0)
    with pytest.raises(pydantic.ValidationError, match="flip_probability"):
        config(shard_dir, flip_probability=1.5)
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        PretrainDataStream(config(shard_dir), rank=2, world_size=2)


def test_images_only_streams_read_shards_without_captions(messy_dir):
    with_captions = take(PretrainDataStream(config(messy_dir, shuffle_buffer=0)), 12)
    images_only = take(PretrainDataStream(config(messy_dir, shuffle_buffer=0, captions=False)), 12)
    assert all("tokens" not in batch for batch in images_only)
    keys = [k for batch in images_only for k in batch["keys"]]
    assert "train_00000057" in keys  # its caption is missing, but its image is all this stream needs
    assert "train_00000057" not in [k for batch in with_captions for k in batch["keys"]]
    by_key = {k: img for batch in with_captions for k, img in zip(batch["keys"], batch["images"])}
    for batch in images_only:
        for key, image in zip(batch["keys"], batch["images"]):
            if key in by_key and key < "train_00000057":  # same draws before the streams diverge
                assert torch.equal(image, by_key[key])
