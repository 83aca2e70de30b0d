"""The DiT latent stream: every row once per epoch, rank split, flips, determinism, exact resume, one shard held."""

from __future__ import annotations

import json
import re
import weakref
from pathlib import Path

import pydantic
import pytest
import torch

from vtp_kedro.vtp.core.tensors import save_tensors
from vtp_kedro.vtp.data import latents as latents_module
from vtp_kedro.vtp.data.latents import LatentDataConfig, LatentDataStream

SHARD_ROWS = (7, 5, 9)  # uneven on purpose: batches span shards, ranks get different row counts
ALL_ITEMS = {100 * s + r for s, rows in enumerate(SHARD_ROWS) for r in range(rows)}


def write_latent_folder(root: Path, shard_rows: tuple[int, ...] = SHARD_ROWS, split: str = "train") -> Path:
    """Shards whose row ``r`` of shard ``s`` has label ``100 s + r`` and every latent value ``label + 1``
    (``-(label + 1)`` in latents_flip), so a batch item tells which image it is and whether it was flipped."""
    (root / split).mkdir(parents=True)
    for shard, rows in enumerate(shard_rows):
        labels = torch.arange(rows, dtype=torch.int64) + 100 * shard
        values = (labels + 1).float().view(-1, 1, 1, 1).expand(rows, 2, 2, 2).contiguous()
        save_tensors({"latents": values, "latents_flip": -values, "labels": labels},
                     root / split / f"shard_{shard:05d}.safetensors")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_latent_folder(tmp_path_factory.mktemp("latents") / "latents")


def make(folder: Path, rank: int = 0, world_size: int = 1, **overrides) -> LatentDataStream:
    config = LatentDataConfig(**{"latents": str(folder), "batch_size": 3, "seed": 0, **overrides})
    return LatentDataStream(config, rank=rank, world_size=world_size)


def items(batch: dict) -> tuple[list[int], list[bool]]:
    """(labels, flipped) of a batch, after checking each item's latents are its own (flipped or not)."""
    latents, labels = batch["latents"], batch["labels"]
    assert latents.dtype == torch.float32 and labels.dtype == torch.int64
    assert latents.shape == (len(labels), 2, 2, 2)
    flat = latents.flatten(1)
    assert torch.equal(flat.abs(), (labels + 1).float()[:, None].expand_as(flat))
    assert torch.equal(flat.sign(), flat[:, :1].sign().expand_as(flat))  # flipped as a whole
    return labels.tolist(), (flat[:, 0] < 0).tolist()


def epoch(stream: LatentDataStream) -> list[dict]:
    return list(stream)


def take(stream: LatentDataStream, count: int) -> list[dict]:
    """``count`` batches as the trainer takes them: a new ``iter()`` after each epoch's StopIteration."""
    batches: list[dict] = []
    iterator = iter(stream)
    while len(batches) < count:
        try:
            batches.append(next(iterator))
        except StopIteration:
            iterator = iter(stream)
    return batches


def test_every_row_once_per_epoch_in_full_batches(folder):
    stream = make(folder, batch_size=3)
    assert stream.num_samples == 21 and stream.latent_shape == (2, 2, 2)
    assert stream.steps_per_epoch() == 7 and stream.rows_in_epoch() == 21
    for e in range(3):
        assert stream.state_dict() == {"epoch": e, "position": 0}
        batches = epoch(stream)
        assert len(batches) == 7
        labels = [label for batch in batches for label in items(batch)[0]]
        assert sorted(labels) == sorted(ALL_ITEMS)
    # The last incomplete batch is dropped: 21 rows in batches of 4 give 5 batches, one row left out.
    stream = make(folder, batch_size=4)
    batches = epoch(stream)
    assert [len(b["labels"]) for b in batches] == [4] * 5 and stream.steps_per_epoch() == 5
    labels = [label for batch in batches for label in items(batch)[0]]
    assert len(set(labels)) == 20 and set(labels) < ALL_ITEMS
    assert stream.state_dict() == {"epoch": 1, "position": 0}


