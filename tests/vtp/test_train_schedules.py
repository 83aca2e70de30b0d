"""Learning-rate schedules: warm-up values, cosine end value and shape, constant, bad input."""

from __future__ import annotations

import math

import pytest

from vtp_kedro.vtp.engine.schedules import learning_rate, linear_warmup, warmup_constant, warmup_cosine


def test_warmup_is_linear_and_starts_above_zero():
    values = [warmup_cosine(s, 100, base=1e-3, final=1e-5, warmup_steps=4) for s in range(5)]
    assert values[:4] == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3])
    assert values[4] == pytest.approx(1e-3)  # first cosine step: no decay yet
    assert linear_warmup(10, 2.0, 4) == 2.0


def test_cosine_reaches_final_on_the_last_step_and_stays():
    total, base, final = 50, 3e-4, 1e-6
    assert warmup_cosine(total - 1, total, base, final, warmup_steps=5) == pytest.approx(final)
    assert warmup_cosine(total + 7, total, base, final, warmup_steps=5) == pytest.approx(final)
    # Halfway through the decay the value is the mean of base and final.
    assert warmup_cosine(5 + 22, total, base, final, warmup_steps=5) == pytest.approx((base + final) / 2)
    values = [warmup_cosine(s, total, base, final, warmup_steps=5) for s in range(5, total)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_cosine_without_warmup_and_single_decay_step():
    assert warmup_cosine(0, 10, 1.0, 0.0) == 1.0
    assert warmup_cosine(3, 10, 1.0, 0.0) == pytest.approx((1 + math.cos(math.pi * 3 / 9)) / 2)
    assert warmup_cosine(1, 2, 1.0, 0.0, warmup_steps=1) == 0.0  # the one step after warm-up is the last


def test_constant_schedule_and_dispatch():
    assert [warmup_constant(s, 10, 2e-4, warmup_steps=2) for s in (0, 1, 2, 9)] == pytest.approx(
        [1e-4, 2e-4, 2e-4, 2e-4])
    assert learning_rate("constant", 9, 10, 2e-4, 0.0, 0) == 2e-4
    assert learning_rate("cosine", 9, 10, 2e-4, 0.0, 0) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        learning_rate("linear", 0, 10, 1.0, 0.0, 0)


@pytest.mark.parametrize(("step", "total", "warmup", "message"), [
    (0, 0, 0, "total_steps"), (0, 10, 10, "warmup_steps"), (-1, 10, 0, "step"), (0, 10, -1, "warmup_steps")])
def test_impossible_arguments_are_named(step, total, warmup, message):
    with pytest.raises(ValueError, match=message):
        warmup_cosine(step, total, 1.0, 0.0, warmup)
