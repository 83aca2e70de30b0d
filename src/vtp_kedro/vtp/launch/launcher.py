"""Starting a job: one rank (``run`` for training) and the whole job (``launch_job``, ``launch``).

Kedro must not run under torchrun (every rank would open a Kedro session, an MLflow run and
catalog saves; kedro-org/kedro#2049). So the Kedro node writes the fully resolved config to
a JSON file and calls ``launch_job``, which runs ``python -m vtp_kedro.vtp.launch --config <file>``
(the one entry point of every job: training, latent extraction, sampling; the file's ``job``
says which) in-process (one device), under ``torchrun --standalone`` (one machine, N processes)
or through a user command template (clusters), waits, and returns rank 0's ``result.json``.

A training run's config file (``RunConfig``)::

    {"job": "train",
     "trainer": {...TrainerConfig...},
     "stage": "tokenizer_pretraining",            # a name in vtp.stages.registry.STAGES
     "imports": [],                               # modules that register stages of their own
     "task": {...the stage's task config...},
     "mlflow": {"run_id": "...", "tracking_uri": "...", "prefix": ""}}   # optional

The run's folder (by default the config file's folder) receives ``checkpoints/``,
``logs/rank_<r>.log`` and, from rank 0, ``result.json`` naming the final checkpoint.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shlex
import shutil
import signal
import string
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, ValidationError, model_validator

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.core.distributed import (
    DeviceKind,
    destroy_distributed,
    init_distributed,
    is_main_process,
    rank,
    resolve_device,
    seed_all,
)
from vtp_kedro.vtp.core.io import atomic_path
from vtp_kedro.vtp.engine.trainer import MlflowMetricLogger, Trainer, TrainerConfig
from vtp_kedro.vtp.stages import Stage
from vtp_kedro.vtp.stages.registry import get_stage

log = logging.getLogger(__name__)

ENTRY_POINT = "vtp_kedro.vtp.launch"  # python -m ENTRY_POINT --config <file>: every job, every rank
CONFIG_FILE = "config.json"
RESULT_FILE = "result.json"  # in the job's folder, from rank 0: what launch_job returns
COMMAND_PLACEHOLDERS = frozenset({"config", "python", "nproc"})


class MlflowTarget(Config):
    """The existing MLflow run that rank 0 logs its metrics into."""

    run_id: str = Field(min_length=1)
    tracking_uri: str | None = None
    prefix: str = Field("", description="prepended to every metric name, e.g. 'train/'")


class RunConfig(Config):
    """A training run's config file (``task`` is the stage's to validate: ``read_run_config``)."""

    job: Literal["train"] = "train"
    trainer: TrainerConfig
    stage: str = Field(min_length=1, description="a name in vtp.stages.registry.STAGES")
    imports: list[str] = Field([], description="modules imported first, which register stages of their own")
    task: dict[str, Any] = {}
    mlflow: MlflowTarget | None = None


class LauncherConfig(Config):
    kind: Literal["inprocess", "torchrun", "command"] = "inprocess"
    nproc_per_node: int = Field(1, gt=0, description="processes (devices) for torchrun; {nproc} in a command")
    command: str | None = Field(None, description="kind 'command': a shell template with {config}, {python} and "
                                                  "{nproc}, running -m vtp_kedro.vtp.launch --config {config}")
    tail_lines: int = Field(20, gt=0, description="lines of each rank's log quoted when the run fails")

    @model_validator(mode="after")
    def _check(self) -> LauncherConfig:
        if self.kind == "command":
            if not self.command:
                raise ValueError("kind 'command' needs a command template")
            used = {field for _, field, _, _ in string.Formatter().parse(self.command) if field is not None}
            if used - COMMAND_PLACEHOLDERS:
                hint = " (every job now runs as -m vtp_kedro.vtp.launch)" if "module" in used else ""
                raise ValueError(f"command has unknown placeholders {sorted(used - COMMAND_PLACEHOLDERS)}; "
                                 f"allowed: {sorted(COMMAND_PLACEHOLDERS)}{hint}")
            if "config" not in used:
                raise ValueError("command must pass the config file: include {config}")
        elif self.command is not None:
            raise ValueError(f"command is only used with kind 'command', not {self.kind!r}")
        if self.kind == "inprocess" and self.nproc_per_node != 1:
            raise ValueError("kind 'inprocess' runs one process; use 'torchrun' for nproc_per_node > 1")
        return self


def read_job_file(config_path: str | Path) -> dict[str, Any]:
    """A job's config file as a dict; a missing or unreadable file fails naming it."""
    config_path = Path(config_path)
    try:
        raw = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"job config {config_path} does not exist") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"job config {config_path} is not valid JSON: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"job config {config_path} must hold a JSON object, not {type(raw).__name__}")
    return raw


