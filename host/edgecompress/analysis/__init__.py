"""Statistics computed on the host from raw device measurements."""

from edgecompress.analysis._energy import EnergyStats, energy_stats, pool_energy
from edgecompress.analysis._latency import LatencyStats, latency_stats, summarize
from edgecompress.analysis._tail import PROBABILITIES, IidCheck, TailEstimate, iid_check, pwcet

__all__ = [
    "PROBABILITIES", "EnergyStats", "IidCheck", "LatencyStats", "TailEstimate",
    "energy_stats", "iid_check", "latency_stats", "pool_energy", "pwcet", "summarize",
]
