"""Latency statistics from raw per-inference nanoseconds (the anchors: onnxruntime_perf_test, MLPerf)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from edgecompress.device import Measurement

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one measurement, in milliseconds."""

    count: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    first_inference_ms: float
    load_ms: float

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)

    def get(self, statistic: str) -> float:
        """A statistic by its budget name: mean, std, min, p50 ... p999, max, first_inference, load."""
        value = getattr(self, f"{statistic}_ms", None)
        if value is None:
            raise KeyError(statistic)
        return float(value)


def summarize(latencies_ns: Sequence[int], first_inference_ns: int = 0, load_ns: int = 0) -> LatencyStats:
    """Statistics of a latency sample given in nanoseconds."""
    if not latencies_ns:
        raise ValueError("no latencies to summarize")
    ms = np.asarray(latencies_ns, dtype=np.float64) / 1e6
    pct = {name: float(np.percentile(ms, q)) for name, q in PERCENTILES.items()}
    return LatencyStats(
        count=int(ms.size),
        mean_ms=float(ms.mean()),
        std_ms=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
        p50_ms=pct["p50"],
        p90_ms=pct["p90"],
        p95_ms=pct["p95"],
        p99_ms=pct["p99"],
        p999_ms=pct["p999"],
        first_inference_ms=first_inference_ns / 1e6,
        load_ms=load_ns / 1e6,
    )


def latency_stats(measurement: Measurement) -> LatencyStats:
    """Statistics of one device measurement."""
    return summarize(measurement.latencies_ns, measurement.first_inference_ns, measurement.load_ns)
