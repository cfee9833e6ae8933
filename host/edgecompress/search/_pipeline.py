"""The trial pipeline: ask -> build and score on the host -> measure on a pool member -> tell.

Modelled on Optuna's ``study/_optimize.py``: one place where a trial goes from ask to tell (``_run_trial``), on one
thread; the host work runs on a worker and the device work on a leased pool member, so a deeper queue and more
members change the ring around ``_run_trial``, not the trial itself. With one worker and one member (today's only
configuration) a round runs one trial at a time, exactly as a plain loop would.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from edgecompress import verdict
from edgecompress.artifact import Artifact
from edgecompress.compress import SearchSpace
from edgecompress.device import DevicePool, DeviceUnavailable, PoolDown
from edgecompress.errors import DeviceError, EdgecompressError
from edgecompress.search import _decide as decide
from edgecompress.search._candidate import Candidate, measure_candidate
from edgecompress.search._context import RunContext
from edgecompress.search._progress import Reporter, StopFlag
from edgecompress.verdict import Decision, WindowPlan

log = logging.getLogger("edgecompress.tune")
# A device that goes away and comes back more often than this within one measurement is not usable.
MAX_OUTAGES = 2


class BuildCancelled(Exception):
    """A second Ctrl-C stopped the host worker in the middle of a build."""


@dataclass(frozen=True)
class DeviceRecord:
    """One candidate measured on one pool member, as the run records it."""

    observation: dict[str, Any]
    values: dict[str, float | None]
    decisions: dict[str, Decision]
    transfer_s: float
    measure_s: float
    member: str


def measure_on(
    pool: DevicePool,
    context: RunContext,
    artifact: Artifact,
    thresholds: dict[str, float] | None = None,
    on_event: Callable[[str], None] = log.info,
    windows: WindowPlan | None = None,
) -> DeviceRecord:
    """Measure an artifact on a leased pool member; with ``thresholds``, budgets the verdict cannot decide yet get
    more windows before they are judged.

    A device that stops answering is not the candidate's fault: its member is waited for (``--device-wait``) and
    the measurement runs again when it is back. A failure while the device still answers is the candidate's
    (the DeviceError goes to the caller); DeviceUnavailable when the device stays away.
    """
    for outage in range(MAX_OUTAGES + 1):
        member = ""
        try:
            with pool.lease() as lease:
                member = lease.member
                result = measure_candidate(
                    lease.session,
                    artifact,
                    context.request,
                    list(context.budgets),
                    thresholds,
                    windows=windows or context.windows,
                    reference=(context.original, context.relative_keys) if thresholds and context.original else None,
                )
            break
        except (PoolDown, DeviceUnavailable):
            raise
        except DeviceError:
            if outage == MAX_OUTAGES or pool.wait_for(member, context.config.device_wait_s, on_event) is None:
                raise
    return DeviceRecord(
        observation=result.observation.to_json(with_raw=True),
        values=result.observation.values,
        decisions=result.observation.decisions,
        transfer_s=result.transfer_s,
        measure_s=result.measure_s,
        member=lease.member,
    )


@dataclass(frozen=True)
class RoundSetup:
    """What every trial of one round shares."""

    index: int
    study: optuna.Study
    space: SearchSpace
    base_model: nn.Module
    thresholds: dict[str, float]
    rounds_after: int = 0  # rounds still to run after this one, for the ETA


class TrialPipeline:
    """Runs a round's trials until it has its number of counted trials, or a stop is requested."""

    def __init__(
        self,
        context: RunContext,
        pool: DevicePool,
        reporter: Reporter,
        stop: StopFlag,
        teacher: nn.Module,
        original_values: dict[str, float | None],
    ):
        self.context = context
        self.pool = pool
        self.reporter = reporter
        self.stop = stop
        self.teacher = teacher
        self.original_values = original_values
        # Set by a second Ctrl-C: the host worker stops at its next step instead of finishing the build.
        self._cancel = threading.Event()

    def run_round(self, setup: RoundSetup) -> bool:
        """Run trials until the round has its number of finished trials; False when stopped early."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgecompress-host") as host:
            try:
                return self._trials(setup, host)
            except KeyboardInterrupt:
                self._cancel.set()  # leaving the block waits for the worker: make that wait one step long
                raise

    def _trials(self, setup: RoundSetup, host: ThreadPoolExecutor) -> bool:
        config, study = self.context.config, setup.study
        uniform = decide.UniformSearch(config.max_ratio, config.ratio_step) if config.strategy == "uniform" else None
        started = time.perf_counter()
        done_here = 0
        while len(decide.counted(study.get_trials(deepcopy=False))) < config.trials_per_round:
            if self.stop.requested:
                return False
            if uniform is not None and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                finished = decide.counted(study.get_trials(deepcopy=False))
                ratio = uniform.next_ratio(finished)
                if ratio in uniform.tried(finished):
                    self.reporter.message(f"uniform search converged at ratio {ratio:g}")
                    return True
                study.enqueue_trial(decide.uniform_params(setup.space, ratio, self.context.target.quant_modes))
            record = self._run_trial(setup, study.ask(), host)
            done_here += 1
            trials = study.get_trials(deepcopy=False)
            remaining = config.trials_per_round - len(decide.counted(trials))
            remaining += setup.rounds_after * config.trials_per_round  # the run's, not only this round's
            eta = (time.perf_counter() - started) / done_here * remaining
            self.reporter.trial_finished(record, decide.best_accuracy(trials), eta)
        return True

    def _build(self, setup: RoundSetup, plan: Any) -> Candidate:
        config = self.context.config
        _, candidate = self.context.build(
            setup.base_model,
            plan,
            setup.space,
            teacher=self.teacher,
            finetune_steps=config.candidate_finetune_steps,
            finetune_lr=config.finetune_lr,
            on_stage=self._stage,
        )
        return candidate

    def _stage(self, text: str) -> None:
        if self._cancel.is_set():
            raise BuildCancelled(f"stopped while {text}")

    def _run_trial(self, setup: RoundSetup, trial: optuna.Trial, host: ThreadPoolExecutor) -> dict[str, Any]:
        """The one place a trial goes ask -> evaluate -> tell."""
        context, thresholds = self.context, setup.thresholds
        trial.set_user_attr("round", setup.index)
        trial.set_user_attr("thresholds", thresholds)
        record: dict[str, Any] = {"round": setup.index, "number": trial.number, "thresholds": thresholds}
        try:
            plan = decide.sample_plan(trial, setup.space, context.config, context.target.quant_modes)
            trial.set_user_attr("plan", plan.to_json())
            record["plan"] = plan.to_json()
            earlier = decide.duplicate_of(trial.params, trial.study.get_trials(deepcopy=False))
            if earlier is not None:
                return self._reuse(trial, earlier, record)
            candidate = host.submit(self._build, setup, plan).result()
            trial.set_user_attr("candidate", candidate.to_json())
            values: dict[str, float | None] = dict(candidate.host_values(list(context.budgets)))
            decisions = self._on_device(trial, candidate, thresholds, values)
            lacking = verdict.missing(values, thresholds)
            if lacking:
                trial.set_user_attr("values", values)
                self._fail(trial, f"the device reported no value for {', '.join(lacking)}", record)
                return record
            violations = verdict.constraints(values, thresholds, decisions)
            feasible = all(v <= 0 for v in violations.values())
            trial.set_user_attr("values", values)
            trial.set_user_attr("feasible", feasible)
            if context.config.strategy != "unconstrained":
                for key, violation in violations.items():
                    trial.set_constraint(key, violation)
            else:
                trial.set_user_attr("violations", violations)
            value = decide.objective(context.config, context.budgets, candidate.accuracy, values, self.original_values)
            trial.study.tell(trial, value)
            record.update(
                accuracy=candidate.accuracy,
                values=values,
                feasible=feasible,
                state="COMPLETE",
                violations=violations,
                objective=value,
                decisions={k: d.to_json() for k, d in decisions.items()},
            )
        except (DeviceUnavailable, PoolDown) as exc:
            # The device's failure, not the candidate's: the same plan is queued again (before this trial fails, so
            # a kill in between loses nothing) and the trial does not count; --resume evaluates it.
            trial.study.enqueue_trial(trial.params, skip_if_exists=False)
            self._fail(trial, f"{decide.DEVICE_UNAVAILABLE}: {exc}", record)
            raise DeviceError(f"{exc}. Fix it and resume with --resume {context.run_dir}") from exc
        except DeviceError as exc:
            self._fail(trial, f"device: {exc}", record)
            if self.pool.is_down:
                dropped = self.pool.dropped[-1]
                raise DeviceError(
                    f"device {dropped.name} is down: {dropped.consecutive_failures} trials in a row failed on it; "
                    f"last: {exc}. Fix it and resume with --resume {context.run_dir}"
                ) from exc
        except (EdgecompressError, RuntimeError, ValueError) as exc:
            # A broken candidate fails its trial, not the study.
            self._fail(trial, f"{type(exc).__name__}: {exc}", record)
        return record

    def _on_device(
        self, trial: optuna.Trial, candidate: Candidate, thresholds: dict[str, float], values: dict[str, float | None]
    ) -> dict[str, Decision]:
        """Measure the candidate and judge its device budgets (``values`` gains the device's figures); nothing when
        the host already knows it is over a host-checked budget (no device time for it)."""
        context = self.context
        host_thresholds = {b.key: thresholds[b.key] for b in context.budgets if b.spec.on_host}
        if not verdict.feasible(values, host_thresholds):
            trial.set_user_attr("device", "skipped: over a host-checked budget")
            return {}
        judged = context.judged(thresholds, self.original_values)
        device = measure_on(self.pool, context, candidate.artifact, judged, self.reporter.message)
        values.update(device.values)
        trial.set_user_attr("decisions", {k: d.to_json() for k, d in device.decisions.items()})
        trial.set_user_attr("observation", device.observation)
        trial.set_user_attr("member", device.member)
        timings = {"build_s": candidate.build_s, "eval_s": candidate.eval_s}
        trial.set_user_attr("timings", {**timings, "transfer_s": device.transfer_s, "measure_s": device.measure_s})
        return device.decisions

    def _reuse(self, trial: optuna.Trial, earlier: FrozenTrial, record: dict[str, Any]) -> dict[str, Any]:
        """A plan evaluated already (a sampler that proposes it again, often after a resume) is not built or
        measured again: the earlier trial's result is told for it, and the trial says whose it is."""
        for key in ("candidate", "values", "decisions", "feasible", "violations", "timings", "member"):
            if key in earlier.user_attrs:
                trial.set_user_attr(key, earlier.user_attrs[key])
        trial.set_user_attr("duplicate_of", earlier.number)
        for key, value in (earlier.constraints or {}).items():
            trial.set_constraint(key, value)
        trial.study.tell(trial, earlier.value)
        self.reporter.message(
            f"trial {trial.number} proposes the plan of trial {earlier.number} again; its result is reused"
        )
        values = earlier.user_attrs.get("values") or {}
        record.update(
            accuracy=earlier.user_attrs.get("candidate", {}).get("accuracy"),
            values=values,
            feasible=earlier.user_attrs.get("feasible"),
            state="COMPLETE",
            objective=earlier.value,
            duplicate_of=earlier.number,
        )
        return record

    @staticmethod
    def _fail(trial: optuna.Trial, reason: str, record: dict[str, Any]) -> None:
        trial.set_user_attr("fail_reason", reason[:2000])
        trial.study.tell(trial, state=TrialState.FAIL)
        record.update(state="FAIL", fail_reason=reason)
        log.warning("trial %d failed: %s", trial.number, reason)
