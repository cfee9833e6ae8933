"""The verdict module without a device: one rule for a missing value, feasibility, ratios to a reference, and the
"needs another window" test on hand-made latency samples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgecompress import verdict
from edgecompress.budgets import parse_budget
from edgecompress.config import resolve_device
from edgecompress.device import Measurement, measure_request
from edgecompress.gate._run import apply_budget
from edgecompress.observe import Reference, observe


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


class ScriptedDevice:
    """Stands in for a Session where a test needs known latencies in a known order (a real device is random): each
    model's windows come from its own list, and every call is logged."""

    def __init__(self, windows: dict[str, list[list[float]]]):
        self.windows = {sha: list(w) for sha, w in windows.items()}
        self.calls: list[str] = []

    def measure(self, sha256, spec):
        self.calls.append(sha256)
        latencies_ms = self.windows[sha256].pop(0)
        return Measurement(sha256, tuple(int(x * 1e6) for x in latencies_ms), 0, 0, {})


def windows_around(median_ms: float, spreads: list[float], n: int = 200, seed: int = 0) -> list[list[float]]:
    """Windows whose typical latency moves by the given factors (a loaded device), each with a little noise."""
    rng = np.random.default_rng(seed)
    return [list(median_ms * f * rng.lognormal(0.0, 0.02, n)) for f in spreads]


A, B = "a" * 64, "b" * 64
REQUEST = measure_request(resolve_device("local"))


def test_a_clear_budget_is_decided_in_the_minimum_of_windows():
    device = ScriptedDevice({A: windows_around(10.0, [1.0, 1.05, 0.95, 1.0])})
    budgets = [parse_budget("latency.p50<=20ms"), parse_budget("latency.mean<=5ms")]
    obs = observe(device, A, 1, REQUEST, budgets, thresholds={"latency.p50": 20.0, "latency.mean": 5.0})
    assert device.calls == [A, A]
    assert obs.decisions["latency.p50"].outcome == verdict.MET
    assert obs.decisions["latency.p50"].upper < 20.0
    assert obs.decisions["latency.mean"].outcome == verdict.VIOLATED
    assert obs.decisions["latency.mean"].lower > 5.0
    assert obs.details["windows"]["count"] == 2


def test_a_tail_budget_takes_the_windows_an_order_statistic_bound_needs_and_bimodal_windows_are_not_met():
    # p99 per window on a board under a CPU quota: some windows escape the stalls (0.2 ms), most do not (4.2 ms).
    # Two quiet windows in a row used to make a t bound call it met; the median window is over the budget.
    rng = np.random.default_rng(5)
    windows = []
    for stalled in [False, False, True, True, False, True, True, True, True, True]:
        w = list(0.1 * rng.lognormal(0.0, 0.05, 500))
        if stalled:
            w[:8] = [4.2] * 8  # 1.6% of the runs wait out the quota
        windows.append(w)
    device = ScriptedDevice({A: windows})
    budget = parse_budget("latency.p99<=3.69ms")
    plan = verdict.WindowPlan(min_windows=2, max_windows=10)
    obs = observe(device, A, 1, REQUEST, [budget], thresholds={"latency.p99": 3.69}, windows=plan)
    decision = obs.decisions["latency.p99"]
    assert decision.method == "order"
    assert decision.outcome != verdict.MET
    assert len(device.calls) >= 5
    clear = ScriptedDevice({A: windows_around(1.0, [1.0] * 6)})
    obs = observe(clear, A, 1, REQUEST, [budget], thresholds={"latency.p99": 3.69}, windows=plan)
    assert obs.decisions["latency.p99"].outcome == verdict.MET
    assert len(clear.calls) == 5  # the fewest windows a 95% bound on the median window can come from


def test_median_bounds_are_the_sign_tests_order_statistics():
    assert verdict.median_bounds([1.0, 2.0, 3.0, 4.0], 0.95) == (2.5, None, None)
    assert verdict.median_bounds([5.0, 1.0, 3.0, 2.0, 4.0], 0.95) == (3.0, 1.0, 5.0)
    assert verdict.median_bounds([float(x) for x in range(1, 11)], 0.95) == (5.5, 2.0, 9.0)


def test_an_unclear_budget_takes_more_windows_and_ends_inconclusive_never_met():
    factors = [0.9, 1.1, 0.95, 1.08, 0.92, 1.05, 1.0, 0.97]
    device = ScriptedDevice({A: windows_around(10.0, factors)})
    budget = parse_budget("latency.p50<=10ms")
    plan = verdict.WindowPlan(min_windows=2, max_windows=5)
    obs = observe(device, A, 1, REQUEST, [budget], thresholds={"latency.p50": 10.0}, windows=plan)
    decision = obs.decisions["latency.p50"]
    assert len(device.calls) == 5
    assert decision.outcome == verdict.INCONCLUSIVE and not decision.met
    assert decision.lower < 10.0 < decision.upper
    assert "inconclusive" in decision.describe("ms")
    # The pooled sample holds every window.
    assert obs.latency.count == 5 * 200


def test_a_relative_budget_is_judged_on_alternating_windows_of_the_original():
    # The device slows down by half between windows: against an L0 taken in a quiet minute the candidate would
    # look as slow as the original; in pairs its ratio is 0.7 every time.
    load = [1.0, 1.5, 1.5, 1.0]
    device = ScriptedDevice({A: windows_around(10.0, load, seed=1), B: windows_around(7.0, load, seed=2)})
    budget = parse_budget("latency.p50<=0.8x")
    reference = Reference(A, 1, frozenset({"latency.p50"}))
    obs = observe(device, B, 1, REQUEST, [budget], thresholds={"latency.p50": 0.8}, reference=reference)
    decision = obs.decisions["latency.p50"]
    assert decision.paired and decision.outcome == verdict.MET
    assert decision.value == pytest.approx(0.7, rel=0.02)
    assert device.calls == [A, B, B, A]  # the original first, then the candidate first
    assert len(obs.details["windows"]["reference_values"]["latency.p50"]) == 2


def test_a_budget_the_device_cannot_report_fails_with_no_value():
    device = ScriptedDevice({A: windows_around(10.0, [1.0, 1.0])})
    budget = parse_budget("energy<=1mJ")
    obs = observe(device, A, 1, REQUEST, [budget], thresholds={"energy": 1.0})
    decision = obs.decisions["energy"]
    assert decision.outcome == verdict.VIOLATED and decision.value is None and decision.violation > 0


def test_window_bounds_are_one_sided_t_bounds_on_the_log_scale():
    center, lower, upper = verdict.window_bounds([10.0, 10.0, 10.0], 0.95)
    assert center == pytest.approx(10.0) and lower == pytest.approx(10.0) and upper == pytest.approx(10.0)
    center, lower, upper = verdict.window_bounds([8.0, 12.0], 0.95)
    assert center == pytest.approx(math.sqrt(96))
    assert lower < 8.0 and upper > 12.0  # two windows that disagree by 50% decide nothing near them
    assert verdict.window_bounds([5.0], 0.95)[1:] == (None, None)
