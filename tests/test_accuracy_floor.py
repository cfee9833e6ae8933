"""An accuracy floor users can state (accuracy.drop<=1pt or <=1%), and the plain warning when the final model's
accuracy collapsed without one: parsing, the search's constraint, the verdict, check, the report and one tune run."""

from __future__ import annotations

import json
import os

import pytest
from clirun import edgecompress
from conftest import export_onnx, tiny_convnet

from edgecompress import verdict
from edgecompress.artifact import Artifact
from edgecompress.budgets import REFERENCE_ACCURACY, accuracy_drop_points, format_value, parse_budget, parse_budgets
from edgecompress.compress import CompressionPlan
from edgecompress.config import TuneConfig
from edgecompress.errors import BudgetError, ConfigError
from edgecompress.gate import budget_targets, parse_check_config
from edgecompress.report import tune_report_html
from edgecompress.search._candidate import Candidate
from edgecompress.search._decide import cooling_plan

ORIGINAL = {REFERENCE_ACCURACY: 0.992, "latency.p50": 10.0, "size": 60_000.0, "accuracy.drop": 0.0}


def candidate(accuracy: float, size: int = 1000) -> Candidate:
    return Candidate(CompressionPlan(), Artifact.from_bytes(b"\0" * size, "onnx"), accuracy, 0, 0, 0.0, 0.0)


