"""The EMA teacher for DINO/iBOT self-distillation: a frozen copy of the student, moved by momentum."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def cosine_momentum(step: int, total_steps: int, base: float = 0.992, final: float = 1.0) -> float:
    """Teacher momentum at ``step``: ``final - (final - base) * (1 + cos(pi * step / total_steps)) / 2``.

    ``base`` at step 0, ``final`` at ``total_steps`` and after (DINO's cosine schedule).
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive; got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be non-negative; got {step}")
    if not 0.0 <= base <= final <= 1.0:
        raise ValueError(f"need 0 <= base ({base}) <= final ({final}) <= 1")
    progress = min(step, total_steps) / total_steps
    return final - (final - base) * (1.0 + math.cos(math.pi * progress)) / 2.0


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``t = m * t + (1 - m) * s`` for every parameter; buffers are copied from the student."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1]; got {momentum}")
    teacher_params = dict(teacher.named_parameters())
    student_params = dict(student.named_parameters())
    if teacher_params.keys() != student_params.keys():
        missing = sorted(student_params.keys() - teacher_params.keys())
        extra = sorted(teacher_params.keys() - student_params.keys())
        raise ValueError(f"teacher and student parameters differ: missing in teacher {missing}, extra {extra}")
    names = list(student_params)
    t = [teacher_params[n] for n in names]
    s = [student_params[n].detach() for n in names]
    # One fused kernel per step over all tensors, as DINOv2 does, instead of a Python loop.
    torch._foreach_lerp_(t, s, 1.0 - momentum)
    teacher_buffers = dict(teacher.named_buffers())
    for name, buffer in student.named_buffers():
        if name not in teacher_buffers:
            raise ValueError(f"student buffer {name!r} has no counterpart in the teacher")
        teacher_buffers[name].copy_(buffer)


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` in eval mode whose parameters never require gradients."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher.eval()
