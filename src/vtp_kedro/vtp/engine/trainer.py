"""The one training loop of the project: tokenizer pre-training, the decoder GAN stage and DiT.

A stage hands the trainer a ``TrainTask`` (its model and its loss) and a ``ResumableIterable``
of batches; the trainer owns everything else: AdamW and the learning-rate schedules, gradient
accumulation and clipping, bf16 autocast on CUDA, DDP or FSDP, the step budget, skipping
non-finite steps, logging, a weights-only start (``init_from``) and checkpoints from which a
killed run resumes bit-identically.

One step (``step`` counts from 0) consumes ``accumulation_steps`` batches per rank and steps
each of the task's optimizers in turn (one, or e.g. generator then discriminator)::

    for each optimizer o (task.optimizer_names, in order):
        for each micro-batch:   loss, terms = task.training_step(batch, step[, optimizer=o]); (loss / A).backward()
        norm = ||grads of o||;  if loss or norm is non-finite on any rank: skip o's step (count it)
        else: clip to o's grad_clip; o.step() at o's lr(step);   then zero every gradient
    if every optimizer stepped: task.after_optimizer_step(step, total)

Frozen submodules (``task.frozen_modules()``) get no gradient and stay in eval mode throughout.
"""

from __future__ import annotations

import abc
import contextlib
import datetime
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from tqdm import tqdm

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.core.distributed import (
    DeviceKind,
    ParallelKind,
    all_reduce_mean,
    any_rank,
    barrier,
    gather_to_main,
    is_initialized,
    is_main_process,
    parallelize,
    rank,
    resolve_device,
    seed_all,
    world_size,
)
from vtp_kedro.vtp.core.io import atomic_path
from vtp_kedro.vtp.engine import checkpoint as ckpt
from vtp_kedro.vtp.engine.optim import OptimizerConfig, build_adamw
from vtp_kedro.vtp.engine.schedules import learning_rate, warmup_cosine

log = logging.getLogger(__name__)

MetricLogger = Callable[[dict[str, float], int], None]
METRICS_LOG = "metrics.jsonl"  # in the run folder: one {"step": ..., metric: value} record per log
_TRAINER_METRICS = ("lr", "grad_norm", "samples_per_s", "samples", "flops", "flop_per_s", "nonfinite_steps")
WALL_CLOCK_METRICS = ("samples_per_s", "flop_per_s")  # differ between identical runs: not in the exported logs


# --- configuration -----------------------------------------------------------------------
class BudgetConfig(Config):
    """How long to train: optimiser steps, samples (global), or FLOPs (fwd+bwd, all ranks)."""

    unit: Literal["steps", "samples", "flops"]
    value: float = Field(gt=0)

    @model_validator(mode="after")
    def _check(self) -> BudgetConfig:
        if self.unit == "steps" and self.value != int(self.value):
            raise ValueError(f"a budget in steps must be a whole number; got {self.value}")
        return self


class InitFromConfig(Config):
    """A weights-only start: parameters and buffers from another run, nothing else (no optimizer,
    no step, no data position). Used only when the run has no checkpoint of its own to resume."""

    path: str = Field(min_length=1, description="a checkpoint folder, a tokenizer inference folder or a .safetensors file")
    source_prefix: str = Field("", description="take only the source keys under this prefix (e.g. 'tokenizer.'), stripped")
    target: str = Field("", description="the submodule of task.model that receives them ('' = the whole model)")



@dataclass
class StepResult:
    """What one training step did, summed over ranks where it counts."""

    terms: dict[str, Tensor]  # the task's loss terms, averaged over accumulation
    grad_norms: dict[str, Tensor]  # per optimizer, before clipping
    applied: bool  # every optimizer stepped (no non-finite loss or gradient)
    samples: int  # over all ranks
    flops: float  # over all ranks


@dataclass
class LogWindow:
    """Sums since the last logged line; ``_emit`` turns them into means and rates."""

    start: float = field(default_factory=time.perf_counter)
    steps: int = 0
    samples: int = 0
    flops: float = 0.0
    applied: int = 0  # steps whose optimizers all stepped: the gradient norms' count
    terms: dict[str, Tensor] = field(default_factory=dict)
    norms: dict[str, Tensor] = field(default_factory=dict)
    evaluation: dict[str, float] = field(default_factory=dict)