def test_a_floor_in_points_and_one_in_percent_of_the_original():
    points, percent = parse_budgets(["accuracy.drop<=1pt", "size<=50kB"])[0], parse_budget("accuracy.drop <= 2%")
    assert (points.limit, points.relative, points.spec.on_host) == (1.0, None, True)
    assert (percent.limit, percent.relative) == (None, 0.02)
    assert parse_budget("accuracy.drop<=0.5pts").limit == 0.5
    assert parse_budget("accuracy.drop<=0pt").limit == 0.0  # nothing lost at all is a floor too
    assert format_value(1.0, points.unit) == "1.00 pt"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("accuracy.drop<=1", "percentage points (e.g. 'accuracy.drop<=1pt') or in percent"),
        ("accuracy.drop<=0.01x", "percentage points"),
        ("accuracy.drop<=1ms", "percentage points"),
        ("accuracy.drop<=150pt", "more than 100 points"),
        ("accuracy.drop<=101%", "more than 100%"),
        ("accuracy.drop@0.5<=1pt", "takes no @parameter"),
        ("latency.p50<=50%", "% is only for an accuracy floor"),
        ("size<=1pt", "does not fit size"),
    ],
)
def test_a_bad_floor_is_one_clear_line(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_budget(text)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_floor_holds_from_the_first_round_while_the_device_budget_cools():
    config = TuneConfig(example="digits", budgets=["latency.p50<=5ms"], rounds=3)
    budgets = parse_budgets(["latency.p50<=5ms", "accuracy.drop<=1%"])
    targets, schedule = cooling_plan(budgets, ORIGINAL, config)
    assert targets["accuracy.drop"] == pytest.approx(0.992)  # 1% of the original's 99.2%, in points
    assert schedule["accuracy.drop"] == [pytest.approx(0.992)] * 3
    assert schedule["latency.p50"][0] > schedule["latency.p50"][1] > schedule["latency.p50"][2] == 5.0
    with pytest.raises(ConfigError, match="original model's accuracy is unknown"):
        cooling_plan(budgets, {k: v for k, v in ORIGINAL.items() if k != REFERENCE_ACCURACY}, config)


def test_a_trial_over_the_floor_is_infeasible_and_known_so_on_the_host():
    budgets = parse_budgets(["latency.p50<=0.7x", "accuracy.drop<=1pt"])
    thresholds = {"latency.p50": 7.0, "accuracy.drop": 1.0}
    host_thresholds = {"accuracy.drop": 1.0}
    collapsed = candidate(0.031).host_values(budgets, ORIGINAL)
    assert collapsed == {"accuracy.drop": pytest.approx(96.1)}
    # What the pipeline asks before any device time, and the constraint the sampler is told.
    assert not verdict.feasible(collapsed, host_thresholds)
    assert verdict.constraints(collapsed, thresholds, {})["accuracy.drop"] == pytest.approx(95.1)
    fine = candidate(0.99).host_values(budgets, ORIGINAL)
    assert verdict.feasible(fine, host_thresholds)
    assert verdict.constraints(fine, thresholds, {})["accuracy.drop"] < 0
    # Without the original's accuracy the drop is no evidence (absent), never a missing value that fails the trial.
    assert candidate(0.031).host_values(budgets) == {}


def test_the_final_verdict_is_not_met_below_the_floor():
    floor = parse_budget("accuracy.drop<=1pt")
    value = candidate(0.031).host_values([floor], ORIGINAL)[floor.key]
    judged = verdict.judge(floor.key, value, floor.target(None))
    assert not judged.met and judged.reason == "accuracy.drop = 96.10 pt > 1.00 pt"
    assert verdict.overall({floor.key: judged}, {}, []) == "not met"


@pytest.mark.parametrize(
    ("original", "accuracy", "points"),
    [(0.909, 0.899, 1.0), (0.909, 0.901, 0.8), (0.909, 0.898, 1.1), (0.5, 0.6, -10.0)],
)
def test_drop_points_are_exact_to_the_validation_sets_resolution(original, accuracy, points):
    assert accuracy_drop_points(original, accuracy) == points


def test_a_model_exactly_at_the_floor_meets_it_and_exactly_ten_points_under_is_not_collapsed():
    """0.909 - 0.899 is 1.0000000000000009 points in floats: 899 of 1,000 images right against 909 is 1 point."""
    floor = parse_budget("accuracy.drop<=1pt")
    value = candidate(0.899).host_values([floor], {**ORIGINAL, REFERENCE_ACCURACY: 0.909})[floor.key]
    assert verdict.judge(floor.key, value, floor.target(None)).met
    assert not verdict.accuracy_collapsed(0.8, 0.7, floor_stated=False)  # 10.000000000000009 unrounded


def test_collapsed_is_more_than_ten_points_below_the_original_without_a_floor():
    assert verdict.accuracy_collapsed(0.992, 0.031, floor_stated=False)
    assert verdict.accuracy_collapsed(0.992, 0.891, floor_stated=False)  # 10.1 points
    assert not verdict.accuracy_collapsed(0.992, 0.892, floor_stated=False)  # 10 points: not more than 10
    assert not verdict.accuracy_collapsed(0.992, 0.031, floor_stated=True)  # the floor decides, in the verdict
    assert verdict.collapse_message(0.992, 0.031) == (
        "accuracy collapsed: 3.1% against the original's 99.2%; state a floor with --budget 'accuracy.drop<=1pt'"
    )


def test_the_report_says_the_accuracy_collapsed():
    results = {
        "budgets": [parse_budget("latency.p50<=0.7x").to_json()],
        "base": {"candidate": {"accuracy": 0.992}, "values": {}, "targets": {}},
        "final": {"met": True, "which": "fine-tuned", "accuracy": 0.031, "accuracy_collapsed": True},
    }
    assert "accuracy collapsed: 3.1% against the original&#x27;s 99.2%" in tune_report_html(results)


def test_check_refuses_an_accuracy_floor_before_any_device_time(tmp_path):
    with pytest.raises(BudgetError, match="check cannot judge accuracy.drop<=1pt"):
        budget_targets([parse_budget("accuracy.drop<=1pt")], None)
    model = tmp_path / "net.onnx"
    model.write_bytes(export_onnx(tiny_convnet(8), (1, 3, 32, 32)))
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    result = edgecompress("check", str(model), "--device", "local", "--budget", "accuracy.drop<=1pt", env=env)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "an accuracy floor is judged by tune" in lines[0]


def test_a_run_whose_model_collapses_under_a_floor_ends_not_met(tmp_path):
    # size<=17kB is met only by a heavily pruned plan, which without fine-tuning keeps about a quarter of the
    # original's accuracy (99.3% -> 25.3% with this seed): without a floor tune would answer "met".
    out = tmp_path / "run"
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), COLUMNS="160")
    result = edgecompress(
        "tune",
        "--example",
        "digits",
        "--budget",
        "size<=17kB",
        "--budget",
        "accuracy.drop<=1pt",
        "--rounds",
        "1",
        "--trials-per-round",
        "3",
        "--finetune-steps",
        "0",
        "--val-limit",
        "300",
        "--runs",
        "20",
        "--min-seconds",
        "0",
        "--warmup-seconds",
        "0.05",
        "--no-validate",
        "--out",
        str(out),
        env=env,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "budgets not met" in result.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["base"]["targets"]["accuracy.drop"] == 1.0
    assert results["base"]["thresholds"]["accuracy.drop"] == [1.0]
    final = results["final"]
    assert final["met"] is False and final["outcome"] == "not met"
    assert final["rejected"] and all("accuracy.drop = " in r["summary"] for r in final["rejected"])
    original = results["base"]["candidate"]["accuracy"]
    # A candidate more than a point below the original is rejected by the floor, whatever its size.
    collapsed = [r for r in final["rejected"] if r["accuracy"] < original - 0.01]
    assert all("pt > 1.00 pt" in r["summary"] for r in collapsed), collapsed
    assert not (out / "model.onnx").exists()
    # The search judged the floor on the host: a trial over it is infeasible and got no device time.
    trials = [t for t in results["trials"] if t["state"] == "COMPLETE"]
    assert all("accuracy.drop" in t["values"] for t in trials)
    over = [t for t in trials if t["values"]["accuracy.drop"] > 1.0]
    assert over, trials
    assert all(t["feasible"] is False and t["latency"] is None for t in over)
    # check.toml leaves the floor out, saying why, and stays a valid check configuration.
    check = (out / "check.toml").read_text()
    assert "# accuracy.drop<=1pt: not re-judged by check" in check
    assert [b.metric for b in parse_check_config(check, "check.toml").budgets()] == ["size"]
