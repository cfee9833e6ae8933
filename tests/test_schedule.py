"""Cooling schedules against the figures of the design (L0=207, C=70, alpha=0.5, T=5)."""

import pytest

from edgecompress.search import thresholds


def test_exponential_matches_the_worked_example():
    assert [round(c, 1) for c in thresholds(207, 70, 5, "exponential", 0.5)] == [141.8, 109.2, 89.3, 77.3, 70.0]


def test_linear_steps_evenly_to_the_budget():
    assert thresholds(207, 70, 5, "linear") == pytest.approx([179.6, 152.2, 124.8, 97.4, 70.0])


def test_one_step_is_the_budget_in_a_single_round():
    assert thresholds(207, 70, 5, "one-step") == [70]


def test_a_budget_the_base_already_meets_stays_at_the_budget():
    assert thresholds(50, 70, 3, "exponential") == [70, 70, 70]
    assert thresholds(50, 70, 3, "linear") == [70, 70, 70]


def test_exponential_is_monotone_and_ends_exactly_at_the_budget():
    values = thresholds(10.0, 3.3, 7, "exponential", 0.8)
    assert all(a > b for a, b in zip(values, values[1:], strict=False)) and values[-1] == 3.3


@pytest.mark.parametrize(
    ("args", "error"),
    [((1, 0.5, 0), "rounds"), ((1, 0.5, 3, "exponential", 0), "alpha"), ((1, 0.5, 3, "cubic"), "unknown schedule")],
)
def test_bad_arguments(args, error):
    with pytest.raises(ValueError, match=error):
        thresholds(*args)
