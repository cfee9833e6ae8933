"""Energy per inference: the integral on the host, and the real agent measuring against fixture power sources."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hw_fixtures import ORIN_NANO_W, fake_vcgencmd, nano_jp4, on_path, orin_nano_jp6, throttled_calls

from edgecompress.analysis import energy_stats, pool_energy
from edgecompress.analysis._energy import energy_between
from edgecompress.budgets import check_budgets_measurable, parse_budgets
from edgecompress.config import DeviceProfile, MeasureSettings, PowerSettings, ThermalSettings
from edgecompress.device import Measurement, measure_request, open_session
from edgecompress.errors import AgentError, BudgetError
from edgecompress.observe import observe

QUICK = MeasureSettings(warmup_runs=2, warmup_seconds=0.0, runs=40, min_seconds=0.2, max_seconds=5.0)


@pytest.fixture(autouse=True)
def _no_real_vcgencmd(monkeypatch):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + ":/usr/bin:/bin")


def _ramp(kind: str) -> dict:
    """P(t) = 2 + t watts for t in [0, 10] s, sampled every 0.1 s, as watts or as a cumulative joule counter."""
    t = np.linspace(0.0, 10.0, 101)
    watts = 2 + t
    values = watts if kind == "power" else 2 * t + t**2 / 2 + 7.0  # any offset: only differences count
    return {
        "source": "test",
        "kind": kind,
        "partial": False,
        "t_ns": (t * 1e9).astype(int).tolist(),
        "values": values.tolist(),
    }


@pytest.mark.parametrize("kind", ["power", "energy"])
def test_energy_between_integrates_the_window(kind):
    exact = 2 * (7.3 - 1.05) + (7.3**2 - 1.05**2) / 2
    assert energy_between(_ramp(kind), int(1.05e9), int(7.3e9)) == pytest.approx(exact, rel=1e-3)


def test_a_trace_that_does_not_cover_the_window_is_refused():
    with pytest.raises(ValueError, match="does not cover"):
        energy_between(_ramp("power"), int(9e9), int(11e9))


def _measurement(count: int, idle_w: float | None) -> Measurement:
    raw = {
        "power_trace": _ramp("power"),
        "window_start_ns": int(2e9),
        "window_end_ns": int(6e9),
        "idle_power_w": idle_w,
    }
    return Measurement("0" * 64, tuple([1_000_000] * count), 0, 0, raw)


def test_energy_per_inference_and_idle_subtracted():
    stats = energy_stats(_measurement(400, idle_w=1.5))
    joules = 2 * 4 + (36 - 4) / 2  # the ramp over [2 s, 6 s]
    assert stats.energy_j == pytest.approx(joules, rel=1e-6)
    assert stats.energy_mj == pytest.approx(joules / 400 * 1e3, rel=1e-6)
    assert stats.mean_power_w == pytest.approx(joules / 4, rel=1e-6)
    assert stats.active_energy_mj == pytest.approx((joules - 1.5 * 4) / 400 * 1e3, rel=1e-6)
    low, high = stats.interval("energy")
    assert low < stats.energy_mj < high  # the ramp makes the segments differ
    assert energy_stats(Measurement("0" * 64, (1,), 0, 0, {"power_trace": None})) is None
    short = dict(_measurement(400, None).raw, window_end_ns=int(11e9))  # the last reading failed
    assert energy_stats(Measurement("0" * 64, (1,), 0, 0, short)) is None


def test_pooling_is_total_energy_over_total_inferences():
    a, b = energy_stats(_measurement(400, 1.5)), energy_stats(_measurement(100, 2.5))
    pooled = pool_energy([a, b])
    assert pooled.energy_mj == pytest.approx((a.energy_j + b.energy_j) / 500 * 1e3)
    assert pooled.idle_power_w == pytest.approx(2.0)
    assert pooled.active_energy_mj == pytest.approx((a.energy_j + b.energy_j - 1.5 * 4 - 2.5 * 4) / 500 * 1e3)


def _profile(tmp_path: Path, root: Path | None, **fields) -> DeviceProfile:
    return DeviceProfile(
        name="fixture",
        cache_dir=str(tmp_path / "cache"),
        sysfs_root=str(root) if root else None,
        measure=QUICK,
        **{"power": PowerSettings(idle_seconds=0.1), **fields},
    )


def test_agent_measures_power_on_a_fixture_orin_and_the_host_computes_energy(tmp_path, tiny_onnx):
    profile = _profile(tmp_path, orin_nano_jp6(tmp_path / "root"))
    budgets = parse_budgets(["energy<=1000mJ", "power.mean<=10W", "energy.active<=5mJ"])
    with open_session(profile) as session:
        hello = session.hello()
        assert [s["name"] for s in hello["power_sources"]] == ["ina3221"]
        check_budgets_measurable(budgets, hello)
        sha = session.put_model(tiny_onnx.read_bytes())
        obs = observe(session, sha, tiny_onnx.stat().st_size, measure_request(profile), budgets)
    raw = obs.measurement.raw
    trace = raw["power_trace"]
    assert raw["power_source"]["total_rail"] == "VDD_IN" and trace["kind"] == "power"
    assert trace["t_ns"][0] <= raw["window_start_ns"] < raw["window_end_ns"] <= trace["t_ns"][-1]
    assert raw["idle_power_w"] == pytest.approx(ORIN_NANO_W)
    energy = obs.energy
    assert energy.mean_power_w == pytest.approx(ORIN_NANO_W)
    window_s = (raw["window_end_ns"] - raw["window_start_ns"]) / 1e9
    assert energy.energy_mj == pytest.approx(ORIN_NANO_W * window_s / len(obs.measurement.latencies_ns) * 1e3)
    assert obs.values["energy"] == energy.energy_mj and obs.values["power.mean"] == pytest.approx(ORIN_NANO_W)
    assert abs(obs.values["energy.active"]) < 1e-6 * energy.energy_mj + 1e-9  # constant rails: nothing above idle
    assert "power_partial" not in obs.flags


def test_no_power_source_means_unavailable_and_an_energy_budget_is_refused(tmp_path, tiny_onnx):
    profile = _profile(tmp_path, tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    with open_session(profile) as session:
        hello = session.hello()
        with pytest.raises(BudgetError, match="no power source"):
            check_budgets_measurable(parse_budgets(["latency.p99<=5ms", "energy<=40mJ"]), hello)
        check_budgets_measurable(parse_budgets(["latency.p99<=5ms"]), hello)
        check_budgets_measurable(parse_budgets(["energy<=40mJ"]), hello, power_command="echo 5")
        with pytest.raises(BudgetError, match="'none'"):
            check_budgets_measurable(parse_budgets(["power.mean<=5W"]), {"power_sources": [{"name": "rapl"}]}, "none")
        sha = session.put_model(tiny_onnx.read_bytes())
        obs = observe(session, sha, 1, measure_request(profile))
        with pytest.raises(AgentError, match="ina3221x.*not available"):
            session.measure(sha, measure_request(profile, extra={"power_source": "ina3221x"}))
    assert obs.measurement.raw["power_trace"] is None and obs.measurement.raw["idle_power_w"] is None
    assert obs.energy is None and obs.values["energy"] is None  # unavailable, never zero


def test_agent_measure_with_an_external_meter_command_in_joules(tmp_path, tiny_onnx):
    counter = tmp_path / "joules"
    meter = tmp_path / "meter.sh"
    # A meter with a cumulative counter: 0.01 J more on every call.
    meter.write_text(
        f"#!/bin/sh\nn=$(cat {counter} 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {counter}\n"
        f'echo "$n" | awk \'{{printf "%.2f J\\n", $1 / 100}}\'\n'
    )
    meter.chmod(0o755)
    profile = _profile(tmp_path, nano_jp4(tmp_path / "root"), power=PowerSettings(command=str(meter), idle_seconds=0.1))
    with open_session(profile) as session:
        sha = session.put_model(tiny_onnx.read_bytes())
        obs = observe(session, sha, 1, measure_request(profile))
    trace = obs.measurement.raw["power_trace"]
    assert trace["source"] == "command" and trace["kind"] == "energy" and trace["unit"] == "J"
    assert np.all(np.diff(trace["values"]) == pytest.approx(0.01))
    assert obs.energy is not None and obs.energy.energy_j > 0


def test_a_throttled_measurement_is_repeated_once_and_flagged(tmp_path, tiny_onnx, monkeypatch):
    # Calls: before, after (throttled: repeat), cool-down check, before, after. Always 0x4: still throttled.
    bin_dir = fake_vcgencmd(tmp_path / "bin", pmic=None, throttled=[0x0, 0x4])
    monkeypatch.setenv("PATH", on_path(bin_dir))
    profile = _profile(tmp_path, None, thermal=ThermalSettings(max_wait_s=0.0))
    with open_session(profile) as session:
        sha = session.put_model(tiny_onnx.read_bytes())
        obs = observe(session, sha, 1, measure_request(profile))
    raw = obs.measurement.raw
    assert raw["repeated"]["reason"] == "throttled" and raw["throttled"]
    assert raw["repeated"]["discarded"]["after"]["pi_throttled"]["now"] == ["throttled"]
    assert {"throttled", "repeated_after_throttling"} <= set(obs.flags)
    assert throttled_calls(bin_dir) == 5


def test_a_throttled_measurement_that_recovers_is_not_flagged(tmp_path, tiny_onnx, monkeypatch):
    bin_dir = fake_vcgencmd(tmp_path / "bin", pmic=None, throttled=[0x0, 0x4, 0x0])
    monkeypatch.setenv("PATH", on_path(bin_dir))
    profile = _profile(tmp_path, None, thermal=ThermalSettings(max_wait_s=5.0, repeat_if_throttled=True))
    with open_session(profile) as session:
        sha = session.put_model(tiny_onnx.read_bytes())
        obs = observe(session, sha, 1, measure_request(profile))
    assert obs.measurement.raw["repeated"] and not obs.measurement.raw["throttled"]
    assert "throttled" not in obs.flags and "repeated_after_throttling" in obs.flags


def test_bench_prints_tail_and_energy_on_a_fixture_device(tmp_path, tiny_onnx):
    root = orin_nano_jp6(tmp_path / "root")
    toml = tmp_path / "orin.toml"
    toml.write_text(
        f'name = "fixture-orin"\nsysfs_root = "{root}"\ncache_dir = "{tmp_path / "cache"}"\n'
        "[power]\nidle_seconds = 0.1\n"
    )
    command = [
        sys.executable,
        "-m",
        "edgecompress",
        "bench",
        str(tiny_onnx),
        "--device",
        str(toml),
        "--runs",
        "600",
        "--min-seconds",
        "0",
        "--warmup-runs",
        "2",
    ]
    text = subprocess.run(
        command, capture_output=True, text=True, check=True, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    ).stdout
    assert "p99" in text and "pWCET @1e-09/run" in text and "i.i.d." in text
    assert "mean power 6.000 W" in text
    data = json.loads(subprocess.run(command + ["--json"], capture_output=True, text=True, check=True).stdout)
    assert set(data["tail"]["pwcet_ms"]) == {"0.001", "1e-06", "1e-09"}
    assert data["energy"]["mean_power_w"] == pytest.approx(ORIN_NANO_W) and data["energy"]["source"] == "ina3221"