def resolve_stage(run_config: RunConfig, source: str | Path) -> tuple[Stage, Config]:
    """The run's stage (after importing ``imports``) and its task config, validated by the stage's
    schema; a failure names ``source`` (the config file)."""
    for module in run_config.imports:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            raise ImportError(f"{source}: imports: cannot import {module!r} ({error})") from error
    try:
        stage = get_stage(run_config.stage)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    try:
        return stage, stage.config.model_validate(run_config.task)
    except ValidationError as error:
        raise ValueError(f"{source}: the task of stage {stage.name!r} is invalid: {error}") from None


def read_run_config(config_path: str | Path) -> tuple[RunConfig, Stage, Config]:
    """A training run's config, its stage and the stage's validated task config: what each process
    validates once (the parent before any process starts, then each rank)."""
    run_config = RunConfig.model_validate(read_job_file(config_path))
    return run_config, *resolve_stage(run_config, config_path)


@contextlib.contextmanager
def rank_logging(log_dir: Path, rank: int) -> Iterator[None]:
    """Copy this process's log records to ``log_dir/rank_<rank>.log`` while the run lasts."""
    log_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_dir / f"rank_{rank}.log")
    handler.setFormatter(logging.Formatter(f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s"))
    root, package = logging.getLogger(), logging.getLogger("vtp_kedro")
    package_level = package.level
    if package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        package.setLevel(package_level)


def run(config_path: str | Path, output_dir: str | Path | None = None) -> Path:
    """Train one rank (or the only process) from a run config file; returns the final checkpoint.

    Under torchrun the process group is joined from the environment. Every rank seeds its
    generators with ``trainer.seed`` before building the stage, so models start identical.
    """
    config_path = Path(config_path)
    output_dir = Path(output_dir) if output_dir is not None else config_path.parent
    run_config = RunConfig.model_validate(read_job_file(config_path))
    with job_process(output_dir, run_config.trainer.device):
        stage, task_config = resolve_stage(run_config, config_path)  # inside: a failure lands in the rank's log
        seed_all(run_config.trainer.seed)
        task, data = stage.build(task_config)
        target = run_config.mlflow
        metric_logger = (MlflowMetricLogger(target.run_id, target.tracking_uri, target.prefix)
                         if target is not None and is_main_process() else None)
        trainer = Trainer(run_config.trainer, task, data, output_dir, metric_logger)
        checkpoint = trainer.fit()
        if is_main_process():
            write_result(output_dir, trainer.summary())
        return checkpoint


@contextlib.contextmanager
def job_process(output_dir: Path, device: DeviceKind) -> Iterator[torch.device]:
    """One rank of a job: join torchrun's process group (if any), keep ``logs/rank_<r>.log``, log a failure.

    Yields this rank's device. Every job (training, latent extraction, sampling) runs inside it.
    """
    resolved = resolve_device(device)
    created = init_distributed(resolved)
    try:
        with rank_logging(Path(output_dir) / "logs", rank()):
            try:
                yield resolved
            except BaseException:
                log.exception("rank %d failed", rank())
                raise
    finally:
        if created:
            destroy_distributed()


def job_folder(output: str | Path) -> Path:
    """Where a job that fills ``output`` keeps its config, logs and result: the hidden sibling ``.<name>.job``.

    Beside the output rather than in /tmp, so that ranks on other nodes of a cluster see it.
    """
    output = Path(output)
    folder = output.parent / f".{output.name}.job"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_result(output_dir: str | Path, result: Mapping[str, Any]) -> Path:
    """``output_dir/result.json`` (what ``launch_job`` returns), written atomically: every job's one
    result writer; call on rank 0."""
    path = Path(output_dir) / RESULT_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    return path


def console_logging() -> None:
    """Rank 0 reports progress on the console, the others only problems; all keep full logs in files."""
    console = logging.StreamHandler()
    console.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[console])


def _tail(path: Path, lines: int) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(unreadable)"


def _failure_report(output_dir: Path, returncode: int, command: str, lines: int) -> str:
    parts = [f"the job failed with exit code {returncode}: {command}"]
    log_dir = output_dir / "logs"
    for path in sorted(log_dir.glob("rank_*.log")) + [log_dir / "launcher.log"]:
        if path.is_file():
            parts.append(f"--- {path.name} (last {lines} lines) ---\n{_tail(path, lines)}")
    return "\n".join(parts)


@dataclass(frozen=True)
class Job:
    """What ``launch_job`` starts on every rank.

    Every rank runs ``python -m vtp_kedro.vtp.launch --config <file> --output-dir <dir>``, which
    calls ``run(config_path, output_dir)`` of the job the file's ``job`` key names; ``inprocess``
    calls it in this process. Rank 0 writes ``output_dir/result.json``, which ``launch_job`` returns.
    """

    name: str
    run: Callable[[Path, Path], Any]
    validate: Callable[[Path], Any] = lambda path: None  # fail in the parent, before any process starts


TRAINING = Job("train", lambda config, output_dir: run(config, output_dir), read_run_config)


def _command(config: Path, output_dir: Path, launcher: LauncherConfig) -> tuple[str | list[str], bool]:
    """The command to run and whether it needs a shell."""
    if launcher.kind == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={launcher.nproc_per_node}",
                "-m", ENTRY_POINT, "--config", str(config), "--output-dir", str(output_dir)], False
    return launcher.command.format(config=shlex.quote(str(config)), python=shlex.quote(sys.executable),
                                   nproc=launcher.nproc_per_node), True


