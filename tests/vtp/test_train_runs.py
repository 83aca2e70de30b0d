"""The run plumbing: fingerprints by content (not file metadata), digests, and a stage's run end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.vtp.test_train_trainer import TOY, ToyTaskConfig, trainer_config
from vtp_kedro.vtp.core.io import DigestCache, folder_digest
from vtp_kedro.vtp.launch.runs import (
    resolved_run_config,
    run_fingerprint,
    shards_digest,
    train_stage,
)


def resolved(**trainer_overrides) -> dict:
    return resolved_run_config(trainer_config(**trainer_overrides), TOY, ToyTaskConfig())


def write_shards(folder: Path, contents: list[bytes]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(contents):
        (folder / f"{i:05d}.tar").write_bytes(data)
    return [str(folder / f"{i:05d}.tar") for i in range(len(contents))]


def test_fingerprint_follows_what_changes_the_numbers():
    base = run_fingerprint(resolved(), {"shards": "a"})
    assert run_fingerprint(resolved(), {"shards": "a"}) == base
    assert run_fingerprint(resolved(log_every=7, checkpoint_every=9, keep_last=1, resume="never"),
                           {"shards": "a"}) == base
    assert run_fingerprint(resolved(), {"shards": "b"}) != base
    assert run_fingerprint(resolved(seed=1), {"shards": "a"}) != base
    # init_from enters by the content of what it names (an input), not by its path.
    moved = [run_fingerprint(resolved(init_from={"path": p}), {"shards": "a", "init": "w"}) for p in ("/x", "/y")]
    assert moved[0] == moved[1]


def test_regenerated_identical_shards_keep_their_digest_changed_ones_do_not(tmp_path):
    urls = write_shards(tmp_path / "shards", [b"one", b"two"])
    cache = DigestCache(tmp_path / "cache.json")
    first = shards_digest(urls, cache)
    cache.save()
    os.utime(urls[0], ns=(1, 1))  # rewritten: new mtime, same bytes
    write_shards(tmp_path / "shards", [b"one", b"two"])
    assert shards_digest(urls, DigestCache(tmp_path / "cache.json")) == first
    write_shards(tmp_path / "shards", [b"one", b"TWO"])
    assert shards_digest(urls, DigestCache(tmp_path / "cache.json")) != first
    assert shards_digest(["s3://bucket/00000.tar"]) != shards_digest(["s3://bucket/00001.tar"])


def test_a_manifest_gives_the_digests_without_reading_the_shards(tmp_path):
    urls = write_shards(tmp_path / "shards", [b"one", b"two"])
    plain = shards_digest(urls)
    manifest = {"shards": [{"name": Path(u).name, "sha256": DigestCache().file(u), "samples": 1} for u in urls]}
    (tmp_path / "shards" / "filter_report.json").write_text(json.dumps(manifest))
    assert shards_digest(urls) == plain
    manifest["shards"][0]["sha256"] = "0" * 64  # the manifest is trusted: no file is read
    (tmp_path / "shards" / "filter_report.json").write_text(json.dumps(manifest))
    assert shards_digest(urls) != plain


def test_folder_digest_covers_names_and_contents_not_hidden_files(tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.safetensors").write_bytes(b"w")
    (folder / "config.json").write_text("{}")
    digest = folder_digest(folder)
    (folder / ".tokenizer.tmp").write_bytes(b"partial")
    assert folder_digest(folder) == digest
    (folder / "config.json").write_text('{"a": 1}')
    assert folder_digest(folder) != digest
    with pytest.raises(FileNotFoundError, match="missing does not exist"):
        folder_digest(tmp_path / "missing")


def test_train_stage_resumes_the_same_inputs_and_starts_anew_for_changed_ones(tmp_path):
    urls = write_shards(tmp_path / "shards", [b"one"])
    config = trainer_config(budget={"unit": "steps", "value": 2}, checkpoint_every=1)
    first = train_stage(tmp_path / "runs", config, TOY, ToyTaskConfig(),
                        {"shards": urls})
    assert first.checkpoint["step"] == 2 and [r["step"] for r in first.metrics] == [1, 2]
    written = json.loads((first.run_dir / "config.json").read_text())
    assert written["stage"] == "toy" and written["imports"] == ["tests.vtp.test_train_trainer"]
    assert written["task"] == ToyTaskConfig().model_dump(mode="json")
    write_shards(tmp_path / "shards", [b"one"])  # regenerated, identical
    again = train_stage(tmp_path / "runs", config, TOY, ToyTaskConfig(),
                        {"shards": urls})
    assert again.run_dir == first.run_dir
    write_shards(tmp_path / "shards", [b"changed"])
    changed = train_stage(tmp_path / "runs", config, TOY, ToyTaskConfig(),
                          {"shards": urls})
    assert changed.run_dir != first.run_dir
    with pytest.raises(TypeError, match="stage 'toy' takes a ToyTaskConfig, not a TrainerConfig"):
        train_stage(tmp_path / "runs", config, TOY, config, {"shards": urls})
    with pytest.raises(TypeError, match="input 'shards' must be a Path or a list"):
        train_stage(tmp_path / "runs", config, TOY, ToyTaskConfig(),
                    {"shards": "not-a-list"})
