"""What the device is: board, CPU, memory, thermal zones, CPU frequency. Every reader takes a sysfs root."""

import glob
import os
import platform
import sys


def _read(path, default=None):
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace").strip("\x00 \n\t")
    except (IOError, OSError):
        return default


def _read_int(path):
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _join(root, path):
    return os.path.join(root, path.lstrip("/"))


def board(root="/"):
    """The board name: device-tree model (Pi, Jetson), else DMI product name, else the machine type."""
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        text = _read(_join(root, path))
        if text:
            return text
    vendor = _read(_join(root, "/sys/class/dmi/id/sys_vendor")) or ""
    product = _read(_join(root, "/sys/class/dmi/id/product_name")) or ""
    name = " ".join(part for part in (vendor, product) if part)
    return name or "unknown {}".format(platform.machine())


def l4t_release(root="/"):
    """The Jetson Linux (L4T) release line, e.g. '# R32 (release), REVISION: 7.1', or None."""
    text = _read(_join(root, "/etc/nv_tegra_release"))
    return text.splitlines()[0] if text else None


def cpu(root="/"):
    """CPU model, architecture and count."""
    model = None
    text = _read(_join(root, "/proc/cpuinfo")) or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and value.strip():
            model = value.strip()
            break
    return {"model": model or platform.processor() or None, "arch": platform.machine(), "count": os.cpu_count()}


def memory(root="/"):
    """Total and available memory in bytes from /proc/meminfo."""
    values = {}
    text = _read(_join(root, "/proc/meminfo")) or ""
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if key in ("MemTotal", "MemAvailable") and parts and parts[0].isdigit():
            values[key] = int(parts[0]) * 1024
    return {"total_bytes": values.get("MemTotal"), "available_bytes": values.get("MemAvailable")}


def thermal_zones(root="/"):
    """Thermal zones as {type: celsius}; offline zones (-256 C on Jetsons) and unreadable ones are left out."""
    zones = {}
    for zone in sorted(glob.glob(_join(root, "/sys/class/thermal/thermal_zone*"))):
        kind = _read(os.path.join(zone, "type"))
        millideg = _read_int(os.path.join(zone, "temp"))
        if kind is None or millideg is None or millideg <= -256000 or millideg == -256:
            continue
        name = kind
        suffix = 1
        while name in zones:
            suffix += 1
            name = "{}#{}".format(kind, suffix)
        zones[name] = millideg / 1000.0
    return zones


def cpufreq(root="/"):
    """Per-CPU frequency (kHz) and governor from cpufreq: {cpu: {cur_khz, max_khz, governor}}."""
    result = {}
    for policy in sorted(glob.glob(_join(root, "/sys/devices/system/cpu/cpu[0-9]*/cpufreq"))):
        name = os.path.basename(os.path.dirname(policy))
        result[name] = {
            "cur_khz": _read_int(os.path.join(policy, "scaling_cur_freq")),
            "max_khz": _read_int(os.path.join(policy, "scaling_max_freq")),
            "hw_max_khz": _read_int(os.path.join(policy, "cpuinfo_max_freq")),
            "governor": _read(os.path.join(policy, "scaling_governor")),
        }
    return result


def python_info():
    return {"version": platform.python_version(), "executable": sys.executable, "implementation": platform.python_implementation()}