def launch_job(config_path: str | Path, output_dir: str | Path, launcher: LauncherConfig, job: Job) -> dict[str, Any]:
    """Run ``job`` as ``launcher`` says, on the config ``config_path``; returns rank 0's ``result.json``.

    The config is copied to ``output_dir/config.json`` (the run's record, and the file every
    rank reads). A failed run raises ``RuntimeError`` quoting each rank's last log lines.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if read_job_file(config_path).get("job") != job.name:
        raise ValueError(f"{config_path} is not a {job.name!r} job's config (its 'job' must be {job.name!r})")
    job.validate(Path(config_path))
    config = output_dir / CONFIG_FILE
    if Path(config_path).resolve() != config.resolve():
        with atomic_path(config) as tmp:
            shutil.copyfile(config_path, tmp)
    result = output_dir / RESULT_FILE
    result.unlink(missing_ok=True)  # a result from an earlier run must not pass for this one's
    if launcher.kind == "inprocess":
        job.run(config, output_dir)
        return json.loads(result.read_text())
    command, shell = _command(config, output_dir, launcher)
    printable = command if shell else shlex.join(command)
    log.info("launching: %s", printable)
    log_dir = output_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_dir / "launcher.log", "w") as launcher_log:
        process = subprocess.Popen(command, shell=shell, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            for line in process.stdout:
                launcher_log.write(line)
                launcher_log.flush()
                log.info("%s", line.rstrip())
            returncode = process.wait()
        except BaseException:
            # Interrupted (Ctrl-C in Kedro): stop the whole job, not just the first process.
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
            raise
    if returncode != 0:
        raise RuntimeError(_failure_report(output_dir, returncode, printable, launcher.tail_lines))
    if not result.is_file():
        raise RuntimeError(f"the {job.name} job exited cleanly but wrote no {result}: {printable}")
    return json.loads(result.read_text())


def launch(config_path: str | Path, output_dir: str | Path, launcher: LauncherConfig) -> Path:
    """Run the training described by ``config_path`` into ``output_dir``; returns the final checkpoint."""
    return Path(launch_job(config_path, output_dir, launcher, TRAINING)["checkpoint"])
