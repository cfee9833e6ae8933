"""Fixture trees standing in for hardware we do not have, built from the documented sysfs layouts.

Each builder writes under ``root`` (the agent's ``--sysfs-root``) and returns it. Power values are constant, so a
test knows the exact watts the agent must read. Layouts:

- Jetson Orin Nano, JetPack 6 (mainline ina3221 hwmon): /sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1/
  in<K>_label, in<K>_input (mV), curr<K>_input (mA), K = 1..3, in4..in7 shunt channels (7 = sum of shunts).
- Jetson AGX Orin: two INA3221 at 1-0040 and 1-0041, no VDD_IN, unconnected channels labelled "NC". Its power
  tree (NVIDIA's Jetson Linux developer guide): VDD_GPU_SOC, VDD_CPU_CV and VIN_SYS_5V0 are the top-level rails;
  VDDQ_VDD2_1V8AO (the DRAM) is fed from VIN_SYS_5V0 and included in it.
- Jetson Nano, JetPack 4 (ina3221x IIO): /sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/rail_name_K,
  in_voltageK_input (mV), in_currentK_input (mA), in_powerK_input (mW), K = 0..2.
- Intel RAPL (powercap): /sys/class/powercap/intel-rapl:N/{name,energy_uj,max_energy_range_uj} is package N (or
  psys, the platform), intel-rapl:N:M its sub-zones (core, uncore, dram), all listed flat in the class directory.
  core and uncore are inside their package; dram is not (a domain of its own); psys includes packages and dram.
- Raspberry Pi 5: a fake ``vcgencmd`` script printing recorded ``pmic_read_adc`` output, and ``get_throttled``
  words from a list (one per call, the last repeated).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def _write(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")


def _hwmon(root: Path, device: str, hwmon: str, rails: dict[int, tuple[str, int, int]]) -> None:
    base = root / "sys/bus/i2c/drivers/ina3221" / device / "hwmon" / hwmon
    _write(base / "name", "ina3221")
    for k, (label, mv, ma) in rails.items():
        _write(base / f"in{k}_label", label)
        _write(base / f"in{k}_input", mv)
        _write(base / f"curr{k}_input", ma)
    for k in (4, 5, 6, 7):  # shunt-voltage channels: no rail, must be ignored
        _write(base / f"in{k}_input", 12)
    _write(base / "in7_label", "sum of shunt voltages")
    _write(base / "curr7_input", 999)


# (label, mV, mA): VDD_IN 5.000 V x 1.200 A = 6.0 W is the board's input; the others are inside it.
ORIN_NANO_RAILS = {1: ("VDD_IN", 5000, 1200), 2: ("VDD_CPU_GPU_CV", 5000, 300), 3: ("VDD_SOC", 5000, 400)}
ORIN_NANO_W = 6.0


def orin_nano_jp6(root: Path) -> Path:
    _hwmon(root, "1-0040", "hwmon1", ORIN_NANO_RAILS)
    return root


# An idle AGX Orin: the DRAM rail is about a tenth of the rest, so counting it twice reads ~10% high.
AGX_ORIN_RAILS_W = {"VDD_GPU_SOC": 19.0 * 0.16, "VDD_CPU_CV": 19.0 * 0.06, "VIN_SYS_5V0": 5.0 * 0.7}
AGX_ORIN_DRAM_W = 1.8 * 0.45  # VDDQ_VDD2_1V8AO, inside VIN_SYS_5V0
AGX_ORIN_W = sum(AGX_ORIN_RAILS_W.values())


def agx_orin(root: Path) -> Path:
    _hwmon(
        root,
        "1-0040",
        "hwmon2",
        {1: ("VDD_GPU_SOC", 19000, 160), 2: ("VDD_CPU_CV", 19000, 60), 3: ("VIN_SYS_5V0", 5000, 700)},
    )
    _hwmon(root, "1-0041", "hwmon3", {1: ("NC", 0, 0), 2: ("VDDQ_VDD2_1V8AO", 1800, 450), 3: ("NC", 0, 0)})
    return root


NANO_W = 2.345


def nano_jp4(root: Path) -> Path:
    base = root / "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    for k, (name, mv, ma, mw) in enumerate(
        [("POM_5V_IN", 5000, 469, 2345), ("POM_5V_GPU", 5000, 40, 200), ("POM_5V_CPU", 5000, 160, 800)]
    ):
        _write(base / f"rail_name_{k}", name)
        _write(base / f"in_voltage{k}_input", mv)
        _write(base / f"in_current{k}_input", ma)
        _write(base / f"in_power{k}_input", mw)
    return root


RAPL_RANGE_UJ = 262143328850


def rapl(root: Path, energy_uj: int = 1_000_000) -> Path:
    for zone, name, value in (("intel-rapl:0", "package-0", energy_uj), ("intel-rapl:0:0", "core", 5)):
        base = root / "sys/class/powercap" / zone
        _write(base / "name", name)
        _write(base / "energy_uj", value)
        _write(base / "max_energy_range_uj", RAPL_RANGE_UJ)
    return root


def rapl_zones(root: Path, zones: dict[str, tuple[str, int]]) -> Path:
    """Any powercap layout: {zone directory: (name, energy_uj)}, e.g. {"intel-rapl:0:0": ("dram", 7)}."""
    for zone, (name, value) in zones.items():
        base = root / "sys/class/powercap" / zone
        _write(base / "name", name)
        _write(base / "energy_uj", value)
        _write(base / "max_energy_range_uj", RAPL_RANGE_UJ)
    return root


def rapl_server(root: Path) -> Path:
    """A two-socket Xeon: each package has a dram sub-zone (no core/uncore on servers)."""
    return rapl_zones(
        root,
        {
            "intel-rapl:0": ("package-0", 0),
            "intel-rapl:0:0": ("dram", 0),
            "intel-rapl:1": ("package-1", 0),
            "intel-rapl:1:0": ("dram", 0),
        },
    )


def rapl_client_with_psys(root: Path) -> Path:
    """A laptop: package with core, uncore and dram sub-zones, and psys, the platform domain, at top level."""
    return rapl_zones(
        root,
        {
            "intel-rapl:0": ("package-0", 0),
            "intel-rapl:0:0": ("core", 0),
            "intel-rapl:0:1": ("uncore", 0),
            "intel-rapl:0:2": ("dram", 0),
            "intel-rapl:1": ("psys", 0),
        },
    )


def set_rapl_energy(root: Path, energy_uj: int, zone: str = "intel-rapl:0") -> None:
    _write(root / "sys/class/powercap" / zone / "energy_uj", energy_uj)


def thermal_zone(root: Path, index: int, kind: str, millideg: int) -> Path:
    base = root / f"sys/class/thermal/thermal_zone{index}"
    _write(base / "type", kind)
    _write(base / "temp", millideg)
    return root


def cooling_device(root: Path, index: int, kind: str, state: int) -> Path:
    base = root / f"sys/class/thermal/cooling_device{index}"
    _write(base / "type", kind)
    _write(base / "cur_state", state)
    return root


# Recorded on a Raspberry Pi 5 (firmware 2024): currents and voltages have different ADC indices.
PI5_PMIC_ADC = """\
     3V7_WL_SW_A current(0)=0.00390372A
       3V3_SYS_A current(1)=0.05562000A
       1V8_SYS_A current(2)=0.17178700A
      DDR_VDD2_A current(3)=0.02049600A
      DDR_VDDQ_A current(4)=0.00000000A
       1V1_SYS_A current(5)=0.18545300A
       0V8_SYS_A current(6)=0.32109900A
      VDD_CORE_A current(7)=0.75012000A
       3V3_DAC_A current(17)=0.00000000A
       3V3_ADC_A current(18)=0.00048804A
       0V8_AON_A current(16)=0.00000000A
          HDMI_A current(22)=0.02196300A
     3V7_WL_SW_V volt(8)=3.71594400V
       3V3_SYS_V volt(9)=3.30717200V
       1V8_SYS_V volt(10)=1.80238800V
      DDR_VDD2_V volt(11)=1.11098000V
      DDR_VDDQ_V volt(12)=0.60537600V
       1V1_SYS_V volt(13)=1.10830200V
       0V8_SYS_V volt(14)=0.80061000V
      VDD_CORE_V volt(15)=0.86173300V
       3V3_DAC_V volt(20)=3.30620000V
       3V3_ADC_V volt(21)=3.30864000V
       0V8_AON_V volt(19)=0.80061000V
          HDMI_V volt(23)=5.14206000V
         EXT5V_V volt(24)=5.15153000V
          BATT_V volt(25)=0.00000000V
