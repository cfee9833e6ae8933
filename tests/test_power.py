"""The agent's power readers against fixture trees and a fake vcgencmd, and the sampler's trace."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hw_fixtures import (
    AGX_ORIN_W,
    NANO_W,
    ORIN_NANO_W,
    PI5_PMIC_ADC,
    RAPL_RANGE_UJ,
    agx_orin,
    fake_vcgencmd,
    nano_jp4,
    on_path,
    orin_nano_jp6,
    pi5_watts,
    rapl,
    set_rapl_energy,
)

from edgecompress_agent import power


@pytest.fixture(autouse=True)
def _no_real_vcgencmd(tmp_path, monkeypatch):
    """A PATH without vcgencmd unless a test adds the fake one."""
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + ":/usr/bin:/bin")


def test_orin_nano_jetpack6_hwmon_uses_vdd_in(tmp_path):
    reader = power.Ina3221Hwmon(orin_nano_jp6(tmp_path))
    total, rails = reader.read()
    assert sorted(rails) == ["VDD_CPU_GPU_CV", "VDD_IN", "VDD_SOC"]  # channel 7 (sum of shunts) skipped
    assert total == pytest.approx(ORIN_NANO_W)
    assert reader.describe()["total_rail"] == "VDD_IN" and not reader.partial


def test_agx_orin_without_vdd_in_sums_rails_and_says_partial(tmp_path):
    reader = power.Ina3221Hwmon(agx_orin(tmp_path))
    total, rails = reader.read()
    assert "NC" not in rails and len(rails) == 4
    assert total == pytest.approx(AGX_ORIN_W)
    assert reader.partial and reader.describe()["total_rail"] is None


def test_nano_jetpack4_iio_uses_pom_5v_in(tmp_path):
    reader = power.Ina3221xIio(nano_jp4(tmp_path))
    total, rails = reader.read()
    assert total == pytest.approx(NANO_W)
    assert rails["POM_5V_CPU"] == pytest.approx(0.8)
    assert not reader.partial


def test_rapl_counts_across_a_wrap_around(tmp_path):
    root = rapl(tmp_path, energy_uj=RAPL_RANGE_UJ - 1000)
    reader = power.Rapl(root)
    assert [d[0] for d in reader.domains] == ["package-0"]  # the core sub-zone is inside the package
    assert reader.read()[0] == 0.0
    set_rapl_energy(root, 500)  # the counter wrapped between two reads
    assert reader.read()[0] == pytest.approx(1500 / 1e6)
    set_rapl_energy(root, 2500)
    assert reader.read()[0] == pytest.approx(3500 / 1e6)
    assert reader.kind == "energy" and reader.partial  # packages only: no psys domain


def test_pi5_pmic_pairs_rails_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", on_path(fake_vcgencmd(tmp_path / "bin")))
    rails = power.parse_pmic_adc(PI5_PMIC_ADC)
    assert "EXT5V" not in rails and "BATT" not in rails  # voltages without a current
    assert rails["VDD_CORE"] == pytest.approx(0.75012 * 0.861733)
    reader = power.open_source("/nonexistent", "auto")
    assert reader is not None and reader.name == "pi5-pmic"
    assert reader.read()[0] == pytest.approx(pi5_watts())


def test_a_pi4_vcgencmd_without_pmic_is_no_power_source(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", on_path(fake_vcgencmd(tmp_path / "bin", pmic=None)))
    assert power.detect(str(tmp_path)) == []
    assert power.open_source(str(tmp_path), "auto") is None


def test_detection_order_and_named_sources(tmp_path):
    root = nano_jp4(rapl(tmp_path))
    assert [s["name"] for s in power.detect(root)] == ["ina3221x", "rapl"]
    assert power.open_source(root, "auto").name == "ina3221x"
    assert power.open_source(root, "rapl").name == "rapl"
    assert power.open_source(root, "none") is None
    with pytest.raises(power.PowerError, match="not available"):
        power.open_source(root, "ina3221")
    with pytest.raises(power.PowerError, match="unknown power source"):
        power.open_source(root, "multimeter")


def test_nothing_found_is_none_not_zero(tmp_path):
    assert power.detect(tmp_path) == []
    assert power.open_source(tmp_path, "auto") is None


def test_external_meter_command_in_watts_and_joules(tmp_path):
    watts = power.open_source(tmp_path, "auto", command="echo 3.5 W")
    assert watts.kind == "power" and watts.read()[0] == 3.5
    joules = power.Command("echo 1200 mJ")
    assert joules.kind == "energy" and joules.read()[0] == pytest.approx(1.2)
    with pytest.raises(power.PowerError, match="not a number"):
        power.Command("echo hello")
    with pytest.raises(power.PowerError, match="exited with"):
        power.Command("false")


def test_sampler_brackets_the_window_with_timestamps(tmp_path):
    reader = power.Ina3221Hwmon(orin_nano_jp6(tmp_path))
    sampler = power.Sampler(reader, interval_s=0.001).start()
    first = sampler.t_ns[0]
    total = sum(i for i in range(200000))  # some work between the first and the last sample
    trace = sampler.stop()
    assert total > 0
    assert len(trace["t_ns"]) >= 2 and trace["t_ns"][0] == first
    assert trace["t_ns"] == sorted(trace["t_ns"]) and trace["kind"] == "power" and trace["unit"] == "W"
    assert all(v == pytest.approx(ORIN_NANO_W) for v in trace["values"])
    assert power.mean_power_w(trace) == pytest.approx(ORIN_NANO_W)


def test_sampler_thins_a_long_trace(tmp_path, monkeypatch):
    monkeypatch.setattr(power, "MAX_SAMPLES", 8)
    sampler = power.Sampler(power.Ina3221Hwmon(orin_nano_jp6(tmp_path)), interval_s=10)
    for _ in range(20):
        sampler._sample()
    assert len(sampler.t_ns) < 8 and sampler.interval_s > 10
