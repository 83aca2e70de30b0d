"""DiT training as a ``TrainTask``: LightningDiT learns the velocity of the linear flow on a tokenizer's latents.

One step (LightningDiT's recipe, ``losses/flow.py``)::

    x1 = (z - mean) / std * latent_multiplier        z: latents or latents_flip (the stream picks)
    y  = null_class with probability class_dropout   (classifier-free guidance training)
    t ~ logit-normal, x0 ~ N(0, I), x_t = t x1 + (1 - t) x0
    L  = MSE(v(x_t, t, y), x1 - x0) + (1 - cos(v, x1 - x0))
    after the optimizer step: ema = decay * ema + (1 - decay) * dit

The per-channel statistics come from the latent folder and are kept in the checkpoint
(buffers), so sampling un-normalises with exactly what training used. The EMA copy is a
frozen module of the task; sampling uses it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.core.distributed import rank, world_size
from vtp_kedro.vtp.data.latents import LatentDataConfig, LatentDataStream, load_latent_stats
from vtp_kedro.vtp.engine.trainer import TrainTask
from vtp_kedro.vtp.losses.flow import FlowConfig, flow_matching_step
from vtp_kedro.vtp.models.dit import DiTConfig, LightningDiT, dit_forward_flops
from vtp_kedro.vtp.models.ema import ema_update, make_teacher
from vtp_kedro.vtp.sampling import SamplerConfig, sample
from vtp_kedro.vtp.stages import Stage

log = logging.getLogger(__name__)

# Why the first logged grad_norm is ~1e6 (measured: a pre-clipping norm of 6.7e7 at step 0 for a
# tiny DiT with the cosine term, 0.48 without it, about 5-7 from step 1 on). adaLN-Zero starts the
# output layer at zero, so the model's velocity is exactly 0 at step 0, where the cosine term
# 1 - cos(v, u) = 1 - v.u / max(|v| |u|, eps) has a gradient of about u / (eps |u|), eps = 1e-8.
# The trainer clips that step to grad_clip, so training is unharmed (LightningDiT's loss is the same),
# but grad_norm is logged before clipping and averaged over log_every steps: that one step gives the
# first logged value (6.7e7 / 50 ~ 1.3e6 with log_every 50). From the first update on, v != 0.
INITIAL_GRAD_NORM_NOTE = (
    "step 0: the DiT's output starts at zero (adaLN-Zero), where the cosine loss's gradient is ~1/eps: this "
    "step's gradient norm is huge (~1e7-1e8) and is clipped to grad_clip; the first logged grad_norm, a mean of "
    "the pre-clipping norms over log_every steps, carries it (about 1e6), later ones do not")

class DiTTrainingConfig(Config):
    model: DiTConfig
    flow: FlowConfig = FlowConfig()
    data: LatentDataConfig
    class_dropout: float = Field(0.1, ge=0, lt=1, description="share of labels replaced by the null class")
    latent_multiplier: float = Field(1.0, gt=0, description="scale after per-channel normalisation")
    ema_decay: float = Field(0.9999, ge=0, le=1)
    seed: int = Field(0, ge=0, description="seed of the timestep, noise and label-dropout draws")


class FlowDiT(nn.Module):
    """The DiT, its EMA copy and the latent statistics: everything sampling needs, in one state dict."""

    def __init__(self, config: DiTTrainingConfig, mean: Tensor, std: Tensor, rank: int = 0) -> None:
        super().__init__()
        self.config = config
        self.dit = LightningDiT(config.model)
        self.ema = make_teacher(self.dit)
        channels = config.model.in_channels
        if mean.shape != (1, channels, 1, 1) or std.shape != (1, channels, 1, 1):
            raise ValueError(f"latent statistics must have shape (1, {channels}, 1, 1); got {tuple(mean.shape)}")
        self.register_buffer("latent_mean", mean.float().clone())
        self.register_buffer("latent_std", std.float().clone())
        self.generator = torch.Generator().manual_seed(config.seed + 1_000_003 * rank)

    def normalise(self, latents: Tensor) -> Tensor:
        return (latents - self.latent_mean) / self.latent_std * self.config.latent_multiplier

    def denormalise(self, x: Tensor) -> Tensor:
        return x / self.config.latent_multiplier * self.latent_std + self.latent_mean

    def training_step(self, batch: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        x1 = self.normalise(batch["latents"])
        labels = batch["labels"]
        drop = torch.rand(len(labels), generator=self.generator) < self.config.class_dropout
        labels = torch.where(drop.to(labels.device), torch.full_like(labels, self.dit.null_class), labels)
        return flow_matching_step(lambda x, t: self.dit(x, t, labels), x1, self.config.flow, self.generator)

    @torch.no_grad()
    def sample_latents(self, noise: Tensor, labels: Tensor, sampler: SamplerConfig, use_ema: bool = True) -> Tensor:
        """Integrate the flow from ``noise`` to latents in the tokenizer's (un-normalised) space."""
        model = self.ema if use_ema else self.dit
        return self.denormalise(sample(model, noise, labels, self.dit.null_class, sampler))

    # The generator's state travels in state_dict() so that a resumed run draws the same noise.
    def get_extra_state(self) -> Tensor:
        return self.generator.get_state()

    def set_extra_state(self, state: Tensor) -> None:
        self.generator.set_state(state)


class DiTTask(TrainTask):
    def __init__(self, model: FlowDiT) -> None:
        self.model = model

    def training_step(self, batch: Mapping[str, Any], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        if step == 0 and rank() == 0 and self.model.config.flow.cosine_weight > 0:
            log.info(INITIAL_GRAD_NORM_NOTE)
        return self.model.training_step(batch, step)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        ema_update(self.model.ema, self.model.dit, self.model.config.ema_decay)

    def frozen_modules(self):
        return [self.model.ema]

    def flops_per_step(self, batch: Mapping[str, Any]) -> float:
        return 3.0 * dit_forward_flops(self.model.config.model) * len(batch["labels"])  # backward = 2x forward


def build_task(config: DiTTrainingConfig) -> tuple[DiTTask, LatentDataStream]:
    """This rank's model (with the latent folder's statistics) and latent stream."""
    stats = load_latent_stats(config.data.latents)
    data = LatentDataStream(config.data, rank=rank(), world_size=world_size())
    return DiTTask(FlowDiT(config, stats["mean"], stats["std"], rank=rank())), data


STAGE = Stage("dit", DiTTrainingConfig, build_task)
