"""The project's Kedro datasets: atomic folders and full checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kedro.io import DatasetError

from vtp_kedro.datasets import CheckpointDataset, FolderDataset


def test_folder_dataset_writes_atomically_and_replaces(tmp_path: Path) -> None:
    dataset = FolderDataset(str(tmp_path / "out"))
    assert not dataset.exists() and dataset.load() == tmp_path / "out"
    dataset.save(lambda folder: (folder / "a.tar").write_bytes(b"1"))
    dataset.save(lambda folder: (folder / "b.tar").write_bytes(b"2"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.tar"]  # stale files gone

    def killed(folder: Path) -> None:
        (folder / "half.tar").write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dataset.save(killed)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left
    with pytest.raises(DatasetError, match="writer function"):
        dataset.save(b"not a writer")


def test_a_folder_dataset_at_an_fsspec_url_hands_the_writer_the_url() -> None:
    import fsspec

    dataset = FolderDataset("memory://bucket/filtered")
    assert dataset.load() == "memory://bucket/filtered" and not dataset.exists()
    fs = fsspec.filesystem("memory")
    dataset.save(lambda url: fs.pipe_file(f"{url.removeprefix('memory://')}/00000.tar", b"1"))
    assert dataset.exists() and fs.cat_file("bucket/filtered/00000.tar") == b"1"


def test_checkpoint_dataset_round_trip(tmp_path: Path) -> None:
    tied = torch.randn(3, 2)
    checkpoint = {
        "model": {"a.weight": tied, "b.weight": tied, "bias": torch.zeros(2)},
        "task_state": {"generator": torch.Generator().get_state()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
        "trainer_state": {"step": 7, "samples": 56},
        "rng": [{"python": None}],
        "config": {"task": {"model": {"latent_dim": 16}}},
        "metrics": [{"step": 7, "loss": 1.5}],
    }
    dataset = CheckpointDataset(str(tmp_path / "ckpt"))
    dataset.save(checkpoint)
    loaded = dataset.load()
    assert loaded["step"] == 7 and loaded["config"] == checkpoint["config"] and loaded["metrics"] == checkpoint["metrics"]
    assert loaded["path"] == str(tmp_path / "ckpt")
    assert all(torch.equal(loaded["model"][k], v) for k, v in checkpoint["model"].items())
    assert loaded["optimizer"]["param_groups"] == [{"lr": 0.1}]
    with pytest.raises(DatasetError, match="config"):
        CheckpointDataset(str(tmp_path / "other")).save({k: v for k, v in checkpoint.items() if k != "config"})


def test_a_node_fills_a_staged_folder_that_save_renames_into_place(tmp_path, monkeypatch):
    """write_now runs the writer in the node (its time is the node's); save moves the folder, replacing
    the old one whole; a failed writer leaves nothing."""
    from vtp_kedro.datasets.folder import FolderDataset, write_now

    monkeypatch.chdir(tmp_path)
    target = tmp_path / "data/06_models/out"
    target.mkdir(parents=True)
    (target / "stale.txt").write_text("old")
    staged = write_now(lambda folder: (folder / "a.txt").write_text("new"), "out")
    assert staged.path.parent == Path("data/.staging") and (staged.path / "a.txt").is_file()
    dataset = FolderDataset(str(target))
    dataset.save(staged)
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"] and not staged.path.exists()
    assert dataset.load() == Path("data/06_models/out")  # project-relative: recorded paths are portable

    def broken(folder):
        (folder / "half.txt").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_now(broken, "out")
    assert list((tmp_path / "data/.staging").iterdir()) == []
