"""The generic trainer shared by every stage (tokenizer pre-training, decoder GAN, DiT).

A stage implements ``TrainTask`` and supplies a ``ResumableIterable`` of batches; ``Trainer``
does the rest. ``launch`` starts a run in-process, under torchrun or on a cluster; checkpoints
are read back with ``load_checkpoint`` / ``latest_checkpoint``.
"""

from vtp_kedro.vtp.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from vtp_kedro.vtp.train.launcher import LauncherConfig, MlflowTarget, RunConfig, launch, run
from vtp_kedro.vtp.train.optim import OptimizerConfig, build_adamw, param_groups
from vtp_kedro.vtp.train.schedules import warmup_constant, warmup_cosine
from vtp_kedro.vtp.train.trainer import (
    BudgetConfig,
    MlflowMetricLogger,
    ResumableIterable,
    Trainer,
    TrainerConfig,
    TrainTask,
    total_steps_for,
)

__all__ = [
    "BudgetConfig",
    "LauncherConfig",
    "MlflowMetricLogger",
    "MlflowTarget",
    "OptimizerConfig",
    "ResumableIterable",
    "RunConfig",
    "TrainTask",
    "Trainer",
    "TrainerConfig",
    "build_adamw",
    "latest_checkpoint",
    "launch",
    "list_checkpoints",
    "load_checkpoint",
    "param_groups",
    "run",
    "total_steps_for",
    "warmup_constant",
    "warmup_cosine",
]
