"""Nodes of the tokenizer_pretraining pipeline: resolve the config, launch the library's trainer.

Kedro itself never runs under torchrun (every rank would open a session, an MLflow run and
catalog saves; kedro-org/kedro#2049): the node writes the fully resolved config and
``launch`` runs ``python -m vtp_kedro.vtp.train`` in-process, under torchrun or through a
cluster command template, then hands back the final checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from matplotlib.figure import Figure

from vtp_kedro.vtp.config import Config
from vtp_kedro.vtp.data.loader import PretrainDataConfig
from vtp_kedro.vtp.data.shards import expand_urls
from vtp_kedro.vtp.models.vtp import VTPConfig
from vtp_kedro.vtp.train.checkpoint import load_checkpoint
from vtp_kedro.vtp.train.curves import plot_curves, read_metrics_log
from vtp_kedro.vtp.train.launcher import LauncherConfig, launch
from vtp_kedro.vtp.train.tokenizer_pretraining import TASK_FACTORY, TokenizerPretrainingConfig
from vtp_kedro.vtp.train.trainer import TrainerConfig


class PretrainDataParams(PretrainDataConfig):
    # None reads the data_filtering output (catalog entry filtered_shards); else any path,
    # glob, brace pattern or fsspec URL of WebDataset shards.
    shards: str | list[str] | None = None


class TokenizerPretrainingParams(Config):
    # Parent of the runs' folders (config, logs, resumable checkpoints), kept across reruns.
    # Each run lives in <runs_dir>/<fingerprint of its resolved config>: rerunning the same
    # config resumes it (trainer.resume: auto), a changed config starts a new run.
    runs_dir: str
    model: VTPConfig
    data: PretrainDataParams
    trainer: TrainerConfig
    launcher: LauncherConfig = LauncherConfig()


def pretrain_tokenizer(
    filtered_shards: Path, params: TokenizerPretrainingParams,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train the tokenizer; returns the final checkpoint (with the resolved config that made it
    and its metrics log) and, for the plot, the metrics log alone: reloading the checkpoint
    from the catalog would read every weight and optimizer moment just to draw curves."""
    data = PretrainDataConfig(**{**params.data.model_dump(), "shards": params.data.shards or str(filtered_shards)})
    task = TokenizerPretrainingConfig(model=params.model, data=data)
    urls = expand_urls(data.shards)  # a missing input fails here, naming it, before any process starts
    active = mlflow.active_run()
    resolved = {
        "trainer": params.trainer.model_dump(mode="json"),
        "task_factory": TASK_FACTORY,
        "task": task.model_dump(mode="json"),
        "mlflow": None if active is None else {
            "run_id": active.info.run_id, "tracking_uri": mlflow.get_tracking_uri(), "prefix": "train/",
        },
    }
    run_dir = Path(params.runs_dir) / run_fingerprint(resolved, urls)
    with tempfile.TemporaryDirectory() as staging:
        config_path = Path(staging) / "config.json"
        config_path.write_text(json.dumps(resolved, indent=2))
        final = launch(config_path, run_dir, params.launcher)
    checkpoint = load_checkpoint(final)
    checkpoint["config"] = resolved
    checkpoint["metrics"] = read_metrics_log(run_dir)
    return checkpoint, checkpoint["metrics"]


# Settings that change how a run is watched or stored, not what it computes.
_NOT_FINGERPRINTED = {"resume", "log_every", "checkpoint_every", "keep_last"}


def run_fingerprint(resolved: dict[str, Any], urls: list[str]) -> str:
    """12 hex digits naming everything that determines the run's numbers.

    The data enters by its shards' names, sizes and modification times (not just the
    pattern), so re-filtered shards at the same path start a new run.
    """
    trainer = {k: v for k, v in resolved["trainer"].items() if k not in _NOT_FINGERPRINTED}
    shards = [(url, *_size_and_mtime(url)) for url in urls]
    identity = {"trainer": trainer, "task_factory": resolved["task_factory"], "task": resolved["task"],
                "shards": shards}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def plot_training_curves(tokenizer_training_log: list[dict[str, Any]]) -> Figure:
    """Every logged loss term, the teacher entropy and KoLeo against steps (collapse shows here)."""
    return plot_curves(tokenizer_training_log, title="VTP tokenizer pre-training")


def _size_and_mtime(url: str) -> tuple[int | None, int | None]:
    path = Path(url)
    if not path.is_file():  # a remote URL: its name is its identity
        return None, None
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns
