"""Statistics computed on the host from raw device measurements."""

from edgecompress.analysis._energy import EnergyStats, energy_stats, pool_energy
from edgecompress.analysis._latency import LatencyStats, latency_stats, summarize
from edgecompress.analysis._regression import (
    RegressionPolicy,
    RegressionResult,
    compare_paired,
    compare_samples,
    compare_values,
    sample_statistic,
)
from edgecompress.analysis._tail import CONSERVATIVE, PROBABILITIES, IidCheck, TailEstimate, iid_check, pwcet

__all__ = [
    "CONSERVATIVE",
    "PROBABILITIES",
    "EnergyStats",
    "IidCheck",
    "LatencyStats",
    "RegressionPolicy",
    "RegressionResult",
    "TailEstimate",
    "compare_paired",
    "compare_samples",
    "compare_values",
    "energy_stats",
    "iid_check",
    "latency_stats",
    "pool_energy",
    "pwcet",
    "sample_statistic",
    "summarize",
]
