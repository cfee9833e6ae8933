"""From device measurements to an observation: every metric value a budget can constrain, the raw data, and (with
thresholds) one Decision per device budget from repeated windows.

A window is one ``measure`` request. With thresholds, ``observe`` takes windows while the verdict says a budget is
still undecided, within a WindowPlan; a budget relative to the original is measured in windows alternating with the
original's and judged on the paired ratio. It decides nothing itself: ``edgecompress.verdict`` does.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgecompress.analysis import (
    CONSERVATIVE,
    EnergyStats,
    LatencyStats,
    TailEstimate,
    energy_stats,
    latency_stats,
    pool_energy,
    pwcet,
    summarize,
)
from edgecompress.artifact import Artifact
from edgecompress.budgets import METRICS, Budget, Evidence
from edgecompress.device import Measurement, MeasureRequest, Session
from edgecompress.verdict import Decision, WindowPlan, all_decided, decide


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
    decisions: dict[str, Decision] = field(default_factory=dict)  # per judged device budget

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
            "decisions": {k: d.to_json() for k, d in self.decisions.items()},
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
    if tail is not None and tail.method == CONSERVATIVE:
        flags.append("pwcet_conservative")
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


@dataclass(frozen=True)
class Reference:
    """The original model on the device: for the budgets in ``keys`` (relative to it), each window of the candidate
    is paired with a window of the original in the same session, in alternating order, and judged on the ratio."""

    sha256: str
    size_bytes: int
    keys: frozenset[str]


def pair_with(session: Session, original: Artifact, keys: Iterable[str]) -> Reference | None:
    """The original model on the device (uploaded if missing) as the reference of the budgets in ``keys``; None
    when no budget is relative to it."""
    keys = frozenset(keys)
    return Reference(session.put_model(original.data), original.size_bytes, keys) if keys else None


def _window_values(size_bytes: int, window: Measurement, budgets: Sequence[Budget]) -> dict[str, float | None]:
    return {b.key: b.value(pooled_evidence(size_bytes, [window])) for b in budgets}


def observe(
    session: Session,
    sha256: str,
    size_bytes: int,
    spec: MeasureRequest,
    budgets: Iterable[Budget] = (),
    thresholds: Mapping[str, float] | None = None,
    windows: WindowPlan | None = None,
    reference: Reference | None = None,
) -> Observation:
    """Measure a model the agent holds in one or more windows and compute every metric from them, pooled.

    With ``thresholds`` (a budget's key -> the threshold it is judged against now; a ratio for the keys of
    ``reference``), each device budget gets a Decision from the per-window values (``verdict.decide``): windows are
    added while any budget is undecided, within ``windows`` (default WindowPlan()). Without thresholds, one window
    (or ``windows.min_windows``) and no decisions. The loop only measures; the verdict decides.
    """
    budgets = list(budgets)
    judged = [b for b in budgets if not b.spec.on_host and thresholds and b.key in thresholds]
    if windows is not None:
        plan = windows
    else:
        plan = WindowPlan() if judged else WindowPlan(min_windows=1, max_windows=1)
    parts: list[Measurement] = []
    per_window: list[dict[str, float | None]] = []
    reference_windows: list[dict[str, float | None]] = []
    paired = [b for b in judged if reference is not None and b.key in reference.keys]
    decisions: dict[str, Decision] = {}
    started = time.monotonic()
    while True:
        k = len(parts)
        if paired and reference is not None:
            # Alternate which goes first, so a slow start or a steady drift favours neither model.
            if k % 2 == 0:
                reference_windows.append(
                    _window_values(reference.size_bytes, session.measure(reference.sha256, spec), paired)
                )
                parts.append(session.measure(sha256, spec))
            else:
                parts.append(session.measure(sha256, spec))
                reference_windows.append(
                    _window_values(reference.size_bytes, session.measure(reference.sha256, spec), paired)
                )
        else:
            parts.append(session.measure(sha256, spec))
        per_window.append(_window_values(size_bytes, parts[-1], judged))
        decisions = _decisions(judged, thresholds or {}, per_window, reference_windows, paired, plan.confidence)
        spent = time.monotonic() - started
        if len(parts) >= plan.max_windows or (plan.max_seconds is not None and spent >= plan.max_seconds):
            break
        if len(parts) >= plan.min_windows and all_decided(decisions):
            break
    evidence = pooled_evidence(size_bytes, parts)
    details: dict[str, Any] = {"thermal": _thermal(parts[-1].raw), "input_shapes": parts[-1].raw.get("input_shapes")}
    details["threads"] = parts[-1].raw.get("threads", spec.threads)
    if len(parts) > 1:
        details["thermal_extra"] = [_thermal(m.raw) for m in parts[1:]]
    if judged:
        details["windows"] = {
            "count": len(parts),
            "plan": plan.to_json(),
            "values": {b.key: [w.get(b.key) for w in per_window] for b in judged},
            "reference_values": {b.key: [w.get(b.key) for w in reference_windows] for b in paired},
            "seconds": round(time.monotonic() - started, 3),
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
        decisions=decisions,
    )


def _decisions(
    judged: Sequence[Budget],
    thresholds: Mapping[str, float],
    per_window: Sequence[Mapping[str, float | None]],
    reference_windows: Sequence[Mapping[str, float | None]],
    paired: Sequence[Budget],
    confidence: float,
) -> dict[str, Decision]:
    result = {}
    paired_keys = {b.key for b in paired}
    for budget in judged:
        values = [w.get(budget.key) for w in per_window]
        if budget.key in paired_keys:
            references = [w.get(budget.key) for w in reference_windows]
            values = [None if v is None or not r else v / r for v, r in zip(values, references, strict=True)]
        result[budget.key] = decide(
            budget.key, values, thresholds[budget.key], confidence, paired=budget.key in paired_keys
        )
    return result
