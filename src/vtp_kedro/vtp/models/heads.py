"""Heads on the tokenizer's semantic features: CLIP image projection, logit scale, DINO/iBOT head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from vtp_kedro.vtp.models.vit import init_vit_weights


class CLIPProjection(nn.Module):
    """CLS feature (B, in_dim) -> image embedding (B, embed_dim): one bias-free linear map, as open_clip's ``proj``."""

    def __init__(self, in_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=in_dim**-0.5)

    def forward(self, cls_features: Tensor) -> Tensor:
        return self.proj(cls_features)


class LogitScale(nn.Module):
    """CLIP's learnable temperature: a log-scale parameter from log(1/0.07); the value used is exp() clamped at 100.

    Clamping the log before exp, as open_clip clamps the parameter to [0, log 100], stops its
    gradient once the scale reaches 100.
    """

    def __init__(self, init: float = 1 / 0.07, max_scale: float = 100.0) -> None:
        super().__init__()
        if not 0 < init <= max_scale:
            raise ValueError(f"logit scale init ({init}) must be in (0, max_scale={max_scale}]")
        self.max_log = math.log(max_scale)
        # Shape (1,), not a scalar: FSDP's fully_shard cannot shard 0-d parameters.
        self.log_scale = nn.Parameter(torch.full((1,), math.log(init)))

    def forward(self) -> Tensor:
        """The scale, a 0-d tensor."""
        return self.log_scale.clamp(max=self.max_log).exp().squeeze(0)


class DINOHead(nn.Module):
    """DINO/iBOT projection head, shared by the two losses (DINOv2's ``DINOHead``).

        h = MLP(x): Linear(in, hidden) GELU Linear(hidden, hidden) GELU Linear(hidden, bottleneck)
        logits = W_hat @ (h / ||h||_2),   W_hat row k = g_k v_k / ||v_k||   (weight norm, g_k from 1)

    so every logit is a gain times the cosine similarity between the feature and a prototype; the
    gains train, as in dinov2's head and the VTP authors'. ``freeze_last_layer`` (DINOv2 freezes
    it for the first epoch) keeps the prototypes and gains out of the gradient while the rest of
    the head and the backbone learn. Applies to any leading shape: (B, C) or (M, C).
    """

    def __init__(self, in_dim: int, prototypes: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("prototypes", prototypes), ("hidden_dim", hidden_dim), ("bottleneck_dim", bottleneck_dim)):
            if value <= 0:
                raise ValueError(f"DINOHead {name} must be positive; got {value}")
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        self.mlp.apply(init_vit_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, prototypes, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)

    def forward(self, x: Tensor, freeze_last_layer: bool = False) -> Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, eps=1e-6 if x.dtype == torch.float16 else 1e-12)
        if not freeze_last_layer:
            return self.last_layer(x)
        # Zero gradients rather than none: DDP expects a gradient for every parameter a step used.
        weight = self.last_layer.weight
        return F.linear(x, weight.detach() + 0 * weight)
