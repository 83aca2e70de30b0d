"""GAN terms (hinge, non-saturating, adaptive weight, accuracy), latent noise, DiffAugment and their config."""

from __future__ import annotations

import math

import pydantic
import pytest
import torch
from torch import nn

from vtp_kedro.vtp.data.diffaugment import brightness, contrast, cutout, diff_augment, saturation, translation
from vtp_kedro.vtp.losses.gan import (
    GANLossConfig,
    adaptive_weight,
    discriminator_accuracy,
    generator_adversarial_loss,
    generator_objective,
    hinge_d_loss,
    latent_noise,
)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
REAL = torch.tensor([2.0, 0.5, -1.0])
FAKE = torch.tensor([-2.0, 0.0, 1.0])


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(seed: int = 0, batch: int = 4, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=rng(seed))


# --- losses -------------------------------------------------------------------------------------------------


def test_hinge_losses_on_known_logits():
    # relu(1 - real) = (0, 0.5, 2), relu(1 + fake) = (0, 1, 2): 0.5 * (2.5/3 + 3/3)
    assert hinge_d_loss(REAL, FAKE).item() == pytest.approx(0.5 * (2.5 / 3 + 1.0))
    assert generator_adversarial_loss(FAKE, "hinge").item() == pytest.approx(1 / 3)
    assert hinge_d_loss(torch.full((4,), 1.5), torch.full((4,), -1.5)).item() == 0.0  # beyond the margins


def test_non_saturating_generator_loss():
    expected = (math.log1p(math.exp(2.0)) + math.log(2.0) + math.log1p(math.exp(-1.0))) / 3
    assert generator_adversarial_loss(FAKE, "non_saturating").item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="'wasserstein'"):
        generator_adversarial_loss(FAKE, "wasserstein")


def test_discriminator_accuracy():
    logits_real = torch.tensor([1.0, -1.0, 2.0, 3.0], requires_grad=True)
    logits_fake = torch.tensor([-1.0, -2.0, 1.0, 0.0], requires_grad=True)  # 0 counts as wrong
    real, fake = discriminator_accuracy(logits_real, logits_fake)
    assert (real.item(), fake.item()) == (0.75, 0.5)
    assert not real.requires_grad and not fake.requires_grad


def toy_decoder_losses(gan_scale: float) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """out = w . x with w = (1, 1), x = (3, 4); rec = (out - 5)^2, gan = -gan_scale * out.

    grad_w rec = 2 (7 - 5) x = (12, 16), norm 20; grad_w gan = -gan_scale x, norm 5 * gan_scale.
    """
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    out = layer(torch.tensor([3.0, 4.0]))
    return layer, ((out - 5) ** 2).sum(), -gan_scale * out.sum()


def test_adaptive_weight_matches_hand_computation_and_is_detached():
    layer, rec, gan = toy_decoder_losses(0.5)
    weight = adaptive_weight(rec, gan, layer.weight)
    assert weight.item() == pytest.approx(20 / (2.5 + 1e-4))
    assert not weight.requires_grad
    (rec + weight * gan).backward()  # the graph was retained for the caller's backward
    expected_grad = torch.tensor([[12.0, 16.0]]) - weight * 0.5 * torch.tensor([[3.0, 4.0]])
    torch.testing.assert_close(layer.weight.grad, expected_grad)


def test_adaptive_weight_is_clamped():
    layer, rec, gan = toy_decoder_losses(1e-9)  # 20 / (5e-9 + 1e-4) ~ 2e5
    assert adaptive_weight(rec, gan, layer.weight).item() == 1e4
    assert adaptive_weight(rec, gan, layer.weight, max_weight=100.0).item() == 100.0
    with pytest.raises(ValueError, match="last_layer must require grad"):
        adaptive_weight(rec, gan, layer.weight.detach())


# --- latent noise ---------------------------------------------------------------------------------------------


def test_latent_noise_is_identity_at_tau_zero():
    z = images()
    assert latent_noise(z, 0.0, rng(0)) is z
    with pytest.raises(ValueError, match="tau must be >= 0"):
        latent_noise(z, -0.1, rng(0))


def test_latent_noise_is_reproducible_with_one_sigma_per_sample():
    z = torch.zeros(64, 8, 4, 4)
    noisy = latent_noise(z, 0.8, rng(1))
    torch.testing.assert_close(noisy, latent_noise(z, 0.8, rng(1)))
    assert not torch.equal(noisy, latent_noise(z, 0.8, rng(2)))
    # Replaying the generator: sigma ~ |N(0, tau^2)| per sample, then eps ~ N(0, I).
    replay = rng(1)
    sigma = (0.8 * torch.randn(64, 1, 1, 1, generator=replay)).abs()
    torch.testing.assert_close(noisy, sigma * torch.randn(z.shape, generator=replay))
    per_sample_std = noisy.flatten(1).std(dim=1)
    assert per_sample_std.std() > 0.1  # the noise level varies between samples
    assert per_sample_std.mean().item() == pytest.approx(0.8 * math.sqrt(2 / math.pi), rel=0.25)  # E|N(0, tau^2)|


