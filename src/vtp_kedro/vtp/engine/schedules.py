"""Learning-rate schedules: pure functions of the step, so a resumed run recomputes the same values.

``step`` counts optimiser iterations from 0; the value returned is the learning rate used *at*
that step. Linear warm-up to ``base`` over ``warmup_steps`` (the first step already moves, as in
nanoGPT: a step at lr 0 is a wasted step), then either a cosine decay that reaches ``final`` on
the last step (MAE, DINOv2, CLIP) or a constant ``base`` (LightningDiT trains at a flat 2e-4).
"""

from __future__ import annotations

import math
from typing import Literal

ScheduleKind = Literal["cosine", "constant"]


def _check(step: int, total_steps: int, warmup_steps: int) -> None:
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive; got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}); got {warmup_steps}")
    if step < 0:
        raise ValueError(f"step must be non-negative; got {step}")


def linear_warmup(step: int, base: float, warmup_steps: int) -> float:
    """``base * (step + 1) / warmup_steps`` during warm-up, ``base`` after it."""
    if step >= warmup_steps:
        return base
    return base * (step + 1) / warmup_steps


def warmup_cosine(step: int, total_steps: int, base: float, final: float, warmup_steps: int = 0) -> float:
    """Linear warm-up, then ``final + (base - final) * (1 + cos(pi * p)) / 2``.

    ``p = (step - warmup_steps) / (total_steps - 1 - warmup_steps)`` runs from 0 on the first
    step after warm-up to 1 on the last step (``total_steps - 1``), which therefore uses
    ``final``; steps past the end stay at ``final``.
    """
    _check(step, total_steps, warmup_steps)
    if step < warmup_steps:
        return linear_warmup(step, base, warmup_steps)
    decay_steps = total_steps - 1 - warmup_steps
    progress = 1.0 if decay_steps == 0 else min(1.0, (step - warmup_steps) / decay_steps)
    return final + (base - final) * (1.0 + math.cos(math.pi * progress)) / 2.0


def warmup_constant(step: int, total_steps: int, base: float, warmup_steps: int = 0) -> float:
    """Linear warm-up, then ``base`` until the end."""
    _check(step, total_steps, warmup_steps)
    return linear_warmup(step, base, warmup_steps)


def learning_rate(kind: ScheduleKind, step: int, total_steps: int, base: float, final: float,
                  warmup_steps: int) -> float:
    """The named schedule's value at ``step`` (``final`` is unused by ``constant``)."""
    if kind == "cosine":
        return warmup_cosine(step, total_steps, base, final, warmup_steps)
    if kind == "constant":
        return warmup_constant(step, total_steps, base, warmup_steps)
    raise ValueError(f"unknown schedule {kind!r}; expected 'cosine' or 'constant'")
