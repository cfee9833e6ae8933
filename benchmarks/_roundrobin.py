"""Several models measured side by side: round-robin, so that all of them see the same machine state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from edgecompress.analysis import latency_stats
from edgecompress.device import MeasureRequest, Session

K = TypeVar("K")


def round_robin_p50s(
    session: Session, shas: Mapping[K, str], spec: MeasureRequest, repeats: int
) -> dict[K, list[float]]:
    """Each model's p50 (ms) in each of ``repeats`` passes over all of them; the models must be on the device."""
    p50s: dict[K, list[float]] = {key: [] for key in shas}
    for _ in range(repeats):
        for key, sha in shas.items():
            p50s[key].append(latency_stats(session.measure(sha, spec)).p50_ms)
    return p50s
