"""The tokenizer's training objectives: reconstruction (L1 + LPIPS), SSL (DINO, iBOT, KoLeo), CLIP."""

from vtp_kedro.vtp.losses.contrastive import ContrastiveLoss
from vtp_kedro.vtp.losses.reconstruction import ReconstructionLoss, ReconstructionLossConfig
from vtp_kedro.vtp.losses.ssl import (
    SoftmaxCentering,
    SSLLoss,
    SSLLossConfig,
    dino_loss,
    ibot_loss,
    koleo_loss,
    sinkhorn_knopp,
    teacher_entropy,
    teacher_temperature,
)

__all__ = [
    "ContrastiveLoss",
    "ReconstructionLoss",
    "ReconstructionLossConfig",
    "SSLLoss",
    "SSLLossConfig",
    "SoftmaxCentering",
    "dino_loss",
    "ibot_loss",
    "koleo_loss",
    "sinkhorn_knopp",
    "teacher_entropy",
    "teacher_temperature",
]
