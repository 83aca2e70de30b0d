"""Self-supervised objective as in DINOv2: DINO on CLS tokens, iBOT on masked patches, KoLeo.

    L_ssl = L_dino + L_ibot + w_koleo * L_koleo

Notation: s = student head logits, t = teacher head logits, T_s = 0.1 the student
temperature, T_t the teacher temperature (0.04 -> 0.07 warm-up), p_t the teacher targets:
either softmax centering, p_t = softmax((t - c) / T_t) with c an EMA of the batch mean of t,
or Sinkhorn-Knopp, which balances the batch's assignments over the prototypes.

- L_dino = mean over pairs (teacher global crop g, student crop v != g) of
  mean_b [ -sum_k p_t[g, b, k] * log softmax(s[v, b] / T_s)_k ].
- L_ibot = 1/N_img * sum_{masked tokens m} w_m * [ -sum_k p_t[m, k] * log softmax(s[m] / T_s)_k ]
  with w_m = 1 / (masked tokens of m's image); N_img counts every student global crop image.
- L_koleo = -1/n * sum_i log(min_{j != i} ||x_i - x_j|| + eps) over L2-normalised student CLS
  features (before the head) of one global crop, summed over the global crops.

Follows facebookresearch/dinov2's dino_clstoken_loss.py, ibot_patch_loss.py, koleo_loss.py and
ssl_meta_arch.py. All batch statistics are reduced over ranks when torch.distributed is initialised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.core.distributed import all_reduce_in_place
from vtp_kedro.vtp.data.transforms import mask_weights


def teacher_temperature(step: int, warmup_steps: int, start: float = 0.04, end: float = 0.07) -> float:
    """Linear warm-up of the teacher temperature from ``start`` at step 0 to ``end``, then constant."""
    if step < 0 or warmup_steps < 0:
        raise ValueError(f"step and warmup_steps must be >= 0, got step={step}, warmup_steps={warmup_steps}")
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


class SoftmaxCentering(nn.Module):
    """Teacher targets ``softmax((t - c) / T_t)`` with the center ``c`` an EMA of batch means.

    ``forward`` uses the current center, then updates it:
    ``c <- momentum * c + (1 - momentum) * mean_over_global_batch(t)``.
    DINO keeps one for the CLS head outputs and one for the patch outputs.
    """

    center: Tensor

    def __init__(self, out_dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        if out_dim < 1 or not 0 <= momentum <= 1:
            raise ValueError(f"need out_dim >= 1 and 0 <= momentum <= 1, got {out_dim}, {momentum}")
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def forward(self, teacher_logits: Tensor, temperature: float) -> Tensor:
        probs = F.softmax((teacher_logits.float() - self.center) / temperature, dim=-1)
        self.update_center(teacher_logits)
        return probs

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        # Sum and count reduced separately: ranks may hold different numbers of rows (masked patches).
        stats = torch.cat([teacher_logits.float().sum(0), teacher_logits.new_tensor([len(teacher_logits)]).float()])
        stats = all_reduce_in_place(stats)
        count = stats[-1]
        if count > 0:
            batch_center = (stats[:-1] / count).unsqueeze(0)
            self.center.mul_(self.momentum).add_(batch_center, alpha=1 - self.momentum)


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: Tensor, temperature: float, n_iterations: int = 3) -> Tensor:
    """DINOv2's Sinkhorn-Knopp teacher targets: each row sums to one, prototypes get equal mass.

    Alternately normalises Q = exp(t / T_t) (K prototypes x B samples of the global batch) so
    each prototype row sums to 1/K and each sample column to 1/B; returns B * Q^T (N, K).
    """
    logits = teacher_logits.float()
    # Subtracting the global max leaves Q unchanged after normalisation but keeps exp finite.
    shift = all_reduce_in_place(logits.max() if logits.numel() else logits.new_tensor(float("-inf")), dist.ReduceOp.MAX)
    q = torch.exp((logits - shift) / temperature).t()
    prototypes = q.shape[0]
    samples = all_reduce_in_place(logits.new_tensor(float(q.shape[1])))
    q /= all_reduce_in_place(q.sum())
    for _ in range(n_iterations):
        q /= all_reduce_in_place(q.sum(dim=1, keepdim=True))
        q /= prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= samples
    q *= samples
    return q.t()


def _cross_entropy(teacher_probs: Tensor, student_logits: Tensor, student_temperature: float) -> Tensor:
    """Per-row ``-sum_k p_t log softmax(s / T_s)``."""
    return -(teacher_probs * F.log_softmax(student_logits.float() / student_temperature, dim=-1)).sum(-1)


def dino_loss(student_logits: Sequence[Tensor], teacher_probs: Sequence[Tensor],
              student_temperature: float = 0.1) -> Tensor:
    """L_dino: mean over (teacher global crop, other student crop) pairs of the batch-mean CE.

    ``student_logits`` lists the crops' (B, K) head outputs with the global crops first, in the
    same order as ``teacher_probs`` (the teacher sees only global crops); the pair of a global
    crop with itself is skipped.
    """
    if len(teacher_probs) > len(student_logits):
        raise ValueError(f"{len(teacher_probs)} teacher crops but only {len(student_logits)} student crops: "
                         "the student crops must start with the teacher's global crops")
    total, pairs = 0.0, 0
    for v, student in enumerate(student_logits):
        log_probs = F.log_softmax(student.float() / student_temperature, dim=-1)
        for g, teacher in enumerate(teacher_probs):
            if v == g:
                continue
            total = total - (teacher * log_probs).sum(-1).mean()
            pairs += 1
    if pairs == 0:
        raise ValueError("DINO loss needs two global crops, or one global and at least one local crop")
    return total / pairs


def ibot_loss(student_patch_logits: Tensor, teacher_patch_probs: Tensor, masks_weight: Tensor,
              n_images: int, student_temperature: float = 0.1) -> Tensor:
    """L_ibot over the M masked tokens: per-token CE weighted by ``masks_weight`` / ``n_images``.

    ``masks_weight`` (M,) is 1 / (masked tokens of the token's image), see
    ``vtp.data.transforms.mask_weights``; ``n_images`` counts every student global crop image,
    masked or not (DINOv2's ``forward_masked``).
    """
    if not student_patch_logits.shape == teacher_patch_probs.shape or len(masks_weight) != len(student_patch_logits):
        raise ValueError(f"shape mismatch: student {tuple(student_patch_logits.shape)}, teacher "
                         f"{tuple(teacher_patch_probs.shape)}, masks_weight {tuple(masks_weight.shape)}")
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    per_token = _cross_entropy(teacher_patch_probs, student_patch_logits, student_temperature)
    return (per_token * masks_weight).sum() / n_images


def koleo_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """Kozachenko-Leonenko entropy estimator: ``-mean_i log(min_{j!=i} ||x_i - x_j|| + eps)``, x unit-norm."""
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"KoLeo needs (n >= 2, D) features, got {tuple(features.shape)}")
    x = F.normalize(features.float(), eps=eps, dim=-1)
    with torch.no_grad():
        # For unit vectors the nearest neighbour is the largest dot product.
        dots = x @ x.t()
        dots.fill_diagonal_(-2.0)
        nearest = dots.argmax(dim=1)
    distances = F.pairwise_distance(x, x[nearest], eps=eps)
    return -torch.log(distances + eps).mean()


def teacher_entropy(probs: Tensor) -> Tensor:
    """Mean entropy (nats) of the target rows, 0 for no rows: 0 = one-hot, log K = uniform (collapse)."""
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1)
    return entropy.sum() / max(len(entropy), 1)


def teacher_mean_entropy(probs: Tensor) -> Tensor:
    """Entropy (nats) of the batch-mean target ``mean_b p_t[b]``, 0 for no rows: towards 0 when every image
    picks the same prototype (collapse to one), log K when the batch spreads over all of them.

    Healthy DINO has ``teacher_entropy`` well below log K (confident rows) and this well above 0.
    The mean is this rank's; ranks are averaged when logged.
    """
    if len(probs) == 0:
        return probs.new_zeros(())
    return teacher_entropy(probs.mean(0, keepdim=True))


class SSLLossConfig(Config):
    """Settings of ``SSLLoss`` (DINOv2's defaults)."""

    out_dim: int = Field(gt=0, description="prototypes of the DINO head (65536 at paper scale)")
    student_temperature: float = Field(0.1, gt=0)
    teacher_temperature_start: float = Field(0.04, gt=0)
    teacher_temperature_end: float = Field(0.07, gt=0)
    teacher_temperature_warmup_steps: int = Field(ge=0, description="steps of the linear warm-up")
    centering: Literal["centering", "sinkhorn_knopp"] = "centering"
    center_momentum: float = Field(0.9, ge=0, le=1)
    sinkhorn_iterations: int = Field(3, gt=0)
    koleo_weight: float = Field(0.1, ge=0)

    @model_validator(mode="after")
    def _check_temperatures(self) -> SSLLossConfig:
        if self.teacher_temperature_start > self.teacher_temperature_end:
            raise ValueError(f"teacher_temperature_start ({self.teacher_temperature_start}) must not exceed "
                             f"teacher_temperature_end ({self.teacher_temperature_end})")
        return self


class SSLLoss(nn.Module):
    """``L_ssl = L_dino + L_ibot + w_koleo * L_koleo`` (module docstring) with the teacher's target state.

    Holds the CLS and patch centers (checkpointed buffers) and applies the teacher temperature
    schedule. Inputs of ``forward``:
      student_cls_logits: head outputs (B, K) per student crop, the G global crops first;
      teacher_cls_logits: head outputs (B, K) per teacher global crop, same order;
      student_patch_logits, teacher_patch_logits: (M, K) head outputs of the masked tokens
        of the stacked global crops (crop-major: all images of crop 0, then crop 1, ...);
      masks: (G * B, N) bool, the student's masks in that stacked order;
      student_global_cls_features: (B, D) CLS features before the head, per global crop;
      step: the optimisation step, for the teacher temperature.
    Returns ``(loss, metrics)``; the metrics are detached.
    """

    def __init__(self, config: SSLLossConfig) -> None:
        super().__init__()
        self.config = config
        centering = config.centering == "centering"
        self.cls_centering = SoftmaxCentering(config.out_dim, config.center_momentum) if centering else None
        self.patch_centering = SoftmaxCentering(config.out_dim, config.center_momentum) if centering else None

    def teacher_targets(self, logits: Tensor, temperature: float, centering: SoftmaxCentering | None) -> Tensor:
        if centering is None:
            return sinkhorn_knopp(logits, temperature, self.config.sinkhorn_iterations)
        return centering(logits, temperature)

    def forward(self, student_cls_logits: Sequence[Tensor], teacher_cls_logits: Sequence[Tensor],
                student_patch_logits: Tensor, teacher_patch_logits: Tensor, masks: Tensor,
                student_global_cls_features: Sequence[Tensor], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        n_global = len(teacher_cls_logits)
        if masks.dtype != torch.bool or masks.shape[0] != n_global * len(teacher_cls_logits[0]):
            raise ValueError(f"masks must be bool of shape ({n_global} * B, N), got {masks.dtype} {tuple(masks.shape)}")
        temperature = teacher_temperature(step, cfg.teacher_temperature_warmup_steps,
                                          cfg.teacher_temperature_start, cfg.teacher_temperature_end)
        teacher_cls = self.teacher_targets(torch.cat(list(teacher_cls_logits)), temperature, self.cls_centering)
        teacher_patch = self.teacher_targets(teacher_patch_logits, temperature, self.patch_centering)

        dino = dino_loss(student_cls_logits, teacher_cls.chunk(n_global), cfg.student_temperature)
        ibot = ibot_loss(student_patch_logits, teacher_patch, mask_weights(masks), len(masks), cfg.student_temperature)
        koleo = sum(koleo_loss(features) for features in student_global_cls_features)
        loss = dino + ibot + cfg.koleo_weight * koleo
        metrics = {
            "dino": dino.detach(), "ibot": ibot.detach(), "koleo": koleo.detach(),
            "teacher_temperature": torch.tensor(temperature),
            "teacher_cls_entropy": teacher_entropy(teacher_cls),
            "teacher_patch_entropy": teacher_entropy(teacher_patch),
            "teacher_cls_mean_entropy": teacher_mean_entropy(teacher_cls),
            "teacher_patch_mean_entropy": teacher_mean_entropy(teacher_patch),
        }
        return loss, metrics
