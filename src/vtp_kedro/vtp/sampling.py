"""Sampling a flow-matching model: integrate its velocity from noise (t = 0) to data (t = 1), with CFG.

The generator solves the probability-flow ODE of the linear path (``vtp.losses.flow``)

    dx/dt = v(x, t, y),   x(0) = noise ~ N(0, I),   sample = x(1)

with torchdiffeq's ``odeint``, as LightningDiT's ``Sampler.sample_ode`` does (ODE mode, ``reverse=False``):

- ``euler``: fixed steps on the time grid ``linspace(0, 1, num_steps)`` (num_steps points, num_steps - 1 steps
  and model evaluations; LightningDiT's ``num_sampling_steps: 250``), optionally warped by the timestep shift

      t' = s * t / (1 + (s - 1) * t),     s = 1: identity; 0 and 1 stay fixed,

  which with s < 1 packs the steps towards the noise end (LightningDiT's ``timestep_shift: 0.3``) and with
  s > 1 towards the data end (s = 3: t = 0.5 -> 0.75);
- ``dopri5``: adaptive Dormand-Prince steps with the ``atol`` / ``rtol`` error control; the grid plays no part.

Classifier-free guidance (Ho & Salimans 2022) with the null label ``null_class`` (the label a DiT trained
with label dropout sees for "no class"):

    v = v(x, t, null) + w * (v(x, t, y) - v(x, t, null))      for t >= cfg_interval_start,
    v = v(x, t, y)                                            otherwise

Both velocities come from one model call on the doubled batch. The guidance interval follows LightningDiT's
``forward_with_cfg``: with t = 0 at the noise end, no guidance over the first, noisiest part of the path
(``cfg_interval_start: 0.125`` in its configs), which lets the large scales of high-dimensional latents work.
``cfg_channels="first3"`` reproduces the other detail of that function: it guides only the first three output
channels and keeps the conditional velocity on the rest (DiT's "exact reproducibility" choice, kept by
LightningDiT's released numbers; "all" is standard CFG).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor
from torchdiffeq import odeint

from vtp_kedro.vtp.core.config import Config

ConditionalVelocityModel = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``model_fn(x, t, y) -> v``: x (N, C, ...), t (N,) float, y (N,) long labels -> a velocity shaped like x."""

CFGChannels = Literal["all", "first3"]


class SamplerConfig(Config):
    """Settings of ``sample`` (module docstring); the defaults: 250-point Euler grid, no shift, no guidance."""

    num_steps: int = Field(250, ge=2, description="points of the time grid (Euler takes num_steps - 1 steps)")
    solver: Literal["euler", "dopri5"] = "euler"
    atol: float = Field(1e-6, gt=0, description="absolute tolerance of dopri5")
    rtol: float = Field(1e-3, gt=0, description="relative tolerance of dopri5")
    shift: float = Field(1.0, gt=0, description="timestep shift s of the Euler grid; 1: uniform grid")
    cfg_scale: float = Field(1.0, ge=0, description="guidance scale w; 1: conditional only, 0: unconditional")
    cfg_interval_start: float = Field(0.0, ge=0, le=1, description="guidance only for t >= this (noise at t = 0)")
    cfg_channels: CFGChannels = Field("all", description="'first3': guide only output channels 0-2 (LightningDiT)")
    seed: int = Field(0, ge=0, description="seed of the initial noise (initial_noise)")


class SampleSetConfig(SamplerConfig):
    """A set of class-conditional samples: how many, which labels, drawn in which batches."""

    num_samples: int = Field(100, gt=0, description="50k at paper scale (FID-50k)")
    batch_size: int = Field(100, gt=0, description="samples per model batch (per rank)")
    labels: Literal["balanced", "random"] = Field("balanced", description="equal per class, or uniform at random")

    def sample_labels(self, num_classes: int) -> Tensor:
        """The (num_samples,) labels, the same on every rank: balanced, or random from ``seed``."""
        if self.labels == "balanced":
            return balanced_labels(self.num_samples, num_classes)
        return random_labels(self.num_samples, num_classes, torch.Generator().manual_seed(self.seed))


