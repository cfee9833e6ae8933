"""Energy per inference from the agent's power trace: the integral over the timed window, divided by inferences.

A trace is either instantaneous power (W, integrated with the trapezoid rule) or a cumulative energy counter
(J: RAPL, some meters; a difference). Both are interpolated linearly at the window's edges, which the agent stamps
with the same clock as the samples. Idle-subtracted ("active") energy removes the idle power measured before warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgecompress.device import Measurement

# scipy.stats is imported in the functions that use it: it takes over a second, and every CLI command imports this
# module at start-up.

SEGMENTS = 10  # batch means for the confidence interval of the mean power


@dataclass(frozen=True)
class EnergyStats:
    """Energy of one measurement (or several pooled): per inference in mJ, power in W."""

    source: str
    partial: bool  # the source sees only some rails (no whole-board input rail): a lower bound
    inferences: int
    window_s: float
    energy_j: float
    energy_mj: float  # per inference
    mean_power_w: float
    idle_power_w: float | None
    active_energy_mj: float | None  # per inference, idle power subtracted
    samples: int
    segment_power_w: tuple[float, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["segment_power_w"] = list(self.segment_power_w)
        return data

    def power_interval_w(self, level: float = 0.95) -> tuple[float, float] | None:
        """CI of the mean power from batch means over equal segments of the window(s)."""
        from scipy import stats

        seg = np.asarray(self.segment_power_w, dtype=np.float64)
        if seg.size < 3:
            return None
        half = stats.t.ppf(0.5 + level / 2, seg.size - 1) * seg.std(ddof=1) / math.sqrt(seg.size)
        return self.mean_power_w - half, self.mean_power_w + half

    def interval(self, metric: str, level: float = 0.95) -> tuple[float, float] | None:
        """CI of ``energy``, ``energy.active`` or ``power.mean``: the power CI scaled (window and count are fixed)."""
        power = self.power_interval_w(level)
        if power is None or self.mean_power_w <= 0:
            return None
        if metric == "power.mean":
            return power
        per_watt = self.window_s / self.inferences * 1e3  # mJ per inference for each watt
        if metric == "energy":
            return power[0] * per_watt, power[1] * per_watt
        if metric == "energy.active" and self.idle_power_w is not None:
            return (power[0] - self.idle_power_w) * per_watt, (power[1] - self.idle_power_w) * per_watt
        return None


def _cumulative_j(trace: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(seconds, cumulative joules) of a trace, whichever kind it is."""
    t = np.asarray(trace["t_ns"], dtype=np.float64) / 1e9
    v = np.asarray(trace["values"], dtype=np.float64)
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    if trace["kind"] == "energy":
        return t, v
    if trace["kind"] != "power":
        raise ValueError(f"unknown power trace kind {trace['kind']!r}")
    steps = np.diff(t) * (v[1:] + v[:-1]) / 2
    return t, np.concatenate([[0.0], np.cumsum(steps)])


def energy_between(trace: Mapping[str, Any], start_ns: int, end_ns: int) -> float:
    """Joules between two instants of the agent's clock; the trace must bracket them."""
    t, e = _cumulative_j(trace)
    start, end = start_ns / 1e9, end_ns / 1e9
    if t.size < 2 or t[0] > start or t[-1] < end:
        raise ValueError(f"the power trace ({t.size} samples) does not cover the timed window")
    # Piecewise-linear power integrates to a piecewise-quadratic energy; linear interpolation of the
    # cumulative integral at the edges is exact to within one sample interval's curvature.
    return float(np.interp(end, t, e) - np.interp(start, t, e))


def covers_window(measurement: Measurement) -> bool:
    """Whether the power trace brackets the timed window (a failed first or last reading leaves it short)."""
    raw = measurement.raw
    t = (raw.get("power_trace") or {}).get("t_ns") or []
    return len(t) >= 2 and min(t) <= int(raw["window_start_ns"]) and max(t) >= int(raw["window_end_ns"])


def energy_stats(measurement: Measurement) -> EnergyStats | None:
    """Energy of one measurement, or None when there is no usable power trace ("unavailable", never zero)."""
    raw = measurement.raw
    trace = raw.get("power_trace")
    if not trace or not covers_window(measurement):
        return None
    start, end = int(raw["window_start_ns"]), int(raw["window_end_ns"])
    joules = energy_between(trace, start, end)
    count = len(measurement.latencies_ns)
    window_s = (end - start) / 1e9
    edges = np.linspace(start, end, SEGMENTS + 1)
    pairs = zip(edges[:-1], edges[1:], strict=True)
    segment = tuple(energy_between(trace, int(a), int(b)) / ((b - a) / 1e9) for a, b in pairs)
    idle = raw.get("idle_power_w")
    return EnergyStats(
        source=str(trace.get("source")),
        partial=bool(trace.get("partial")),
        inferences=count,
        window_s=window_s,
        energy_j=joules,
        energy_mj=joules / count * 1e3,
        mean_power_w=joules / window_s,
        idle_power_w=None if idle is None else float(idle),
        active_energy_mj=None if idle is None else (joules - float(idle) * window_s) / count * 1e3,
        samples=len(trace["t_ns"]),
        segment_power_w=segment,
    )


def pool_energy(parts: Sequence[EnergyStats]) -> EnergyStats | None:
    """Several measurements of one model as one: total energy over total inferences and total time."""
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    count = sum(p.inferences for p in parts)
    window = sum(p.window_s for p in parts)
    joules = sum(p.energy_j for p in parts)
    idles = [p.idle_power_w for p in parts]
    # The time-weighted idle power: idle x total window is then the sum of each part's idle energy.
    if any(i is None for i in idles):
        idle = None
    else:
        idle = sum(i * p.window_s for i, p in zip(idles, parts, strict=True) if i) / window
    active = None if idle is None else (joules - idle * window) / count * 1e3
    return EnergyStats(
        source=parts[0].source,
        partial=any(p.partial for p in parts),
        inferences=count,
        window_s=window,
        energy_j=joules,
        energy_mj=joules / count * 1e3,
        mean_power_w=joules / window,
        idle_power_w=idle,
        active_energy_mj=active,
        samples=sum(p.samples for p in parts),
        segment_power_w=tuple(s for p in parts for s in p.segment_power_w),
    )
