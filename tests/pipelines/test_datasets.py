"""The project's Kedro datasets: atomic folders and full checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kedro.io import DatasetError

from vtp_kedro.datasets import CheckpointDataset, FolderDataset


def test_folder_dataset_replaces_the_old_folder_whole_and_takes_only_staged_folders(tmp_path: Path) -> None:
    from vtp_kedro.datasets.folder import StagedFolder

    dataset = FolderDataset(str(tmp_path / "out"))
    assert not dataset.exists() and dataset.load() == tmp_path / "out"
    for name in ("a.tar", "b.tar"):
        (tmp_path / "staged").mkdir()
        (tmp_path / "staged" / name).write_bytes(b"1")
        dataset.save(StagedFolder(tmp_path / "staged"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.tar"]  # stale files gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it
    with pytest.raises(DatasetError, match="StagedFolder"):
        dataset.save(lambda folder: None)


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


def test_a_resumable_staged_folder_keeps_its_files_for_the_next_run(tmp_path, monkeypatch):
    from vtp_kedro.datasets.folder import FolderDataset, write_now

    monkeypatch.chdir(tmp_path)

    def writer(fail: bool):
        def write(folder: Path) -> None:
            for part in ("a", "b"):
                if not (folder / part).exists():
                    if fail and part == "b":
                        raise RuntimeError("killed")
                    (folder / part).write_text(f"{part} written by the {'first' if fail else 'second'} run")
        return write

    with pytest.raises(RuntimeError):
        write_now(writer(fail=True), "latents", resume=True)
    staged = write_now(writer(fail=False), "latents", resume=True)
    assert staged.path == Path("data/.staging/latents")
    FolderDataset("data/05_model_input/latents").save(staged)
    done = tmp_path / "data/05_model_input/latents"
    assert (done / "a").read_text() == "a written by the first run"  # kept, not redone
    assert (done / "b").read_text() == "b written by the second run"
    # the staged folder stays, hard-linked into place (no extra space), for a rerun to skip its work
    assert (staged.path / "a").stat().st_ino == (done / "a").stat().st_ino
    write_now(writer(fail=False), "latents", resume=True)  # nothing left to write
    assert (staged.path / "b").read_text() == "b written by the second run"
    scratch = write_now(lambda folder: (folder / "x").write_text("x"), "filtered", staging_dir=tmp_path / "shared")
    assert scratch.path.resolve().parent == (tmp_path / "shared").resolve()


def test_a_staged_folder_goes_to_a_url_file_by_file_its_top_level_files_last(tmp_path, monkeypatch):
    import fsspec

    from vtp_kedro.datasets.folder import FolderDataset, StagedFolder

    staged = tmp_path / "staged"
    (staged / "shards").mkdir(parents=True)
    (staged / "shards" / "000.tar").write_text("shard")
    (staged / "report.json").write_text("{}")
    fs = fsspec.filesystem("memory")
    uploaded = []
    put_file = type(fs).put_file
    monkeypatch.setattr(type(fs), "put_file", lambda self, lpath, rpath, **kw: (
        uploaded.append(rpath), put_file(self, lpath, rpath, **kw))[1])
    dataset = FolderDataset("memory://bucket/filtered")
    assert dataset.load() == "memory://bucket/filtered" and not dataset.exists()
    dataset.save(StagedFolder(staged))
    assert dataset.exists()
    assert [p.split("filtered/")[1] for p in uploaded] == ["shards/000.tar", "report.json"]
    assert fs.cat("/bucket/filtered/report.json") == b"{}" and not staged.exists()
