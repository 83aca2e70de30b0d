"""ODE sampling with CFG: time grid, guidance, solvers, noise and labels, and a real flow-matching fit.

The learning tests train a small MLP velocity field in the DiT's place with ``flow_matching_step`` on a
2-D Gaussian mixture and check that ``sample`` gives back the mixture.
"""

from __future__ import annotations

import math
import time

import pydantic
import pytest
import torch
from torch import Tensor, nn

from vtp_kedro.vtp.losses.flow import FlowConfig, flow_matching_step
from vtp_kedro.vtp.sampling import (
    SamplerConfig,
    balanced_labels,
    guided_velocity,
    initial_noise,
    random_labels,
    sample,
    time_grid,
)

NULL = 10


class Recorder:
    """A conditional velocity model v = scale[y] * x + t, recording each call's batch, times and labels."""

    def __init__(self) -> None:
        self.calls: list[tuple[Tensor, Tensor, Tensor]] = []

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        self.calls.append((x.clone(), t.clone(), y.clone()))
        per_label = (y.float() + 1).view(-1, *([1] * (x.ndim - 1)))  # the null label gives 11
        return per_label * x + t.view(-1, *([1] * (x.ndim - 1)))


def inputs(channels: int = 5) -> tuple[Tensor, Tensor]:
    return torch.randn(4, channels, 2, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 1])


# --- time grid --------------------------------------------------------------------------------------------


def test_time_grid_without_shift_is_linspace():
    torch.testing.assert_close(time_grid(11, 1.0), torch.linspace(0, 1, 11))
    assert time_grid(250).shape == (250,) and time_grid(250).dtype == torch.float32


def test_time_grid_shift_formula_and_fixed_ends():
    assert time_grid(3, 3.0).tolist() == [0.0, 0.75, 1.0]  # 3 * 0.5 / (1 + 2 * 0.5)
    for shift in (0.3, 1.0, 3.0):
        grid = time_grid(9, shift, torch.float64)
        assert grid[0].item() == 0.0 and grid[-1].item() == 1.0
        assert (grid.diff() > 0).all()
        t = torch.linspace(0, 1, 9, dtype=torch.float64)
        torch.testing.assert_close(grid, shift * t / (1 + (shift - 1) * t), atol=1e-15, rtol=0)
    # LightningDiT's s = 0.3 packs the steps towards the noise end, s > 1 towards the data end.
    assert time_grid(5, 0.3)[1] < 0.25 < time_grid(5, 3.0)[1]


def test_time_grid_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_steps >= 2"):
        time_grid(1)
    with pytest.raises(ValueError, match="shift > 0"):
        time_grid(10, 0.0)


# --- guidance ---------------------------------------------------------------------------------------------


def test_scale_one_is_the_conditional_output_in_one_call():
    x, y = inputs()
    model = Recorder()
    out = guided_velocity(model, x, 0.5, y, NULL, scale=1.0, interval_start=0.0)
    assert len(model.calls) == 1
    seen_x, seen_t, seen_y = model.calls[0]
    assert torch.equal(seen_x, x) and torch.equal(seen_y, y)
    assert seen_t.shape == (4,) and (seen_t == 0.5).all() and seen_t.dtype == torch.float32
    assert torch.equal(out, Recorder()(x, torch.full((4,), 0.5), y))


def test_guidance_inside_the_interval_in_one_batched_call():
    x, y = inputs()
    model = Recorder()
    out = guided_velocity(model, x, torch.tensor(0.6), y, NULL, scale=4.0, interval_start=0.5)
    assert len(model.calls) == 1
    seen_x, seen_t, seen_y = model.calls[0]
    assert torch.equal(seen_x, torch.cat([x, x])) and (seen_t == 0.6).all()
    assert seen_y.tolist() == y.tolist() + [NULL] * 4
    v_c = Recorder()(x, torch.full((4,), 0.6), y)
    v_u = Recorder()(x, torch.full((4,), 0.6), torch.full((4,), NULL))
    torch.testing.assert_close(out, v_u + 4.0 * (v_c - v_u))