def test_two_ranks_split_the_shards_disjointly(folder):
    for e in range(6):
        seen = []
        for rank in range(2):
            stream = make(folder, rank, 2, batch_size=1)
            stream.load_state_dict({"epoch": e, "position": 0})
            labels = [label for batch in epoch(stream) for label in items(batch)[0]]
            assert len(labels) == stream.rows_in_epoch(e) and len(set(labels)) == len(labels)
            # A rank reads whole shards: its items are exactly those of the shards it was dealt.
            assert {label // 100 for label in labels} == set(stream._rank_shards(e))
            seen.append(set(labels))
        assert not seen[0] & seen[1] and seen[0] | seen[1] == ALL_ITEMS
    # With drop_last each rank loses fewer than batch_size rows of its own.
    for rank in range(2):
        stream = make(folder, rank, 2, batch_size=4)
        labels = [label for batch in epoch(stream) for label in items(batch)[0]]
        assert 0 <= stream.rows_in_epoch(0) - len(labels) < 4


def test_flip_share_follows_the_probability_and_zero_and_one_are_exact(folder):
    stream = make(folder, flip_probability=0.3)
    flips = [f for _ in range(200) for batch in epoch(stream) for f in items(batch)[1]]
    assert len(flips) == 4200 and abs(sum(flips) / len(flips) - 0.3) < 0.03  # ~4 standard deviations
    for probability, expected in ((0.0, False), (1.0, True)):
        stream = make(folder, flip_probability=probability)
        flips = [f for _ in range(5) for batch in epoch(stream) for f in items(batch)[1]]
        assert set(flips) == {expected}
    with pytest.raises(pydantic.ValidationError):
        LatentDataConfig(latents=str(folder), batch_size=3, flip_probability=1.5)
    with pytest.raises(pydantic.ValidationError):
        LatentDataConfig(latents=str(folder), batch_size=0)


def test_order_is_determined_by_the_seed_and_changes_every_epoch(folder):
    def labels_and_flips(stream: LatentDataStream) -> list[tuple[list[int], list[bool]]]:
        return [items(batch) for batch in epoch(stream)]

    a, b, other = make(folder, seed=1), make(folder, seed=1), make(folder, seed=2)
    first = [labels_and_flips(a) for _ in range(3)]
    assert first == [labels_and_flips(b) for _ in range(3)]
    assert first[0] != first[1] != first[2] != first[0]
    assert [labels_and_flips(other) for _ in range(3)] != first
    # shuffle off: file order every epoch (the flips are still drawn).
    plain = make(folder, shuffle=False, flip_probability=0.0)
    for _ in range(2):
        labels = [label for batch in epoch(plain) for label in items(batch)[0]]
        assert labels == sorted(ALL_ITEMS)


@pytest.mark.parametrize("world_size", [1, 2])
def test_resume_gives_the_batches_an_uninterrupted_stream_would(folder, world_size):
    for rank in range(world_size):
        kwargs = dict(rank=rank, world_size=world_size, batch_size=2, flip_probability=0.5, seed=3)
        reference = take(make(folder, **kwargs), 20)
        steps = make(folder, **kwargs).steps_per_epoch(0)
        # mid-epoch, the last batch of epoch 0, the first of epoch 1, inside a later epoch
        for k in sorted({1, 2, steps - 1, steps, steps + 1, steps + 3, 13}):
            stream = make(folder, **kwargs)
            taken = take(stream, k)
            state = json.loads(json.dumps(stream.state_dict()))  # what a checkpoint stores
            resumed = make(folder, **kwargs)
            resumed.load_state_dict(state)
            after = take(resumed, 20 - k)
            for got, want in zip(taken + after, reference, strict=True):
                assert torch.equal(got["latents"], want["latents"]) and torch.equal(got["labels"], want["labels"])


def test_state_counts_rows_and_rolls_over_after_the_last_full_batch(folder):
    stream = make(folder, batch_size=4)
    iterator = iter(stream)
    next(iterator)
    next(iterator)
    assert stream.state_dict() == {"epoch": 0, "position": 8}
    # A position with only the dropped tail after it means the next epoch.
    stream.load_state_dict({"epoch": 0, "position": 18})
    assert stream.state_dict() == {"epoch": 1, "position": 0}
    with pytest.raises(RuntimeError, match="superseded"):
        next(iterator)  # an iterator from before load_state_dict must not go on silently
    # A different batch size continues at the same row of the stream.
    rows = [label for batch in take(make(folder, batch_size=1), 21) for label in items(batch)[0]]
    stream = make(folder, batch_size=1)
    stream.load_state_dict({"epoch": 0, "position": 6})
    assert [label for batch in epoch(stream) for label in items(batch)[0]] == rows[6:]


def test_at_most_one_shard_is_in_memory_and_skipped_shards_are_not_read(folder, monkeypatch):
    read, live, peak = [], [0], [0]
    original = latents_module._read_latent_shard

    def counting_read(path: Path) -> dict:
        shard = original(path)
        read.append(Path(path).name)
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        weakref.finalize(shard["latents"], lambda: live.__setitem__(0, live[0] - 1))
        return shard

    monkeypatch.setattr(latents_module, "_read_latent_shard", counting_read)
    stream = make(folder, batch_size=3)
    assert read == []  # row counts come from the headers
    for _ in range(3):
        batches = epoch(stream)
        assert len(batches) == 7
    assert len(read) == 9 and peak[0] == 1
    # Resuming inside the epoch's last shard reads that shard only.
    read.clear()
    last = stream._rank_shards(3)[-1]
    stream.load_state_dict({"epoch": 3, "position": 21 - SHARD_ROWS[last] + 3})
    next(iter(stream))
    assert read == [f"shard_{last:05d}.safetensors"]


def test_errors_name_the_path(folder, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        make(missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder / "val"))):
        make(folder, split="val")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "empty" / "train"))):
        make(tmp_path / "empty")
    with pytest.raises(ValueError, match=re.escape(str(folder / "train")) + r".*world_size \(4\)"):
        make(folder, rank=3, world_size=4)
    with pytest.raises(ValueError, match=re.escape(str(folder / "train"))):
        make(folder, batch_size=22)
    with pytest.raises(ValueError, match="rank"):
        make(folder, rank=2, world_size=2)
    zero = write_latent_folder(tmp_path / "zero", shard_rows=(0,))
    with pytest.raises(ValueError, match=re.escape(str(zero / "train"))):
        make(zero)
    stream = make(folder)
    with pytest.raises(ValueError, match=r"row 99 of epoch 0.*" + re.escape(str(folder / "train"))):
        stream.load_state_dict({"epoch": 0, "position": 99})
    with pytest.raises(ValueError, match="lacks"):
        stream.load_state_dict({"batches": 3})
