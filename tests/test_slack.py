"""Slack buys accuracy: a feasible best far under its threshold leads to a less pruned plan aimed at the boundary."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from edgecompress.search import _decide as decide

DISTRIBUTIONS = {
    "ratio:a": FloatDistribution(0, 0.8, step=0.05),
    "ratio:b": FloatDistribution(0, 0.8, step=0.05),
    "quant": CategoricalDistribution(("fp32", "int8")),
}


def _trial(number: int, a: float, b: float, value: float, accuracy: float, quant: str = "fp32") -> FrozenTrial:
    trial = create_trial(
        params={"ratio:a": a, "ratio:b": b, "quant": quant},
        distributions=DISTRIBUTIONS,
        value=accuracy,
        user_attrs={
            "candidate": {"accuracy": accuracy},
            "feasible": value <= 0.8,
            "decisions": {"latency.p50": {"value": value}},
        },
        state=TrialState.COMPLETE,
    )
    trial.number = number
    return trial


def test_a_best_far_under_the_threshold_is_refined_toward_the_base_aimed_under_the_threshold() -> None:
    trials = [_trial(0, 0, 0, 1.0, 0.99), _trial(1, 0.6, 0.4, 0.5, 0.90), _trial(2, 0.8, 0.8, 0.3, 0.70)]
    params, source = decide.toward_boundary(trials, {"latency.p50": 0.8}, step=0.05)
    assert source == 1  # the most accurate feasible trial, not the fastest
    # Linear between 1.0x (scale 0) and 0.5x (scale 1): 0.76x (5% under 0.8x) at scale 0.48; rounded up to the step.
    assert params == {"ratio:a": pytest.approx(0.3), "ratio:b": pytest.approx(0.2), "quant": "fp32"}


def test_no_refinement_without_slack_when_the_base_meets_it_or_when_the_plan_was_tried() -> None:
    base = _trial(0, 0, 0, 1.0, 0.99)
    assert decide.toward_boundary([base, _trial(1, 0.6, 0.4, 0.75, 0.9)], {"latency.p50": 0.8}, 0.05) is None
    met = _trial(0, 0, 0, 0.7, 0.99)
    assert decide.toward_boundary([met, _trial(1, 0.6, 0.4, 0.5, 0.9)], {"latency.p50": 0.8}, 0.05) is None
    tried = [base, _trial(1, 0.6, 0.4, 0.5, 0.9), _trial(2, 0.3, 0.2, 0.9, 0.95)]
    assert decide.toward_boundary(tried, {"latency.p50": 0.8}, 0.05) is None
    other_format = [base, _trial(1, 0.6, 0.4, 0.5, 0.9, quant="int8")]
    assert decide.toward_boundary(other_format, {"latency.p50": 0.8}, 0.05) is None


def test_every_budget_must_have_slack_and_the_tightest_sets_the_scale() -> None:
    def trial(number: int, a: float, p50: float, p99: float, accuracy: float) -> FrozenTrial:
        t = _trial(number, a, a, p50, accuracy)
        t.user_attrs["decisions"]["latency.p99"] = {"value": p99}
        return t

    trials = [trial(0, 0, 1.0, 1.0, 0.99), trial(1, 0.8, 0.4, 0.6, 0.9)]
    params, _ = decide.toward_boundary(trials, {"latency.p50": 0.8, "latency.p99": 0.8}, 0.05)
    # p50 alone would allow scale 0.4; p99 needs 0.6 (1.0 - 0.76) / (1.0 - 0.6): 0.8 x 0.6 = 0.48 -> 0.5.
    assert params["ratio:a"] == pytest.approx(0.5)
    assert decide.toward_boundary(trials, {"latency.p50": 0.8, "latency.p99": 0.65}, 0.05) is None
