"""edgecompress check and history end to end: the real CLI, the real agent, real models; every exit code.

Kept short: a fast local profile (little warm-up), a few dozen runs per measurement, and three device runs in all.
The "unchanged model never flags a regression" property needs default settings and minutes: it lives in
benchmarks/check_stability.py, with its results in docs/ci.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import export_onnx, tiny_convnet
from junitparser import Error, Failure, JUnitXml, Skipped

FAST_PROFILE = """
name = "fast-local"
transport = "local"
[measure]
warmup_runs = 3
warmup_seconds = 0.0
runs = 40
min_seconds = 0.2
[power]
source = "none"
"""


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgecompress", *args], capture_output=True, text=True, env=env, timeout=300
    )


def suite_cases(path: Path) -> dict[str, object]:
    """Test cases by name, read back with junitparser as a CI server would."""
    xml = JUnitXml.fromfile(str(path))
    return {case.name: case for suite in xml for case in suite}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("check")
    narrow = folder / "net.onnx"
    narrow.write_bytes(export_onnx(tiny_convnet(8), (1, 3, 32, 32)))
    wide = folder / "net-wide.onnx"  # the same network 8x wider: ~60x the arithmetic, clearly slower
    wide.write_bytes(export_onnx(tiny_convnet(64), (1, 3, 32, 32)))
    profile = folder / "fast-local.toml"
    profile.write_text(FAST_PROFILE)
    config = folder / "edgecompress.toml"
    config.write_text('[check]\nruns = 40\n\n[budgets]\n"latency.p50" = "500ms"\nsize = "1MB"\n')
    return {"folder": folder, "narrow": narrow, "wide": wide, "profile": profile, "config": config}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return dict(os.environ, XDG_CACHE_HOME=str(tmp_path_factory.mktemp("cache")), COLUMNS="160")


@pytest.fixture(scope="module")
def first_run(workspace: dict[str, Path], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The narrow model, passing its budgets: no baseline yet, so the regression test is skipped."""
    folder = workspace["folder"]
    return run_cli(
        "check",
        str(workspace["narrow"]),
        "--device",
        str(workspace["profile"]),
        "--config",
        str(workspace["config"]),
        "--budget",
        "latency.p99<=2s",
        "--history",
        str(folder / "history.jsonl"),
        "--junit",
        str(folder / "first.xml"),
        "--json",
        str(folder / "first.json"),
        "--markdown",
        str(folder / "first.md"),
        env=env,
    )


