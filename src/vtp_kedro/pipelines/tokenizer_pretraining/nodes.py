"""Nodes of the tokenizer_pretraining pipeline: resolve the config, train through the run plumbing.

Kedro itself never runs under torchrun (every rank would open a session, an MLflow run and
catalog saves; kedro-org/kedro#2049): ``train_stage`` writes the fully resolved config and
launches ``python -m vtp_kedro.vtp.launch`` in-process, under torchrun or through a cluster
command template, then hands back the final checkpoint.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from vtp_kedro.datasets.folder import StagedFolder, write_now
from vtp_kedro.vtp.data.loader import PretrainDataConfig
from vtp_kedro.vtp.data.shards import expand_urls
from vtp_kedro.vtp.engine.curves import plot_curves
from vtp_kedro.vtp.engine.trainer import TrainerConfig
from vtp_kedro.vtp.inference import tokenizer_state, write_tokenizer_files
from vtp_kedro.vtp.launch.launcher import LauncherConfig
from vtp_kedro.vtp.launch.runs import train_stage
from vtp_kedro.vtp.metrics.online_probe import PROBE_PREFIX, OnlineProbeConfig
from vtp_kedro.vtp.stages.tokenizer_pretraining import STAGE as TOKENIZER_PRETRAINING
from vtp_kedro.vtp.stages.tokenizer_pretraining import TokenizerPretrainingConfig


class PretrainDataParams(PretrainDataConfig):
    # None reads the data_filtering output (catalog entry filtered_shards); else any path,
    # glob, brace pattern or fsspec URL of WebDataset shards.
    shards: str | list[str] | None = None


class ProbeParams(OnlineProbeConfig):
    # None: the embedded labelled folder (catalog entry raw_labelled_images); else any labelled folder.
    image_root: str | None = None


class TokenizerPretrainingParams(TokenizerPretrainingConfig):
    """The stage's task config (model, data, probe: what it computes; checked together when the run
    starts) with its inputs still open, and where and how it runs."""

    # Parent of the runs' folders (config, logs, resumable checkpoints), kept across reruns.
    # Each run lives in <runs_dir>/<fingerprint of its resolved config and input content>:
    # rerunning resumes it (trainer.resume: auto), a changed config or data starts a new run.
    runs_dir: str
    data: PretrainDataParams
    probe: ProbeParams | None = None  # run every trainer.evaluate_every steps; None: off
    trainer: TrainerConfig
    launcher: LauncherConfig = LauncherConfig()


def pretrain_tokenizer(
    filtered_shards: Path, raw_labelled_images: Path, params: TokenizerPretrainingParams,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], StagedFolder]:
    """Train the tokenizer; returns the final checkpoint (with its resolved config and metrics
    log), the training metrics and the online probe's (for the plots, without reloading every
    weight) and the slim inference folder (staged) that downstream stages and users open
    with ``load_tokenizer``."""
    data = PretrainDataConfig(**{**params.data.model_dump(), "shards": params.data.shards or str(filtered_shards)})
    probe = None
    if params.probe is not None:
        probe = OnlineProbeConfig(**{**params.probe.model_dump(),
                                     "image_root": params.probe.image_root or str(raw_labelled_images)})
    task = TokenizerPretrainingConfig(model=params.model, data=data, probe=probe)
    urls = expand_urls(data.shards)  # a missing input fails here, naming it, before any process starts
    run = train_stage(params.runs_dir, params.trainer, TOKENIZER_PRETRAINING, task, {"shards": urls}, params.launcher)
    export = partial(write_tokenizer_files, state=tokenizer_state(run.checkpoint["model"]),
                     config=params.model.tokenizer, image_size=data.image_size,
                     provenance={"stage": "tokenizer_pretraining", "run": run.run_dir.name,
                                 "step": run.checkpoint["step"]})
    training_log, probe_log = split_probe_records(run.metrics)
    return run.checkpoint, training_log, probe_log, write_now(export, "pretrained_tokenizer")


def split_probe_records(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The log without the online probe's keys, and ``{step, probe/...}`` for the steps it ran:
    two tables with one set of columns each, which is what ``dvc plots`` reads."""
    training = [{key: value for key, value in record.items() if not key.startswith(PROBE_PREFIX)} for record in records]
    probe = [{"step": record["step"], **{key: value for key, value in record.items() if key.startswith(PROBE_PREFIX)}}
             for record in records if any(key.startswith(PROBE_PREFIX) for key in record)]
    return training, probe


def plot_training_curves(tokenizer_training_log: list[dict[str, Any]],
                         tokenizer_probe_log: list[dict[str, Any]]) -> Figure:
    """Every logged loss term, the teacher entropy and KoLeo against steps (collapse shows here),
    and the online probe."""
    return plot_curves(tokenizer_training_log + tokenizer_probe_log, title="VTP tokenizer pre-training")
