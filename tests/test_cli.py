"""The command line: readable tables, JSON for machines, one clear line for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgecompress", *args],
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        timeout=300,
    )


@pytest.fixture()
def cli_env(tmp_path):
    return dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), COLUMNS="120")


def test_bench_prints_a_table(tiny_onnx, cli_env):
    result = run_cli("bench", str(tiny_onnx), "--runs", "20", "--min-seconds", "0", "--threads", "1", env=cli_env)
    assert result.returncode == 0, result.stderr
    for word in ("mean", "p50", "p99", "p999", "max", "first inference", "load"):
        assert word in result.stdout


def test_bench_json(tiny_onnx, cli_env):
    result = run_cli("bench", str(tiny_onnx), "--runs", "10", "--min-seconds", "0", "--json", env=cli_env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["latency"]["count"] == 10 and data["device"] == "local" and len(data["sha256"]) == 64


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "missing.onnx"], "does not exist"),
        (["bench", "pyproject.toml"], "neither an ONNX model nor a TFLite"),
        (["bench", "TINY", "--device", "no-such-device"], "unknown device 'no-such-device'"),
        (["devices", "info", "no-such-device"], "unknown device"),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(args, message, tiny_onnx, cli_env):
    args = [str(tiny_onnx) if a == "TINY" else a for a in args]
    result = run_cli(*args, env=cli_env)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_devices_lists_profiles_and_info_reports_hello(cli_env):
    listing = run_cli("devices", env=cli_env)
    assert listing.returncode == 0 and "local" in listing.stdout
    info = run_cli("devices", "info", "local", "--json", env=cli_env)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["runtimes"][0]["name"] == "onnxruntime"


def test_debug_shows_the_traceback(cli_env):
    result = run_cli("--debug", "bench", "missing.onnx", env=cli_env)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_devices_info_says_which_rails_make_the_power_total(tmp_path, cli_env):
    """An AGX Orin's rails overlap: info names the rails summed and the one inside another."""
    from hw_fixtures import agx_orin

    profile = tmp_path / "agx.toml"
    profile.write_text(f'name = "agx"\ntransport = "local"\nsysfs_root = "{agx_orin(tmp_path / "sys-root")}"\n')
    info = run_cli("devices", "info", str(profile), env=dict(cli_env, COLUMNS="200"))
    assert info.returncode == 0, info.stderr
    assert "total = VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0; VDDQ_VDD2_1V8AO is inside VIN_SYS_5V0" in info.stdout


def test_bench_says_when_min_seconds_ran_more_than_the_runs_asked(tiny_onnx, cli_env):
    longer = run_cli("bench", str(tiny_onnx), "--runs", "5", "--min-seconds", "0.3", "--json", env=cli_env)
    assert longer.returncode == 0, longer.stderr
    count = json.loads(longer.stdout)["latency"]["count"]
    assert count > 5 and f"{count} runs, not 5" in longer.stderr and "--min-seconds 0.3" in longer.stderr
    exact = run_cli("bench", str(tiny_onnx), "--runs", "5", "--min-seconds", "0", "--json", env=cli_env)
    assert exact.returncode == 0 and "runs, not" not in exact.stderr, exact.stderr
