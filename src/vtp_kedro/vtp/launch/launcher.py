"""Starting a training run: one rank (``run``) and the whole job (``launch``).

Kedro must not run under torchrun (every rank would open a Kedro session, an MLflow run and
catalog saves; kedro-org/kedro#2049). So the Kedro node writes the fully resolved config to
a JSON file and calls ``launch``, which runs ``python -m vtp_kedro.vtp.launch --config <file>``
in-process (one device), under ``torchrun --standalone`` (one machine, N processes) or through
a user command template (clusters), waits, and returns the final checkpoint folder.

The resolved config file::

    {"trainer": {...TrainerConfig...},
     "task_factory": "package.module:function",   # (config_dict) -> (task, data)
     "task": {...whatever the factory reads...},
     "mlflow": {"run_id": "...", "tracking_uri": "...", "prefix": ""}}   # optional

The run's folder (by default the config file's folder) receives ``checkpoints/``,
``logs/rank_<r>.log`` and, from rank 0, ``result.json`` naming the final checkpoint.
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.core.io import atomic_path
from vtp_kedro.vtp.core.distributed import (
    destroy_distributed,
    DeviceKind,
    init_distributed,
    is_main_process,
    rank,
    resolve_device,
    seed_all,
)
from vtp_kedro.vtp.engine.trainer import RESULT_FILE, MlflowMetricLogger, Trainer, TrainerConfig, write_result

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
COMMAND_PLACEHOLDERS = frozenset({"config", "python", "nproc", "module"})


class MlflowTarget(Config):
    """The existing MLflow run that rank 0 logs its metrics into."""

    run_id: str = Field(min_length=1)
    tracking_uri: str | None = None
    prefix: str = Field("", description="prepended to every metric name, e.g. 'train/'")


class RunConfig(Config):
    """The resolved config file's schema (``task`` is the factory's to validate)."""

    trainer: TrainerConfig
    task_factory: str | None = Field(None, pattern=r"^[\w.]+:\w+$")
    task: dict[str, Any] = {}
    mlflow: MlflowTarget | None = None


class LauncherConfig(Config):
    kind: Literal["inprocess", "torchrun", "command"] = "inprocess"
    nproc_per_node: int = Field(1, gt=0, description="processes (devices) for torchrun; {nproc} in a command")
    command: str | None = Field(None, description="kind 'command': a shell template with {config}, {python}, {nproc} "
                                                  "and {module} (the job's module; training's is vtp_kedro.vtp.launch)")
    tail_lines: int = Field(20, gt=0, description="lines of each rank's log quoted when the run fails")

    @model_validator(mode="after")
    def _check(self) -> LauncherConfig:
        if self.kind == "command":
            if not self.command:
                raise ValueError("kind 'command' needs a command template")
            used = {field for _, field, _, _ in string.Formatter().parse(self.command) if field is not None}
            if used - COMMAND_PLACEHOLDERS:
                raise ValueError(f"command has unknown placeholders {sorted(used - COMMAND_PLACEHOLDERS)}; "
                                 f"allowed: {sorted(COMMAND_PLACEHOLDERS)}")
            if "config" not in used:
                raise ValueError("command must pass the config file: include {config}")
        elif self.command is not None:
            raise ValueError(f"command is only used with kind 'command', not {self.kind!r}")
        if self.kind == "inprocess" and self.nproc_per_node != 1:
            raise ValueError("kind 'inprocess' runs one process; use 'torchrun' for nproc_per_node > 1")
        return self


def read_run_config(config_path: str | Path) -> tuple[dict[str, Any], RunConfig]:
    """The raw resolved config and its validated envelope."""
    config_path = Path(config_path)
    try:
        raw = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"training config {config_path} does not exist") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"training config {config_path} is not valid JSON: {error}") from None
    return raw, RunConfig.model_validate(raw)


def load_factory(path: str) -> Callable[[dict[str, Any]], tuple[Any, Any]]:
    """Import ``package.module:function``."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"task factory {path!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ImportError(f"task factory {path!r}: cannot import {module_name!r} ({error})") from error
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ImportError(f"task factory {path!r}: module {module_name!r} has no {attribute!r}") from None


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


def run(config_path: str | Path, output_dir: str | Path | None = None, task_factory: str | None = None) -> Path:
    """Train one rank (or the only process) from a resolved config file; returns the final checkpoint.

    Under torchrun the process group is joined from the environment. Every rank seeds its
    generators with ``trainer.seed`` before calling the factory, so models start identical.
    """
    config_path = Path(config_path)
    raw, run_config = read_run_config(config_path)
    trainer_config = run_config.trainer
    factory_path = task_factory or run_config.task_factory
    if factory_path is None:
        raise ValueError(f"{config_path} names no task_factory and none was given (--task module:function)")
    output_dir = Path(output_dir) if output_dir is not None else config_path.parent
    with job_process(output_dir, trainer_config.device):
        seed_all(trainer_config.seed)
        task, data = load_factory(factory_path)(raw)
        target = run_config.mlflow
        metric_logger = (MlflowMetricLogger(target.run_id, target.tracking_uri, target.prefix)
                         if target is not None and is_main_process() else None)
        trainer = Trainer(trainer_config, task, data, output_dir, metric_logger)
        checkpoint = trainer.fit()
        if is_main_process():
            write_result(output_dir, trainer)
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


def write_job_result(output_dir: str | Path, result: dict[str, Any]) -> Path:
    """``output_dir/result.json`` (what ``launch_job`` returns), written atomically; call on rank 0."""
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


def job_main(job: Job, argv: list[str] | None = None, description: str = "") -> None:
    """``python -m <job.module> --config <file> [--output-dir <dir>]``: one process, or one torchrun rank."""
    parser = argparse.ArgumentParser(prog=f"python -m {job.module}", description=description)
    parser.add_argument("--config", required=True, help="the fully resolved config (JSON)")
    parser.add_argument("--output-dir", default=None, help="logs and result.json (default: the config's folder)")
    args = parser.parse_args(argv)
    console_logging()
    config = Path(args.config)
    job.run(config, Path(args.output_dir) if args.output_dir else config.parent)


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

    ``module`` runs as ``python -m <module> --config <file> --output-dir <dir>`` (torchrun, a
    command template); ``run(config_path, output_dir)`` is the same work called in this process
    (``inprocess``). Rank 0 writes ``output_dir/result.json``, which ``launch_job`` returns.
    """

    module: str
    run: Callable[[Path, Path], Any]
    validate: Callable[[Path], Any] = lambda path: None  # fail in the parent, before any process starts


TRAINING = Job("vtp_kedro.vtp.launch", lambda config, output_dir: run(config, output_dir), read_run_config)


def _command(config: Path, output_dir: Path, launcher: LauncherConfig, module: str) -> tuple[str | list[str], bool]:
    """The command to run and whether it needs a shell."""
    if launcher.kind == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={launcher.nproc_per_node}",
                "-m", module, "--config", str(config), "--output-dir", str(output_dir)], False
    if "{module}" not in launcher.command and module != TRAINING.module:
        raise ValueError(f"the launcher's command template runs training, not {module}: write "
                         f"'-m {{module}}' in it to launch other jobs (latent extraction, sampling)")
    return launcher.command.format(config=shlex.quote(str(config)), python=shlex.quote(sys.executable),
                                   nproc=launcher.nproc_per_node, module=module), True


def launch_job(config_path: str | Path, output_dir: str | Path, launcher: LauncherConfig, job: Job) -> dict[str, Any]:
    """Run ``job`` as ``launcher`` says, on the config ``config_path``; returns rank 0's ``result.json``.

    The config is copied to ``output_dir/config.json`` (the run's record, and the file every
    rank reads). A failed run raises ``RuntimeError`` quoting each rank's last log lines.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
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
    command, shell = _command(config, output_dir, launcher, job.module)
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
        raise RuntimeError(f"{job.module} exited cleanly but wrote no {result}: {printable}")
    return json.loads(result.read_text())


def launch(config_path: str | Path, output_dir: str | Path, launcher: LauncherConfig) -> Path:
    """Run the training described by ``config_path`` into ``output_dir``; returns the final checkpoint."""
    return Path(launch_job(config_path, output_dir, launcher, TRAINING)["checkpoint"])
