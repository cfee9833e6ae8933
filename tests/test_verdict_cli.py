"""The verdict as users meet it: check's inconclusive exit code, bench/check --batch and --threads, and tune on an
original that already meets its budgets."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from junitparser import Failure, JUnitXml
from test_check import device_run

from edgecompress import verdict
from edgecompress.budgets import parse_budgets
from edgecompress.device import MeasureRequest
from edgecompress.gate import RegressionSettings, budget_targets, evaluate
from edgecompress.gate._result import INCONCLUSIVE_EXIT
from edgecompress.report import junit_xml


def edgecompress(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgecompress", *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), COLUMNS="200")


@pytest.fixture(scope="module")
def batched_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small conv net exported with a dynamic batch axis, as tune's candidates are."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten()).eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 16, 16),),
        buffer,
        dynamo=False,
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}},
    )
    path = tmp_path_factory.mktemp("batched") / "batched.onnx"
    path.write_bytes(buffer.getvalue())
    return path


def test_an_inconclusive_budget_is_never_a_pass_and_has_its_own_exit_code():
    budgets = parse_budgets(["latency.p50<=2ms", "size<=1MB"])
    run = device_run(__import__("numpy").full(100, 2.0), budgets)
    undecided = verdict.Decision("latency.p50", 2.0, verdict.INCONCLUSIVE, 2.0, 1.8, 2.2, 6, 0.95)
    run = type(run)(
        observation=type(run.observation)(**{**run.observation.__dict__, "decisions": {"latency.p50": undecided}}),
        hello=run.hello,
        started_utc=run.started_utc,
    )
    result = evaluate(
        run,
        model="net.onnx",
        model_path="net.onnx",
        device="pi",
        spec=MeasureRequest(),
        budgets=budgets,
        targets=budget_targets(budgets, None),
        regression=RegressionSettings(metrics={}),
        baseline=None,
    )
    statuses = {b.key: b.status for b in result.budgets}
    assert statuses == {"latency.p50": "inconclusive", "size": "pass"}
    assert not result.passed
    assert result.exit_code == INCONCLUSIVE_EXIT == 5
    assert result.problems() == [f"INCONCLUSIVE latency.p50<=2ms: {undecided.describe('ms')}"]
    case = next(c for c in next(iter(JUnitXml.fromstring(junit_xml(result)))) if "latency" in c.name)
    assert isinstance(case.result[0], Failure) and case.result[0].type == "inconclusive"


def test_bench_and_check_measure_a_batch_with_the_threads_recorded(batched_onnx: Path, env, tmp_path: Path):
    bench = edgecompress(
        "bench", str(batched_onnx), "--batch", "4", "--threads", "1", "--runs", "20", "--json", env=env
    )
    assert bench.returncode == 0, bench.stderr
    data = json.loads(bench.stdout)
    assert data["input_shapes"] == {"input": [4, 3, 16, 16]}
    assert data["threads"] == 1
    result_path = tmp_path / "check.json"
    check = edgecompress(
        "check",
        str(batched_onnx),
        "--device",
        "local",
        "--batch",
        "4",
        "--threads",
        "1",
        "--runs",
        "20",
        "--budget",
        "latency.p50<=10s",
        "--json",
        str(result_path),
        env=env,
    )
    assert check.returncode == 0, check.stderr
    result = json.loads(result_path.read_text())
    assert result["settings"]["measure"]["threads"] == 1
    assert result["extra"]["observation"]["details"]["input_shapes"] == {"input": [4, 3, 16, 16]}
    assert result["budgets"][0]["status"] == "pass"
    assert "95% upper bound" in result["budgets"][0]["message"]
    assert "1 threads" in check.stdout


def test_batch_on_a_model_with_a_fixed_batch_is_refused_before_measuring(tiny_onnx: Path, env):
    for command in (["bench"], ["check", "--device", "local", "--budget", "latency.p50<=1s"]):
        done = edgecompress(*command[:1], str(tiny_onnx), *command[1:], "--batch", "4", env=env)
        assert done.returncode == 2, done.stderr
        assert "fixed batch of 1" in done.stderr


def test_a_final_model_identical_to_the_original_is_not_called_a_compression(tmp_path: Path, env):
    # No fine-tuning: the round's choice (the unchanged plan, the most accurate) exports to the original's bytes.
    out = tmp_path / "run"
    done = edgecompress(
        "tune",
        "--example",
        "digits",
        "--budget",
        "latency.p50<=3x",
        "--budget",
        "size<=1MB",
        "--rounds",
        "1",
        "--trials-per-round",
        "2",
        "--finetune-steps",
        "0",
        "--runs",
        "30",
        "--min-seconds",
        "0.05",
        "--warmup-seconds",
        "0.05",
        "--val-limit",
        "300",
        "--out",
        str(out),
        env=env,
    )
    assert done.returncode == 0, done.stderr
    final = json.loads((out / "results.json").read_text())["final"]
    assert final["identical_to_original"] and final["which"] == "original"
    assert (out / "model.onnx").read_bytes() == (out / "original.onnx").read_bytes()
    assert "the original already meets the budgets" in done.stdout
    assert "compression" not in done.stdout.split("the original already meets the budgets")[0].splitlines()[-1]
    # What check needs to re-judge it is in the run folder, and it agrees.
    judged = tmp_path / "check.json"
    check = edgecompress(
        "check", str(out / "model.onnx"), "--config", str(out / "check.toml"), "--json", str(judged), env=env
    )
    assert check.returncode in (0, 5), check.stdout + check.stderr
    # The relative budget stays relative: judged on windows alternating with the run's original, as tune did.
    assert 'reference = "' in (out / "check.toml").read_text()
    assert "latency.p50 / original" in check.stdout
    # Measured as tune measured: its window, runs and warm-up (the profile's 0.5 s would be another measurement).
    measure = json.loads(judged.read_text())["settings"]["measure"]
    assert (measure["warmup_seconds"], measure["min_seconds"], measure["runs"]) == (0.05, 0.05, 30)


def test_check_judges_a_relative_budget_against_a_reference_model(batched_onnx: Path, env, tmp_path: Path):
    result_path = tmp_path / "check.json"
    done = edgecompress(
        "check",
        str(batched_onnx),
        "--device",
        "local",
        "--reference",
        str(batched_onnx),
        "--budget",
        "latency.p50<=50x",
        "--runs",
        "20",
        "--json",
        str(result_path),
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    budget = json.loads(result_path.read_text())["budgets"][0]
    assert budget["status"] == "pass"
    assert budget["unit"] == "x"
    assert budget["target"] == 50.0
    assert 0.5 < budget["value"] < 2.0  # the same bytes: a ratio near 1
    # Without a reference (or a baseline) a relative budget has nothing to be relative to.
    bare = edgecompress("check", str(batched_onnx), "--device", "local", "--budget", "latency.p50<=50x", env=env)
    assert bare.returncode == 2, bare.stderr
