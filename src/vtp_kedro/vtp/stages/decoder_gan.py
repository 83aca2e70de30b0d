"""The decoder GAN stage (paper Section 3.2): a frozen encoder, the pixel decoder fine-tuned adversarially.

GAN losses destabilise ViT training from scratch, so VTP trains the whole tokenizer with
L1 + perceptual first, then freezes the encoder and bottleneck and fine-tunes only the decoder
against a discriminator D (VQGAN / VA-VAE recipe; RAE's latent noise and discriminator as settings)::

    z  = bottleneck(encoder(x)) (+ sigma * eps, sigma ~ |N(0, tau^2)|)       no gradient
    x' = decoder(z)
    generator:      L_G = L1(x', x) + w_p LPIPS(x', x) + disc_weight * lambda * g(D(A(x')))   (step >= gan_start)
    discriminator:  L_D = hinge(D(A(x)), D(A(sg(x'))))                                    (step >= disc_start)

``g`` is ``-mean`` (hinge) or ``softplus(-.)`` (non-saturating), ``lambda`` VQGAN's adaptive
weight at the decoder's last layer (``losses/gan.py``, computed with one pass through LPIPS and
D: ``generator_objective``), ``A`` DiffAugment (off by default).
The generator pass steps the decoder; the discriminator pass, after it, sees the updated
decoder's reconstructions.

The decoder GAN stage as a ``TrainTask``: generator (the pixel decoder) then discriminator, each step.

``STAGE`` (registered as ``"decoder_gan"``) pairs its task config, a ``DecoderGANTaskConfig``,
with ``build_task``. The tokenizer's weights come in through the trainer's ``init_from``
(``target: tokenizer``); encoder and bottleneck are frozen modules, so they never change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.core.distributed import rank, world_size
from vtp_kedro.vtp.data.diffaugment import diff_augment
from vtp_kedro.vtp.data.loader import PretrainDataConfig, PretrainDataStream
from vtp_kedro.vtp.engine.optim import OptimizerConfig, build_adamw
from vtp_kedro.vtp.engine.trainer import TrainTask
from vtp_kedro.vtp.losses.gan import (
    GANLossConfig,
    discriminator_accuracy,
    generator_adversarial_loss,
    generator_objective,
    hinge_d_loss,
    latent_noise,
)
from vtp_kedro.vtp.losses.reconstruction import (
    ReconstructionLoss,
    ReconstructionLossConfig,
    keep_perceptual_network_out_of_state,
)
from vtp_kedro.vtp.models.discriminator import DiscriminatorConfig, build_discriminator
from vtp_kedro.vtp.models.tokenizer import TokenizerConfig, VisualTokenizer
from vtp_kedro.vtp.stages import Stage


class DecoderGANRecipe(Config):
    """What a user chooses of the stage: the discriminator, the losses and the seed."""

    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    gan: GANLossConfig = GANLossConfig()
    reconstruction: ReconstructionLossConfig = ReconstructionLossConfig()
    seed: int = Field(0, ge=0, description="seed of the latent-noise and DiffAugment draws")


class DecoderGANConfig(DecoderGANRecipe):
    """The recipe on a tokenizer (the architecture of the input tokenizer folder)."""

    tokenizer: TokenizerConfig


class DecoderGANModel(nn.Module):
    """Tokenizer (encoder and bottleneck frozen), discriminator, and the two passes of a step."""

    def __init__(self, config: DecoderGANConfig, rank: int = 0) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = VisualTokenizer(config.tokenizer)
        # A ViT discriminator reads the tokenizer's own frozen encoder: no download, stored once.
        self.discriminator = build_discriminator(config.discriminator, self.tokenizer.encoder)
        self.reconstruction_loss = ReconstructionLoss(config.reconstruction)
        keep_perceptual_network_out_of_state(self, "reconstruction_loss")
        self.sampler = torch.Generator().manual_seed(config.seed + 1_000_003 * rank)
        # The frozen encoder's latents of a batch, from the generator's pass to the discriminator's.
        self._latent_cache: dict[int, tuple[Tensor, Tensor]] = {}

    @property
    def frozen(self) -> list[nn.Module]:
        return [self.tokenizer.encoder, self.tokenizer.bottleneck]

    def latents(self, images: Tensor, keep: bool) -> Tensor:
        """The frozen encoder's latents of ``images`` plus the configured noise (a fresh draw each call).

        The encoder is frozen, so the discriminator's pass over the same batch reuses the latents
        of the generator's (``keep=True`` there), which saves a third of a step.
        """
        cached = self._latent_cache.pop(id(images), None)
        if cached is not None and cached[0] is images:
            z = cached[1]
        else:
            with torch.no_grad():
                z = self.tokenizer.encode(images)
        if keep:
            self._latent_cache[id(images)] = (images, z)
        return latent_noise(z, self.config.gan.latent_noise_tau, self.sampler)

    def augment(self, images: Tensor) -> Tensor:
        return diff_augment(images, self.config.gan.diff_augment, self.sampler)

    def generator_step(self, images: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        gan = self.config.gan
        reconstruction = self.tokenizer.decode(self.latents(images, keep=True))
        rec, rec_terms = self.reconstruction_loss(reconstruction, images)
        loss, g_loss, weight = rec, rec.new_zeros(()), rec.new_zeros(())
        if step >= gan.generator_start and gan.disc_weight > 0:
            g_loss = generator_adversarial_loss(self.discriminator(self.augment(reconstruction)), gan.generator_loss)
            loss, weight = generator_objective(reconstruction, rec, g_loss, self.tokenizer.decoder.proj_out.weight,
                                               gan.disc_weight)
        return loss, {"rec": rec.detach(), **rec_terms, "g_adv": g_loss.detach(), "adaptive_weight": weight}

    def discriminator_step(self, images: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        if step < self.config.gan.disc_start:  # same names every step; no gradient, so no update
            self._latent_cache.pop(id(images), None)
            zero = images.new_zeros(())
            return zero, {"d_loss": zero, "logits_real": zero, "logits_fake": zero,
                          "d_accuracy_real": zero, "d_accuracy_fake": zero}
        with torch.no_grad():
            fake = self.tokenizer.decode(self.latents(images, keep=False))
        logits_real = self.discriminator(self.augment(images))
        logits_fake = self.discriminator(self.augment(fake))
        loss = hinge_d_loss(logits_real, logits_fake)
        accuracy_real, accuracy_fake = discriminator_accuracy(logits_real, logits_fake)
        return loss, {"d_loss": loss.detach(), "logits_real": logits_real.detach().mean(),
                      "logits_fake": logits_fake.detach().mean(), "d_accuracy_real": accuracy_real,
                      "d_accuracy_fake": accuracy_fake}

    # The sampler's state travels in state_dict() so that a resumed run draws the same noise.
    def get_extra_state(self) -> Tensor:
        return self.sampler.get_state()

    def set_extra_state(self, state: Tensor) -> None:
        self.sampler.set_state(state)


class DecoderGANTaskConfig(Config):
    model: DecoderGANConfig
    data: PretrainDataConfig

    @model_validator(mode="after")
    def _check(self) -> DecoderGANTaskConfig:
        self.model.tokenizer.check_image_size(self.data.image_size, "data.image_size")
        if self.data.captions:
            raise ValueError("data.captions must be false: the decoder GAN stage reads images only")
        return self


class DecoderGANTask(TrainTask):
    optimizer_names = ("generator", "discriminator")

    def __init__(self, model: DecoderGANModel) -> None:
        self.model = model

    def training_step(self, batch: Mapping[str, Any], step: int, optimizer: str) -> tuple[Tensor, dict[str, Tensor]]:
        if optimizer == "generator":
            return self.model.generator_step(batch["images"], step)
        return self.model.discriminator_step(batch["images"], step)

    def configure_optimizers(self, configs: Mapping[str, OptimizerConfig]) -> dict[str, torch.optim.Optimizer]:
        named = list(self.model.named_parameters())
        decoder = [(n, p) for n, p in named if n.startswith("tokenizer.decoder.")]
        discriminator = [(n, p) for n, p in named if n.startswith("discriminator.") and p.requires_grad]
        return {"generator": build_adamw(decoder, configs["generator"]),
                "discriminator": build_adamw(discriminator, configs["discriminator"])}

    def frozen_modules(self):
        return self.model.frozen


def build_task(config: DecoderGANTaskConfig) -> tuple[DecoderGANTask, PretrainDataStream]:
    """This rank's model and image stream."""
    data = PretrainDataStream(config.data, rank=rank(), world_size=world_size())
    return DecoderGANTask(DecoderGANModel(config.model, rank=rank())), data


STAGE = Stage("decoder_gan", DecoderGANTaskConfig, build_task)
