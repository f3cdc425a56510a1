"""The learning-rate schedule shared by the detector, refine-head and embedder trainers."""

from __future__ import annotations

import math

import pytest

from sorterbot_cloud import schedule


@pytest.mark.parametrize(
    "step, total, elapsed_s, budget_s, expected",
    [(5, 10, 0.0, None, 0.5), (5, 10, 80.0, 100.0, 0.8), (9, 10, 10.0, 100.0, 0.9), (3, 10, 50.0, 0.0, 0.3)],
    ids=["steps", "budget-ahead", "steps-ahead", "zero-budget-is-none"],
)
def test_progress_is_the_further_of_steps_and_budget(step, total, elapsed_s, budget_s, expected):
    assert schedule.progress(step, total, elapsed_s, budget_s) == pytest.approx(expected)


def test_progress_needs_a_step_count():
    with pytest.raises(ValueError, match="total_steps"):
        schedule.progress(0, 0)


def test_warm_up_then_cosine_from_one_to_the_floor():
    warm = [schedule.lr_factor(s, 0.0, 4) for s in range(4)]
    assert warm[0] == pytest.approx(schedule.FLOOR) and all(a < b for a, b in zip(warm, warm[1:], strict=False))
    assert schedule.lr_factor(4, 0.0, 4) == pytest.approx(1.0)
    assert schedule.lr_factor(10, 0.5, 4) == pytest.approx(schedule.FLOOR + (1 - schedule.FLOOR) * 0.5)
    assert schedule.lr_factor(10, 1.0, 4) == pytest.approx(schedule.FLOOR)
    assert schedule.lr_factor(10, 3.0, 4) == pytest.approx(schedule.FLOOR)  # past the end it stays at the floor
    decay = [schedule.lr_factor(10, p / 10, 0) for p in range(11)]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))
    assert decay[3] == pytest.approx(schedule.FLOOR + (1 - schedule.FLOOR) * 0.5 * (1 + math.cos(0.3 * math.pi)))