@pytest.fixture(scope="module")
def slower_run(first_run, workspace: dict[str, Path], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The wide model under the narrow one's name, against the first run's JSON as baseline."""
    folder = workspace["folder"]
    return run_cli(
        "check",
        str(workspace["wide"]),
        "--name",
        "net.onnx",
        "--device",
        str(workspace["profile"]),
        "--runs",
        "40",
        "--min-seconds",
        "0.2",
        "--budget",
        "latency.p50<=1.5x",
        "--baseline",
        str(folder / "first.json"),
        "--history",
        str(folder / "history.jsonl"),
        "--junit",
        str(folder / "slower.xml"),
        "--markdown",
        str(folder / "slower.md"),
        env=env,
    )


def test_a_passing_check_exits_0_and_writes_every_report(first_run, workspace):
    assert first_run.returncode == 0, first_run.stderr
    folder = workspace["folder"]
    cases = suite_cases(folder / "first.xml")
    # One case per budget (two from the config, one from the flag) and one for the regression test.
    assert set(cases) == {
        "budget latency.p50<=500ms",
        "budget size<=1MB",
        "budget latency.p99<=2s",
        "regression latency.p50",
    }
    assert all(case.is_passed for name, case in cases.items() if name.startswith("budget"))
    regression = cases["regression latency.p50"]
    assert isinstance(regression.result[0], Skipped) and "no baseline" in regression.result[0].message
    assert "latency.p50 = " in cases["budget latency.p50<=500ms"].system_out  # the figures travel with the case
    result = json.loads((folder / "first.json").read_text())
    assert result["passed"] and result["exit_code"] == 0 and result["device"] == "fast-local"
    assert len(result["latencies_ns"]) == result["latency"]["count"] >= 40  # the raw sample: a later --baseline
    assert result["runtime"] == "onnxruntime" and result["runtime_version"]
    markdown = (folder / "first.md").read_text()
    assert markdown.startswith("### ✅") and "| ✅ | `size<=1MB` |" in markdown
    history = (folder / "history.jsonl").read_text().splitlines()
    assert len(history) == 1 and json.loads(history[0])["sha256"] == result["sha256"]


def test_a_wider_model_is_caught_as_a_regression_and_exits_1(slower_run, workspace):
    assert slower_run.returncode == 1, slower_run.stderr
    failures = [line for line in slower_run.stderr.splitlines() if line.startswith("FAIL")]
    # Each failing check named on its own line: the relative budget and the regression test.
    assert len(failures) == 2
    assert failures[0].startswith("FAIL latency.p50<=1.5x: latency.p50 = ")
    assert failures[1].startswith("FAIL regression latency.p50: ") and "ratio" in failures[1]
    # Measured again, alternating with the baseline's model (still in the agent's cache), before it counts.
    assert "side by side with the baseline's model now, confirmed" in failures[1]
    folder = workspace["folder"]
    cases = suite_cases(folder / "slower.xml")
    regression = cases["regression latency.p50"].result[0]
    assert isinstance(regression, Failure) and "CI" in regression.message and "regression" in regression.message
    ratio = float(regression.message.split("ratio ")[1].split()[0])
    assert ratio > 2, regression.message
    assert isinstance(cases["budget latency.p50<=1.5x"].result[0], Failure)
    assert "FAILED" in (folder / "slower.md").read_text()
    history = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    assert [h["passed"] for h in history] == [True, False]
    assert history[1]["baseline"]["source"] == str(folder / "first.json")


def test_history_prints_the_trend_and_plots_it(slower_run, workspace, env):
    folder = workspace["folder"]
    plot = folder / "trend.png"
    shown = run_cli("history", str(folder / "history.jsonl"), "--model", "net.onnx", "--plot", str(plot), env=env)
    assert shown.returncode == 0, shown.stderr
    assert "net.onnx on fast-local (onnxruntime)" in shown.stdout and "fail" in shown.stdout, shown.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    as_json = json.loads(run_cli("history", str(folder / "history.jsonl"), "--json", env=env).stdout)
    runs = as_json[0]["runs"]
    assert [r["passed"] for r in runs] == [True, False], runs
    assert "regression latency.p50" in runs[1]["failed"] and runs[1]["ratio"] > 2, runs[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "latency.p50<=0.9x"], "relative to the baseline, but there is none"),
        (["--budget", "latency.p42<=1ms"], "unknown metric"),
        (["--tolerance", "energy=5%"], "regression metric 'energy'"),
        (["--baseline", "MODEL"], "not JSON"),
        ([], "no device"),
        (["--budget", "energy<=10mJ"], "cannot check energy<=10mJ"),  # known only after the agent's hello
    ],
)
def test_configuration_errors_exit_2(args, message, workspace, env):
    args = [str(workspace["narrow"]) if a == "MODEL" else a for a in args]
    device = [] if message == "no device" else ["--device", str(workspace["profile"])]
    result = run_cli("check", str(workspace["narrow"]), *device, *args, env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_an_unreachable_device_exits_3_with_an_error_case(workspace, env):
    folder = workspace["folder"]
    profile = folder / "gone.toml"
    profile.write_text('name = "gone"\ntransport = "local"\npython = "/nonexistent/bin/python3"\n')
    result = run_cli(
        "check", str(workspace["narrow"]), "--device", str(profile), "--junit", str(folder / "gone.xml"), env=env
    )
    assert result.returncode == 3, result.stderr
    assert "cannot start the agent" in result.stderr
    case = suite_cases(folder / "gone.xml")["device"]
    assert isinstance(case.result[0], Error) and "/nonexistent/bin/python3" in case.result[0].message
