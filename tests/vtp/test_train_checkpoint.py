"""Checkpoint folders: tensors with ties, RNG states, atomic writes, keep_last, incomplete folders."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from tests.vtp.test_train_trainer import fit, trainer_config
from vtp_kedro.vtp.engine import checkpoint as ckpt


def parts(step: int = 3) -> dict:
    return {"model": {"w": torch.full((2, 2), float(step))}, "task_state": {"center": torch.zeros(3)},
            "optimizer": {"state": {}, "param_groups": []}, "trainer_state": {"data": [{"index": step}]},
            "rng": [ckpt.rng_state()]}


def test_tied_and_overlapping_tensors_round_trip(tmp_path):
    embedding = nn.Embedding(5, 3)
    base = torch.arange(12.0)
    tensors = {"embed.weight": embedding.weight, "head.weight": embedding.weight,  # tied
               "first": base[:6], "second": base[6:].view(2, 3),  # views of one storage
               "empty_a": torch.zeros(0), "empty_b": torch.zeros(0), "step": torch.tensor(7)}
    path = tmp_path / "t.safetensors"
    ckpt.save_tensors(tensors, path)
    loaded = ckpt.load_tensors(path)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor.detach()), name
    assert loaded["head.weight"] is loaded["embed.weight"]  # restored as a tie
    with pytest.raises(TypeError, match="value of 'lr' is a float"):
        ckpt.save_tensors({"lr": 0.1}, tmp_path / "bad.safetensors")


def test_same_tensors_give_byte_identical_files_across_processes(tmp_path):
    """safetensors writes its metadata map in per-process hash order; save_tensors must not."""
    script = textwrap.dedent("""
        import sys, torch
        from torch import nn
        from vtp_kedro.vtp.engine.checkpoint import save_tensors
        torch.manual_seed(0)
        embedding = nn.Embedding(7, 4)
        save_tensors({"b": torch.arange(5.0), "a.weight": embedding.weight, "tied": embedding.weight,
                      "z": torch.ones(2, dtype=torch.bfloat16)}, sys.argv[1])
    """)
    digests = set()
    for attempt in range(4):  # a hash-order flip shows within a few processes
        path = tmp_path / f"copy{attempt}.safetensors"
        subprocess.run([sys.executable, "-c", script, str(path)], check=True)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
        assert not list(tmp_path.glob(".*")), "a temporary file was left behind"
    assert len(digests) == 1
    loaded = ckpt.load_tensors(tmp_path / "copy0.safetensors")
    assert loaded["tied"] is loaded["a.weight"] and loaded["z"].dtype == torch.bfloat16
    from safetensors import safe_open
    with safe_open(str(tmp_path / "copy0.safetensors"), framework="pt") as handle:
        assert handle.metadata()["format"] == "pt"


def test_rng_state_round_trip():
    state = ckpt.rng_state()
    drawn = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(3)
    ckpt.set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert drawn[0] == again[0] and drawn[1] == again[1] and torch.equal(drawn[2], again[2])


def test_save_and_load_a_checkpoint(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 3, **parts())
    assert path == tmp_path / "step_00000003"
    assert sorted(p.name for p in path.iterdir()) == sorted(ckpt._FILES)
    state = ckpt.load_checkpoint(path)
    assert state["step"] == 3 and state["trainer_state"]["data"] == [{"index": 3}]
    assert torch.equal(state["model"]["w"], torch.full((2, 2), 3.0))
    with pytest.raises(TypeError, match="step 4 is not JSON-serialisable"):
        ckpt.save_checkpoint(tmp_path, 4, **{**parts(), "trainer_state": {"data": [{"g": torch.zeros(1)}]}})
    assert ckpt.latest_checkpoint(tmp_path) == path  # the failed save left nothing behind
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000003"]


def test_files_written_into_a_given_folder_load_back(tmp_path):
    folder = tmp_path / "exported"
    folder.mkdir()
    ckpt.write_checkpoint_files(folder, 8, **parts(8))
    state = ckpt.load_checkpoint(folder)
    assert state["step"] == 8 and torch.equal(state["model"]["w"], torch.full((2, 2), 8.0))


def test_interrupted_save_is_invisible_and_cleaned_up(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, 2, **parts(2))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 4, **parts(4))
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000002"
    # SIGKILL gives no chance to clean up: a temporary folder stays until the next run starts.
    leftover = tmp_path / ".step_00000006.abc123.tmp"
    (leftover / "model.safetensors").parent.mkdir()
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000002"
    assert ckpt.remove_partial_checkpoints(tmp_path) == [leftover]
    assert not leftover.exists()


def test_incomplete_or_misnamed_folders_are_refused(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 5, **parts())
    (path / ckpt.OPTIMIZER_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="step_00000005 is incomplete: optimizer.pt is missing"):
        ckpt.load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "step_00000009")
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        ckpt.checkpoint_step(tmp_path / "final")
    (tmp_path / "step_00000010").mkdir()  # no trainer_state.json: not complete
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000005"
    assert ckpt.latest_checkpoint(tmp_path / "missing") is None


def test_prune_keeps_the_newest(tmp_path):
    for step in (1, 2, 10, 3):
        ckpt.save_checkpoint(tmp_path, step, **parts(step))
    deleted = ckpt.prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in deleted] == ["step_00000001", "step_00000002"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000003", "step_00000010"]
    with pytest.raises(ValueError, match="keep_last"):
        ckpt.prune_checkpoints(tmp_path, 0)


def test_trainer_saves_every_n_steps_keeps_last_k_and_cleans_partials(tmp_path):
    leftover = tmp_path / "checkpoints" / ".step_00000002.dead.tmp"
    leftover.mkdir(parents=True)
    trainer = fit(tmp_path, trainer_config(budget={"unit": "steps", "value": 7}, checkpoint_every=2, keep_last=2))
    assert not leftover.exists()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["step_00000006", "step_00000007"]
    state = ckpt.load_checkpoint(trainer.last_checkpoint)
    model = trainer.task.model.state_dict()
    assert state["model"].keys() == model.keys()
    assert all(torch.equal(state["model"][k], model[k]) for k in model)
    assert state["task_state"].keys() == trainer.task.state_dict().keys()
    assert set(state["optimizer"]["main"]["state"]) == {f"model.{n}" for n, _ in trainer.task.model.named_parameters()}
    assert state["trainer_state"]["data"] == [{"index": 7}] and state["trainer_state"]["samples"] == 56
    assert len(state["rng"]) == 1 and {"python", "numpy", "torch"} <= state["rng"][0].keys()


# --- damaged checkpoints ---------------------------------------------------------------------
def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # tensor data, past the header: only the recorded sha256 can tell
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("name", "damage", "expected"), [
    (ckpt.MODEL_FILE, _truncate, "model.safetensors is truncated"),
    (ckpt.MODEL_FILE, _flip_a_byte, "model.safetensors differs from the file that was saved"),
    (ckpt.TASK_STATE_FILE, lambda p: p.write_bytes(b"\x05"), "task_state.safetensors is truncated"),
    (ckpt.OPTIMIZER_FILE, _truncate, "optimizer.pt differs from the file that was saved"),
    (ckpt.TRAINER_STATE_FILE, _truncate, "trainer_state.json is unreadable"),
])
def test_a_damaged_file_is_named_by_the_check_and_by_load(tmp_path, name, damage, expected):
    path = ckpt.save_checkpoint(tmp_path, 3, **parts())
    assert ckpt.checkpoint_problem(path) is None
    damage(path / name)
    assert expected in ckpt.checkpoint_problem(path)
    with pytest.raises(ckpt.DamagedCheckpointError, match=f"checkpoint {path} is damaged: {expected}"):
        ckpt.load_checkpoint(path)


def test_a_checkpoint_without_recorded_digests_gets_the_structural_checks(tmp_path):
    """Folders saved before trainer_state.json recorded digests: truncation is still found."""
    path = ckpt.save_checkpoint(tmp_path, 3, **parts())
    state = json.loads((path / ckpt.TRAINER_STATE_FILE).read_text())
    del state[ckpt.DIGESTS_KEY]
    (path / ckpt.TRAINER_STATE_FILE).write_text(json.dumps(state))
    assert ckpt.checkpoint_problem(path) is None and ckpt.load_checkpoint(path)["step"] == 3
    _truncate(path / ckpt.RNG_FILE, 0.9)
    assert "rng.pt is not a readable torch file" in ckpt.checkpoint_problem(path)


def test_latest_intact_checkpoint_skips_damaged_ones_with_a_warning(tmp_path, caplog):
    for step in (2, 4, 6):
        ckpt.save_checkpoint(tmp_path, step, **parts(step))
    _truncate(tmp_path / "step_00000006" / ckpt.MODEL_FILE)
    _flip_a_byte(tmp_path / "step_00000004" / ckpt.MODEL_FILE)
    with caplog.at_level("WARNING"):
        assert ckpt.latest_intact_checkpoint(tmp_path).name == "step_00000002"
    warned = caplog.text
    assert "step_00000006" in warned and "model.safetensors is truncated" in warned
    assert "step_00000004" in warned and "differs from the file that was saved" in warned


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte], ids=["truncated", "corrupted"])
def test_a_finished_run_with_a_damaged_last_checkpoint_resumes_from_the_previous_one(tmp_path, caplog, damage):
    """The issue's case: truncate (or corrupt) the last checkpoint's model.safetensors of a finished run
    and run it again: the damaged one is named, the run resumes from the intact one before it and
    ends with the same weights as the undamaged run."""
    config = trainer_config(budget={"unit": "steps", "value": 6}, checkpoint_every=2, keep_last=2)
    reference = fit(tmp_path / "reference", config)
    expected = ckpt.load_checkpoint(reference.last_checkpoint)["model"]
    run = tmp_path / "damaged"
    fit(run, config)
    last = run / "checkpoints" / "step_00000006"
    damage(last / ckpt.MODEL_FILE)
    with caplog.at_level("WARNING"):
        again = fit(run, config)
    assert f"skipping checkpoint {last}" in caplog.text and "model.safetensors" in caplog.text
    assert again.resumed_from == run / "checkpoints" / "step_00000004"
    assert again.last_checkpoint == last and ckpt.checkpoint_problem(last) is None  # saved again, intact
    final = ckpt.load_checkpoint(last)["model"]
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    with pytest.raises(ckpt.DamagedCheckpointError, match="model.safetensors"):
        damage(last / ckpt.MODEL_FILE)
        fit(tmp_path / "explicit", trainer_config(resume=str(last)))