def test_guidance_is_off_before_the_interval():
    x, y = inputs()
    model = Recorder()
    out = guided_velocity(model, x, 0.4, y, NULL, scale=4.0, interval_start=0.5)
    assert len(model.calls) == 1 and len(model.calls[0][0]) == 4
    assert torch.equal(out, Recorder()(x, torch.full((4,), 0.4), y))


def test_first3_guides_only_the_first_three_channels():
    x, y = inputs(channels=5)
    out = guided_velocity(Recorder(), x, 0.6, y, NULL, scale=3.0, channels="first3")
    full = guided_velocity(Recorder(), x, 0.6, y, NULL, scale=3.0, channels="all")
    v_c = Recorder()(x, torch.full((4,), 0.6), y)
    torch.testing.assert_close(out[:, :3], full[:, :3])
    torch.testing.assert_close(out[:, 3:], v_c[:, 3:])
    assert not torch.allclose(full[:, 3:], v_c[:, 3:])


def test_guidance_rejects_bad_arguments():
    x, y = inputs()
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        guided_velocity(Recorder(), x, 0.5, y[:3], NULL, 2.0)
    with pytest.raises(ValueError, match="'last3'"):
        guided_velocity(Recorder(), x, 0.5, y, NULL, 2.0, channels="last3")


# --- solvers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [1.0, 0.3, 3.0])
def test_euler_on_the_grid_moves_a_constant_field_exactly(shift):
    noise = initial_noise(3, (4, 2, 2), seed=0).double()  # float64: exact up to rounding of the 19 steps
    velocity = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    times = []

    def model_fn(x, t, y):
        times.append(t[0].item())
        return velocity

    out = sample(model_fn, noise, torch.zeros(3, dtype=torch.long), NULL, SamplerConfig(num_steps=20, shift=shift))
    torch.testing.assert_close(out, noise + velocity, atol=1e-12, rtol=0)
    # num_steps points, num_steps - 1 evaluations at the left ends of the steps.
    torch.testing.assert_close(torch.tensor(times), time_grid(20, shift)[:-1])


def test_euler_is_the_left_riemann_sum_of_a_time_dependent_field():
    noise = torch.zeros(2, 1, dtype=torch.float64)
    out = sample(lambda x, t, y: (2 * t).to(x).view(-1, 1).expand_as(x), noise, torch.zeros(2, dtype=torch.long),
                 NULL, SamplerConfig(num_steps=5))
    assert out[0, 0].item() == pytest.approx(sum(2 * t * 0.25 for t in (0, 0.25, 0.5, 0.75)))  # 0.75, not 1


def test_dopri5_matches_the_closed_form():
    # dx/dt = cos(t) a + 3 t^2 b  =>  x(1) = x(0) + sin(1) a + b
    noise = initial_noise(2, (3,), seed=0)
    a, b = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, 0.0, -1.0])
    calls = []

    def model_fn(x, t, y):
        calls.append(1)
        t = t.view(-1, 1)
        return torch.cos(t) * a + 3 * t**2 * b

    config = SamplerConfig(solver="dopri5", atol=1e-7, rtol=1e-6)
    out = sample(model_fn, noise, torch.zeros(2, dtype=torch.long), NULL, config)
    torch.testing.assert_close(out, noise + math.sin(1.0) * a + b, atol=1e-5, rtol=0)
    assert len(calls) < 250  # adaptive: far fewer evaluations than the Euler default


def test_sample_is_gradient_free_keeps_labels_and_integrates_half_precision_in_float32():
    model = nn.Linear(2, 2)
    seen = []

    def model_fn(x, t, y):
        seen.append((x.dtype, y.clone()))
        return model(x)

    labels = torch.tensor([3, 1, 4])
    out = sample(model_fn, initial_noise(3, (2,), 0).bfloat16(), labels, NULL, SamplerConfig(num_steps=4))
    assert not out.requires_grad and out.dtype == torch.float32
    assert all(dtype == torch.float32 and torch.equal(y, labels) for dtype, y in seen)


