"""Launching runs: in-process, torchrun with 2 gloo ranks (DDP and FSDP), a command template,
and a real process killed with SIGKILL then resumed bit-identically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pydantic
import pytest
import torch

from vtp_kedro.vtp.engine import checkpoint as ckpt
from vtp_kedro.vtp.launch.launcher import LauncherConfig, launch

REPO = Path(__file__).resolve().parents[2]
TRAINER = {"budget": {"unit": "steps", "value": 4}, "optimizer": {"lr": 0.05, "warmup_steps": 1},
           "log_every": 1, "checkpoint_every": 2, "device": "cpu"}


@pytest.fixture
def child_env(monkeypatch):
    """Child processes import the toy stage from this repository's tests package."""
    paths = [str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))


def write_config(path: Path, trainer: dict | None = None, task: dict | None = None, **extra: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {"job": "train", "trainer": {**TRAINER, **(trainer or {})}, "stage": "toy",
              "imports": ["tests.vtp.test_train_trainer"], "task": task or {}, **extra}
    path.write_text(json.dumps(config))
    return path


def final_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(checkpoint)["model"]


def test_launcher_config_validation():
    assert LauncherConfig().kind == "inprocess"
    LauncherConfig(kind="command", command="srun torchrun --nproc-per-node {nproc} -m vtp_kedro.vtp.launch "
                                           "--config {config} --rdzv-endpoint $HEAD:29500")
    with pytest.raises(pydantic.ValidationError, match="unknown placeholders \\['output'\\]"):
        LauncherConfig(kind="command", command="{python} -m vtp_kedro.vtp.launch --config {config} {output}")
    with pytest.raises(pydantic.ValidationError, match="include \\{config\\}"):
        LauncherConfig(kind="command", command="{python} -m vtp_kedro.vtp.launch")
    with pytest.raises(pydantic.ValidationError, match="needs a command template"):
        LauncherConfig(kind="command")
    with pytest.raises(pydantic.ValidationError, match="nproc_per_node > 1"):
        LauncherConfig(kind="inprocess", nproc_per_node=2)


def test_inprocess_launch(tmp_path):
    config = write_config(tmp_path / "resolved.json")
    out = tmp_path / "run"
    checkpoint = launch(config, out, LauncherConfig())
    assert checkpoint == out / "checkpoints" / "step_00000004"
    assert json.loads((out / "config.json").read_text()) == json.loads(config.read_text())
    result = json.loads((out / "result.json").read_text())
    assert result["checkpoint"] == str(checkpoint) and result["step"] == 4
    assert "saved checkpoint" in (out / "logs" / "rank_0.log").read_text()


def test_inprocess_failures_name_the_problem(tmp_path):
    bad = write_config(tmp_path / "bad.json", trainer={"log_every": 0})
    with pytest.raises(pydantic.ValidationError, match="trainer.log_every"):
        launch(bad, tmp_path / "bad", LauncherConfig())
    # A config that cannot run fails in the parent, before any process starts.
    missing = write_config(tmp_path / "m.json", imports=["tests.vtp.no_such_module"])
    with pytest.raises(ImportError, match="m.json: imports: cannot import 'tests.vtp.no_such_module'"):
        launch(missing, tmp_path / "missing", LauncherConfig())
    assert not (tmp_path / "missing" / "logs").exists()
    unknown = write_config(tmp_path / "u.json", stage="no_such_stage")
    with pytest.raises(ValueError, match=r"u.json: unknown stage 'no_such_stage'; registered: \[.*'tokenizer_pretraining'"):
        launch(unknown, tmp_path / "unknown", LauncherConfig())
    wrong_task = write_config(tmp_path / "w.json", task={"rows": "many"})
    with pytest.raises(ValueError, match=r"(?s)w.json: the task of stage 'toy' is invalid: .*rows"):
        launch(wrong_task, tmp_path / "wrong", LauncherConfig())
    # A run that fails while training says so in its rank's log.
    diverging = write_config(tmp_path / "d.json", {"max_consecutive_nonfinite": 2}, {"nan_steps": [0, 1, 2, 3]})
    with pytest.raises(RuntimeError, match="max_consecutive_nonfinite=2"):
        launch(diverging, tmp_path / "diverging", LauncherConfig())
    assert "rank 0 failed" in (tmp_path / "diverging" / "logs" / "rank_0.log").read_text()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        launch(tmp_path / "nothing.json", tmp_path / "x", LauncherConfig())


@pytest.mark.slow
def test_killed_process_resumes_bit_identically(tmp_path, child_env):
    trainer = {"budget": {"unit": "steps", "value": 12}, "keep_last": 10}
    reference = launch(write_config(tmp_path / "reference" / "config.json", trainer), tmp_path / "reference",
                       LauncherConfig())
    config = write_config(tmp_path / "killed" / "config.json", trainer, {"sleep_s": 0.15})
    checkpoints = tmp_path / "killed" / "checkpoints"
    process = subprocess.Popen([sys.executable, "-m", "vtp_kedro.vtp.launch", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (checkpoints / "step_00000004").is_dir():
        assert process.poll() is None, "the training process ended before its second checkpoint"
        assert time.monotonic() < deadline, "no checkpoint appeared within 120 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    killed_at = ckpt.latest_checkpoint(checkpoints)
    assert ckpt.checkpoint_step(killed_at) < 12 and not (tmp_path / "killed" / "result.json").exists()

    resumed = launch(config, tmp_path / "killed", LauncherConfig())
    result = json.loads((tmp_path / "killed" / "result.json").read_text())
    assert result["resumed_from"] == str(killed_at) and result["step"] == 12
    expected, actual = final_weights(reference), final_weights(resumed)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_gloo_ranks_match_one_process(tmp_path, child_env, parallel):
    """2 ranks x 4 samples take the same steps as 1 process x 8 samples (same global batches)."""
    from mlflow.tracking import MlflowClient

    task = {"dropout": 0.0, "global_batch": 8}
    single = launch(write_config(tmp_path / "single.json", task=task), tmp_path / "single", LauncherConfig())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("launcher", artifact_location=str(tmp_path / "artifacts")))
    config = write_config(tmp_path / "two.json", {"parallel": parallel}, task,
                          mlflow={"run_id": run.info.run_id, "tracking_uri": uri})
    two = launch(config, tmp_path / "two", LauncherConfig(kind="torchrun", nproc_per_node=2))
    assert json.loads((tmp_path / "two" / "result.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "two" / "logs").glob("rank_*.log")) == ["rank_0.log", "rank_1.log"]
    expected, actual = final_weights(single), final_weights(two)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6)
    # Only rank 0 logged: one value per step, with the terms averaged over both ranks.
    history = client.get_metric_history(run.info.run_id, "mse")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert client.get_run(run.info.run_id).data.metrics["samples"] == 32

    if parallel == "fsdp":  # sharded state goes through full checkpoints and back, exactly
        start = tmp_path / "two" / "checkpoints" / "step_00000002"
        again = launch(write_config(tmp_path / "again.json", {"parallel": parallel, "resume": str(start)}, task),
                       tmp_path / "again", LauncherConfig(kind="torchrun", nproc_per_node=2))
        resumed = final_weights(again)
        assert all(torch.equal(resumed[name], actual[name]) for name in actual)


@pytest.mark.slow
def test_command_template_failure_quotes_the_rank_logs(tmp_path, child_env):
    config = write_config(tmp_path / "out" / "config.json", {"max_consecutive_nonfinite": 2},
                          {"nan_steps": [0, 1, 2, 3]})
    launcher = LauncherConfig(kind="command", command="{python} -m vtp_kedro.vtp.launch --config {config}",
                              tail_lines=40)
    with pytest.raises(RuntimeError) as failure:
        launch(config, tmp_path / "out", launcher)
    message = str(failure.value)
    assert "exit code 1" in message and "--- rank_0.log" in message and "--- launcher.log" in message
    assert "step 1: non-finite loss nan" in message and "max_consecutive_nonfinite=2" in message
    assert not (tmp_path / "out" / "result.json").exists()


def test_one_entry_point_runs_the_job_its_config_names(tmp_path):
    from vtp_kedro.vtp.launch.__main__ import main

    config = write_config(tmp_path / "resolved.json", task={"global_batch": 4})
    main(["--config", str(config), "--output-dir", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["samples"] == 4 * 4 and Path(result["checkpoint"]).is_dir()
    unnamed = tmp_path / "unnamed.json"
    unnamed.write_text(json.dumps({"trainer": TRAINER, "stage": "toy"}))
    with pytest.raises(SystemExit):
        main(["--config", str(unnamed)])
    with pytest.raises(ValueError, match="is not a 'train' job's config"):
        launch(unnamed, tmp_path / "x", LauncherConfig())
    with pytest.raises(ValueError, match=r"unknown placeholders \['module'\].*every job now runs as"):
        LauncherConfig(kind="command", command="{python} -m {module} --config {config}")
