"""The regression gate without a device: the statistics, the config, budgets, history, and the reports.

Observations here are built from hand-made latency samples through the same functions the device path uses
(Evidence, evaluate_metrics); the end-to-end runs on the real agent are in test_check_cli.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from junitparser import Error, Failure, JUnitXml, Skipped

from edgecompress.analysis import RegressionPolicy, compare_samples, compare_values, latency_stats, sample_statistic
from edgecompress.budgets import Evidence, parse_budgets
from edgecompress.device import Measurement, MeasureRequest
from edgecompress.errors import ConfigError
from edgecompress.gate import (
    Baseline,
    CheckResult,
    DeviceRun,
    RegressionSettings,
    budget_targets,
    budget_texts,
    confirm,
    confirm_side_by_side,
    evaluate,
    load_baseline,
    merge_budgets,
    parse_check_config,
)
from edgecompress.history import append_result, plot_trend, read_history, trend
from edgecompress.observe import Observation, evaluate_metrics
from edgecompress.report import junit_error_xml, junit_xml, markdown_summary

RNG = np.random.default_rng(7)


def sample_ms(median: float, n: int = 400, spread: float = 0.05) -> np.ndarray:
    """Latencies with a right-skewed spread around a median, like a quiet CPU."""
    return median * RNG.lognormal(0.0, spread, n)


# -- the two-sample test ---------------------------------------------------------------------------------------------


def test_a_clear_slowdown_is_significant_and_above_tolerance():
    result = compare_samples("latency.p50", sample_ms(1.0), sample_ms(1.3))
    assert result.regressed and result.significant
    assert 1.0 < result.ci_low < result.ratio < result.ci_high
    assert result.ratio == pytest.approx(1.3, rel=0.03)
    assert result.p_value is not None and result.p_value < 1e-6
    assert "regression" in result.describe() and "95% CI" in result.describe()


def test_two_draws_of_the_same_distribution_are_not_a_regression():
    result = compare_samples("latency.p50", sample_ms(1.0), sample_ms(1.0))
    assert not result.regressed and result.ci_low < 1.0 < result.ci_high


def test_a_significant_slowdown_below_the_tolerance_passes():
    base, slower = sample_ms(1.0, n=4000, spread=0.02), sample_ms(1.03, n=4000, spread=0.02)
    result = compare_samples("latency.p50", base, slower, RegressionPolicy(tolerance=0.05))
    assert result.significant and not result.regressed
    tight = compare_samples("latency.p50", base, slower, RegressionPolicy(tolerance=0.01))
    assert tight.regressed


def test_methods_and_the_fixed_seed():
    base, slower = sample_ms(1.0), sample_ms(1.2)
    for method in ("bootstrap", "mann-whitney", "both"):
        assert compare_samples("latency.mean", base, slower, RegressionPolicy(method=method)).regressed
    assert compare_samples("latency.p90", base, slower) == compare_samples("latency.p90", base, slower)
    with pytest.raises(ValueError, match="method"):
        RegressionPolicy(method="t-test")  # type: ignore[arg-type]


def test_run_to_run_spread_widens_the_interval():
    base, current = sample_ms(1.0), sample_ms(1.25)
    alone = compare_samples("latency.p50", base, current)
    noisy = compare_samples("latency.p50", base, current, baseline_runs=[1.0, 1.3, 0.8, 1.2, 0.9])
    quiet = compare_samples("latency.p50", base, current, baseline_runs=[1.0, 1.01, 0.99, 1.0])
    assert alone.regressed and alone.baseline_runs == 0
    # Earlier runs that moved by 20% between themselves: a 25% step is within that noise.
    assert not noisy.regressed and noisy.baseline_runs == 5 and noisy.ci_low < 1.0
    assert quiet.regressed and quiet.baseline_runs == 4 and quiet.run_spread is not None and quiet.run_spread < 0.02
    # Fewer than min_runs earlier runs: no spread estimate, the two-sample bootstrap alone.
    assert compare_samples("latency.p50", base, current, baseline_runs=[1.0, 1.3]).baseline_runs == 0


def test_statistics_behind_the_metrics():
    x = np.arange(1, 1001, dtype=float)
    assert float(sample_statistic("latency.p999")(x)) == pytest.approx(np.percentile(x, 99.9))
    assert float(sample_statistic("latency.p50")(x)) == pytest.approx(500.5)
    assert sample_statistic("latency.max") is None and sample_statistic("energy") is None
    with pytest.raises(ValueError, match="at least 2"):
        compare_samples("latency.p50", [1.0], [1.0, 2.0])


def test_size_is_compared_exactly():
    assert compare_values("size", 1000, 1100, 0.05).regressed
    assert not compare_values("size", 1000, 1040, 0.05).regressed
    # Read in their units, as the budgets print them (not 5.906e+04).
    assert compare_values("size", 59060, 61000, 0.05).describe().startswith("size 59.1 kB -> 61.0 kB, ratio 1.033")


# -- configuration ---------------------------------------------------------------------------------------------------


def test_budgets_as_a_list_or_a_table_read_the_same():
    as_list = parse_check_config('budgets = ["latency.p99<=20ms", "size<=2MB", "latency.mean<0.9x"]', "a.toml")
    as_table = parse_check_config(
        '[budgets]\n"latency.p99" = "20ms"\nsize = "2MB"\n"latency.mean" = "<0.9x"\n', "b.toml"
    )
    dotted = parse_check_config('[budgets]\nlatency.p99 = 20\nsize = 2000000\nlatency.mean = "0.9x"\n', "c.toml")
    keys = [(b.key, b.limit, b.relative) for b in as_list.budgets()]
    assert keys == [(b.key, b.limit, b.relative) for b in as_table.budgets()]
    # Bare numbers are in canonical units; TOML groups dotted keys, so only the order differs.
    assert sorted(keys) == sorted((b.key, b.limit, b.relative) for b in dotted.budgets())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("budgets = 3", "must be a list of strings or a table"),
        ("[budgets]\nsize = true", "give a limit"),
        ('budgets = ["latency.p99 20ms"]', "not of the form"),
        ("[check]\nrunz = 3", "check.runz"),
        ('[check]\nbudgets = ["size<=1MB"]', "budgets go at the top level"),
        ('[check.regression]\nmetrics = ["energy"]', "regression metric 'energy'"),
        ('[check.regression]\ntolerance = "five"', "not a fraction"),
        ("[check\n", "not valid TOML"),
    ],
)
def test_config_errors_name_the_file_and_the_key(text, message):
    with pytest.raises(ConfigError, match=message) as caught:
        parse_check_config(text, "edgecompress.toml")
    assert str(caught.value).startswith("edgecompress.toml")


def test_tolerance_flags_and_merged_budgets():
    settings = RegressionSettings().with_tolerances(["10%", "latency.p99=0.2"])
    assert settings.tolerance == pytest.approx(0.10)
    assert settings.policy("latency.p50").tolerance == pytest.approx(0.10)
    assert settings.policy("latency.p99").tolerance == pytest.approx(0.20)
    merged = merge_budgets(parse_budgets(["latency.p99<=20ms", "size<=2MB"]), parse_budgets(["latency.p99<=30ms"]))
    assert [b.text for b in merged] == ["latency.p99<=30ms", "size<=2MB"]
    assert budget_texts({"latency": {"p99": "20ms"}}) == ["latency.p99<=20ms"]


# -- budgets and verdicts from one measurement -----------------------------------------------------------------------

HELLO = {
    "board": "test board",
    "agent_version": "0.1.0",
    "runtimes": [{"name": "onnxruntime", "version": "1.20.0", "providers": ["CPUExecutionProvider"]}],
}


def device_run(latencies_ms: np.ndarray, budgets=(), size_bytes: int = 50_000) -> DeviceRun:
    measurement = Measurement(
        sha256="ab" * 32,
        latencies_ns=tuple(int(x * 1e6) for x in latencies_ms),
        load_ns=1_000_000,
        first_inference_ns=2_000_000,
        raw={"providers": ["CPUExecutionProvider"], "window_ns": int(latencies_ms.sum() * 1e6)},
    )
    stats = latency_stats(measurement)
    evidence = Evidence(size_bytes=size_bytes, measurement=measurement, extra={"_latency": stats})
    observation = Observation(
        sha256=measurement.sha256,
        size_bytes=size_bytes,
        values=evaluate_metrics(evidence, budgets),
        latency=stats,
        measurement=measurement,
    )
    return DeviceRun(observation=observation, hello=HELLO, started_utc="2026-01-01T02:00:00Z")


def check(
    latencies_ms: np.ndarray, budget_texts_: list[str], baseline: Baseline | None = None, device: str = "pi"
) -> CheckResult:
    budgets = parse_budgets(budget_texts_)
    return evaluate(
        device_run(latencies_ms, budgets),
        model="net.onnx",
        model_path="build/net.onnx",
        device=device,
        spec=MeasureRequest(),
        budgets=budgets,
        targets=budget_targets(budgets, baseline),
        regression=RegressionSettings(),
        baseline=baseline,
    )


def test_budget_outcomes_and_exit_codes():
    passing = check(sample_ms(2.0), ["latency.p50<=5ms", "size<=1MB"])
    assert passing.passed and passing.exit_code == 0 and passing.problems() == []
    assert [r.status for r in passing.regressions] == ["skipped"]
    failing = check(sample_ms(8.0), ["latency.p50<=5ms", "size<=1MB"])
    assert failing.exit_code == 1
    assert failing.problems() == [f"FAIL latency.p50<=5ms: {failing.budgets[0].message}"]
    assert "% over" in failing.budgets[0].message
    # Energy on a measurement without a power trace has no value: the budget cannot be checked (exit 2).
    unmeasurable = check(sample_ms(2.0), ["latency.p50<=5ms", "energy<=10mJ"])
    assert unmeasurable.exit_code == 2 and unmeasurable.budgets[1].status == "error"


def test_relative_budgets_need_a_baseline():
    budgets = parse_budgets(["latency.p50<=1.1x"])
    with pytest.raises(ConfigError, match="there is none"):
        budget_targets(budgets, None)
    base = Baseline.from_result_json(check(sample_ms(2.0), []).to_json(), "night-1.json")
    assert budget_targets(budgets, base)["latency.p50"] == pytest.approx(1.1 * base.values["latency.p50"])
    no_value = Baseline.from_result_json({**check(sample_ms(2.0), []).to_json(), "values": {}}, "old.json")
    with pytest.raises(ConfigError, match="has no latency.p50"):
        budget_targets(budgets, no_value)


def test_regression_against_a_baseline_and_notes():
    base = Baseline.from_result_json(check(sample_ms(2.0), []).to_json(), "night-1.json")
    slower = check(sample_ms(3.0), ["latency.p50<=1.2x"], baseline=base, device="pi-2")
    assert slower.exit_code == 1 and [o.status for o in slower.outcomes] == ["fail", "fail"]
    assert slower.regressions[0].result is not None and slower.regressions[0].result.ratio == pytest.approx(1.5, 0.05)
    assert any("measured on pi, this run on pi-2" in note for note in slower.notes)
    assert any("same model bytes" in note for note in slower.notes)


# -- results, baselines, history ---------------------------------------------------------------------------------------


def test_json_round_trip_and_baseline_files(tmp_path):
    result = check(sample_ms(2.0), ["latency.p50<=5ms"])
    assert CheckResult.from_json(json.loads(json.dumps(result.to_json()))) == result
    path = tmp_path / "night.json"
    path.write_text(json.dumps(result.to_json()))
    base = load_baseline(path)
    assert (
        base.latencies_ns == result.latencies_ns
        and base.values == result.values
        and base.run_values == (result.values,)
    )
    path.write_text(json.dumps({"model": "bench output, not a check"}))
    with pytest.raises(ConfigError, match="not an edgecompress check result"):
        load_baseline(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_baseline(tmp_path / "missing.json")


def test_history_baseline_is_the_last_passing_run_of_the_same_model_device_and_runtime(tmp_path):
    path = tmp_path / "history.jsonl"
    assert read_history(path).entries == ()
    with pytest.raises(ConfigError, match="does not exist"):
        read_history(path, must_exist=True)
    first = check(sample_ms(2.0), [])
    second = check(sample_ms(2.1), [])
    failed = check(sample_ms(9.0), ["latency.p50<=5ms"])
    elsewhere = check(sample_ms(1.0), [], device="jetson")
    for result in (first, second, failed, elsewhere):
        append_result(path, result)
    with path.open("a") as stream:
        stream.write('{"schema": "edgecompress.check/1", "model": "trunc')  # a job killed mid-write
    history = read_history(path)
    assert len(history.entries) == 4 and len(history.problems) == 1 and "line 5" in history.problems[0]
    base = history.baseline("net.onnx", "pi", "onnxruntime")
    assert base is not None and base.source.endswith("line 2") and base.latencies_ns == second.latencies_ns
    assert base.run_values == (first.values, second.values)  # the failing run is no reference
    assert history.baseline("net.onnx", "pi", "onnxruntime", runs=1).run_values == (second.values,)
    assert history.baseline("net.onnx", "pi", "tflite") is None
    assert history.series() == [("net.onnx", "pi", "onnxruntime"), ("net.onnx", "jetson", "onnxruntime")]
    rows = trend(history.select("net.onnx", "pi"), ["latency.p50"])
    assert [r.passed for r in rows] == [True, True, False] and rows[2].failed == ("latency.p50<=5ms",)
    png = plot_trend(rows, ["latency.p50"], tmp_path / "trend.png", "net.onnx on pi")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_result_appended_after_a_cut_line_is_kept(tmp_path):
    path = tmp_path / "history.jsonl"
    rng = np.random.default_rng(1)  # not the module's RNG: the samples of the tests below stay as they were
    first, second = (check(median * rng.lognormal(0.0, 0.05, 400), []) for median in (2.0, 2.1))
    append_result(path, first)
    with path.open("a") as stream:
        stream.write('{"schema": "edgecompress.check/1", "model": "trunc')  # a job killed mid-write, no newline
    append_result(path, second)
    history = read_history(path)
    assert history.entries == (first, second)
    assert len(history.problems) == 1 and "line 2" in history.problems[0]
    assert history.line_numbers == (1, 3)


# -- reports ---------------------------------------------------------------------------------------------------------


def test_junit_and_markdown_reports(tmp_path):
    base = Baseline.from_result_json(check(sample_ms(2.0), []).to_json(), "night-1.json")
    result = check(sample_ms(3.0), ["latency.p50<=5ms", "latency.p99<=1ms", "energy<=1mJ"], baseline=base)
    path = tmp_path / "junit.xml"
    path.write_text(junit_xml(result))
    xml = JUnitXml.fromfile(str(path))
    suite = next(iter(xml))
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (4, 2, 1, 0)
    cases = {case.name: case for case in suite}
    passed = cases["budget latency.p50<=5ms"]
    assert passed.is_passed and "latency.p50 = " in passed.system_out
    assert isinstance(cases["budget latency.p99<=1ms"].result[0], Failure)
    assert isinstance(cases["budget energy<=1mJ"].result[0], Error)
    regression = cases["regression latency.p50"].result[0]
    assert isinstance(regression, Failure) and "ratio 1.5" in regression.message
    properties = {p.name: p.value for p in suite.properties()}
    assert properties["runtime_version"] == "1.20.0" and properties["baseline"] == "night-1.json"
    markdown = markdown_summary(result)
    assert markdown.startswith("### ❌") and "| ❌ | `latency.p99<=1ms` |" in markdown and "**1.5" in markdown
    first = check(sample_ms(2.0), [])
    skipped = next(iter(JUnitXml.fromstring(junit_xml(first))))
    assert skipped.skipped == 1 and isinstance(next(iter(skipped)).result[0], Skipped)
    error = next(iter(JUnitXml.fromstring(junit_error_xml("net.onnx", "pi", "cannot reach pi"))))
    assert error.errors == 1 and next(iter(error)).result[0].message == "cannot reach pi"


def test_a_flagged_slowdown_counts_only_when_a_second_measurement_confirms_it():
    base = Baseline.from_result_json(check(sample_ms(2.0), []).to_json(), "night-1.json")
    disturbed = check(sample_ms(3.0), [], baseline=base)
    assert disturbed.exit_code == 1
    cleared = confirm(disturbed, check(sample_ms(2.0), [], baseline=base))
    assert cleared.exit_code == 0 and "not confirmed" in cleared.regressions[0].message
    assert cleared.extra["suspected"][0]["regressions"][0]["status"] == "fail"
    confirmed = confirm(disturbed, check(sample_ms(3.0), [], baseline=base))
    assert confirmed.exit_code == 1 and "(confirmed; first measurement: ratio 1.5" in confirmed.regressions[0].message


def test_side_by_side_confirmation_judges_the_two_models_measured_alternately():
    base = Baseline.from_result_json(check(sample_ms(2.0), []).to_json(), "night-1.json")
    disturbed = check(sample_ms(3.0), ["latency.p50<=5ms"], baseline=base)
    settings = RegressionSettings()

    def rounds(baseline_ms: list[float], current_ms: list[float]) -> list[tuple[list[int], list[int]]]:
        return [
            ([int(x * 1e6) for x in sample_ms(b, 100)], [int(x * 1e6) for x in sample_ms(c, 100)])
            for b, c in zip(baseline_ms, current_ms, strict=True)
        ]

    # The device is slower now for both models alike, and a burst of load hit one round: not the model's fault.
    cleared = confirm_side_by_side(disturbed, rounds([3.0, 3.0, 3.0, 3.0, 3.0], [3.0, 4.5, 3.0, 3.0, 3.0]), settings)
    assert cleared.exit_code == 0 and "not confirmed" in cleared.regressions[0].message
    assert cleared.regressions[0].result is not None and cleared.regressions[0].result.method == "paired"
    assert cleared.budgets == disturbed.budgets and cleared.extra["side_by_side"]["first"][0]["status"] == "fail"
    confirmed = confirm_side_by_side(disturbed, rounds([2.0, 2.5, 2.0, 2.2, 2.0], [3.0, 3.7, 3.0, 3.3, 3.0]), settings)
    assert confirmed.exit_code == 1 and "confirmed; the first measurement" in confirmed.regressions[0].message
    assert "5 alternating rounds" in confirmed.regressions[0].message
