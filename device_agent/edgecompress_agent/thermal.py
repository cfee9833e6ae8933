"""Heat and throttling: the state around a measurement, and a bounded wait until the device has cooled down.

Sources: thermal zones and cpufreq (system.py, under a sysfs root), cpufreq cooling devices (a thermal governor
capping the CPU), and on a Raspberry Pi ``vcgencmd get_throttled``.
"""

import glob
import os
import re
import shutil
import subprocess
import time

from . import system
from .system import _join, _read, _read_int

# vcgencmd get_throttled: bits 0-3 are the state now, bits 16-19 "has occurred since boot".
THROTTLE_BITS = ((0, "under_voltage"), (1, "freq_capped"), (2, "throttled"), (3, "soft_temp_limit"))
OCCURRED_SHIFT = 16
# Zones that say how hot the silicon is. Others can mislead: Jetson Nano's PMIC-Die reads a constant 100 C.
_HOT_ZONES = re.compile(r"cpu|soc|tj|gpu|x86_pkg|package", re.IGNORECASE)
POLL_S = 0.5


def decode_throttled(value):
    """The named bits of a get_throttled word: {'raw', 'now': [...], 'occurred': [...]}."""
    now = [name for bit, name in THROTTLE_BITS if value >> bit & 1]
    occurred = [name for bit, name in THROTTLE_BITS if value >> (bit + OCCURRED_SHIFT) & 1]
    return {"raw": "0x{:x}".format(value), "now": now, "occurred": occurred}


def pi_throttled(vcgencmd=None):
    """``vcgencmd get_throttled`` decoded, or None where there is no vcgencmd (not a Pi) or it fails."""
    vcgencmd = vcgencmd or shutil.which("vcgencmd")
    if not vcgencmd:
        return None
    try:
        done = subprocess.run([vcgencmd, "get_throttled"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"throttled=(0x[0-9a-fA-F]+|\d+)", done.stdout.decode("utf-8", "replace"))
    if done.returncode != 0 or not match:
        return None
    return decode_throttled(int(match.group(1), 0))


def cooling_devices(root="/"):
    """CPU-frequency cooling devices that are engaged: {name: cur_state} for cur_state > 0."""
    engaged = {}
    for device in sorted(glob.glob(_join(root, "/sys/class/thermal/cooling_device*"))):
        kind = _read(os.path.join(device, "type")) or ""
        state = _read_int(os.path.join(device, "cur_state"))
        if "cpufreq" in kind.lower() and state:
            engaged["{} ({})".format(os.path.basename(device), kind)] = state
    return engaged


def hottest_c(zones):
    """The temperature that decides 'cool enough': the hottest CPU/SoC/GPU zone, else the hottest of any."""
    hot = [t for name, t in zones.items() if _HOT_ZONES.search(name)]
    if not hot:
        hot = [t for name, t in zones.items() if "pmic" not in name.lower()]
    return max(hot) if hot else None


def state(root="/", vcgencmd=None):
    """Everything about heat now; ``throttled`` is True when any source says the device is slowed right now."""
    zones = system.thermal_zones(root)
    freq = system.cpufreq(root)
    pi = pi_throttled(vcgencmd)
    cooling = cooling_devices(root)
    reasons = []
    if pi and any(n in pi["now"] for n in ("freq_capped", "throttled", "soft_temp_limit", "under_voltage")):
        reasons.append("vcgencmd: " + ",".join(pi["now"]))
    if cooling:
        reasons.append("cooling: " + ",".join(sorted(cooling)))
    # A policy maximum below the hardware's: a thermal cap, or the user's choice; recorded, not called throttling.
    capped = sorted(cpu for cpu, f in freq.items()
                    if f["max_khz"] and f["hw_max_khz"] and f["max_khz"] < f["hw_max_khz"])
    return {"thermal": zones, "hottest_c": hottest_c(zones), "cpufreq": freq, "pi_throttled": pi,
            "cooling": cooling, "capped_cpus": capped, "throttled": bool(reasons), "reasons": reasons}


def throttled_during(before, after):
    """Whether throttling happened between two states: either was throttled, or a sticky Pi bit appeared."""
    if before["throttled"] or after["throttled"]:
        return True
    b, a = before.get("pi_throttled"), after.get("pi_throttled")
    return bool(b and a and set(a["occurred"]) - set(b["occurred"]))


def wait_until_cool(root="/", start_temp_c=None, max_wait_s=120.0, vcgencmd=None, need_unthrottled=False):
    """Wait (bounded by ``max_wait_s``) until below ``start_temp_c`` and, if asked, until throttling stops.

    Returns {'waited_s', 'temp_c', 'reached'}; a wait that ran out is reported, not raised: the measurement
    goes on and is flagged by the host.
    """
    t0 = time.monotonic()
    while True:
        now = state(root, vcgencmd) if need_unthrottled else None
        zones = now["thermal"] if now else system.thermal_zones(root)
        temp = hottest_c(zones)
        cool = start_temp_c is None or temp is None or temp < start_temp_c
        calm = not (now and now["throttled"])
        waited = time.monotonic() - t0
        if cool and calm or waited >= max_wait_s:
            return {"waited_s": round(waited, 3), "temp_c": temp, "start_temp_c": start_temp_c,
                    "reached": bool(cool and calm)}
        time.sleep(min(POLL_S, max(max_wait_s - waited, 0.0)))  # polling the hardware; nothing to be woken by
