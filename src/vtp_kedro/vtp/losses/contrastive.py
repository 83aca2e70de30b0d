"""Image-text contrastive objective (CLIP): symmetric InfoNCE over L2-normalised embeddings.

With u_i, v_j the unit image and text embeddings of the global batch and s the logit scale,

    L_clip = 1/2 * [ CE_rows(s * U V^T, I) + CE_rows(s * V U^T, I) ]
           = -1/(2B) * sum_i [ log softmax_j(s u_i.v_j)_i + log softmax_j(s v_i.u_j)_i ]

It is open_clip's ``ClipLoss``: across ranks it all-gathers the features with gradients
(``torch.distributed.nn.all_gather``) so the negatives span the global batch, and with
``local_loss`` each rank scores only its own rows against all columns (the mean over ranks,
as DDP averages gradients, is the global loss). With one process nothing is gathered.
"""

from __future__ import annotations

import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import Tensor, nn

from vtp_kedro.vtp.core import distributed


class ContrastiveLoss(nn.Module):
    """``L_clip`` (see module docstring) on raw image/text features and the logit scale.

    ``rank``/``world_size`` default to the initialised process group (0/1 without one).
    ``forward(image_features (B, D), text_features (B, D), logit_scale)`` takes the logit
    scale as the multiplier itself (``exp`` of the learnable log-scale), clamps it at
    ``max_logit_scale`` as CLIP does, and returns ``(loss, {"logit_scale": detached})``.
    """

    def __init__(self, rank: int | None = None, world_size: int | None = None, *,
                 local_loss: bool = True, max_logit_scale: float = 100.0) -> None:
        super().__init__()
        rank = distributed.rank() if rank is None else rank
        world_size = distributed.world_size() if world_size is None else world_size
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank {rank} for world_size {world_size}")
        if max_logit_scale <= 0:
            raise ValueError(f"max_logit_scale must be > 0, got {max_logit_scale}")
        self.max_logit_scale = max_logit_scale
        self.clip_loss = ClipLoss(local_loss=local_loss, gather_with_grad=True, rank=rank, world_size=world_size)

    def forward(self, image_features: Tensor, text_features: Tensor,
                logit_scale: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if image_features.ndim != 2 or image_features.shape != text_features.shape:
            raise ValueError(f"expected image and text features of one (B, D) shape, got "
                             f"{tuple(image_features.shape)} and {tuple(text_features.shape)}")
        scale = logit_scale.clamp(max=self.max_logit_scale)
        loss = self.clip_loss(F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1), scale)
        return loss, {"logit_scale": scale.detach()}
