"""Adversarial terms of the decoder GAN stage, as in VQGAN / taming-transformers, VA-VAE and RAE.

With r = D(x) the discriminator logits of real images and f = D(x') those of reconstructions (means run
over the batch and every patch or token logit):

    L_D = 1/2 * (mean relu(1 - r) + mean relu(1 + f))       hinge discriminator loss (taming's hinge_d_loss)
    L_G = -mean f                                           hinge generator loss
    L_G = mean softplus(-f) = -mean log sigmoid(f)          non-saturating generator loss (Goodfellow et al. 2014)

The generator minimises L_rec + disc_weight * lambda * L_G with VQGAN's adaptive weight

    lambda = clamp(||grad_w L_rec|| / (||grad_w L_G|| + 1e-4), 0, 1e4),   detached,

w the weight of the decoder's last layer: it scales the GAN gradient at the output to the size of the
reconstruction gradient, whatever the scale of the discriminator's logits.

Computing lambda as written (taming) backpropagates both terms through LPIPS and D twice more
than the update needs. ``generator_objective`` takes the two gradients at the decoder's output
x' once (g_rec = dL_rec/dx', g_gan = dL_G/dx'), gets the last-layer gradients from them by the
chain rule (only the last layer's own backward), and returns a loss whose backward sends
g_rec + disc_weight * lambda * g_gan into the decoder: the same update, one pass through LPIPS and D.

RAE's noise-augmented decoding (Zheng et al. 2025) trains the decoder on z + sigma * eps, eps ~ N(0, I), with
one sigma ~ |N(0, tau^2)| per sample, so it also decodes the slightly-off latents a diffusion model samples.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.data.diffaugment import parse_policy

GeneratorLoss = Literal["hinge", "non_saturating"]


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """``1/2 * (mean relu(1 - real) + mean relu(1 + fake))``."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_adversarial_loss(logits_fake: Tensor, kind: GeneratorLoss = "hinge") -> Tensor:
    """``-mean fake`` (hinge) or ``mean softplus(-fake)`` (non-saturating)."""
    if kind == "hinge":
        return -logits_fake.mean()
    if kind == "non_saturating":
        return F.softplus(-logits_fake).mean()
    raise ValueError(f"generator loss must be 'hinge' or 'non_saturating'; got {kind!r}")


def adaptive_weight(rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4,
                    eps: float = 1e-4) -> Tensor:
    """VQGAN's ``clamp(||grad rec|| / (||grad gan|| + eps), 0, max_weight)`` w.r.t. ``last_layer``, detached.

    Both gradients are taken with ``retain_graph=True``, so the caller can still backpropagate the total
    loss; the caller multiplies the result by ``disc_weight``.
    """
    if not last_layer.requires_grad:
        raise ValueError("last_layer must require grad: the adaptive weight compares gradients at that tensor")
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = torch.linalg.vector_norm(rec_grad) / (torch.linalg.vector_norm(gan_grad) + eps)
    return weight.clamp(0.0, max_weight).detach()


def generator_objective(reconstruction: Tensor, rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor,
                        disc_weight: float, max_weight: float = 1e4, eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """``(loss, weight)``: ``loss`` has the value ``rec + weight * gan`` and, backpropagated, gives the
    decoder exactly the gradient of that sum with ``weight = disc_weight * adaptive_weight`` (module
    docstring); nothing reaches the discriminator's parameters. ``reconstruction`` is the decoder's
    output that both losses were computed from, ``last_layer`` a decoder weight it depends on.
    """
    g_rec = torch.autograd.grad(rec_loss, reconstruction, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, reconstruction, retain_graph=True)[0]
    w_rec = torch.autograd.grad(reconstruction, last_layer, grad_outputs=g_rec, retain_graph=True)[0]
    w_gan = torch.autograd.grad(reconstruction, last_layer, grad_outputs=g_gan, retain_graph=True)[0]
    weight = disc_weight * (torch.linalg.vector_norm(w_rec) / (torch.linalg.vector_norm(w_gan) + eps)).clamp(0, max_weight)
    gradient = (g_rec + weight * g_gan).detach()
    surrogate = (reconstruction * gradient).sum()  # d surrogate / d x' = the wanted gradient
    value = (rec_loss + weight * gan_loss).detach()
    return value + surrogate - surrogate.detach(), weight.detach()


def discriminator_accuracy(logits_real: Tensor, logits_fake: Tensor) -> tuple[Tensor, Tensor]:
    """Shares of real logits > 0 and of fake logits < 0 (detached): how often D is right per logit."""
    return (logits_real.detach() > 0).float().mean(), (logits_fake.detach() < 0).float().mean()


def latent_noise(z: Tensor, tau: float, generator: torch.Generator) -> Tensor:
    """``z + sigma * eps`` with ``sigma ~ |N(0, tau^2)|`` per sample and ``eps ~ N(0, I)``; ``z`` itself at tau 0.

    Draws sigma, then eps, from ``generator`` on its own device (CPU by default) and moves them to ``z``'s.
    """
    if tau < 0:
        raise ValueError(f"latent noise tau must be >= 0; got {tau}")
    if tau == 0:
        return z
    per_sample = (z.shape[0],) + (1,) * (z.ndim - 1)
    sigma = (tau * torch.randn(per_sample, generator=generator, device=generator.device)).abs()
    eps = torch.randn(z.shape, generator=generator, device=generator.device)
    return z + (sigma * eps).to(device=z.device, dtype=z.dtype)


class GANLossConfig(Config):
    """Settings of the adversarial term (module docstring); steps count optimisation steps of the stage."""

    disc_weight: float = Field(0.5, ge=0, description="multiplies the adaptive weight of the generator's GAN term")
    disc_start: int = Field(0, ge=0, description="step at which the discriminator starts its updates")
    gan_start: int | None = Field(
        None, ge=0, description="step at which the generator's GAN term switches on; None: disc_start"
    )
    generator_loss: GeneratorLoss = "hinge"
    diff_augment: str | None = Field(
        None, description="DiffAugment policy for every image D sees, e.g. 'color,translation,cutout'; None: off"
    )
    latent_noise_tau: float = Field(0.0, ge=0, description="tau of RAE's noise-augmented decoding; 0: off")

    @field_validator("diff_augment")
    @classmethod
    def _check_policy(cls, policy: str | None) -> str | None:
        parse_policy(policy)
        return policy

    @property
    def generator_start(self) -> int:
        """The step at which the generator's GAN term switches on."""
        return self.disc_start if self.gan_start is None else self.gan_start
