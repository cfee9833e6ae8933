"""Throttling state and the bounded cool-down wait, on fixture trees and a fake vcgencmd."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hw_fixtures import cooling_device, fake_vcgencmd, on_path, thermal_zone, throttled_calls

from edgecompress_agent import thermal


@pytest.fixture(autouse=True)
def _no_real_vcgencmd(monkeypatch):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + ":/usr/bin:/bin")


def test_get_throttled_bits():
    decoded = thermal.decode_throttled(0x50005)
    assert decoded["now"] == ["under_voltage", "throttled"]
    assert decoded["occurred"] == ["under_voltage", "throttled"]
    assert thermal.decode_throttled(0x80000) == {"raw": "0x80000", "now": [], "occurred": ["soft_temp_limit"]}
    assert thermal.decode_throttled(0x2)["now"] == ["freq_capped"]


def test_pi_state_from_the_fake_vcgencmd(tmp_path, monkeypatch):
    bin_dir = fake_vcgencmd(tmp_path / "bin", throttled=[0x0, 0x4])
    monkeypatch.setenv("PATH", on_path(bin_dir))
    calm = thermal.state(str(tmp_path))
    hot = thermal.state(str(tmp_path))
    assert not calm["throttled"] and calm["pi_throttled"]["raw"] == "0x0"
    assert hot["throttled"] and hot["reasons"] == ["vcgencmd: throttled"]
    assert thermal.throttled_during(calm, hot)
    assert throttled_calls(bin_dir) == 2


def test_a_sticky_bit_appearing_during_the_window_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", on_path(fake_vcgencmd(tmp_path / "bin", throttled=[0x0, 0x40000])))
    before, after = thermal.state(str(tmp_path)), thermal.state(str(tmp_path))
    assert not before["throttled"] and not after["throttled"]
    assert thermal.throttled_during(before, after)  # throttled and recovered inside the window


def test_no_vcgencmd_is_not_a_pi(tmp_path):
    assert thermal.pi_throttled() is None
    assert not thermal.state(str(tmp_path))["throttled"]


def test_an_engaged_cpufreq_cooling_device_is_throttling(tmp_path):
    cooling_device(tmp_path, 0, "cpufreq-cpu0", 3)
    cooling_device(tmp_path, 1, "Processor", 2)  # a fan or ACPI device, not a CPU frequency cap
    now = thermal.state(str(tmp_path))
    assert now["throttled"] and list(now["cooling"]) == ["cooling_device0 (cpufreq-cpu0)"]


def test_a_policy_maximum_below_the_hardware_is_recorded(tmp_path):
    for cpu, policy_max in (("cpu0", 1_500_000), ("cpu1", 2_000_000)):
        base = tmp_path / f"sys/devices/system/cpu/{cpu}/cpufreq"
        base.mkdir(parents=True)
        for name, value in (
            ("scaling_cur_freq", 1_000_000),
            ("scaling_max_freq", policy_max),
            ("cpuinfo_max_freq", 2_000_000),
            ("scaling_governor", "schedutil"),
        ):
            (base / name).write_text(f"{value}\n")
    now = thermal.state(str(tmp_path))
    assert now["capped_cpus"] == ["cpu0"] and not now["throttled"]


def test_hottest_ignores_a_pmic_reading_a_constant_100c(tmp_path):
    # Jetson Nano: PMIC-Die always reads 100 C; CPU-therm is the one that matters.
    thermal_zone(tmp_path, 0, "CPU-therm", 41500)
    thermal_zone(tmp_path, 1, "PMIC-Die", 100000)
    thermal_zone(tmp_path, 2, "GPU-therm", -256000)  # offline
    assert thermal.hottest_c(thermal.system.thermal_zones(str(tmp_path))) == 41.5


def test_wait_until_cool_returns_at_once_when_cool(tmp_path):
    thermal_zone(tmp_path, 0, "cpu-thermal", 45000)
    waited = thermal.wait_until_cool(str(tmp_path), start_temp_c=60, max_wait_s=30)
    assert waited["reached"] and waited["waited_s"] < 5 and waited["temp_c"] == 45.0


def test_wait_until_cool_is_bounded(tmp_path):
    thermal_zone(tmp_path, 0, "cpu-thermal", 75000)
    waited = thermal.wait_until_cool(str(tmp_path), start_temp_c=60, max_wait_s=0.3)
    assert not waited["reached"] and 0.3 <= waited["waited_s"] < 5 and waited["temp_c"] == 75.0


def test_wait_for_throttling_to_stop(tmp_path, monkeypatch):
    bin_dir = fake_vcgencmd(tmp_path / "bin", throttled=[0x4, 0x0])
    monkeypatch.setenv("PATH", on_path(bin_dir))
    waited = thermal.wait_until_cool(str(tmp_path), None, max_wait_s=30, need_unthrottled=True)
    assert waited["reached"] and throttled_calls(bin_dir) == 2
