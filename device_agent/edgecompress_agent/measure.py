"""The timed loop: warm-up, then at least ``runs`` inferences and ``min_seconds``, at most ``max_seconds``."""

import gc
import os
import time

MAX_RUNS = 200000

_perf_counter_ns = getattr(time, "perf_counter_ns", None)


def now_ns():
    """A monotonic clock in integer nanoseconds (perf_counter_ns where Python has it, 3.7+)."""
    if _perf_counter_ns is not None:
        return _perf_counter_ns()
    return int(time.perf_counter() * 1e9)


def timed_runs(run, warmup_runs=10, warmup_seconds=0.5, runs=100, min_seconds=1.0, max_seconds=60.0):
    """Run ``run()`` repeatedly; return (latencies_ns, warm-up runs done, wall ns of the timed window)."""
    warm_deadline = now_ns() + int(warmup_seconds * 1e9)
    done = 0
    while done < warmup_runs or now_ns() < warm_deadline:
        run()
        done += 1
    latencies = []
    min_ns, max_ns = int(min_seconds * 1e9), int(max_seconds * 1e9)
    # A collection in the middle of the window is noise of the host interpreter, not of the model.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = now_ns()
        while True:
            t0 = now_ns()
            run()
            t1 = now_ns()
            latencies.append(t1 - t0)
            elapsed = t1 - start
            if len(latencies) >= runs and elapsed >= min_ns:
                break
            if elapsed >= max_ns or len(latencies) >= MAX_RUNS:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return latencies, done, now_ns() - start


class Affinity(object):
    """Pin this process to some CPUs for the duration of a ``with`` block (Linux only)."""

    def __init__(self, cpus):
        self.cpus = set(int(c) for c in cpus) if cpus else None
        self.previous = None

    def __enter__(self):
        if self.cpus and hasattr(os, "sched_setaffinity"):
            self.previous = os.sched_getaffinity(0)
            os.sched_setaffinity(0, self.cpus)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            os.sched_setaffinity(0, self.previous)
        return False
