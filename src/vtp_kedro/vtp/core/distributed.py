"""torch.distributed from torchrun's environment: process group, rank helpers, DDP/FSDP wrapping.

Without ``WORLD_SIZE`` (a plain ``python`` run, or the in-process launcher inside Kedro) there
is no process group and every helper answers for a single process, so code calls them
unconditionally. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

ParallelKind = Literal["ddp", "fsdp"]
DeviceKind = Literal["auto", "cpu", "cuda"]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def resolve_device(kind: DeviceKind) -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is asked for or available (``auto``), else the CPU."""
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
    if kind == "cuda" or (kind == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def init_distributed(device: torch.device, timeout_s: float = 1800.0) -> bool:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1; returns whether this call created it."""
    if _env_int("WORLD_SIZE", 1) <= 1 or is_initialized():
        return False
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(f"WORLD_SIZE is set but {name} is not: start the ranks with torchrun")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timedelta(seconds=timeout_s), device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    return True


def destroy_distributed() -> None:
    if is_initialized():
        dist.destroy_process_group()


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device).

    Call with the same seed on every rank before building a model (identical initialisation)
    and with ``seed + rank()`` before training (dropout and other noise differ per rank).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def all_reduce_in_place(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """``dist.all_reduce`` of ``tensor`` in place when a process group is up (alone: unchanged); returns it.
    For statistics inside a loss that every rank must agree on (DINO's centre, Sinkhorn-Knopp)."""
    if is_initialized():
        dist.all_reduce(tensor, op=op)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (a copy; gloo has no AVG, hence SUM then divide)."""
    tensor = tensor.detach().clone()
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= world_size()
    return tensor


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` without a process group."""
    if not is_initialized():
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def any_rank(flag: torch.Tensor) -> bool:
    """True on every rank when the boolean tensor ``flag`` is true on at least one."""
    value = flag.detach().float()
    if is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's picklable ``obj`` as a list on rank 0 (None elsewhere)."""
    if not is_initialized():
        return [obj]
    gathered: list[Any] | None = [None] * world_size() if is_main_process() else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def parallelize(module: nn.Module, kind: ParallelKind, device: torch.device,
                fsdp_units: Iterable[nn.Module] = (), find_unused_parameters: bool = False) -> nn.Module:
    """Wrap ``module`` for data parallelism over the process group (returned unchanged without one).

    ``ddp``: a full replica per rank, gradients all-reduced (rank 0's weights are broadcast at
    construction, so every rank starts identical). ``fsdp``: FSDP2 ``fully_shard``; each module
    in ``fsdp_units`` (typically the transformer blocks) becomes its own all-gather unit, then
    ``module`` itself the root. Parameters are replaced by sharded DTensors, so build the
    optimiser after this call. ``find_unused_parameters`` lets DDP accept steps that leave
    some trainable parameters without gradient (at the cost of a graph traversal per step).
    """
    if not is_initialized():
        return module
    if kind == "ddp":
        device_ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids,
                                                   find_unused_parameters=find_unused_parameters)
    if kind == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for unit in fsdp_units:
            fully_shard(unit)
        fully_shard(module)
        return module
    raise ValueError(f"unknown parallel kind {kind!r}; expected 'ddp' or 'fsdp'")
