"""Flow-matching objective of the generation stage, as LightningDiT trains its DiT (the VTP authors' setting).

Linear path between noise x0 ~ N(0, I) at t = 0 and data x1 at t = 1 (SiT's ``Linear`` path, velocity
prediction):

    x_t = t * x1 + (1 - t) * x0,        u_t = dx_t/dt = x1 - x0      (the regression target, constant in t)

The model v(x_t, t) regresses u_t with LightningDiT's ``use_cosine_loss`` objective, C the channel dimension
(dim 1) and the means over the batch and every remaining position:

    L = mean (v - u)^2 + w_cos * mean (1 - cos_C(v, u))

The cosine term fixes the direction of the velocity independently of its norm (w_cos = 1 in LightningDiT).

Timesteps are logit-normal, t = sigmoid(n), n ~ N(mu, sigma^2) (SD3's weighting; LightningDiT's
``use_lognorm``), which puts the training effort on intermediate t; mu < 0 shifts it towards the noise end.
VTP uses (mu, sigma) = (-0.5, 1.25) for its S and B DiTs and (-0.75, 1.0) for L. ``uniform`` draws t ~ U(0, 1).

Every random draw of a step (t first, then x0) comes from one ``torch.Generator``, so a step is reproducible
from the generator's state whatever else consumed the global RNG.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from vtp_kedro.vtp.core.config import Config

VelocityModel = Callable[[Tensor, Tensor], Tensor]
"""``model_fn(x_t, t) -> v``: x_t (N, C, ...), t (N,) -> a velocity shaped like x_t."""


class FlowConfig(Config):
    """Settings of the flow-matching objective (module docstring); the defaults are VTP's S/B setting."""

    timesteps: Literal["logit_normal", "uniform"] = "logit_normal"
    lognorm_mu: float = Field(-0.5, description="mean of logit(t) for logit_normal timesteps (-0.75 for VTP-L)")
    lognorm_sigma: float = Field(1.25, gt=0, description="std of logit(t) for logit_normal timesteps (1.0 for VTP-L)")
    cosine_weight: float = Field(1.0, ge=0, description="weight of the 1 - cosine term; 0: plain MSE")


def _per_sample(t: Tensor, like: Tensor) -> Tensor:
    """(N,) times -> (N, 1, ..., 1) broadcastable against ``like``, in its dtype and on its device."""
    if t.ndim != 1 or len(t) != len(like):
        raise ValueError(f"t must have shape ({len(like)},) for a batch of {len(like)}, got {tuple(t.shape)}")
    return t.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.ndim - 1)))


def sample_timesteps(n: int, config: FlowConfig, generator: torch.Generator,
                     device: torch.device | str | None = None) -> Tensor:
    """``n`` float32 timesteps in [0, 1] drawn from ``generator`` (on its own device), then moved to ``device``."""
    if n < 1:
        raise ValueError(f"need n >= 1 timesteps, got {n}")
    if config.timesteps == "uniform":
        t = torch.rand(n, generator=generator, device=generator.device)
    else:
        normal = torch.randn(n, generator=generator, device=generator.device)
        t = torch.sigmoid(config.lognorm_mu + config.lognorm_sigma * normal)
    return t.to(device) if device is not None else t


def interpolate(x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """``x_t = t * x1 + (1 - t) * x0`` with one t per sample: x0 at t = 0, x1 at t = 1."""
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    t = _per_sample(t, x1)
    return t * x1 + (1 - t) * x0


def velocity_target(x0: Tensor, x1: Tensor) -> Tensor:
    """``u = x1 - x0``, the velocity of the linear path (the same at every t)."""
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    return x1 - x0


def flow_loss(pred: Tensor, target: Tensor, cosine_weight: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """``(mse + cosine_weight * cosine, {"mse", "cosine"})``, the terms detached (module docstring).

    ``cosine`` is ``mean(1 - cos)`` with the cosine taken over dim 1 (channels): 0 when ``pred`` points like
    ``target`` at every position, whatever its norm. Computed in float32, so a bf16 model output is fine.
    """
    if pred.shape != target.shape or pred.ndim < 2:
        raise ValueError(f"pred and target must have the same (N, C, ...) shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if cosine_weight < 0:
        raise ValueError(f"cosine_weight must be >= 0, got {cosine_weight}")
    pred, target = pred.float(), target.float()
    mse = (pred - target).square().mean()
    cosine = (1 - F.cosine_similarity(pred, target, dim=1)).mean()
    loss = mse + cosine_weight * cosine
    return loss, {"mse": mse.detach(), "cosine": cosine.detach()}


def flow_matching_step(model_fn: VelocityModel, x1: Tensor, config: FlowConfig,
                       generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    """One training loss on the data batch ``x1`` (N, C, ...): draws t, then x0, from ``generator``,
    builds x_t and returns ``flow_loss(model_fn(x_t, t), x1 - x0)``.

    ``t`` reaches the model as float32 (N,) on ``x1``'s device; x0 and x_t are in ``x1``'s dtype.
    Class labels, label dropout and the like belong in ``model_fn``.
    """
    t = sample_timesteps(len(x1), config, generator, x1.device)
    x0 = torch.randn(x1.shape, generator=generator, device=generator.device).to(device=x1.device, dtype=x1.dtype)
    x_t = interpolate(x0, x1, t)
    pred = model_fn(x_t, t)
    return flow_loss(pred, velocity_target(x0, x1), config.cosine_weight)
