"""Reconstruction objective of the tokenizer: pixel L1 plus the LPIPS perceptual distance.

    L_rec = mean |x' - x|  +  w_p * LPIPS_vgg(x', x)

Both terms are computed on images mapped to [-1, 1], the range LPIPS was calibrated on and
the one taming-transformers / VA-VAE use for this pair, so ``w_p = 1`` balances them as
there. Inputs are ImageNet-normalised images (the tokenizer's input and output space).
"""

from __future__ import annotations

import logging
import warnings
from typing import Literal

import lpips
import torch
import torch.nn.functional as F
from pydantic import Field
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.core.weights import WeightsNotFoundError, resolve_weights

log = logging.getLogger(__name__)

VGG16_WEIGHTS = "vgg16-397923af.pth"
# lpips.pretrained_networks.vgg16 cuts torchvision's ``vgg16().features`` after relu1_2,
# relu2_2, relu3_3, relu4_3 and relu5_3, keeping the layer indices as module names.
_LPIPS_VGG_SLICE_ENDS = (4, 9, 16, 23, 30)


class ReconstructionLossConfig(Config):
    """Settings of ``ReconstructionLoss``."""

    perceptual_weight: float = Field(1.0, ge=0, description="w_p, the LPIPS weight; 0 skips LPIPS")
    perceptual_backbone: Literal["auto", "vgg", "random"] = Field(
        "vgg",
        description="'vgg': ImageNet VGG16 from the weights resolver (the real LPIPS), an error without it; "
        "'auto': the real LPIPS when the resolver finds the weights, else no perceptual term (L1 alone); "
        "'random': an untrained VGG, an explicit opt-in for smoke runs without weights",
    )
    weights_dir: str | None = Field(None, description="folder searched before $TORCH_HOME/hub/checkpoints")


def _lpips_vgg_state_dict(torchvision_vgg16: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Rename torchvision ``features.<i>.*`` keys to lpips' ``slice<k>.<i>.*`` keys."""
    mapped = {}
    for key, value in torchvision_vgg16.items():
        parts = key.split(".")
        if parts[0] != "features" or len(parts) != 3:
            continue
        index = int(parts[1])
        if index >= _LPIPS_VGG_SLICE_ENDS[-1]:
            continue
        slice_number = next(k for k, end in enumerate(_LPIPS_VGG_SLICE_ENDS, start=1) if index < end)
        mapped[f"slice{slice_number}.{index}.{parts[2]}"] = value
    if not mapped:
        raise ValueError(f"{source} holds no 'features.*' keys: it is not a torchvision VGG16 state dict")
    return mapped


def build_lpips(backbone: Literal["vgg", "random"], weights_dir: str | None = None) -> lpips.LPIPS:
    """LPIPS-VGG with its shipped linear heads, frozen and in eval mode, without any download.

    ``lpips`` would fetch the VGG trunk through torchvision; instead it is built with a random
    trunk and, for ``backbone="vgg"``, the ImageNet weights are loaded from the resolved file.
    """
    path = resolve_weights(VGG16_WEIGHTS, weights_dir) if backbone == "vgg" else None
    # The random trunk comes from a fixed seed, and the caller's generators are left as they were:
    # a random-VGG LPIPS is then one network in every process, whatever ran before it there.
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        # lpips still passes torchvision's deprecated ``pretrained=`` argument.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision.models._utils")
        torch.manual_seed(0)
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    if path is not None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"cannot read {path} as a torch state dict: {error}") from error
        if not isinstance(state, dict):
            raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
        mapped = _lpips_vgg_state_dict(state, str(path))
        missing, unexpected = model.net.load_state_dict(mapped, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path} does not match LPIPS' VGG16 trunk: missing {missing}, unexpected {unexpected}")
    model.requires_grad_(False)
    return model.eval()


class ReconstructionLoss(nn.Module):
    """``L_rec = L1 + w_p * LPIPS`` between a reconstruction and its target (see module docstring).

    The weights are resolved in the constructor, so a run without them fails at start.
    ``forward(reconstruction, target)`` takes ImageNet-normalised (B, 3, H, W) images and
    returns ``(loss, {"l1": ..., "lpips": ...})`` with detached metric tensors; "lpips" is
    absent when ``perceptual_weight == 0``, in which case LPIPS is neither built nor run.
    """

    def __init__(self, config: ReconstructionLossConfig) -> None:
        super().__init__()
        self.config = config
        backbone = config.perceptual_backbone if config.perceptual_weight > 0 else None
        if backbone == "auto":
            # A random VGG is no perceptual metric and costs most of a small model's step, so
            # without the real weights the term is left out rather than faked; the choice is
            # logged here and reported in every step's metrics ("perceptual": 1 or 0).
            try:
                resolve_weights(VGG16_WEIGHTS, config.weights_dir)
                backbone = "vgg"
            except WeightsNotFoundError:
                backbone = None
            log.info("reconstruction loss: perceptual_backbone auto -> %s", "LPIPS-VGG16" if backbone else
                     f"L1 only ({VGG16_WEIGHTS} not found by the weights resolver)")
        self.perceptual = build_lpips(backbone, config.weights_dir) if backbone is not None else None
        self.register_buffer("mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ReconstructionLoss:
        super().train(mode)
        if self.perceptual is not None:
            self.perceptual.eval()  # a frozen metric: the dropout in its linear heads must stay off
        return self

    def to_unit_range(self, images: Tensor) -> Tensor:
        """ImageNet-normalised images -> [-1, 1]."""
        return (images * self.std + self.mean) * 2 - 1

    def forward(self, reconstruction: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if reconstruction.shape != target.shape or reconstruction.ndim != 4 or reconstruction.shape[1] != 3:
            raise ValueError(f"expected two (B, 3, H, W) images of one shape, got "
                             f"{tuple(reconstruction.shape)} and {tuple(target.shape)}")
        reconstruction, target = self.to_unit_range(reconstruction), self.to_unit_range(target)
        l1 = F.l1_loss(reconstruction, target)
        metrics = {"l1": l1.detach()}
        if self.config.perceptual_backbone == "auto":
            metrics["perceptual"] = l1.new_tensor(float(self.perceptual is not None))
        loss = l1
        if self.perceptual is not None:
            perceptual = self.perceptual(reconstruction, target).mean()
            metrics["lpips"] = perceptual.detach()
            loss = loss + self.config.perceptual_weight * perceptual
        return loss, metrics


def keep_perceptual_network_out_of_state(model: nn.Module, attribute: str) -> None:
    """Leave the frozen LPIPS network of ``model.<attribute>`` out of ``model``'s state dict.

    It is a fixed metric rebuilt from its package and the weights resolver, never trained: its
    58 MB do not belong in checkpoints, and loading a checkpoint must not ask for them.
    """
    prefix = f"{attribute}.perceptual."

    def drop(module: nn.Module, state_dict: dict, state_prefix: str, local_metadata) -> None:
        for key in [k for k in state_dict if k.startswith(state_prefix + prefix)]:
            del state_dict[key]

    def ignore_missing(module: nn.Module, incompatible_keys) -> None:
        incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys if prefix not in k]

    model.register_state_dict_post_hook(drop)
    model.register_load_state_dict_post_hook(ignore_missing)
