"""A worker: another host joining a shared tune run with its own devices and host compute.

    edgecompress worker --storage postgresql://... --run NAME --device jetson-2

It reads the run's record (configuration, export format, the original's values and thresholds) from the storage,
fetches the original and each round's base from the artifact store, and runs the open round's trials through the
same TrialPipeline as the run's own host: ask from the shared study, build and score here, measure on its devices,
tell. The fine-tuning between rounds happens once, on the run's host; a worker waits at the round barrier and
follows. It stops when the run's search is over (or at Ctrl-C); killed, its trials in flight go stale and are
queued again by the other hosts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgecompress.artifact import Artifact
from edgecompress.config import TuneConfig
from edgecompress.errors import ConfigError
from edgecompress.search._context import RunContext, heartbeat_storage
from edgecompress.search._driver import _check, host_id, settle_context
from edgecompress.search._pipeline import RoundSetup, TrialPipeline
from edgecompress.search._progress import Logged, Reporter, StopFlag, run_log
from edgecompress.search._scale import describe_scale, pool_for, scale_summary
from edgecompress.search._shared import SharedRun


@dataclass(frozen=True)
class WorkerResult:
    trials: int  # trials this worker told (complete or failed)
    rounds: list[int]
    interrupted: bool
    scale: dict[str, Any]


def run_worker(
    storage: str,
    name: str,
    devices: list[str],
    reporter: Reporter,
    artifacts: str | None = None,
    out: Path | None = None,
    host_device: str | None = None,
    overlap: str | None = None,
    wait_s: float = 600.0,
) -> WorkerResult:
    """Join run ``name`` in ``storage`` and work its rounds until its search is over."""
    reporter = Logged(reporter)
    rdb = heartbeat_storage(storage)
    shared = SharedRun.join(rdb, name, artifacts, wait_s, reporter.message)
    record = shared.record
    worker = f"worker@{host_id()}"
    overrides: dict[str, Any] = {
        "device": devices[0] if len(devices) == 1 else devices,
        "storage": storage,
        "artifacts": artifacts or record.get("artifacts"),
        "opset": record.get("opset"),
        # Another host, another stream of proposals: the same seed would propose what the run's host proposes.
        "seed": int(record["config"].get("seed", 0)) + os.getpid(),
    }
    if host_device is not None:
        overrides["host_device"] = host_device
    if overlap is not None:
        overrides["overlap"] = overlap
    config = TuneConfig.model_validate({**record["config"], **overrides})
    budgets, members, _, workload = _check(config)
    folder = out or Path("runs") / f"{name.replace('/', '-')}-{worker.replace('@', '-')}"
    folder.mkdir(parents=True, exist_ok=True)
    stop = StopFlag(notify=reporter.message)
    with run_log(folder), stop, pool_for(members, config, reporter.message) as (pool, hellos, plan):
        context = settle_context(
            config, members, hellos, pool, budgets, workload, folder, storage, name, reporter.message
        )
        if context.target.format != record.get("format"):
            raise ConfigError(f"run {name} exports {record.get('format')}; these devices need {context.target.format}")
        original = shared.download("original", folder)
        context = context.keeping(
            tuple(record["kept"]), Artifact.from_bytes(original.read_bytes(), context.target.format)
        )
        reporter.message(f"{worker} joins run {name}; {plan.describe()}")
        return _work(context, shared, pool, reporter, stop, plan.overlap, worker)


def _work(
    context: RunContext,
    shared: SharedRun,
    pool: Any,
    reporter: Reporter,
    stop: StopFlag,
    overlap: bool,
    worker: str,
) -> WorkerResult:
    record = shared.record
    teacher = context.workload.build_model().eval()
    original = record["original"]
    pipeline = TrialPipeline(
        context,
        pool,
        reporter,
        stop,
        teacher,
        original["values"],
        overlap=overlap,
        worker=worker,
        shared=True,
        resume_hint="start the worker again (the run's other hosts go on)",
    )
    rounds: list[int] = []
    t, interrupted = 0, False
    original_space = context.space(teacher)
    try:
        while not stop.requested and t < context.rounds:
            opened = shared.wait_for_round(t, reporter.message)
            if opened is None:
                break
            t = opened
            base = teacher
            if t > 0:
                path = shared.download(f"base-{t}", context.run_dir)
                base = torch.load(path, weights_only=False).eval()  # the run's own checkpoint, saved by tune
            thresholds = {key: values[t] for key, values in original["thresholds"].items()}
            reporter.round_started(t, context.rounds, thresholds, context.config.trials_per_round)
            space = context.space(base)
            setup = RoundSetup(t, context.study(t), space, base, thresholds, context.rounds - t - 1, original_space)
            if not pipeline.run_round(setup):
                interrupted = True
                break
            rounds.append(t)
            t += 1
    except KeyboardInterrupt:
        interrupted = True
        reporter.message("stopping now; the trial in flight goes stale and another host evaluates it again")
    interrupted = interrupted or stop.requested
    told = 0
    for index in rounds or [t]:
        trials = context.study(index).get_trials(deepcopy=False)
        told += sum(1 for tr in trials if tr.user_attrs.get("worker") == worker and tr.state.is_finished())
    scale = scale_summary(pool, pipeline)
    reporter.message(describe_scale(scale))
    return WorkerResult(told, rounds, interrupted, scale)
