"""Flow-matching objective: path, target, timestep distributions, loss terms, reproducibility, config."""

from __future__ import annotations

import pydantic
import pytest
import torch

from vtp_kedro.vtp.losses.flow import (
    FlowConfig,
    flow_loss,
    flow_matching_step,
    interpolate,
    sample_timesteps,
    velocity_target,
)


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- path and target --------------------------------------------------------------------------------------


def test_path_and_target_on_known_tensors():
    x0 = torch.tensor([[1.0, -2.0], [0.0, 4.0]])
    x1 = torch.tensor([[3.0, 2.0], [-1.0, 0.0]])
    t = torch.tensor([0.25, 0.5])
    # row 0: 0.25 * (3, 2) + 0.75 * (1, -2) = (1.5, -1); row 1: 0.5 * (-1, 0) + 0.5 * (0, 4) = (-0.5, 2)
    assert torch.equal(interpolate(x0, x1, t), torch.tensor([[1.5, -1.0], [-0.5, 2.0]]))
    assert torch.equal(velocity_target(x0, x1), torch.tensor([[2.0, 4.0], [-1.0, -4.0]]))


def test_path_ends_at_noise_and_data_and_moves_with_the_target_velocity():
    x0, x1 = torch.randn(3, 4, 5, 5, generator=rng(0)), torch.randn(3, 4, 5, 5, generator=rng(1))
    assert torch.equal(interpolate(x0, x1, torch.zeros(3)), x0)
    assert torch.equal(interpolate(x0, x1, torch.ones(3)), x1)
    t, dt = torch.tensor([0.1, 0.5, 0.8]), 1e-3
    slope = (interpolate(x0, x1, t + dt) - interpolate(x0, x1, t)) / dt
    torch.testing.assert_close(slope, velocity_target(x0, x1), atol=2e-3, rtol=0)


def test_path_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        interpolate(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        interpolate(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))


# --- timesteps --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mu", "sigma"), [(-0.5, 1.25), (-0.75, 1.0)])
def test_logit_normal_timesteps_have_the_configured_logit_mean_and_std(mu, sigma):
    t = sample_timesteps(100_000, FlowConfig(lognorm_mu=mu, lognorm_sigma=sigma), rng(0)).double()
    assert t.dtype == torch.float64 and t.shape == (100_000,)
    assert ((t > 0) & (t < 1)).all()
    logits = torch.logit(t)
    assert logits.mean().item() == pytest.approx(mu, abs=0.02)
    assert logits.std().item() == pytest.approx(sigma, rel=0.02)


def test_uniform_timesteps():
    t = sample_timesteps(100_000, FlowConfig(timesteps="uniform"), rng(0))
    assert t.dtype == torch.float32 and ((t >= 0) & (t < 1)).all()
    assert t.mean().item() == pytest.approx(0.5, abs=0.01)
    assert t.var().item() == pytest.approx(1 / 12, abs=0.002)
    assert (t < 0.1).float().mean().item() == pytest.approx(0.1, abs=0.01)


def test_timesteps_come_from_the_generator_only():
    config = FlowConfig()
    torch.manual_seed(0)
    first = sample_timesteps(8, config, rng(3))
    torch.manual_seed(1)  # the global RNG plays no part
    assert torch.equal(sample_timesteps(8, config, rng(3)), first)
    assert not torch.equal(sample_timesteps(8, config, rng(4)), first)
    with pytest.raises(ValueError, match="n >= 1"):
        sample_timesteps(0, config, rng(0))


# --- loss -------------------------------------------------------------------------------------------------


def test_loss_is_zero_for_a_perfect_prediction():
    target = torch.randn(4, 8, 3, 3, generator=rng(0))
    loss, terms = flow_loss(target.clone(), target)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert set(terms) == {"mse", "cosine"}
    assert terms["mse"].item() == 0.0 and terms["cosine"].item() == pytest.approx(0.0, abs=1e-6)


