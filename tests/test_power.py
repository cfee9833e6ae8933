"""The agent's power readers against fixture trees and a fake vcgencmd, and the sampler's trace."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hw_fixtures import (
    AGX_ORIN_DRAM_W,
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
    rapl_client_with_psys,
    rapl_server,
    rapl_zones,
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


def test_agx_orin_sums_top_level_rails_only(tmp_path):
    """AGX Orin has no input rail; VDDQ_VDD2_1V8AO is fed from VIN_SYS_5V0 and already counted there."""
    reader = power.Ina3221Hwmon(agx_orin(tmp_path))
    total, rails = reader.read()
    assert "NC" not in rails and len(rails) == 4
    assert rails["VDDQ_VDD2_1V8AO"] == pytest.approx(AGX_ORIN_DRAM_W)
    assert total == pytest.approx(AGX_ORIN_W)  # not AGX_ORIN_W + AGX_ORIN_DRAM_W, ~10% high
    described = reader.describe()
    assert described["total_rail"] is None and not reader.partial  # the documented tree: nothing missing
    assert described["summed"] == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"]
    assert described["inside"] == {"VDDQ_VDD2_1V8AO": "VIN_SYS_5V0"}
    assert described["note"] == (
        "total = VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0; VDDQ_VDD2_1V8AO is inside VIN_SYS_5V0"
    )


def test_jetson_input_rail_is_the_total_and_says_what_is_inside(tmp_path):
    orin = power.Ina3221Hwmon(orin_nano_jp6(tmp_path / "orin")).describe()
    assert orin["summed"] == ["VDD_IN"]
    assert orin["note"] == "total = VDD_IN (the input rail); VDD_CPU_GPU_CV, VDD_SOC are inside VDD_IN"
    nano = power.Ina3221xIio(nano_jp4(tmp_path / "nano")).describe()
    assert nano["inside"] == {"POM_5V_GPU": "POM_5V_IN", "POM_5V_CPU": "POM_5V_IN"}


def test_rails_outside_the_documented_trees_are_summed_and_called_partial(tmp_path):
    # A carrier board of one's own: nothing says whether these overlap, so their sum is flagged.
    from hw_fixtures import _hwmon

    _hwmon(tmp_path, "1-0040", "hwmon1", {1: ("VDD_A", 5000, 100), 2: ("VDD_B", 5000, 200)})
    reader = power.Ina3221Hwmon(tmp_path)
    assert reader.read()[0] == pytest.approx(1.5)
    assert reader.partial and "may overlap" in reader.describe()["note"]


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


def test_rapl_adds_dram_which_is_not_inside_the_package(tmp_path):
    root = rapl_server(tmp_path)
    reader = power.Rapl(root)
    reader.read()
    for zone, joules in (("intel-rapl:0", 30), ("intel-rapl:0:0", 5), ("intel-rapl:1", 20), ("intel-rapl:1:0", 4)):
        set_rapl_energy(root, joules * 10**6, zone)
    total, domains = reader.read()
    assert total == pytest.approx(59.0)  # the packages alone would read 50 J, 15% low
    assert sorted(domains) == ["dram", "dram#2", "package-0", "package-1"]
    assert reader.describe()["note"].startswith("total = package-0 + dram + package-1 + dram#2")


def test_rapl_psys_is_the_platform_and_is_used_alone(tmp_path):
    root = rapl_client_with_psys(tmp_path)
    reader = power.Rapl(root)
    reader.read()
    for zone, joules in (("intel-rapl:0", 10), ("intel-rapl:0:0", 6), ("intel-rapl:0:2", 2), ("intel-rapl:1", 15)):
        set_rapl_energy(root, joules * 10**6, zone)
    total, domains = reader.read()
    assert list(domains) == ["psys"] and total == pytest.approx(15.0)
    described = reader.describe()
    assert described["total_rail"] == "psys" and not reader.partial
    assert described["inside"] == {"package-0": "psys", "core": "psys", "uncore": "psys", "dram": "psys"}


def test_rapl_core_and_uncore_are_inside_the_package(tmp_path):
    root = rapl_zones(
        tmp_path,
        {"intel-rapl:0": ("package-0", 0), "intel-rapl:0:0": ("core", 0), "intel-rapl:0:1": ("uncore", 0)},
    )
    reader = power.Rapl(root)
    assert [d[0] for d in reader.domains] == ["package-0"]
    assert reader.describe()["inside"] == {"core": "package-0", "uncore": "package-0"}


def test_builtin_profiles_sample_no_faster_than_their_source_can_be_read():
    """A profile's interval below the reader's floor is silently not what the agent does (Pi 5: 50 ms vs 100 ms)."""
    from edgecompress.config import builtin_profiles

    floors = {r.name: r.min_interval_s for r in (power.Ina3221Hwmon, power.Ina3221xIio, power.PiPmic, power.Rapl)}
    floors["command"] = power.Command.min_interval_s
    for name, profile in builtin_profiles().items():
        floor = floors.get(profile.power.source)
        if floor is not None:
            assert profile.power.interval_s >= floor, (name, profile.power.interval_s, floor)


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
