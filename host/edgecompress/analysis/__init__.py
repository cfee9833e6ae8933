"""Statistics computed on the host from raw device measurements."""

from edgecompress.analysis._latency import LatencyStats, latency_stats, summarize

__all__ = ["LatencyStats", "latency_stats", "summarize"]
