"""Scaling a run out: the pool of devices it measures on, whether the host builds ahead while they measure (and on
which cores), and the screening of pool members against each other before the search.

The decisions (``overlap_plan``, ``outliers``) are pure; opening the pool and pinning the host are the parts that
touch the machine.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from edgecompress.config import DeviceProfile, PoolSettings, TuneConfig
from edgecompress.device import DevicePool, Session, open_session
from edgecompress.errors import ConfigError, DeviceError
from edgecompress.search._context import RunContext
from edgecompress.search._negotiate import ExportTarget, export_target

# Cores a local agent or the host needs at least for overlapping to be worth it: with fewer, the two would time
# each other's work (a measurement disturbed by the build running beside it is not a measurement).
MIN_CORES_EACH = 2


@dataclass(frozen=True)
class OverlapPlan:
    """Whether the host builds the next candidate while the devices measure, and the cores each side may use."""

    overlap: bool
    reason: str
    host_cpus: tuple[int, ...] = ()  # empty: not pinned
    agent_cpus: dict[str, tuple[int, ...]] | None = None  # local members' cores

    def describe(self) -> str:
        return ("overlap on: " if self.overlap else "overlap off: ") + self.reason


def overlap_plan(setting: str, members: list[DeviceProfile], cpus: list[int]) -> OverlapPlan:
    """Overlap for remote devices (the host's cores are its own); with local agents only when the host and each
    local agent get MIN_CORES_EACH cores of their own, pinned, unless forced (``yes``: overlapped, not pinned)."""
    if setting == "no":
        return OverlapPlan(False, "--overlap no")
    local = [m.name for m in members if m.transport == "local"]
    if not local:
        return OverlapPlan(True, "the host builds the next candidate while the devices measure")
    if setting == "yes":
        return OverlapPlan(
            True, f"forced with local agents on the host's {len(cpus)} cores (not pinned: they disturb each other)"
        )
    share = len(cpus) // (len(local) + 1)
    if share < MIN_CORES_EACH:
        return OverlapPlan(
            False,
            f"{len(local)} local agent(s) and the host would share {len(cpus)} cores; --overlap yes forces it",
        )
    agents = {name: tuple(cpus[(i + 1) * share : (i + 2) * share]) for i, name in enumerate(local)}
    host = tuple(cpus[:share])
    where = ", ".join(f"{name} on cores {_cores(c)}" for name, c in agents.items())
    return OverlapPlan(True, f"host on cores {_cores(host)}, {where}", host, agents)


def _cores(cpus: tuple[int, ...]) -> str:
    return f"{cpus[0]}-{cpus[-1]}" if len(cpus) > 1 else str(cpus[0])


def host_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


@contextmanager
def pinned(cpus: tuple[int, ...]) -> Iterator[None]:
    """The host process (its torch threads included) on these cores for the block; nothing when empty."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, cpus)
    torch.set_num_threads(len(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
        torch.set_num_threads(threads)


def open_pool(
    members: list[tuple[str, DeviceProfile]],
    config: TuneConfig,
    on_event: Callable[[str], None],
    affinity: dict[str, tuple[int, ...]] | None = None,
) -> tuple[DevicePool, dict[str, dict[str, Any]]]:
    """A session on every member, as a pool; the members' hellos. A member that does not answer is reported and left
    out when another does; the first error when none does."""
    sessions: dict[str, Session] = {}
    hellos: dict[str, dict[str, Any]] = {}
    failed: dict[str, DeviceError] = {}
    for _, profile in members:
        try:
            session = open_session(profile, on_event=on_event, accept_new_host=config.accept_new_host)
        except DeviceError as exc:
            failed[profile.name] = exc
            continue
        sessions[profile.name], hellos[profile.name] = session, session.info
    if not sessions:
        raise next(iter(failed.values()))
    for name, error in failed.items():
        on_event(f"device {name} does not answer and is left out of the pool: {error}")
    pool = DevicePool(
        sessions,
        max_failures=config.max_device_failures,
        on_event=on_event,
        wait_s=config.device_wait_s,
        affinity=affinity,
    )
    for name, error in failed.items():
        pool.left_out[name] = f"did not answer: {error}"
    return pool, hellos


@contextmanager
def pool_for(
    members: list[tuple[str, DeviceProfile]], config: TuneConfig, on_event: Callable[[str], None]
) -> Iterator[tuple[DevicePool, dict[str, dict[str, Any]], OverlapPlan]]:
    """The run's devices for the block: the overlap decision, the pool with the members' hellos, the host pinned to
    its cores (when the plan pins it); the pool closed afterwards."""
    plan = overlap_plan(config.overlap, [p for _, p in members], host_cpus())
    pool, hellos = open_pool(members, config, on_event, plan.agent_cpus)
    try:
        with pinned(plan.host_cpus):
            yield pool, hellos, plan
    finally:
        pool.close()


def outliers(values: dict[str, dict[str, float | None]], keys: list[str], tolerance: float) -> dict[str, str]:
    """Members whose original's figure on a device budget is off the members' median by more than ``tolerance``
    (a fraction), with why."""
    found: dict[str, str] = {}
    for key in keys:
        figures = {name: float(f) for name, v in values.items() if (f := v.get(key)) is not None}
        if len(figures) < 2:
            continue
        median = statistics.median(figures.values())
        for name, figure in figures.items():
            off = abs(figure / median - 1.0) if median else 0.0
            if off > tolerance and name not in found:
                found[name] = f"its original measured {key} {figure:.4g}, {off:.0%} off the pool's median {median:.4g}"
    return found


def screen_members(
    pool: DevicePool,
    context: RunContext,
    settings: PoolSettings,
    measure: Callable[[str], dict[str, float | None]],
    on_event: Callable[[str], None],
) -> dict[str, Any]:
    """Each member measures the original; those off the pool's median (``settings.tolerance``) are reported and
    left out unless ``keep_outliers``. ``measure(member)`` returns the values of one measurement on that member."""
    values = {member.name: measure(member.name) for member in pool.members}
    off = outliers(values, [b.key for b in context.device_budgets], settings.tolerance)
    for name, why in off.items():
        if settings.keep_outliers or pool.size == 1:
            on_event(f"device {name}: {why}; kept (keep_outliers)")
            continue
        on_event(f"device {name}: {why}; left out of the pool (tolerance {settings.tolerance:.0%})")
        pool.leave_out(name, why)
    return {"values": values, "left_out": {n: w for n, w in pool.left_out.items()}, "tolerance": settings.tolerance}


def settle_target(
    members: list[tuple[str, DeviceProfile]],
    hellos: dict[str, dict[str, Any]],
    config: TuneConfig,
    pool: DevicePool,
    on_event: Callable[[str], None],
) -> tuple[str, DeviceProfile, ExportTarget]:
    """The export for the pool: the first answering member's; a member whose runtime needs another format or opset
    is left out (a pool measures one artifact per candidate). The first member's ConfigError when it cannot serve."""
    answering = [(spec, profile) for spec, profile in members if profile.name in hellos]
    spec, profile = answering[0]
    target = export_target(profile, hellos[profile.name], config.opset, config.quant)
    for _, other in answering[1:]:
        try:
            theirs = export_target(other, hellos[other.name], config.opset, config.quant)
        except ConfigError as exc:
            why = str(exc)
        else:
            if (theirs.format, theirs.opset) == (target.format, target.opset):
                continue
            why = f"it needs {theirs.describe()}, the pool {target.describe()}"
        on_event(f"device {other.name} is left out of the pool: {why}")
        pool.leave_out(other.name, why)
    return spec, profile, target


def scale_summary(pool: DevicePool, pipeline: Any) -> dict[str, Any]:
    """What the run's report and results.json say about the pool and the overlap: per member leases, leases lost
    and busy fraction; the host worker's busy time; the most trials in flight at once."""
    stats = pool.stats()
    wall, trials_wall = stats["wall_s"], pipeline.trials_wall_s
    for name, busy in pipeline.trials_busy_s.items():
        member = stats["members"].get(name)
        if member is not None and "left_out" not in member and trials_wall > 0:
            member["busy_fraction_in_trials"] = round(busy / trials_wall, 4)
    return {
        **stats,
        "trials_wall_s": round(trials_wall, 3),
        "host_busy_s": round(pipeline.host_busy_s, 3),
        "host_busy_fraction": round(pipeline.host_busy_s / wall, 4) if wall > 0 else None,
        "in_flight_max": pipeline.queue_peak,
        "depth": pipeline.depth,
    }


def describe_scale(summary: dict[str, Any]) -> str:
    """One line for the console and the log: each member's leases, lost leases and busy share; the host's."""
    parts = []
    for name, member in summary["members"].items():
        if "left_out" in member:
            parts.append(f"{name} left out")
            continue
        busy = member.get("busy_fraction")
        lost = f", {member['leases_lost']} lost" if member.get("leases_lost") else ""
        in_trials = member.get("busy_fraction_in_trials")
        during = f" ({in_trials:.0%} while trials ran)" if in_trials is not None else ""
        parts.append(f"{name} {member['leases']} leases{lost}, busy {busy:.0%}{during}" if busy is not None else name)
    host = summary.get("host_busy_fraction")
    host_text = f"; host busy {host:.0%}" if host is not None else ""
    return f"devices: {'; '.join(parts)}{host_text}; up to {summary['in_flight_max']} trials in flight"