def time_grid(num_steps: int, shift: float = 1.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """``linspace(0, 1, num_steps)`` warped by ``t' = s t / (1 + (s - 1) t)``; computed in float64."""
    if num_steps < 2 or shift <= 0:
        raise ValueError(f"need num_steps >= 2 and shift > 0, got num_steps={num_steps}, shift={shift}")
    t = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    # The same t' written as s t / (s t + 1 - t): it gives exactly 1 at t = 1 (s = 0.3 in the textbook form
    # gives 0.9999999999999998), and odeint requires the grid to end exactly where it integrates to.
    return (shift * t / (shift * t + (1 - t))).to(dtype)


def guided_velocity(model_fn: ConditionalVelocityModel, x: Tensor, t: Tensor | float, y: Tensor, null_class: int,
                    scale: float, interval_start: float = 0.0, channels: CFGChannels = "all") -> Tensor:
    """The CFG velocity at the scalar time ``t`` (module docstring) for the batch ``x`` with labels ``y``.

    One model call either way: the conditional one when guidance is off (``scale == 1`` or
    ``t < interval_start``), so its output is returned untouched; otherwise one call on ``cat([x, x])``
    with labels ``cat([y, null])``.
    """
    if y.shape != (len(x),):
        raise ValueError(f"labels must have shape ({len(x)},), got {tuple(y.shape)}")
    if channels not in ("all", "first3"):
        raise ValueError(f"cfg channels must be 'all' or 'first3', got {channels!r}")
    time = float(t)
    t_batch = torch.full((len(x),), time, dtype=torch.float32, device=x.device)
    y = y.to(device=x.device, dtype=torch.long)
    if scale == 1 or time < interval_start:
        return model_fn(x, t_batch, y)
    null = torch.full_like(y, null_class)
    v_cond, v_uncond = model_fn(torch.cat([x, x]), torch.cat([t_batch, t_batch]), torch.cat([y, null])).chunk(2)
    guided = v_uncond + scale * (v_cond - v_uncond)
    if channels == "first3":
        return torch.cat([guided[:, :3], v_cond[:, 3:]], dim=1)
    return guided


@torch.no_grad()
def sample(model_fn: ConditionalVelocityModel, noise: Tensor, labels: Tensor, null_class: int,
           config: SamplerConfig) -> Tensor:
    """The state at t = 1 of ``dx/dt = guided_velocity(...)`` started from ``noise`` (N, C, ...) at t = 0.

    Deterministic given ``noise`` (see ``initial_noise``) and a deterministic model. Half-precision noise is
    integrated in float32: a bf16 state would round away the small Euler increments near the end of the grid.
    """
    if noise.ndim < 2 or not noise.is_floating_point():
        raise ValueError(f"noise must be a floating (N, C, ...) tensor, got {noise.dtype} {tuple(noise.shape)}")
    labels = labels.to(noise.device)
    if labels.shape != (len(noise),):
        raise ValueError(f"labels must have shape ({len(noise)},), got {tuple(labels.shape)}")
    x0 = noise.to(torch.promote_types(noise.dtype, torch.float32))

    def velocity(t: Tensor, x: Tensor) -> Tensor:
        return guided_velocity(model_fn, x, t, labels, null_class, config.cfg_scale, config.cfg_interval_start,
                               config.cfg_channels)

    ends = torch.tensor([0.0, 1.0], dtype=x0.dtype, device=x0.device)
    if config.solver == "euler":
        grid = time_grid(config.num_steps, config.shift, torch.float64).to(device=x0.device, dtype=x0.dtype)
        # Asking odeint only for the end points while it steps on our grid keeps 2 states in memory, not
        # num_steps (250 copies of a latent batch); the Euler steps are exactly the grid's.
        states = odeint(velocity, x0, ends, method="euler", options={"grid_constructor": lambda f, y0, t: grid})
    else:
        states = odeint(velocity, x0, ends, method="dopri5", atol=config.atol, rtol=config.rtol)
    return states[-1]


def initial_noise(n: int, shape: Sequence[int], seed: int, device: torch.device | str | None = None,
                  start: int = 0) -> Tensor:
    """Float32 draws of N(0, I) of ``shape`` (e.g. (C, H, W)) for the samples ``start .. start + n - 1``.

    Sample ``i`` comes from its own CPU generator seeded by ``SeedSequence((seed, i))``: any slice
    of the samples gets the rows the whole set would, so the noise does not depend on the batch
    size or on how many ranks share the work, and it is the same on every device and machine.
    """
    rows = []
    for index in range(start, start + n):
        stream_seed = int(np.random.SeedSequence((seed, index)).generate_state(1, dtype=np.uint64)[0])
        rows.append(torch.randn(tuple(shape), generator=torch.Generator().manual_seed(stream_seed)))
    return (torch.stack(rows) if rows else torch.empty((0, *shape))).to(device)


def balanced_labels(num_samples: int, num_classes: int) -> Tensor:
    """``0, 1, ..., K-1, 0, 1, ...`` (N,) long: every class equally often, and nearly so in any prefix."""
    if num_samples < 0 or num_classes < 1:
        raise ValueError(f"need num_samples >= 0 and num_classes >= 1, got {num_samples}, {num_classes}")
    return torch.arange(num_samples) % num_classes


def random_labels(num_samples: int, num_classes: int, generator: torch.Generator) -> Tensor:
    """(N,) long labels uniform over ``0..K-1``, drawn from ``generator`` on its device."""
    if num_samples < 0 or num_classes < 1:
        raise ValueError(f"need num_samples >= 0 and num_classes >= 1, got {num_samples}, {num_classes}")
    return torch.randint(0, num_classes, (num_samples,), generator=generator, device=generator.device)