"""


def pi5_watts() -> float:
    """The on-board power of PI5_PMIC_ADC, computed independently of the agent's parser."""
    amps, volts = {}, {}
    for line in PI5_PMIC_ADC.splitlines():
        name, _, value = line.strip().partition("=")
        rail = name.split()[0]
        (amps if rail.endswith("_A") else volts)[rail[:-2]] = float(value[:-1])
    return sum(a * volts[r] for r, a in amps.items() if r in volts)


def fake_vcgencmd(folder: Path, pmic: str | None = PI5_PMIC_ADC, throttled: list[int] | None = None) -> Path:
    """A ``vcgencmd`` in ``folder`` (put it first on PATH); pmic=None answers like a Pi 4 (no PMIC ADC)."""
    folder.mkdir(parents=True, exist_ok=True)
    if pmic is not None:
        (folder / "pmic.txt").write_text(pmic)
    (folder / "throttled.txt").write_text("".join(f"0x{w:x}\n" for w in (throttled or [0])))
    script = folder / "vcgencmd"
    script.write_text(f"""#!/bin/sh
dir='{folder}'
case "$1" in
  pmic_read_adc)
    if [ -f "$dir/pmic.txt" ]; then cat "$dir/pmic.txt"; exit 0; fi
    echo 'error=2 error_msg="Invalid arguments"'; exit 255 ;;
  get_throttled)
    n=$(cat "$dir/calls" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$dir/calls"
    total=$(wc -l < "$dir/throttled.txt"); [ $n -gt $total ] && n=$total
    echo "throttled=$(sed -n ${{n}}p "$dir/throttled.txt")" ;;
  *) echo "unknown command $1" >&2; exit 1 ;;
esac
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


def throttled_calls(folder: Path) -> int:
    calls = folder / "calls"
    return int(calls.read_text()) if calls.exists() else 0


def on_path(folder: Path) -> str:
    """A PATH with ``folder`` first."""
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"