class TrainerConfig(Config):
    """Everything about how to train, nothing about what: the stage's own settings go to its task."""

    budget: BudgetConfig
    optimizer: OptimizerConfig | None = Field(
        None, description="the optimizer of a single-optimizer task; None: OptimizerConfig's defaults")
    optimizers: dict[str, OptimizerConfig] | None = Field(
        None, description="one entry per optimizer a multi-optimizer task names (e.g. generator, discriminator)")
    init_from: InitFromConfig | None = None
    accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimiser step and rank")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    compile: bool | None = Field(None, description="torch.compile the step; None: on with CUDA, off on CPU")
    activation_checkpointing: bool = Field(False, description="passed to task.set_activation_checkpointing")
    parallel: ParallelKind = Field("ddp", description="under torchrun: replicate (ddp) or shard (fsdp) the model")
    find_unused_parameters: bool = Field(False, description="ddp: allow trainable parameters a step leaves unused")
    device: DeviceKind = "auto"
    deterministic: bool | None = Field(
        None, description="deterministic kernels, for bit-identical resumes (about 8% slower on CPU); "
        "None: on for CPU, off for CUDA")
    seed: int = Field(0, ge=0, description="model init uses seed; training noise seed + rank")
    log_every: int = Field(10, gt=0)
    evaluate_every: int | None = Field(None, gt=0, description="steps between the task's evaluations (task.evaluate, "
                                       "e.g. the online probe), a multiple of log_every; one at the end; None: never")
    checkpoint_every: int = Field(1000, gt=0, description="steps between checkpoints; one is always saved at the end")
    keep_last: int = Field(3, ge=1)
    resume: str = Field("auto", min_length=1, description="auto | never | path of a checkpoint folder")
    max_consecutive_nonfinite: int = Field(10, gt=0, description="stop after this many skipped steps in a row")

    @model_validator(mode="after")
    def _check_optimizers(self) -> TrainerConfig:
        if self.optimizers is not None and self.optimizer is not None:
            raise ValueError("set either optimizer (one optimizer) or optimizers (one per name), not both")
        if self.optimizers is not None and not self.optimizers:
            raise ValueError("optimizers is empty: name at least one, or use optimizer")
        if self.evaluate_every is not None and self.evaluate_every % self.log_every:
            raise ValueError(f"evaluate_every ({self.evaluate_every}) must be a multiple of log_every "
                             f"({self.log_every}): evaluations are logged with the step's record")
        return self

    def optimizer_configs(self, names: tuple[str, ...]) -> dict[str, OptimizerConfig]:
        """The config of each of a task's optimizers, in the task's order; a clear error on a mismatch."""
        if self.optimizers is None:
            if len(names) == 1:
                return {names[0]: self.optimizer or OptimizerConfig()}
            raise ValueError(f"the task steps {len(names)} optimizers {list(names)}: set trainer.optimizers "
                             "with one entry each")
        missing, extra = set(names) - set(self.optimizers), set(self.optimizers) - set(names)
        if missing or extra:
            raise ValueError(f"trainer.optimizers must name exactly the task's optimizers {list(names)}; "
                             f"missing {sorted(missing)}, unknown {sorted(extra)}")
        return {name: self.optimizers[name] for name in names}


def _steps_to_spend(total: float, per_step: float) -> int:
    """The smallest n >= 1 with n * per_step >= total, so that the overspend n * per_step - total
    lies in [0, per_step).

    ``ceil(total / per_step)`` alone is not it: the quotient is rounded, and a budget of exactly k
    steps can come out a hair above k (3 * 0.1 / 0.1 = 3.0000000000000004), which would buy a whole
    extra step; it can also come out a hair below when the product falls short.
    """
    steps = max(1, math.ceil(total / per_step))
    if steps > 1 and (steps - 1) * per_step >= total:
        steps -= 1
    elif steps * per_step < total:
        steps += 1
    return steps


def total_steps_for(budget: BudgetConfig, samples_per_step: int, flops_per_step: float | None) -> int:
    """Steps to train: the first step count at which the whole budget is spent (``_steps_to_spend``)."""
    if budget.unit == "steps":
        return int(budget.value)
    if budget.unit == "samples":
        return _steps_to_spend(budget.value, samples_per_step)
    if not flops_per_step:
        raise ValueError("a budget in flops needs task.flops_per_step(batch) to return the step's FLOPs")
    return _steps_to_spend(budget.value, flops_per_step)