def test_sample_rejects_bad_inputs():
    with pytest.raises(ValueError, match="labels must have shape"):
        sample(Recorder(), torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), NULL, SamplerConfig())
    with pytest.raises(ValueError, match="floating"):
        sample(Recorder(), torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, dtype=torch.long), NULL, SamplerConfig())


# --- noise and labels -------------------------------------------------------------------------------------


def test_initial_noise_is_seeded_and_independent_of_the_global_rng():
    torch.manual_seed(0)
    first = initial_noise(4, (3, 2, 2), seed=5)
    torch.manual_seed(1)
    assert torch.equal(initial_noise(4, (3, 2, 2), seed=5), first)
    assert first.shape == (4, 3, 2, 2) and first.dtype == torch.float32
    assert not torch.equal(initial_noise(4, (3, 2, 2), seed=6), first)
    # A bigger batch from the same seed starts with the same draws.
    assert torch.equal(initial_noise(8, (3, 2, 2), seed=5)[:4], first)


def test_sampling_is_deterministic_from_the_seed():
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
    config = SamplerConfig(num_steps=10, cfg_scale=2.0, seed=3)

    def run():
        noise = initial_noise(5, (2,), config.seed)
        return sample(lambda x, t, y: model(x) * (1 + y[:, None]), noise, balanced_labels(5, 2), 2, config)

    assert torch.equal(run(), run())


def test_balanced_labels_cycle_through_the_classes():
    labels = balanced_labels(10, 3)
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0] and labels.dtype == torch.long
    counts = torch.bincount(balanced_labels(3000, 1000))
    assert (counts == 3).all()
    for prefix in (1, 7, 1234):
        counts = torch.bincount(balanced_labels(prefix, 10), minlength=10)
        assert counts.max() - counts.min() <= 1
    with pytest.raises(ValueError, match="num_classes >= 1"):
        balanced_labels(4, 0)


def test_random_labels_are_reproducible_and_in_range():
    labels = random_labels(1000, 7, torch.Generator().manual_seed(0))
    assert labels.dtype == torch.long and labels.min() >= 0 and labels.max() == 6
    assert torch.equal(labels, random_labels(1000, 7, torch.Generator().manual_seed(0)))


# --- config -----------------------------------------------------------------------------------------------


