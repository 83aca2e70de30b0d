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

from collections.abc import Iterable, Mapping

import torch
from pydantic import Field, model_validator
from torch import nn

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.engine.schedules import ScheduleKind

NO_DECAY_NAME_PARTS = ("cls_token", "mask_token", "reg_token", "register_tokens", "pos_embed", "logit_scale")


class OptimizerConfig(Config):
    lr: float = Field(2e-4, gt=0, description="peak learning rate, reached at the end of warm-up")
    min_lr: float = Field(1e-6, ge=0, description="learning rate of the last step (cosine schedule)")
    schedule: ScheduleKind = "cosine"
    warmup_steps: int = Field(0, ge=0, description="must be below the run's total steps")
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    weight_decay_end: float | None = Field(None, ge=0, description="cosine from weight_decay to this over the run "
                                           "(DINOv2: 0.04 -> 0.2, 0.4 for ViT-g); None: constant")
    grad_clip: float | None = Field(1.0, gt=0, description="max global gradient norm; None: no clipping")
    layer_decay: float | None = Field(None, gt=0, le=1, description="layer-wise lr decay of a ViT trunk "
                                      "(DINOv2: 0.9); None: off")
    patch_embed_lr_mult: float = Field(1.0, gt=0, description="extra lr factor of the patch embedding (DINOv2: 0.2)")

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


def param_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float,
                 lr_scales: Mapping[str, float] | None = None) -> list[dict]:
    """AdamW groups of (name, parameter) pairs: decayed or not, times each learning-rate scale
    (``lr_scales[name]``, default 1, kept as the group's ``lr_scale``); empty groups are dropped.

    Passing names makes the optimiser's state dict carry ``param_names`` (PyTorch >= 2.6), so a
    checkpoint says which moment belongs to which weight.
    """
    lr_scales = lr_scales or {}
    groups: dict[tuple[bool, float], list] = {}
    seen: set[int] = set()
    for name, param in named_parameters:
        if not param.requires_grad:
            raise ValueError(f"parameter {name!r} does not require grad: leave it out of the trainable ones")
        if id(param) in seen:
            continue  # a tied weight is one parameter, optimised once
        seen.add(id(param))
        groups.setdefault((decays(name, param), lr_scales.get(name, 1.0)), []).append((name, param))
    if not groups:
        raise ValueError("the task has no trainable parameters")
    return [{"params": params, "weight_decay": weight_decay if decayed else 0.0, "decay": decayed, "lr_scale": scale}
            for (decayed, scale), params in sorted(groups.items(), key=lambda item: (not item[0][0], -item[0][1]))]


def vit_lr_scales(names: Iterable[str], prefix: str, depth: int, layer_decay: float | None,
                  patch_embed_lr_mult: float = 1.0) -> dict[str, float]:
    """DINOv2's layer-wise learning-rate decay for the ViT whose parameters start with ``prefix``.

        layer(name) = 0 for the patch embedding and the tokens, i + 1 for ``blocks.i``, depth + 1 otherwise
        scale(name) = layer_decay ** (depth + 1 - layer(name))  (x patch_embed_lr_mult for the patch embedding)

    Parameters outside the ViT (heads, decoder, text tower) keep scale 1, as in dinov2's
    ``get_params_groups_with_decay``.
    """
    scales = {}
    for name in names:
        if not name.startswith(prefix):
            continue
        local = name.removeprefix(prefix)
        if local.startswith(("patch_embed", "cls_token", "mask_token", "pos_embed", "reg_token", "register_tokens")):
            layer = 0
        elif local.startswith("blocks."):
            layer = int(local.split(".")[1]) + 1
        else:
            layer = depth + 1
        scale = (layer_decay if layer_decay is not None else 1.0) ** (depth + 1 - layer)
        if local.startswith("patch_embed"):
            scale *= patch_embed_lr_mult
        scales[name] = scale
    return scales


def build_adamw(named_parameters: Iterable[tuple[str, nn.Parameter]], config: OptimizerConfig,
                lr_scales: Mapping[str, float] | None = None) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; the trainer sets each group's learning rate (x its ``lr_scale``) every step."""
    if lr_scales is None and (config.layer_decay is not None or config.patch_embed_lr_mult != 1.0):
        raise ValueError("optimizer.layer_decay / patch_embed_lr_mult are set, but this task has no ViT trunk "
                         "to apply them to")
    groups = param_groups(named_parameters, config.weight_decay, lr_scales)
    on_cuda = all(param.is_cuda for group in groups for _, param in group["params"])
    # The fused kernel is the fastest on GPU; on CPU the default foreach path is used.
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps,
                             weight_decay=config.weight_decay, fused=True if on_cuda else None)
