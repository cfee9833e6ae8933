"""The trial pipeline: ask -> build and score on the host -> measure on a pool member -> tell.

Modelled on Optuna's ``study/_optimize.py``: one place where a trial goes from ask to tell (``_run_trial``), on one
thread; the host work runs on a worker and the device work on a leased pool member, so a deeper queue and more
members change the ring around ``_run_trial``, not the trial itself. With one worker and one member (today's only
configuration) a round runs one trial at a time, exactly as a plain loop would.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from edgecompress import verdict
from edgecompress.artifact import Artifact
from edgecompress.compress import SearchSpace
from edgecompress.device import DevicePool, DeviceUnavailable, LinkLost, MemberAway, PoolDown
from edgecompress.errors import DeviceError, EdgecompressError
from edgecompress.search import _decide as decide
from edgecompress.search._candidate import Candidate, measure_candidate
from edgecompress.search._context import HEARTBEAT_S, RunContext
from edgecompress.search._latency_model import (
    SCREEN_CONFIDENCE,
    LatencyModels,
    Prediction,
    features,
    kept_by_base,
    screen,
)
from edgecompress.search._progress import Reporter, StopFlag
from edgecompress.verdict import Decision, WindowPlan

log = logging.getLogger("edgecompress.tune")
# A device that goes away and comes back more often than this within one measurement is not usable.
MAX_OUTAGES = 2
# A shared study: how often a host looks at the other hosts' trials while it has none of its own in flight.
OTHERS_POLL_S = 2.0


class BuildCancelled(Exception):
    """A second Ctrl-C stopped the host worker in the middle of a build."""


class Heartbeat:
    """Keeps the heartbeat (Optuna's RDB heartbeat table) of this host's trials in a shared study, from a thread of
    its own: Optuna beats only for optimize(), and a round runs ask-and-tell. A no-op without a study."""

    def __init__(self, study: optuna.Study | None, interval_s: float = HEARTBEAT_S):
        self.study = study
        self.interval_s = interval_s
        self._trials: dict[int, int] = {}  # number -> trial id
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="edgecompress-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        if self.study is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def add(self, trial: optuna.Trial) -> None:
        with self._lock:
            self._trials[trial.number] = trial._trial_id
        self._record(trial._trial_id)

    def discard(self, number: int) -> None:
        with self._lock:
            self._trials.pop(number, None)

    def _record(self, trial_id: int) -> None:
        if self.study is None:
            return
        try:
            self.study._storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the database may be restarting
            log.warning("heartbeat of trial id %d not recorded: %s", trial_id, exc)

    def _beat(self) -> None:
        while not self._done.wait(self.interval_s):
            with self._lock:
                ids = list(self._trials.values())
            for trial_id in ids:
                self._record(trial_id)


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
    member: str | None = None,
    paired: frozenset[str] | None = None,
) -> DeviceRecord:
    """Measure an artifact on a leased pool member (``member``: that one); with ``thresholds``, budgets the verdict
    cannot decide yet get more windows before they are judged, those in ``paired`` (default: the relative budgets)
    on the ratio to the original measured in alternate windows.

    A device that stops answering is not the candidate's fault: the measurement runs again on another member, or on
    the same one when it is back (the pool waits ``--device-wait`` for one). A failure while the device still
    answers is the candidate's (the DeviceError goes to the caller); DeviceUnavailable when no member comes back.
    """
    for outage in range(MAX_OUTAGES + 1):
        try:
            with pool.lease(member) as lease:
                request = context.request
                if lease.affinity:
                    request = dataclasses.replace(request, affinity=lease.affinity)
                result = measure_candidate(
                    lease.session,
                    artifact,
                    request,
                    list(context.budgets),
                    thresholds,
                    windows=windows or context.windows,
                    reference=(context.original, context.relative_keys if paired is None else paired)
                    if thresholds and context.original
                    else None,
                )
            break
        except MemberAway as exc:
            if member is not None or outage == MAX_OUTAGES:
                raise DeviceUnavailable(f"{exc}; the measurement was tried {outage + 1} times") from exc
            on_event(f"measuring again ({outage + 2} of {MAX_OUTAGES + 1} tries): {exc}")
        except LinkLost as exc:
            if outage == MAX_OUTAGES:
                # Broken links on every try while the devices answer in between: the candidate's (it crashes the
                # agent), not the devices'.
                raise exc.cause from exc
            on_event(f"measuring again ({outage + 2} of {MAX_OUTAGES + 1} tries): {exc}")
    return DeviceRecord(
        observation=result.observation.to_json(with_raw=True),
        values=result.observation.values,
        decisions=result.observation.decisions,
        transfer_s=result.transfer_s,
        measure_s=result.measure_s,
        member=lease.member,
    )


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a trial's parameters again: those it sampled, else those it was enqueued with (none: nothing to keep)."""
    params = trial.params or trial.system_attrs.get("fixed_params")
    if params:
        study.enqueue_trial(params, skip_if_exists=False)


@dataclass(frozen=True)
class RoundSetup:
    """What every trial of one round shares."""

    index: int
    study: optuna.Study
    space: SearchSpace
    base_model: nn.Module
    thresholds: dict[str, float]
    rounds_after: int = 0  # rounds still to run after this one, for the ETA
    original_space: SearchSpace | None = None  # the latency model's features are relative to the original


class TrialPipeline:
    """Runs a round's trials until it has its number of counted trials, or a stop is requested.

    ``depth`` trials are in flight at once: one per pool member, plus one built ahead when the host overlaps with
    the device (``overlap``). Builds run one at a time on the host worker; measurements on leased members. Where
    the study is shared with other hosts (``shared``), their RUNNING trials count as in flight, this host keeps a
    heartbeat on its own, and a trial whose heartbeat stopped (its host was killed) is failed and queued again.
    """

    def __init__(
        self,
        context: RunContext,
        pool: DevicePool,
        reporter: Reporter,
        stop: StopFlag,
        teacher: nn.Module,
        original_values: dict[str, float | None],
        overlap: bool = False,
        worker: str = "",
        shared: bool = False,
        resume_hint: str = "",
    ):
        self.context = context
        self.pool = pool
        self.reporter = reporter
        self.stop = stop
        self.teacher = teacher
        self.original_values = original_values
        self.overlap = overlap
        self.worker = worker
        self.shared = shared
        # Set by a second Ctrl-C: the host worker stops at its next step instead of finishing the build.
        self._cancel = threading.Event()
        self.host_busy_s = 0.0
        self.queue_peak = 0
        self.trials_wall_s = 0.0
        self.trials_busy_s: dict[str, float] = {}
        # The run's latency model (one per device budget), fed by every measurement, asked before each one.
        self.latency = LatencyModels([b.key for b in context.device_budgets])
        self._replayed = False
        # How the person watching continues after a device failure stops the run.
        self.resume_hint = resume_hint or f"resume with --resume {context.run_dir}"

    @property
    def depth(self) -> int:
        """Trials in flight at once: uniform pruning bisects on the last result, so it runs one at a time."""
        if self.context.config.strategy == "uniform":
            return 1
        return max(1, self.pool.size) + (1 if self.overlap else 0)

    def run_round(self, setup: RoundSetup) -> bool:
        """Run trials until the round has its number of finished trials; False when stopped early."""
        if not self._replayed:
            self._replay(setup.index)
        started, busy = time.perf_counter(), {m.name: m.busy_s for m in self.pool.members}
        try:
            return self._round(setup)
        finally:
            # The trials' share of the run: how busy the devices were while there were trials to measure.
            self.trials_wall_s += time.perf_counter() - started
            for member in self.pool.members:
                self.trials_busy_s[member.name] = (
                    self.trials_busy_s.get(member.name, 0.0) + member.busy_s - busy.get(member.name, 0.0)
                )

    def _replay(self, index: int) -> None:
        """A resumed run (or a worker joining late): the latency model learns the measurements already made, in the
        order they were made, from the features and decisions each measured trial recorded."""
        self._replayed = True
        for t in range(index + 1):
            for trial in self.context.study(t).get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                attrs = trial.user_attrs
                if "features" in attrs and attrs.get("decisions") and "duplicate_of" not in attrs:
                    values = {k: d.get("value") for k, d in attrs["decisions"].items()}
                    self.latency.observe(np.asarray(attrs["features"], dtype=np.float64), values)

    def _round(self, setup: RoundSetup) -> bool:
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgecompress-host") as host,
            ThreadPoolExecutor(max_workers=self.depth, thread_name_prefix="edgecompress-trial") as trials,
            Heartbeat(setup.study if self.shared else None) as heartbeat,
        ):
            try:
                return self._trials(setup, host, trials, heartbeat)
            except KeyboardInterrupt:
                self._cancel.set()  # leaving the block waits for the workers: make that wait one step long
                raise

    def _trials(
        self, setup: RoundSetup, host: ThreadPoolExecutor, pool: ThreadPoolExecutor, heartbeat: Heartbeat
    ) -> bool:
        config, study = self.context.config, setup.study
        uniform = decide.UniformSearch(config.max_ratio, config.ratio_step) if config.strategy == "uniform" else None
        started = time.perf_counter()
        done_here = 0
        in_flight: dict[Future[dict[str, Any]], int] = {}
        failure: BaseException | None = None
        while True:
            if self.shared:
                self._expire_stale(study)
            trials = study.get_trials(deepcopy=False)
            mine = set(in_flight.values())
            others = [t for t in trials if t.state == TrialState.RUNNING and t.number not in mine]
            room = config.trials_per_round - len(decide.counted(trials)) - len(in_flight) - len(others)
            can_ask = failure is None and not self.stop.requested and len(in_flight) < self.depth and room > 0
            if can_ask and uniform is not None and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                finished = decide.counted(trials)
                ratio = uniform.next_ratio(finished)
                if ratio in uniform.tried(finished):
                    self.reporter.message(f"uniform search converged at ratio {ratio:g}")
                    can_ask = False
                    room = 0
                    if not in_flight:
                        return True
                else:
                    study.enqueue_trial(decide.uniform_params(setup.space, ratio, self.context.target.quant_modes))
            if can_ask:
                with warnings.catch_warnings():
                    # Optuna warns that its heartbeat serves optimize(); this pipeline keeps the heartbeat itself.
                    warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
                    trial = study.ask()
                heartbeat.add(trial)
                if self.shared and self._surplus(study, trial, len(decide.counted(trials))):
                    heartbeat.discard(trial.number)
                    continue
                in_flight[pool.submit(self._run_trial, setup, trial, host)] = trial.number
                self.queue_peak = max(self.queue_peak, len(in_flight))
                continue
            if not in_flight:
                if failure is not None:
                    raise failure
                if self.stop.requested:
                    return False
                if room <= 0 and not others:
                    return True
                # Other hosts' trials fill the round: wait for them (or for their heartbeat to stop).
                time.sleep(OTHERS_POLL_S)
                continue
            done, _ = wait(in_flight, timeout=OTHERS_POLL_S if self.shared else None, return_when=FIRST_COMPLETED)
            for future in done:
                number = in_flight.pop(future)
                heartbeat.discard(number)
                try:
                    record = future.result()
                except BuildCancelled:
                    continue
                except DeviceError as exc:
                    # The device's failure stops the run; the trials still in flight finish first.
                    failure = failure or exc
                    continue
                done_here += 1
                trials = study.get_trials(deepcopy=False)
                remaining = config.trials_per_round - len(decide.counted(trials))
                remaining += setup.rounds_after * config.trials_per_round  # the run's, not only this round's
                eta = (time.perf_counter() - started) / done_here * max(0, remaining)
                self.reporter.trial_finished(record, decide.best_accuracy(trials), eta)
                self._refine(setup)

    def _refine(self, setup: RoundSetup) -> None:
        """Slack buys accuracy: when the round's most accurate feasible trial is far under every threshold, queue a
        less pruned plan between it and the round's base (decide.toward_boundary), once per trial, REFINEMENTS a
        round. The queued plan is measured like any other (never screened) and counts towards the round."""
        config, study = self.context.config, setup.study
        if config.strategy != "cooled":
            return
        done = list(study.user_attrs.get("refinements", []))
        if len(done) >= decide.REFINEMENTS:
            return
        device = {b.key for b in self.context.device_budgets}
        judged = {k: v for k, v in self.context.judged(setup.thresholds, self.original_values).items() if k in device}
        found = decide.toward_boundary(study.get_trials(deepcopy=False), judged, config.ratio_step)
        if found is None or found[1] in done:
            return
        params, source = found
        study.enqueue_trial(params, skip_if_exists=True)
        study.set_user_attr("refinements", [*done, source])
        self.reporter.message(
            f"trial {source} meets every threshold with room to spare: a less pruned plan between it and the "
            "round's base is queued"
        )

    def _surplus(self, study: optuna.Study, trial: optuna.Trial, counted: int) -> bool:
        """Another host asked at the same moment and the round is full: the later trial (higher number) gives way,
        failing as a surplus that does not count, its parameters queued again."""
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        earlier = [t for t in running if t.number < trial.number]
        if counted + len(earlier) < self.context.config.trials_per_round:
            return False
        requeue(study, study._storage.get_trial(trial._trial_id))
        trial.set_user_attr("fail_reason", decide.SURPLUS)
        study.tell(trial, state=TrialState.FAIL)
        return True

    def _expire_stale(self, study: optuna.Study) -> None:
        """Fail the RUNNING trials whose host stopped keeping their heartbeat, and queue their parameters again."""
        storage = study._storage
        if getattr(storage, "get_heartbeat_interval", lambda: None)() is None:
            return
        for trial_id in storage._get_stale_trial_ids(study._study_id):  # type: ignore[attr-defined]
            trial = storage.get_trial(trial_id)
            try:
                storage.set_trial_user_attr(trial_id, "fail_reason", decide.STALE)
                if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another host expired it first
            requeue(study, trial)
            who = trial.user_attrs.get("worker") or "its host"
            self.reporter.message(f"trial {trial.number} of {who} stopped beating; its parameters are queued again")

    def _build(self, setup: RoundSetup, plan: Any) -> Candidate:
        config, started = self.context.config, time.perf_counter()
        _, candidate = self.context.build(
            setup.base_model,
            plan,
            setup.space,
            teacher=self.teacher,
            finetune_steps=config.candidate_finetune_steps,
            finetune_lr=config.finetune_lr,
            on_stage=self._stage,
        )
        self.host_busy_s += time.perf_counter() - started  # one build at a time: the host worker's busy time
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
        if self.worker:
            trial.set_user_attr("worker", self.worker)
            record["worker"] = self.worker
        try:
            plan = decide.sample_plan(trial, setup.space, context.config, context.target.quant_modes)
            trial.set_user_attr("plan", plan.to_json())
            record["plan"] = plan.to_json()
            earlier = decide.duplicate_of(trial.params, trial.study.get_trials(deepcopy=False))
            if earlier is not None:
                return self._reuse(trial, earlier, record, f"proposes the plan of trial {earlier.number} again")
            candidate = host.submit(self._build, setup, plan).result()
            same = decide.same_model(candidate.artifact.sha256, trial.study.get_trials(deepcopy=False))
            if same is not None:
                return self._reuse(trial, same, record, f"builds the same model as trial {same.number}")
            trial.set_user_attr("candidate", candidate.to_json())
            values: dict[str, float | None] = dict(candidate.host_values(list(context.budgets), self.original_values))
            x = self._features(setup, candidate)
            trial.set_user_attr("features", x.tolist())
            screened = self._screen(setup, trial, candidate, x, values)
            if screened is not None:
                return self._screened(trial, *screened, candidate, values, record)
            decisions = self._on_device(trial, candidate, thresholds, values)
            lacking = verdict.missing(values, thresholds)
            if lacking:
                trial.set_user_attr("values", values)
                self._fail(trial, f"the device reported no value for {', '.join(lacking)}", record)
                return record
            if decisions:
                self.latency.observe(x, {k: d.value for k, d in decisions.items()})
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
                member=trial.user_attrs.get("member"),
            )
            if self.pool.size > 1 or self.shared:  # the console names where it was measured
                where = "/".join(w for w in (self.worker, record["member"] or "host only") if w)
                record["where"] = where
        except DeviceError as exc:
            if self._cancel.is_set():
                raise BuildCancelled("stopped while measuring") from exc  # the trial stays RUNNING for --resume
            if isinstance(exc, (DeviceUnavailable, PoolDown)):
                # The device's failure, not the candidate's: the same plan is queued again (before this trial fails,
                # so a kill in between loses nothing) and the trial does not count; --resume evaluates it.
                trial.study.enqueue_trial(trial.params, skip_if_exists=False)
                self._fail(trial, f"{decide.DEVICE_UNAVAILABLE}: {exc}", record)
                raise DeviceError(f"{exc}. Fix it and {self.resume_hint}") from exc
            self._fail(trial, f"device: {exc}", record)
            if self.pool.is_down:
                dropped = self.pool.dropped[-1]
                raise DeviceError(
                    f"device {dropped.name} is down: {dropped.consecutive_failures} trials in a row failed on it; "
                    f"last: {exc}. Fix it and {self.resume_hint}"
                ) from exc
        except (EdgecompressError, RuntimeError, ValueError) as exc:
            # A broken candidate fails its trial, not the study.
            self._fail(trial, f"{type(exc).__name__}: {exc}", record)
        return record

    def _features(self, setup: RoundSetup, candidate: Candidate) -> np.ndarray:
        original = setup.original_space or setup.space
        return features(candidate.to_json(), original.dimensions, kept_by_base(setup.space, original))

    def _screen(
        self,
        setup: RoundSetup,
        trial: optuna.Trial,
        candidate: Candidate,
        x: np.ndarray,
        values: dict[str, float | None],
    ) -> tuple[str, dict[str, Prediction]] | None:
        """Whether the candidate goes without its device measurement (the reason), or None: measure it. Only in the
        cooled search, never for a queued plan (the identity, a re-queued one), at most trials_per_round times a
        round, and never over a host budget (that one gets no device time anyway, and says so)."""
        context, config = self.context, self.context.config
        judged = context.judged(setup.thresholds, self.original_values)
        predictions = {k: p for k, p in self.latency.predict(x).items() if k in judged}
        trial.set_user_attr("predicted", {k: p.to_json() for k, p in predictions.items()})
        host = {b.key: setup.thresholds[b.key] for b in context.budgets if b.spec.on_host}
        fixed = "fixed_params" in trial.study._storage.get_trial_system_attrs(trial._trial_id)
        trials = trial.study.get_trials(deepcopy=False)
        if (
            not config.screen
            or config.strategy != "cooled"
            or fixed
            or not verdict.feasible(values, host)
            or sum(1 for t in trials if t.user_attrs.get("screened")) >= config.trials_per_round
        ):
            return None
        # In the last round the final answer may fall back on the next best feasible trials: keep those measurable.
        keep = 1 + (decide.FINAL_ALTERNATIVES if setup.rounds_after == 0 else 0)
        best = decide.best_accuracy(trials, rank=keep)
        reason = screen(predictions, judged, candidate.accuracy, best, paired=context.relative_keys)
        return None if reason is None else (reason, predictions)

    def _screened(
        self,
        trial: optuna.Trial,
        reason: str,
        predictions: dict[str, Prediction],
        candidate: Candidate,
        values: dict[str, float | None],
        record: dict[str, Any],
    ) -> dict[str, Any]:
        """Tell a screened trial: its host accuracy, not feasible, and for the budget it was predicted over, the
        predicted violation (others 0: never measured, no evidence). It does not count towards the round."""
        context = self.context
        judged = context.judged(trial.user_attrs["thresholds"], self.original_values)
        constraints = {b.key: 0.0 for b in context.device_budgets}
        if reason.startswith("predicted infeasible"):
            for key, prediction in predictions.items():
                constraints[key] = max(0.0, prediction.lower(SCREEN_CONFIDENCE) - judged[key])
        host = {b.key: trial.user_attrs["thresholds"][b.key] for b in context.budgets if b.spec.on_host}
        constraints.update(verdict.violations(values, host))
        trial.set_user_attr("screened", reason)
        trial.set_user_attr("values", values)
        trial.set_user_attr("feasible", False)
        if context.config.strategy != "unconstrained":
            for key, violation in constraints.items():
                trial.set_constraint(key, violation)
        value = decide.objective(context.config, context.budgets, candidate.accuracy, values, self.original_values)
        trial.study.tell(trial, value)
        record.update(accuracy=candidate.accuracy, values=values, feasible=False, state="COMPLETE", screened=reason)
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
        contends = decide.contender(candidate.accuracy, trial.study.get_trials(deepcopy=False))
        trial.set_user_attr("contender", contends)
        windows = context.confirm_windows if contends else context.windows
        device = measure_on(self.pool, context, candidate.artifact, judged, self.reporter.message, windows=windows)
        values.update(device.values)
        trial.set_user_attr("decisions", {k: d.to_json() for k, d in device.decisions.items()})
        trial.set_user_attr("observation", device.observation)
        trial.set_user_attr("member", device.member)
        timings = {"build_s": candidate.build_s, "eval_s": candidate.eval_s}
        trial.set_user_attr("timings", {**timings, "transfer_s": device.transfer_s, "measure_s": device.measure_s})
        return device.decisions

    def _reuse(self, trial: optuna.Trial, earlier: FrozenTrial, record: dict[str, Any], why: str) -> dict[str, Any]:
        """A plan evaluated already (a sampler that proposes it again, often after a resume), or one that builds the
        bytes of an earlier trial, is not measured again: the earlier trial's result is told for it, and the trial
        says whose it is (one model, one verdict in a round)."""
        for key in ("candidate", "values", "decisions", "feasible", "violations", "timings", "member", "screened"):
            if key in earlier.user_attrs:
                trial.set_user_attr(key, earlier.user_attrs[key])
        trial.set_user_attr("duplicate_of", earlier.number)
        for key, value in (earlier.constraints or {}).items():
            trial.set_constraint(key, value)
        trial.study.tell(trial, earlier.value)
        self.reporter.message(f"trial {trial.number} {why}; its result is reused")
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