def test_config_defaults():
    config = SamplerConfig()
    assert (config.num_steps, config.solver, config.shift, config.cfg_scale, config.cfg_interval_start,
            config.cfg_channels, config.seed) == (250, "euler", 1.0, 1.0, 0.0, "all", 0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_steps": 1}, "num_steps"),
        ({"solver": "heun"}, "solver"),
        ({"shift": 0.0}, "shift"),
        ({"cfg_scale": -1.0}, "cfg_scale"),
        ({"cfg_interval_start": 1.5}, "cfg_interval_start"),
        ({"cfg_channels": "first4"}, "cfg_channels"),
        ({"atol": 0.0}, "atol"),
        ({"steps": 50}, "steps"),
    ],
)
def test_config_rejects_bad_values_naming_them(settings, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        SamplerConfig(**settings)


# --- learning: flow matching + Euler sampling on a 2-D Gaussian mixture -----------------------------------

MEANS = torch.tensor([[-2.0, -1.0], [2.0, -1.0], [0.0, 2.0]])
WEIGHTS = torch.tensor([0.5, 0.3, 0.2])


def mixture(n: int, std: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    component = torch.multinomial(WEIGHTS, n, replacement=True, generator=generator)
    return MEANS[component] + std * torch.randn(n, 2, generator=generator), component


class MLPVelocity(nn.Module):
    """v(x, t, y): sinusoidal features of t, optional label embedding (the last label is the null class)."""

    def __init__(self, classes: int = 0, hidden: int = 128, frequencies: int = 8) -> None:
        super().__init__()
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(frequencies))
        self.input = nn.Linear(2 + 2 * frequencies, hidden)
        self.labels = nn.Embedding(classes + 1, hidden) if classes else None
        self.body = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                  nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        angles = t[:, None] * self.frequencies
        h = self.input(torch.cat([x, angles.sin(), angles.cos()], dim=1))
        if self.labels is not None:
            h = h + self.labels(y)
        return self.body(h)


def fit(std: float, classes: int = 0, steps: int = 600, batch: int = 512, label_dropout: float = 0.1) -> MLPVelocity:
    torch.manual_seed(0)
    model = MLPVelocity(classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x1, component = mixture(batch, std, generator)
        if classes:
            # DiT's label dropout: the null class teaches the unconditional velocity CFG needs.
            dropped = torch.rand(batch, generator=generator) < label_dropout
            labels = torch.where(dropped, classes, component)
            loss, _ = flow_matching_step(lambda x, t: model(x, t, labels), x1, FlowConfig(), generator)
        else:
            loss, _ = flow_matching_step(model, x1, FlowConfig(), generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def nearest_component(x: Tensor) -> Tensor:
    return torch.cdist(x, MEANS).argmin(dim=1)


@pytest.fixture(scope="module")
def one_thread():
    # Tiny matmuls: threads only add overhead, and the machine's cores are shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_flow_matching_and_euler_sampling_reproduce_a_gaussian_mixture(one_thread):
    start = time.perf_counter()
    model = fit(std=0.35)
    noise = initial_noise(2000, (2,), seed=0)
    config = SamplerConfig(num_steps=51)
    x = sample(lambda x, t, y: model(x, t), noise, torch.zeros(2000, dtype=torch.long), NULL, config)
    component = nearest_component(x)
    weights = torch.bincount(component, minlength=3).float() / len(x)
    means = torch.stack([x[component == k].mean(0) for k in range(3)])
    assert (means - MEANS).norm(dim=1).max() < 0.3, means
    assert (weights - WEIGHTS).abs().max() < 0.07, weights
    # The adaptive solver follows the same flow: 50 Euler steps are already close to the exact ODE solution.
    exact = sample(lambda x, t, y: model(x, t), noise, torch.zeros(2000, dtype=torch.long), NULL,
                   SamplerConfig(solver="dopri5"))
    assert (exact - x).abs().mean() < 0.05
    assert time.perf_counter() - start < 30


def test_class_conditional_flow_with_guidance_sharpens_the_classes(one_thread):
    model = fit(std=0.6, classes=3)
    labels = balanced_labels(3000, 3)
    noise = initial_noise(3000, (2,), seed=1)

    def run(scale: float) -> Tensor:
        return sample(model, noise, labels, 3, SamplerConfig(num_steps=51, cfg_scale=scale))

    conditional, guided = run(1.0), run(3.0)
    class_means = torch.stack([conditional[labels == k].mean(0) for k in range(3)])
    assert (class_means - MEANS).norm(dim=1).max() < 0.3, class_means
    accuracy = (nearest_component(conditional) == labels).float().mean()
    assert accuracy > 0.95
    # Guidance pulls each class's samples together around its own mode.
    spread = (conditional - MEANS[labels]).norm(dim=1).mean()
    guided_spread = (guided - MEANS[labels]).norm(dim=1).mean()
    assert guided_spread < 0.8 * spread, (guided_spread, spread)
    assert (nearest_component(guided) == labels).float().mean() >= accuracy
    # Scale 0 is the null-label (unconditional) model: the mixture's weights again, whatever the labels.
    unconditional = torch.bincount(nearest_component(run(0.0)), minlength=3).float() / len(labels)
    assert (unconditional - WEIGHTS).abs().max() < 0.1, unconditional
