"""AdamW with decoupled weight decay applied to weight matrices only.

Norm scales, biases and other 1-D parameters, and learned tokens and embeddings
(``cls_token``, ``mask_token``, ``reg_token``/``register_tokens``, ``pos_embed``) and CLIP's
``logit_scale``, are not decayed: decaying them pulls gains toward 0 and tokens toward the
origin, which only hurts (timm's ``param_groups_weight_decay``, DINOv2, open_clip do the same).

The paper gives no optimiser settings. The defaults follow the recipes it builds on: AdamW with
beta2 0.95 and weight decay 0.05 for ViT pre-training (MAE, DINOv2's 0.04-0.2, CLIP's 0.98/0.2),
a linear warm-up then a cosine decay, gradient clipping at norm 1; LightningDiT trains with
betas (0.9, 0.95), lr 2e-4, no weight decay and a constant schedule.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from pydantic import Field, model_validator
from torch import nn

from vtp_kedro.vtp.config import Config
from vtp_kedro.vtp.train.schedules import ScheduleKind

NO_DECAY_NAME_PARTS = ("cls_token", "mask_token", "reg_token", "register_tokens", "pos_embed", "logit_scale")


class OptimizerConfig(Config):
    lr: float = Field(2e-4, gt=0, description="peak learning rate, reached at the end of warm-up")
    min_lr: float = Field(1e-6, ge=0, description="learning rate of the last step (cosine schedule)")
    schedule: ScheduleKind = "cosine"
    warmup_steps: int = Field(0, ge=0, description="must be below the run's total steps")
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    grad_clip: float | None = Field(1.0, gt=0, description="max global gradient norm; None: no clipping")

    @model_validator(mode="after")
    def _check(self) -> OptimizerConfig:
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ValueError(f"betas must lie in [0, 1); got {self.betas}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        return self


def decays(name: str, param: nn.Parameter) -> bool:
    """Whether weight decay applies to the parameter called ``name``."""
    if param.ndim < 2 or name.endswith(".bias"):
        return False
    return not any(part in name for part in NO_DECAY_NAME_PARTS)


def param_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups, decayed and not, of (name, parameter) pairs; empty groups are dropped.

    Passing names makes the optimiser's state dict carry ``param_names`` (PyTorch >= 2.6), so a
    checkpoint says which moment belongs to which weight.
    """
    decay, no_decay, seen = [], [], set()
    for name, param in named_parameters:
        if not param.requires_grad:
            raise ValueError(f"parameter {name!r} does not require grad: leave it out of the trainable ones")
        if id(param) in seen:
            continue  # a tied weight is one parameter, optimised once
        seen.add(id(param))
        (decay if decays(name, param) else no_decay).append((name, param))
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [group for group in groups if group["params"]]
    if not groups:
        raise ValueError("the task has no trainable parameters")
    return groups


def build_adamw(named_parameters: Iterable[tuple[str, nn.Parameter]], config: OptimizerConfig) -> torch.optim.AdamW:
    """AdamW over the two groups; the learning rate is set by the trainer at every step."""
    groups = param_groups(named_parameters, config.weight_decay)
    on_cuda = all(param.is_cuda for group in groups for _, param in group["params"])
    # The fused kernel is the fastest on GPU; on CPU the default foreach path is used.
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps,
                             weight_decay=config.weight_decay, fused=True if on_cuda else None)
