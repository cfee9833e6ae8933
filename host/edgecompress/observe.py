"""From a device measurement to an observation: every metric value a budget can constrain, plus the raw data.

With thresholds, ``observe`` measures again while the verdict says a budget is still undecided (its 95% confidence
interval straddles the threshold), a bounded number of times, pools the measurements, and records how often that
happened and what it cost. It decides nothing itself: ``edgecompress.verdict`` does.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgecompress.analysis import (
    EnergyStats,
    LatencyStats,
    TailEstimate,
    energy_stats,
    latency_stats,
    pool_energy,
    pwcet,
    summarize,
)
from edgecompress.budgets import METRICS, Budget, Evidence
from edgecompress.device import Measurement, MeasureRequest, Session
from edgecompress.verdict import straddling


@dataclass(frozen=True)
class Observation:
    """One candidate measured once (or more, when a budget needed confidence): values in canonical units."""

    sha256: str
    size_bytes: int
    values: dict[str, float | None]
    latency: LatencyStats
    measurement: Measurement
    flags: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    tail: TailEstimate | None = None
    energy: EnergyStats | None = None  # None: the device has no power source ("unavailable", never zero)
    extra_measurements: tuple[Measurement, ...] = ()

    def value(self, budget: Budget) -> float | None:
        return self.values.get(budget.key)

    def to_json(self, with_raw: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "values": self.values,
            "latency": self.latency.to_json(),
            "flags": list(self.flags),
            "details": self.details,
            "tail": self.tail.to_json() if self.tail else None,
            "energy": self.energy.to_json() if self.energy else None,
        }
        if with_raw:
            data["measurement"] = self.measurement.to_json()
            data["extra_measurements"] = [m.to_json() for m in self.extra_measurements]
        return data


def evaluate_metrics(evidence: Evidence, budgets: Iterable[Budget] = ()) -> dict[str, float | None]:
    """Every parameterless metric, plus each budget's (parameterised) metric."""
    values = {name: m.compute(evidence, None) for name, m in METRICS.items() if m.parameter is None}
    for budget in budgets:
        values[budget.key] = budget.value(evidence)
    return values


def pooled_evidence(size_bytes: int, parts: Sequence[Measurement]) -> Evidence:
    """The evidence of one or more measurements of one model, pooled (latencies in order, energy summed)."""
    first = parts[0]
    if len(parts) == 1:
        latencies: Sequence[int] = first.latencies_ns
        stats = latency_stats(first)
    else:
        latencies = [x for m in parts for x in m.latencies_ns]
        stats = summarize(latencies, first.first_inference_ns, first.load_ns)
    energies = [energy_stats(m) for m in parts]
    energy = None if any(e is None for e in energies) else pool_energy([e for e in energies if e is not None])
    return Evidence(
        size_bytes=size_bytes,
        measurement=first,
        extra={"_latency": stats, "_tail": pwcet(latencies), "_energy": energy, "_latencies": latencies},
    )


def _flags(evidence: Evidence, parts: Sequence[Measurement]) -> tuple[str, ...]:
    flags = []
    raw = parts[-1].raw
    if any(m.raw.get("throttled") for m in parts):
        flags.append("throttled")
    if any(m.raw.get("repeated") for m in parts):
        flags.append("repeated_after_throttling")
    if any((m.raw.get("after") or {}).get("capped_cpus") for m in parts):
        flags.append("cpu_freq_capped")
    wait = (raw.get("before") or {}).get("wait")
    if wait and not wait.get("reached"):
        flags.append("hot_start")
    tail = evidence.tail
    if tail is not None and tail.iid is not None and not tail.iid.passed:
        flags.append("iid_failed")
    if tail is not None and tail.fallback:
        flags.append("pwcet_is_observed_max")
    energy = evidence.energy
    if energy is not None and energy.partial:
        flags.append("power_partial")
    if any((m.raw.get("power_trace") or {}).get("errors") for m in parts):
        flags.append("power_read_errors")
    if energy is None and any(m.raw.get("power_trace") for m in parts):
        flags.append("power_trace_unusable")  # sampled, but not across the whole window: energy unavailable
    return tuple(flags)


def _thermal(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The heat around a measurement, without the per-CPU detail."""

    def brief(state: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if not state:
            return None
        keys = ("hottest_c", "throttled", "reasons", "pi_throttled", "capped_cpus", "wait", "thermal")
        return {k: state.get(k) for k in keys}

    return {
        "before": brief(raw.get("before")),
        "after": brief(raw.get("after")),
        "throttled": raw.get("throttled"),
        "repeated": raw.get("repeated"),
    }


def observe(
    session: Session,
    sha256: str,
    size_bytes: int,
    spec: MeasureRequest,
    budgets: Iterable[Budget] = (),
    thresholds: Mapping[str, float] | None = None,
    max_extra: int = 2,
    level: float = 0.95,
) -> Observation:
    """Measure a model the agent holds and compute every metric from it.

    ``thresholds`` maps a budget's key (``latency.p99``, ``latency.pwcet@1e-06``) or metric name to the threshold
    it is judged against now; while a budget's confidence interval straddles it, up to ``max_extra`` more
    measurements are taken and pooled. ``details['confidence']`` records how many and what they cost.
    """
    budgets = list(budgets)
    parts = [session.measure(sha256, spec)]
    straddled: list[str] = []
    extra_seconds = 0.0
    while True:
        evidence = pooled_evidence(size_bytes, parts)
        # Whether another window is worth its device time is the verdict's call; this loop only measures.
        now = straddling(evidence, budgets, thresholds, level)
        if not now or len(parts) > max_extra:
            break
        straddled.extend(k for k in now if k not in straddled)
        t0 = time.monotonic()
        parts.append(session.measure(sha256, spec))
        extra_seconds += time.monotonic() - t0
    details: dict[str, Any] = {"thermal": _thermal(parts[-1].raw), "input_shapes": parts[-1].raw.get("input_shapes")}
    if len(parts) > 1:
        details["thermal_extra"] = [_thermal(m.raw) for m in parts[1:]]
    if thresholds:
        details["confidence"] = {
            "level": level,
            "extra_measurements": len(parts) - 1,
            "straddled": straddled,
            "still_straddling": now,
            "extra_runs": sum(len(m.latencies_ns) for m in parts[1:]),
            "extra_seconds": round(extra_seconds, 3),
        }
    return Observation(
        sha256=sha256,
        size_bytes=size_bytes,
        values=evaluate_metrics(evidence, budgets),
        latency=evidence.extra["_latency"],
        measurement=parts[0],
        flags=_flags(evidence, parts),
        details=details,
        tail=evidence.tail,
        energy=evidence.energy,
        extra_measurements=tuple(parts[1:]),
    )