# --- what a stage gives the trainer --------------------------------------------------------
class TrainTask(abc.ABC):
    """A training stage: its model, its loss, and what happens around the optimiser step.

    A plain object (not an ``nn.Module``) holding the trainable ``model``; the trainer moves the
    model to the device, wraps it for DDP/FSDP, optimises ``named_trainable_parameters()`` and
    checkpoints ``model.state_dict()`` (which may include an EMA teacher as a frozen submodule)
    plus ``state_dict()``. Override what the stage needs; the defaults suit a single-loss model.
    """

    model: nn.Module
    # The optimizers, in the order they are stepped each step. A task with several (a GAN:
    # ("generator", "discriminator")) overrides this and ``configure_optimizers``, and its
    # ``training_step`` receives ``optimizer=<name>``: the loss whose gradients that one applies.
    optimizer_names: tuple[str, ...] = ("main",)
    # Terms of training_step that count items of the micro-batch (e.g. the images an objective
    # used): logged as running totals over steps and ranks, as ``samples`` is, not as window means.
    counters: tuple[str, ...] = ()

    @abc.abstractmethod
    def training_step(self, batch: Any, step: int) -> tuple[Tensor, Mapping[str, float | Tensor]]:
        """The scalar loss to minimise on this rank's micro-batch, and every term for logging
        (scalars; the same names at every step and on every rank, as they are averaged over both).
        A multi-optimizer task's signature is ``training_step(batch, step, optimizer)``."""

    def named_trainable_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        """The parameters to optimise, named as in ``model`` (default: those requiring grad)."""
        return ((name, p) for name, p in self.model.named_parameters() if p.requires_grad)

    def configure_optimizer(self, config: OptimizerConfig) -> torch.optim.Optimizer:
        """The optimiser of a single-optimizer task (default AdamW with no decay on norms, biases, tokens)."""
        return build_adamw(self.named_trainable_parameters(), config, self.lr_scales(config))

    def lr_scales(self, config: OptimizerConfig) -> Mapping[str, float] | None:
        """Per-parameter learning-rate factors (e.g. ``optim.vit_lr_scales`` for layer-wise decay);
        None: the task has none, and ``layer_decay`` settings are refused."""
        return None

    def configure_optimizers(self, configs: Mapping[str, OptimizerConfig]) -> dict[str, torch.optim.Optimizer]:
        """One optimizer per name of ``optimizer_names``, each over its own parameters; a
        parameter group may carry ``lr_scale`` (its learning rate = scale x the schedule's)."""
        if len(self.optimizer_names) != 1:
            raise NotImplementedError(f"{type(self).__name__} names optimizers {self.optimizer_names} "
                                      "but does not override configure_optimizers")
        (name,) = self.optimizer_names
        return {name: self.configure_optimizer(configs[name])}

    def frozen_modules(self) -> Iterable[nn.Module]:
        """Submodules of ``model`` that are not trained: the trainer turns their gradients off,
        keeps them in eval mode for the whole run and refuses them in any optimizer. The task
        runs them under ``torch.no_grad()`` where no gradient must flow through them."""
        return ()

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Runs after each applied optimiser step, e.g. the EMA teacher update."""

    def evaluate(self, step: int) -> Mapping[str, float]:
        """Metrics of the current model every ``trainer.evaluate_every`` steps and at the end (e.g. an
        online probe), logged with that step's record. Every rank calls it, in eval mode and without
        gradients (FSDP needs every rank in a forward); rank 0's values are logged."""
        return {}

    def flops_per_step(self, batch: Any) -> float | None:
        """Analytic forward+backward FLOPs of ``training_step`` on ``batch`` (None: unknown;
        then FLOPs are not logged and a FLOPs budget is refused)."""
        return None

    def fsdp_units(self) -> Iterable[nn.Module]:
        """Submodules FSDP shards as separate all-gather units (e.g. transformer blocks)."""
        return ()

    def set_activation_checkpointing(self, enabled: bool) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not support activation checkpointing")

    def state_dict(self) -> dict[str, Tensor]:
        """Checkpointed state beyond ``model.state_dict()``: a flat name -> tensor mapping
        (stored as safetensors); generator states are ``torch.Generator.get_state()`` tensors."""
        return {}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state but the checkpoint has {sorted(state)}")


