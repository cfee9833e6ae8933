"""From a device measurement to an observation: every metric value a budget can constrain, plus the raw data."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from edgecompress.analysis import LatencyStats, latency_stats
from edgecompress.budgets import METRICS, Budget, Evidence
from edgecompress.device import Measurement, MeasureRequest, Session


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

    def value(self, budget: Budget) -> float | None:
        return self.values.get(budget.key)

    def to_json(self, with_raw: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "sha256": self.sha256, "size_bytes": self.size_bytes, "values": self.values,
            "latency": self.latency.to_json(), "flags": list(self.flags), "details": self.details,
        }
        if with_raw:
            data["measurement"] = self.measurement.to_json()
        return data


def evaluate_metrics(evidence: Evidence, budgets: Iterable[Budget] = ()) -> dict[str, float | None]:
    """Every parameterless metric, plus each budget's (parameterised) metric."""
    values = {name: m.compute(evidence, None) for name, m in METRICS.items() if m.parameter is None}
    for budget in budgets:
        values[budget.key] = budget.value(evidence)
    return values


def observe(session: Session, sha256: str, size_bytes: int, spec: MeasureRequest,
            budgets: Iterable[Budget] = ()) -> Observation:
    """Measure a model the agent holds and compute every metric from it."""
    measurement = session.measure(sha256, spec)
    stats = latency_stats(measurement)
    evidence = Evidence(size_bytes=size_bytes, measurement=measurement, extra={"_latency": stats})
    return Observation(sha256=sha256, size_bytes=size_bytes, values=evaluate_metrics(evidence, budgets),
                       latency=stats, measurement=measurement)