# --- DiffAugment ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [None, ""])
def test_empty_policy_is_identity(policy):
    x = images()
    assert diff_augment(x, policy, rng(0)) is x


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_diff_augment_is_reproducible_and_differentiable(policy):
    x = images().requires_grad_()
    out = diff_augment(x, policy, rng(3))
    assert out.shape == x.shape
    torch.testing.assert_close(out, diff_augment(x, policy, rng(3)))
    assert not torch.equal(out, diff_augment(x, policy, rng(4)))
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_color_ops_match_their_formulas():
    x = images()
    draws = torch.rand(3, 4, 1, 1, 1, generator=rng(5))  # brightness, saturation, contrast, in that order
    g = rng(5)
    y = brightness(x, g)
    torch.testing.assert_close(y, x + draws[0] - 0.5)
    z = saturation(y, g)
    torch.testing.assert_close(z, (y - y.mean(1, keepdim=True)) * 2 * draws[1] + y.mean(1, keepdim=True))
    mean = z.mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(contrast(z, g), (z - mean) * (draws[2] + 0.5) + mean)


def test_translation_shifts_by_up_to_an_eighth_with_zero_fill():
    x = images(size=16)
    out = translation(x, rng(6))
    replay = rng(6)
    dy, dx = (torch.randint(-2, 3, (4, 1), generator=replay) for _ in range(2))  # round(16 / 8) = 2
    assert dy.abs().max() > 0 or dx.abs().max() > 0
    for b in range(4):
        for i in range(16):
            for j in range(16):
                si, sj = i + dy[b].item(), j + dx[b].item()
                expected = x[b, :, si, sj] if 0 <= si < 16 and 0 <= sj < 16 else torch.zeros(3)
                torch.testing.assert_close(out[b, :, i, j], expected)


def test_cutout_zeroes_a_half_size_rectangle_clipped_at_the_border():
    x = images(batch=16, size=16) + 10  # no pixel is 0 before the cutout
    out = cutout(x, rng(7))
    replay = rng(7)
    top = torch.randint(0, 17, (16,), generator=replay) - 4  # size 8 (even): centre in 0 .. 16
    left = torch.randint(0, 17, (16,), generator=replay) - 4
    for b in range(16):
        rows = slice(max(top[b].item(), 0), top[b].item() + 8)
        cols = slice(max(left[b].item(), 0), left[b].item() + 8)
        keep = torch.ones(16, 16, dtype=torch.bool)
        keep[rows, cols] = False
        assert (out[b][:, ~keep] == 0).all() and torch.equal(out[b][:, keep], x[b][:, keep])


def test_normalised_images_are_augmented_in_unit_range():
    x = images(size=16)
    out = diff_augment(x, "cutout", rng(8))
    # The cut-out pixels are 0 in [-1, 1], i.e. mid-grey: (0.5 - mean) / std after normalisation.
    grey = (0.5 - MEAN) / STD
    cut = ((out - grey).abs() < 1e-5).all(dim=1)
    assert ((cut.sum((1, 2)) >= 4 * 4) & (cut.sum((1, 2)) <= 8 * 8)).all()  # an 8 x 8 square, clipped
    # Everything else survives the round trip to [-1, 1] and back.
    torch.testing.assert_close(out.permute(0, 2, 3, 1)[~cut], x.permute(0, 2, 3, 1)[~cut])


# --- config ---------------------------------------------------------------------------------------------------


def test_gan_config_defaults_and_generator_start():
    config = GANLossConfig()
    assert (config.disc_weight, config.disc_start, config.generator_loss) == (0.5, 0, "hinge")
    assert config.diff_augment is None and config.latent_noise_tau == 0.0
    assert GANLossConfig(disc_start=100).generator_start == 100
    assert GANLossConfig(disc_start=100, gan_start=150).generator_start == 150
    assert GANLossConfig(diff_augment="color, translation,cutout").diff_augment == "color, translation,cutout"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"diff_augment": "color,colour"}, "'colour'"),
        ({"disc_weight": -0.1}, "disc_weight"),
        ({"disc_start": -1}, "disc_start"),
        ({"gan_start": -1}, "gan_start"),
        ({"latent_noise_tau": -0.5}, "latent_noise_tau"),
        ({"generator_loss": "wgan"}, "generator_loss"),
        ({"disc_wieght": 1.0}, "disc_wieght"),
    ],
)
def test_gan_config_rejects_bad_values_naming_them(settings, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        GANLossConfig(**settings)


def test_generator_objective_gives_taming_s_weight_and_gradient_in_one_pass():
    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6))
    critic = nn.Sequential(nn.Linear(6, 4), nn.LeakyReLU(0.2), nn.Linear(4, 1))
    z, target = torch.randn(3, 5), torch.randn(3, 6)

    def losses():
        out = decoder(z)
        return out, (out - target).abs().mean() + 0.3 * ((out - target) ** 2).mean(), -critic(out).mean()

    out, rec, gan = losses()
    reference_weight = 0.5 * adaptive_weight(rec, gan, decoder[2].weight)
    (rec + reference_weight * gan).backward()
    reference = {n: p.grad.clone() for n, p in decoder.named_parameters()}
    decoder.zero_grad(), critic.zero_grad()

    out, rec, gan = losses()
    loss, weight = generator_objective(out, rec, gan, decoder[2].weight, disc_weight=0.5)
    torch.testing.assert_close(weight, reference_weight)
    torch.testing.assert_close(loss, (rec + weight * gan).detach())
    loss.backward()
    for name, param in decoder.named_parameters():
        torch.testing.assert_close(param.grad, reference[name], rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in critic.parameters())  # the generator's pass leaves D alone