@runtime_checkable
class ResumableIterable(Protocol):
    """A source of batches that can say where it is and go back there.

    ``iter()`` yields batches from the current position (endlessly, or for one epoch, after
    which the trainer calls ``iter()`` again); ``state_dict()`` describes the position after
    the last batch *yielded* (not prefetched) as plain JSON values; ``load_state_dict`` moves
    there before the next ``iter()``. Randomness comes from the source's own seeded
    generators, which the position includes. Each rank holds its own shard of the data.
    """

    def __iter__(self) -> Iterator[Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class MlflowMetricLogger:
    """``log_metrics(metrics, step)`` into an existing MLflow run, e.g. Kedro's, by its id.

    Uses ``MlflowClient`` rather than the fluent API: a training process (or rank 0 under
    torchrun) writes into the parent's run without starting or ending runs itself.
    """

    def __init__(self, run_id: str, tracking_uri: str | None = None, prefix: str = "") -> None:
        # Imported here: mlflow takes seconds to import, which ranks that do not log skip.
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        self.client, self._metric = MlflowClient(tracking_uri=tracking_uri), Metric
        self.run_id, self.prefix = run_id, prefix
        self.client.get_run(run_id)  # fails now, naming the id, if the run does not exist

    def __call__(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        entries = [self._metric(self.prefix + key, float(value), now, step) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=entries)


# --- helpers ----------------------------------------------------------------------------------
def batch_size(batch: Any) -> int:
    """Leading dimension of the first tensor in a (nested) batch."""
    if isinstance(batch, Tensor):
        return batch.shape[0] if batch.ndim else 1
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        with contextlib.suppress(ValueError):
            return batch_size(value)
    raise ValueError(f"cannot tell the batch size of a {type(batch).__name__}: it holds no tensor")


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


class _TrainingStep(nn.Module):
    """Routes ``task.training_step`` through ``forward`` so DDP's and FSDP's hooks run around it."""

    def __init__(self, task: TrainTask) -> None:
        super().__init__()
        self.model = task.model
        self.__dict__["task"] = task  # a plain attribute: the task is not a submodule

    def forward(self, batch: Any, step: int, optimizer: str | None = None) -> tuple[Tensor, Mapping[str, float | Tensor]]:
        if optimizer is None:
            return self.task.training_step(batch, step)
        return self.task.training_step(batch, step, optimizer=optimizer)


_MODEL_PREFIX = "model."


# --- the trainer ------------------------------------------------------------------------------
class Trainer:
    """Trains ``task`` on ``data`` under ``config``; checkpoints go to ``output_dir/checkpoints``.

    ``log_metrics(metrics, step)`` receives, on rank 0 every ``log_every`` steps, the task's
    terms averaged over the steps since the last log and over ranks, plus ``lr``,
    ``grad_norm``, ``samples_per_s``, ``samples``, ``flops``, ``flop_per_s`` and
    ``nonfinite_steps``; the same records go to ``output_dir/metrics.jsonl``.
    """

    def __init__(self, config: TrainerConfig, task: TrainTask, data: ResumableIterable,
                 output_dir: str | Path, log_metrics: MetricLogger | None = None) -> None:
        if isinstance(task, nn.Module):
            raise TypeError(f"the task ({type(task).__name__}) must not be an nn.Module: hold the model in task.model")
        if not isinstance(getattr(task, "model", None), nn.Module):
            raise TypeError(f"task {type(task).__name__} has no nn.Module in task.model")
        if not isinstance(data, ResumableIterable):
            raise TypeError(f"the data source ({type(data).__name__}) needs __iter__, state_dict and load_state_dict")
        self.config, self.task, self.data = config, task, data
        self.checkpoint_dir = Path(output_dir) / "checkpoints"
        self.metrics_log = Path(output_dir) / METRICS_LOG
        self.log_metrics = log_metrics
        self.device = resolve_device(config.device)
        self.step = 0
        self.total_steps = 0
        self.samples = 0
        self.flops = 0.0
        self.nonfinite_total = 0
        self.counts = dict.fromkeys(task.counters, 0.0)
        self.nonfinite_consecutive = 0
        self.resumed_from: Path | None = None
        self.last_checkpoint: Path | None = None
        self._pending: Any = None
        self._skipped: list[str] = []

    # -- set-up ------------------------------------------------------------------------
    @property
    def deterministic(self) -> bool:
        return self.config.deterministic if self.config.deterministic is not None else self.device.type == "cpu"

    @property
    def _bf16(self) -> bool:
        return self.config.precision == "bf16" or (self.config.precision == "auto" and self.device.type == "cuda")

    @property
    def _fsdp(self) -> bool:
        return self.config.parallel == "fsdp" and is_initialized()

    def _state_dict_options(self, **kwargs: Any) -> StateDictOptions:
        # Under FSDP the full (unsharded) state is gathered; otherwise every rank holds it already.
        return StateDictOptions(full_state_dict=self._fsdp, **kwargs)

    @property
    def _multi_optimizer(self) -> bool:
        return len(self.task.optimizer_names) > 1

    def _setup(self) -> None:
        cfg = self.config
        names = tuple(self.task.optimizer_names)
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"task {type(self.task).__name__} optimizer_names {names} must be distinct and non-empty")
        optimizer_configs = cfg.optimizer_configs(names)
        self.frozen = list(self.task.frozen_modules())
        for module in self.frozen:
            module.requires_grad_(False)
        self.task.model.to(self.device)
        if cfg.activation_checkpointing:
            self.task.set_activation_checkpointing(True)
        # A pass that steps one optimizer leaves the others' parameters without gradients.
        find_unused = cfg.find_unused_parameters or self._multi_optimizer
        self.module = parallelize(_TrainingStep(self.task), cfg.parallel, self.device, self.task.fsdp_units(),
                                  find_unused_parameters=find_unused)
        self.optimizers = self.task.configure_optimizers(optimizer_configs)
        if tuple(self.optimizers) != names:
            raise ValueError(f"configure_optimizers returned {list(self.optimizers)}, not the task's "
                             f"optimizer_names {list(names)} in that order")
        self.optimizer_configs = optimizer_configs
        self.params = {name: [p for group in opt.param_groups for p in group["params"]]
                       for name, opt in self.optimizers.items()}
        frozen_ids = {id(p) for module in self.frozen for p in module.parameters()}
        for name, params in self.params.items():
            if any(id(p) in frozen_ids for p in params):
                raise ValueError(f"optimizer {name!r} was given parameters of a frozen module")
        use_compile = self.device.type == "cuda" if cfg.compile is None else cfg.compile
        self.step_fn = torch.compile(self.module) if use_compile else self.module

    def _resume_source(self) -> Path | None:
        resume = self.config.resume
        if resume == "never":
            existing = ckpt.latest_checkpoint(self.checkpoint_dir)
            if existing is not None:
                raise FileExistsError(f"resume is 'never' but {existing} exists: delete {self.checkpoint_dir} "
                                      "or set resume: auto")
            return None
        if resume == "auto":
            # A damaged checkpoint (a truncated or changed file) is named and skipped: the run
            # resumes from the newest intact one, and saving the damaged step again replaces it.
            return ckpt.latest_intact_checkpoint(self.checkpoint_dir)
        path = Path(resume)
        ckpt.checkpoint_step(path)  # a clear error for a path that is not a checkpoint folder
        ckpt.verify_checkpoint(path)  # the one asked for: a damaged one fails here, naming the file
        return path

    def _initialise_weights(self, init: InitFromConfig) -> None:
        """Copy weights from ``init.path`` into ``task.model`` (or its ``init.target`` submodule),
        requiring the selected source keys and the target's keys and shapes to match exactly."""
        source = ckpt.read_weights(init.path)
        if init.source_prefix:
            source = {k.removeprefix(init.source_prefix): v for k, v in source.items() if k.startswith(init.source_prefix)}
            if not source:
                raise ValueError(f"init_from {init.path}: no weights under source_prefix {init.source_prefix!r}")
        try:
            target = self.task.model.get_submodule(init.target)
        except AttributeError:
            raise ValueError(f"init_from.target {init.target!r} is not a submodule of the task's model") from None
        ckpt.load_state_strictly(target, source, f"init_from {init.path} (into {init.target or 'the model'})")
        log.info("initialised %s from %s", init.target or "the model", init.path)

    def _restore(self, path: Path) -> dict[str, Any]:
        """Load weights, optimiser, task state, counters and data position; returns the state."""
        state = ckpt.load_checkpoint(path)
        trainer_state = state["trainer_state"]
        if trainer_state["world_size"] != world_size():
            raise ValueError(f"checkpoint {path} was written by {trainer_state['world_size']} ranks; "
                             f"resume it with the same world size, not {world_size()}")
        model_state = {_MODEL_PREFIX + key: value for key, value in state["model"].items()}
        set_model_state_dict(self.module, model_state, options=self._state_dict_options())
        optimizer_states = ckpt.named_optimizer_states(state["optimizer"], tuple(self.optimizers))
        for name, optimizer in self.optimizers.items():
            set_optimizer_state_dict(self.module, optimizer, optimizer_states[name], options=self._state_dict_options())
        self.task.load_state_dict(state["task_state"])
        self.data.load_state_dict(trainer_state["data"][rank()])
        self.step = trainer_state["step"]
        self.samples = trainer_state["samples"]
        self.flops = trainer_state["flops"]
        self.nonfinite_total = trainer_state["nonfinite_total"]
        self.counts.update(trainer_state.get("counts", {}))
        self.nonfinite_consecutive = trainer_state["nonfinite_consecutive"]
        self.resumed_from = path
        log.info("resumed from %s at step %d", path, self.step)
        return state

    def _resolve_total_steps(self, restored: dict[str, Any] | None) -> int:
        first = self._pending
        samples_per_step = batch_size(first) * self.config.accumulation_steps * world_size()
        micro_flops = self.task.flops_per_step(first)
        step_flops = None if micro_flops is None else micro_flops * self.config.accumulation_steps * world_size()
        budget = self.config.budget.model_dump()
        if restored is not None and restored["trainer_state"]["budget"] == budget:
            return restored["trainer_state"]["total_steps"]  # as planned, even if batch shapes vary
        total = total_steps_for(self.config.budget, samples_per_step, step_flops)
        if restored is not None:
            log.warning("budget changed since %s: now %d steps in total", restored["path"], total)
        return total

    # -- data --------------------------------------------------------------------------
    def _next_batch(self) -> Any:
        if self._pending is not None:
            batch, self._pending = self._pending, None
            return batch
        try:
            batch = next(self._iterator)
        except StopIteration:  # one epoch done: the source starts the next one
            self._iterator = iter(self.data)
            try:
                batch = next(self._iterator)
            except StopIteration:
                raise RuntimeError(f"the data source ({type(self.data).__name__}) yielded no batch "
                                   f"at step {self.step}") from None
        return to_device(batch, self.device)

    # -- one step ------------------------------------------------------------------------
    def _gradient_sync(self, enabled: bool) -> contextlib.AbstractContextManager:
        if self._fsdp:
            self.module.set_requires_gradient_sync(enabled)
        elif not enabled and isinstance(self.module, nn.parallel.DistributedDataParallel):
            return self.module.no_sync()
        return contextlib.nullcontext()

    def _train_step(self) -> StepResult:
        """One step of every optimizer."""
        step, accumulation = self.step, self.config.accumulation_steps
        batches = [self._next_batch() for _ in range(accumulation)]
        samples = sum(batch_size(batch) for batch in batches)
        flops = sum(self.task.flops_per_step(batch) or 0.0 for batch in batches)
        terms: dict[str, Tensor] = {}
        norms: dict[str, Tensor] = {}
        all_applied = True
        self._lrs = {}
        for name, optimizer in self.optimizers.items():
            opt_cfg = self.optimizer_configs[name]
            lr = learning_rate(opt_cfg.schedule, step, self.total_steps, opt_cfg.lr, opt_cfg.min_lr, opt_cfg.warmup_steps)
            weight_decay = (None if opt_cfg.weight_decay_end is None else
                            warmup_cosine(step, self.total_steps, opt_cfg.weight_decay, opt_cfg.weight_decay_end))
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
                if weight_decay is not None and group.get("decay"):
                    group["weight_decay"] = weight_decay
            self._lrs[name] = lr
            losses = []
            loss_name = f"{name}/loss" if self._multi_optimizer else "loss"
            for micro, batch in enumerate(batches):
                with self._gradient_sync(micro == accumulation - 1):
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._bf16):
                        loss, step_terms = self.step_fn(batch, step, name if self._multi_optimizer else None)
                    if loss.ndim != 0:
                        raise ValueError(f"training_step must return a scalar loss; got shape {tuple(loss.shape)}")
                    if loss.requires_grad:  # a pass may have nothing to train yet (a GAN's D before its start)
                        (loss / accumulation).backward()
                losses.append(loss.detach().float())
                for term, value in {loss_name: loss, **step_terms}.items():
                    value = torch.as_tensor(value, device=self.device).detach().float()
                    terms[term] = terms.get(term, 0.0) + value / accumulation
            params = self.params[name]
            grads = [p.grad for p in params if p.grad is not None]
            norm = (torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False) if grads
                    else torch.zeros((), device=self.device))
            full_norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
            nonfinite = ~torch.isfinite(full_norm) | ~torch.isfinite(torch.stack(losses)).all()
            applied = not any_rank(nonfinite)
            if applied:
                if opt_cfg.grad_clip is not None:
                    torch.nn.utils.clip_grads_with_norm_(params, opt_cfg.grad_clip, norm)
                optimizer.step()
            else:
                self._skipped.append(name)
            all_applied &= applied
            # Every gradient, not only this optimizer's: the generator's pass also reaches the
            # discriminator's weights, which its own pass must start from zero.
            self.module.zero_grad(set_to_none=True)
            norms[name] = full_norm.detach()
        if self._multi_optimizer:
            first = self.task.optimizer_names[0]
            terms["loss"] = terms[f"{first}/loss"]
        if all_applied:
            self.task.after_optimizer_step(step, self.total_steps)
        return StepResult(terms, norms, all_applied, samples * world_size(), flops * world_size())

    def _count_nonfinite(self, result: StepResult) -> None:
        skipped, self._skipped = self._skipped, []
        terms, norms = result.terms, result.grad_norms
        if result.applied:
            self.nonfinite_consecutive = 0
            return
        self.nonfinite_total += 1
        self.nonfinite_consecutive += 1
        norms_text = ", ".join(f"{norms[name].item():.4g} ({name})" for name in skipped)
        message = (f"step {self.step}: non-finite loss {terms['loss'].item():.4g} or grad norm {norms_text}; "
                   f"optimizer step of {skipped} skipped ({self.nonfinite_consecutive} in a row, "
                   f"{self.nonfinite_total} in total)")
        if self.nonfinite_consecutive >= self.config.max_consecutive_nonfinite:
            last = ckpt.latest_checkpoint(self.checkpoint_dir)
            raise RuntimeError(f"{message}; stopping after max_consecutive_nonfinite="
                               f"{self.config.max_consecutive_nonfinite}. Last good checkpoint: {last}")
        log.warning(message)

    # -- checkpoints ---------------------------------------------------------------------
    def _save_checkpoint(self) -> Path:
        """Collect every rank's state and write it from rank 0 (all ranks must call this)."""
        options = self._state_dict_options(cpu_offload=True)
        model_state = get_model_state_dict(self.module, options=options)
        optimizer_state = {name: get_optimizer_state_dict(self.module, optimizer, options=options)
                           for name, optimizer in self.optimizers.items()}
        data_states = gather_to_main(self.data.state_dict())
        rng_states = gather_to_main(ckpt.rng_state())
        path = self.checkpoint_dir / ckpt.checkpoint_name(self.step)
        if is_main_process():
            model_state = {key.removeprefix(_MODEL_PREFIX): value for key, value in model_state.items()}
            trainer_state = {
                "total_steps": self.total_steps,
                "budget": self.config.budget.model_dump(),
                "samples": self.samples,
                "flops": self.flops,
                "nonfinite_total": self.nonfinite_total,
                "counts": self.counts,
                "nonfinite_consecutive": self.nonfinite_consecutive,
                "world_size": world_size(),
                "data": data_states,
            }
            ckpt.save_checkpoint(self.checkpoint_dir, self.step, model=model_state,
                                 task_state=self.task.state_dict(), optimizer=optimizer_state,
                                 trainer_state=trainer_state, rng=rng_states)
            for old in ckpt.prune_checkpoints(self.checkpoint_dir, self.config.keep_last):
                log.info("deleted old checkpoint %s", old)
            log.info("saved checkpoint %s", path)
        barrier()
        self.last_checkpoint = path
        return path

    # -- logging -------------------------------------------------------------------------
    def _emit(self, window: LogWindow, bar: tqdm) -> None:
        """Average the window's terms over steps and ranks and hand them to the logger (rank 0)."""
        names = sorted(window.terms)
        values = all_reduce_mean(torch.stack([window.terms[name] / window.steps for name in names]))
        elapsed = max(time.perf_counter() - window.start, 1e-9)
        metrics = dict(zip(names, values.tolist(), strict=True))
        clashes = sorted(set(metrics) & set(_TRAINER_METRICS))
        if clashes:
            raise ValueError(f"task terms {clashes} clash with the trainer's own metric names")
        for name in self.optimizers:
            norm = (window.norms[name] / window.applied).item() if window.applied else float("nan")
            if self._multi_optimizer:
                metrics[f"{name}/lr"], metrics[f"{name}/grad_norm"] = self._lrs[name], norm
        first = self.task.optimizer_names[0]
        metrics["lr"] = self._lrs[first]
        metrics["grad_norm"] = (window.norms[first] / window.applied).item() if window.applied else float("nan")
        metrics["samples_per_s"] = window.samples / elapsed
        metrics["samples"] = float(self.samples)
        metrics["nonfinite_steps"] = float(self.nonfinite_total)
        metrics.update(self.counts)
        metrics.update(window.evaluation)
        if window.flops:
            metrics["flops"] = self.flops
            metrics["flop_per_s"] = window.flops / elapsed
        if not is_main_process():
            return
        with self.metrics_log.open("a") as log_file:
            log_file.write(json.dumps({"step": self.step, **metrics}) + "\n")
        if self.log_metrics is not None:
            self.log_metrics(metrics, self.step)
        if bar.disable:
            rate = (self.step - self._start_step) / max(time.perf_counter() - self._start_time, 1e-9)
            eta = datetime.timedelta(seconds=round((self.total_steps - self.step) / rate))
            log.info("step %d/%d | loss %.4g | lr %.3g | grad norm %.3g | %.1f samples/s | eta %s",
                     self.step, self.total_steps, metrics["loss"], metrics["lr"], metrics["grad_norm"],
                     metrics["samples_per_s"], eta)
        else:
            bar.set_postfix(loss=f"{metrics['loss']:.4g}", lr=f"{metrics['lr']:.3g}")

    def _evaluate(self) -> dict[str, float]:
        """``task.evaluate`` in eval mode, without gradients, then back to training."""
        start = time.perf_counter()
        self.task.model.eval()
        with torch.no_grad():
            metrics = {name: float(value) for name, value in self.task.evaluate(self.step).items()}
        self.task.model.train()
        for module in self.frozen:
            module.eval()
        clashes = sorted(set(metrics) & set(_TRAINER_METRICS))
        if clashes:
            raise ValueError(f"evaluation metrics {clashes} clash with the trainer's own metric names")
        log.info("evaluation at step %d (%.1f s): %s", self.step, time.perf_counter() - start,
                 ", ".join(f"{name} {value:.4g}" for name, value in sorted(metrics.items())))
        return metrics

    def _rewind_metrics_log(self) -> None:
        """Keep the records up to the current step: a killed run may have logged past its last
        checkpoint (and may have left a half-written last line); a fresh run starts empty."""
        kept = []
        if self.step > 0 and self.metrics_log.is_file():
            for line in self.metrics_log.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    record = json.loads(line)
                    if record["step"] <= self.step:
                        kept.append(line + "\n")
        self.metrics_log.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.metrics_log) as tmp:
            tmp.write_text("".join(kept))

    # -- the loop --------------------------------------------------------------------------
    def fit(self) -> Path:
        """Train until the budget is spent; returns the final checkpoint folder."""
        before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        if self.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            return self._fit()
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])

    def _fit(self) -> Path:
        if is_main_process():
            for partial in ckpt.remove_partial_checkpoints(self.checkpoint_dir):
                log.warning("removed %s, left by a save that was interrupted", partial)
        source = self._resume_source()  # every rank reads the (shared) checkpoint folder itself
        if source is None and self.config.init_from is not None:
            self._initialise_weights(self.config.init_from)
        self._setup()
        restored = self._restore(source) if source is not None else None
        if restored is None:
            seed_all(self.config.seed + rank())
        self._iterator = iter(self.data)
        self._pending = self._next_batch()  # peeked for the budget, trained on in the first step
        self.total_steps = self._resolve_total_steps(restored)
        for name, opt_cfg in self.optimizer_configs.items():
            if opt_cfg.warmup_steps >= self.total_steps:
                key = f"optimizers.{name}" if self.config.optimizers is not None else "optimizer"
                raise ValueError(f"{key}.warmup_steps ({opt_cfg.warmup_steps}) must be below the total steps "
                                 f"({self.total_steps}) that the budget {self.config.budget} gives")
        if restored is not None:
            # Restored last: iter() and the first batch above may draw from the global generators.
            ckpt.set_rng_state(restored["rng"][rank()])
        if is_main_process():
            self._rewind_metrics_log()
        self.task.model.train()
        for module in self.frozen:
            module.eval()
        log.info("training %d steps from step %d on %d rank(s), device %s", self.total_steps, self.step,
                 world_size(), self.device)
        show_bar = is_main_process() and sys.stderr.isatty()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not show_bar, dynamic_ncols=True)
        self._start_time, self._start_step = time.perf_counter(), self.step
        window = LogWindow()
        with bar:
            while self.step < self.total_steps:
                result = self._train_step()
                self._count_nonfinite(result)
                self.step += 1
                self.samples += result.samples
                self.flops += result.flops
                for name, value in result.terms.items():
                    if name in self.counts:  # the same count on every rank, as samples assumes
                        self.counts[name] += float(value) * self.config.accumulation_steps * world_size()
                    else:
                        window.terms[name] = window.terms.get(name, 0.0) + value
                window.steps += 1
                window.samples += result.samples
                window.flops += result.flops
                if result.applied:
                    for name, norm in result.grad_norms.items():
                        window.norms[name] = window.norms.get(name, 0.0) + norm
                    window.applied += 1
                bar.update(1)
                every = self.config.evaluate_every
                if every is not None and (self.step % every == 0 or self.step == self.total_steps):
                    started = time.perf_counter()
                    window.evaluation = self._evaluate()
                    window.start += time.perf_counter() - started  # not training throughput
                if self.step % self.config.log_every == 0 or self.step == self.total_steps:
                    self._emit(window, bar)
                    window = LogWindow()
                if self.step % self.config.checkpoint_every == 0 or self.step == self.total_steps:
                    self._save_checkpoint()
                    window.start = time.perf_counter()  # saving time is not training throughput
        if self.last_checkpoint is None:  # resumed from the final checkpoint: nothing left to do
            self.last_checkpoint = source
        return self.last_checkpoint

    def summary(self) -> dict[str, Any]:
        """The finished run's final checkpoint and counters (the launcher writes them as result.json)."""
        return {"checkpoint": str(self.last_checkpoint), "step": self.step, "total_steps": self.total_steps,
                "samples": self.samples, "flops": self.flops, "nonfinite_steps": self.nonfinite_total,
                "resumed_from": None if self.resumed_from is None else str(self.resumed_from),
                "world_size": world_size()}