def test_cosine_term_ignores_a_positive_scale_and_penalises_direction():
    target = torch.randn(4, 8, 3, 3, generator=rng(0))
    _, scaled = flow_loss(2.5 * target, target)
    assert scaled["cosine"].item() == pytest.approx(0.0, abs=1e-6)
    assert scaled["mse"].item() == pytest.approx((1.5 * target).square().mean().item(), rel=1e-5)
    _, flipped = flow_loss(-target, target)
    assert flipped["cosine"].item() == pytest.approx(2.0, abs=1e-6)  # cos = -1 everywhere
    _, other = flow_loss(torch.randn(4, 8, 3, 3, generator=rng(1)), target)
    assert other["cosine"].item() > 0.5 and other["mse"].item() > 0.5


def test_loss_combines_the_terms_with_the_cosine_weight_over_channels():
    pred = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    target = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # mse = (1 + 1 + 0 + 1) / 4; cos over dim 1 = (0, 1) -> cosine = (1 + 0) / 2
    loss, terms = flow_loss(pred, target, cosine_weight=0.5)
    assert terms["mse"].item() == pytest.approx(0.75)
    assert terms["cosine"].item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(0.75 + 0.5 * 0.5)
    assert flow_loss(pred, target, cosine_weight=0.0)[0].item() == pytest.approx(0.75)


def test_loss_terms_are_detached_and_the_loss_backpropagates():
    pred = torch.randn(2, 3, 4, generator=rng(0), requires_grad=True)
    loss, terms = flow_loss(pred, torch.randn(2, 3, 4, generator=rng(1)))
    assert not any(term.requires_grad for term in terms.values())
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_loss_rejects_bad_inputs():
    with pytest.raises(ValueError, match="same"):
        flow_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="cosine_weight"):
        flow_loss(torch.zeros(2, 3), torch.zeros(2, 3), cosine_weight=-1.0)


# --- one step ---------------------------------------------------------------------------------------------


def test_step_feeds_the_model_the_path_point_and_is_reproducible():
    x1 = torch.randn(6, 4, 2, 2, generator=rng(0))
    seen = []

    def model_fn(x_t, t):
        seen.append((x_t.clone(), t.clone()))
        return torch.zeros_like(x_t)

    loss, terms = flow_matching_step(model_fn, x1, FlowConfig(), rng(7))
    x_t, t = seen[0]
    assert t.shape == (6,) and t.dtype == torch.float32
    # Replay the documented draws: t first, then x0, from the same generator.
    generator = rng(7)
    t_ref = sample_timesteps(6, FlowConfig(), generator)
    x0_ref = torch.randn(x1.shape, generator=generator)
    torch.testing.assert_close(t, t_ref, rtol=0, atol=0)
    torch.testing.assert_close(x_t, interpolate(x0_ref, x1, t_ref), rtol=0, atol=0)
    target = velocity_target(x0_ref, x1)
    assert terms["mse"].item() == pytest.approx(target.square().mean().item(), rel=1e-6)
    assert terms["cosine"].item() == pytest.approx(1.0)  # zero prediction: cosine similarity 0

    again, _ = flow_matching_step(model_fn, x1, FlowConfig(), rng(7))
    assert torch.equal(again, loss)
    assert torch.equal(seen[1][0], x_t) and torch.equal(seen[1][1], t)
    other, _ = flow_matching_step(model_fn, x1, FlowConfig(), rng(8))
    assert not torch.equal(other, loss)


def test_step_gradient_reaches_the_model():
    model = torch.nn.Linear(3, 3)
    loss, _ = flow_matching_step(lambda x_t, t: model(x_t) * t[:, None], torch.randn(5, 3, generator=rng(0)),
                                 FlowConfig(timesteps="uniform"), rng(1))
    loss.backward()
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0


# --- config -----------------------------------------------------------------------------------------------


def test_config_defaults_are_vtp_s_b():
    config = FlowConfig()
    assert (config.timesteps, config.lognorm_mu, config.lognorm_sigma, config.cosine_weight) == (
        "logit_normal", -0.5, 1.25, 1.0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"timesteps": "cosine"}, "timesteps"),
        ({"lognorm_sigma": 0.0}, "lognorm_sigma"),
        ({"cosine_weight": -0.1}, "cosine_weight"),
        ({"lognorm_mean": 0.0}, "lognorm_mean"),
    ],
)
def test_config_rejects_bad_values_naming_them(settings, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        FlowConfig(**settings)
