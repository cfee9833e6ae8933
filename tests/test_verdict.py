"""The verdict module without a device: one rule for a missing value, feasibility, ratios to a reference, and the
"needs another window" test on hand-made latency samples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgecompress import verdict
from edgecompress.budgets import parse_budget
from edgecompress.device import Measurement
from edgecompress.gate._run import apply_budget
from edgecompress.observe import pooled_evidence


def test_judge_met_over_and_missing():
    met = verdict.judge("latency.p50", 1.0, 2.0)
    assert met.met and met.violation == -1.0 and "<=" in met.reason
    over = verdict.judge("latency.p50", 3.0, 2.0)
    assert not over.met and over.violation == 1.0 and ">" in over.reason
    for value in (None, math.nan):
        lacking = verdict.judge("energy", value, 40.0)
        assert not lacking.met and lacking.missing and lacking.violation > 0
        assert lacking.reason == f"energy {verdict.NO_VALUE}"


def test_one_missing_value_rule_for_the_sampler_and_for_the_final_answer():
    thresholds = {"size": 1000.0, "latency.p50": 2.0}
    # Never asked of the device (the key is absent): no evidence for the sampler, but never "met".
    host_only = {"size": 500.0}
    assert verdict.violations(host_only, thresholds) == {"size": -500.0, "latency.p50": 0.0}
    assert verdict.feasible(host_only, thresholds) and not verdict.meets(host_only, thresholds)
    assert verdict.missing(host_only, thresholds) == []
    # Asked and not reported: a violation, named by ``missing``, and never met.
    lacking = {"size": 500.0, "latency.p50": None}
    assert verdict.violations(lacking, thresholds)["latency.p50"] > 0
    assert verdict.missing(lacking, thresholds) == ["latency.p50"]
    assert not verdict.feasible(lacking, thresholds) and not verdict.meets(lacking, thresholds)
    assert verdict.meets({"size": 999.0, "latency.p50": 2.0}, thresholds)


def test_the_gate_decides_through_the_same_rule():
    budget = parse_budget("latency.p99<=2ms")
    assert apply_budget(budget, 2.0, 1.5).status == "pass"
    assert apply_budget(budget, 2.0, 2.5).status == "fail" and "25.0% over" in apply_budget(budget, 2.0, 2.5).message
    assert apply_budget(budget, 2.0, None).status == "error"
    assert apply_budget(budget, 2.0, math.nan).status == "error"


def test_relative_violation_and_load():
    thresholds = {"latency.p50": 2.0, "size": 100.0}
    assert verdict.relative_violation({"latency.p50": 3.0, "size": 50.0}, thresholds) == pytest.approx(0.5)
    assert verdict.relative_violation({"latency.p50": 1.0, "size": 50.0}, thresholds) == 0.0
    assert verdict.load({"latency.p50": 1.0, "size": 50.0}, thresholds) == pytest.approx(1.0)


def test_ratios_to_a_reference_and_slower_on_every_budget():
    ratios = verdict.ratios({"a": 3.0, "b": 1.0, "c": None}, {"a": 2.0, "b": 1.0, "c": 1.0}, ["a", "b", "c"])
    assert ratios == {"a": 1.5, "b": 1.0, "c": None}
    assert verdict.slower_on_every({"a": 1.5, "b": 1.2}, 0.1)
    assert not verdict.slower_on_every({"a": 1.5, "b": 1.05}, 0.1)
    assert not verdict.slower_on_every({"a": 1.5, "b": None}, 0.1)
    assert not verdict.slower_on_every({}, 0.1)


def _evidence(latencies_ms: np.ndarray):
    ns = tuple(int(x * 1e6) for x in latencies_ms)
    return pooled_evidence(1000, [Measurement("0" * 64, ns, 1000, 2000, {})])


def test_another_window_only_while_the_interval_straddles_the_threshold():
    rng = np.random.default_rng(3)
    evidence = _evidence(2.0 * rng.lognormal(0.0, 0.05, 200))
    budgets = [parse_budget("latency.p50<=1ms"), parse_budget("latency.mean<=1ms")]
    low, high = verdict.confidence_interval(evidence, budgets[0], 0.95)
    assert low < 2.0 < high
    assert verdict.straddling(evidence, budgets, {"latency.p50": 5.0, "latency.mean": 0.5}, 0.95) == []
    assert verdict.straddling(evidence, budgets, {"latency.p50": 2.0, "latency.mean": 2.0}, 0.95) == [
        "latency.p50",
        "latency.mean",
    ]
    assert verdict.straddling(evidence, budgets, None, 0.95) == []
    # A budget the device cannot give an interval for (size) is never straddling.
    assert verdict.straddling(evidence, [parse_budget("size<=1kB")], {"size": 1000.0}, 0.95) == []
