"""The driver of a tune run: settle the context, then order the phases and the rounds; resumable at any point.

    original's measurement -> format probe -> for each round: drift check, trials (the pipeline), finish the round
    -> final confirmation -> results.json and the report

Each step records what it decided in the run state before the next begins, so ``--resume`` skips what is done.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from torch import nn

from edgecompress.artifact import Artifact
from edgecompress.budgets import Budget, check_budgets_measurable
from edgecompress.compress import CompressionPlan, SearchSpace, apply_plan, resolve_host_device
from edgecompress.config import DeviceProfile, PoolSettings, TuneConfig, check_tune_config
from edgecompress.device import DevicePool
from edgecompress.errors import ConfigError, EdgecompressError
from edgecompress.report import write_tune_report_or_warn
from edgecompress.report._files import write_text
from edgecompress.search import _decide as decide
from edgecompress.search._context import RunContext
from edgecompress.search._phases import CHECK_FILE, Phases, check_config
from edgecompress.search._pipeline import RoundSetup, TrialPipeline, measure_on
from edgecompress.search._progress import Logged, LogReporter, Reporter, StopFlag, run_log
from edgecompress.search._results import write_results
from edgecompress.search._scale import (
    OverlapPlan,
    describe_scale,
    pool_for,
    scale_summary,
    screen_members,
    settle_target,
)
from edgecompress.search._shared import SharedRun
from edgecompress.search._state import RunState, checkpoint_path, load_checkpoint, new_run_dir
from edgecompress.workload import Workload, load_workload


@dataclass(frozen=True)
class TuneResult:
    run_dir: Path
    met: bool
    final: dict[str, Any] | None
    base: dict[str, Any]
    interrupted: bool


class TuneRun:
    """One tune run in one output folder."""

    def __init__(self, config: TuneConfig, state: RunState, reporter: Reporter, checked: _Checked):
        self.config = config
        self.state = state
        self.reporter: Reporter = reporter if isinstance(reporter, (LogReporter, Logged)) else Logged(reporter)
        self.budgets, self.members, self.pool_settings, self.workload = checked
        self.storage = config.storage or f"sqlite:///{(state.run_dir / 'study.sqlite3').resolve()}"
        self.name = state.study_name or study_name(config)
        self.stop = StopFlag(notify=reporter.message)  # the console only: the flag logs it itself

    @classmethod
    def start(cls, config: TuneConfig, out: Path | None, reporter: Reporter, command: str = "") -> TuneRun:
        # Everything that can be checked without the device is checked before the folder exists: a mistake leaves
        # nothing behind, and the corrected command can use the same --out.
        checked = _check(config)
        state = RunState(
            run_dir=new_run_dir(out), config=config.model_dump(), command=command, study_name=study_name(config)
        )
        state.save()
        return cls(config, state, reporter, checked)

    @classmethod
    def resume(cls, run_dir: Path, reporter: Reporter) -> TuneRun:
        state = RunState.load(run_dir)
        config = TuneConfig.model_validate(state.config)
        return cls(config, state, reporter, _check(config))

    def run(self) -> TuneResult:
        with run_log(self.state.run_dir):
            self.reporter.message(f"run folder {self.state.run_dir}")
            # Flags and --config merged: say which budgets this run judges, before any device time.
            self.reporter.message("budgets: " + ", ".join(b.text for b in self.budgets))
            with self.stop, pool_for(self.members, self.config, self.reporter.message) as (pool, hellos, plan):
                context = settle_context(
                    self.config,
                    self.members,
                    hellos,
                    pool,
                    self.budgets,
                    self.workload,
                    self.state.run_dir,
                    self.storage,
                    self.name,
                    self.reporter.message,
                )
                return self._run(context, pool, hellos, plan)

    def _run(
        self, context: RunContext, pool: DevicePool, hellos: dict[str, dict[str, Any]], plan: OverlapPlan
    ) -> TuneResult:
        state, workload = self.state, context.workload
        if state.device is None:
            state.device = {"profile": context.profile.name, "hello": hellos[context.profile.name]}
        state.device["host_device"] = context.host_device
        state.device["members"] = [p.name for _, p in self.members]
        state.device["overlap"] = {"on": plan.overlap, "why": plan.reason, "host_cpus": list(plan.host_cpus)}
        self.reporter.message(plan.describe())
        original = workload.build_model().eval()
        phases = Phases(context, pool, self.reporter, state)
        if state.original is None:
            state.original = phases.measure_original(original)
            state.save()
        original_path = state.run_dir / f"original.{context.target.format}"
        fp32 = Artifact.from_bytes(original_path.read_bytes(), context.target.format)
        if "quant_probe" not in state.original:
            state.original["quant_probe"] = phases.probe_formats(original, fp32)
            state.save()
        context = context.keeping(tuple(state.original["quant_probe"]["kept"]), fp32)
        self._screen(context, pool)
        shared = self._share(context, original_path) if self.config.shared else None
        phases = Phases(context, pool, self.reporter, state)
        pipeline = TrialPipeline(
            context,
            pool,
            self.reporter,
            self.stop,
            original,
            state.original["values"],
            overlap=plan.overlap,
            worker=f"tune@{host_id()}" if shared else "",
            shared=shared is not None,
        )
        original_space = context.space(original)
        try:
            for t in range(context.rounds):
                if state.finished_round(t):
                    continue
                if self.stop.requested:
                    break
                base_model = original if t == 0 else load_checkpoint(state.run_dir, t - 1)
                phases.check_drift(t)
                setup = self._round(context, t, base_model, original_space)
                if shared is not None:
                    if t > 0:
                        shared.upload(f"base-{t}", checkpoint_path(state.run_dir, t - 1))
                    shared.put("round", t)
                finished = pipeline.run_round(setup)
                state.device["scale"] = scale_summary(pool, pipeline)
                if not finished:
                    break
                phases.finish_round(t, base_model, original)
        except KeyboardInterrupt:
            # The second Ctrl-C: the trial in flight stays RUNNING in the study, and --resume evaluates it again.
            self.reporter.message("stopping now; the trial in flight is evaluated again on --resume")
        interrupted = not all(state.finished_round(t) for t in range(context.rounds))
        if shared is not None and not interrupted:
            shared.put("searched", True)  # workers stop: the rest (the final confirmation) is this host's
        final = None if interrupted else self._final(context, phases, original)
        if shared is not None and final is not None:
            shared.put("status", "finished")
        state.device["scale"] = scale_summary(pool, pipeline)
        self.reporter.message(describe_scale(state.device["scale"]))
        state.screening = self._screening(context, pipeline)
        if state.screening["screened"]:
            self.reporter.message(
                "not measured: "
                + ", ".join(f"{n} {kind}" for kind, n in state.screening["screened"].items())
                + f" (device measurements saved: {state.screening['measurements_saved']})"
            )
        state.save()
        write_results(state, self.budgets, self.storage, self.name, context.rounds)
        write_tune_report_or_warn(state.run_dir, warn=self.reporter.message)
        met = bool(final and final.get("met"))
        return TuneResult(state.run_dir, met, final, state.original, interrupted)

    @staticmethod
    def _screening(context: RunContext, pipeline: TrialPipeline) -> dict[str, Any]:
        """The trials the latency model left unmeasured (by rule, over every round), and its error on the
        measurements it predicted before seeing them."""
        kinds: dict[str, int] = {}
        for t in range(context.rounds):
            try:
                study = optuna.load_study(study_name=f"{context.name}/round-{t}", storage=context.optuna_storage)
            except KeyError:
                break
            for trial in study.get_trials(deepcopy=False):
                reason = trial.user_attrs.get("screened")
                if reason and "duplicate_of" not in trial.user_attrs:
                    kinds[reason.split(":")[0]] = kinds.get(reason.split(":")[0], 0) + 1
        return {"screened": kinds, "measurements_saved": sum(kinds.values()), "models": pipeline.latency.to_json()}

    def _screen(self, context: RunContext, pool: DevicePool) -> None:
        """A pool's members each measure the original once; those off the others are left out (kept in the state,
        so a resumed run leaves out the same ones)."""
        assert self.state.original is not None
        screened = self.state.original.get("members")
        if screened is None and pool.size > 1:

            def measure(member: str) -> dict[str, float | None]:
                assert context.original is not None
                return measure_on(pool, context, context.original, None, self.reporter.message, member=member).values

            self.reporter.message(f"each of the pool's {pool.size} devices measures the original")
            screened = screen_members(pool, context, self.pool_settings, measure, self.reporter.message)
            self.state.original["members"] = screened
            self.state.save()
            return
        for name, why in (screened or {}).get("left_out", {}).items():
            if any(m.name == name for m in pool.members):
                pool.leave_out(name, why)

    def _share(self, context: RunContext, original_path: Path) -> SharedRun:
        """Publish what a worker needs to join (edgecompress worker --storage ... --run NAME)."""
        assert self.state.original is not None
        artifacts = self.config.artifacts or str((self.state.run_dir / "artifacts").resolve())
        shared = SharedRun.create(context.optuna_storage, self.name, artifacts)
        shared.upload("original", original_path)
        shared.put("config", self.state.config)
        shared.put("format", context.target.format)
        shared.put("opset", context.target.opset)
        shared.put("rounds", context.rounds)
        original = self.state.original
        shared.put("original", {"values": original["values"], "thresholds": original["thresholds"]})
        shared.put("kept", list(context.target.quant_modes))
        self.reporter.message(
            f"run {self.name} is shared: other hosts join with edgecompress worker --storage {self.storage} "
            f"--run {self.name} --artifacts {artifacts} --device ..."
        )
        return shared

    def _round(self, context: RunContext, t: int, base_model: nn.Module, original_space: SearchSpace) -> RoundSetup:
        """Round t's study, with interrupted trials re-queued and the identity plan first in a new one."""
        space = context.space(base_model)
        study = context.study(t)
        # A shared study's RUNNING trials may be other hosts' live ones: the pipeline expires those whose
        # heartbeat stopped. Alone, every RUNNING trial was left by a killed run.
        left = [] if self.config.shared else decide.interrupted(study.get_trials(deepcopy=False))
        for trial in left:
            # Trials left RUNNING by a killed run failed; their parameters are evaluated again, not lost.
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", decide.INTERRUPTED)
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            study.enqueue_trial(trial.params, skip_if_exists=False)
            self.reporter.message(f"trial {trial.number} was interrupted; its parameters are queued again")
        if not study.get_trials(deepcopy=False) and context.config.strategy != "uniform":
            study.enqueue_trial(decide.identity_params(space, context.target.quant_modes))
        thresholds = self.state.thresholds(t)
        self.reporter.round_started(t, context.rounds, thresholds, context.config.trials_per_round)
        return RoundSetup(t, study, space, base_model, thresholds, context.rounds - t - 1, original_space)

    def _final(self, context: RunContext, phases: Phases, original: nn.Module) -> dict[str, Any]:
        """Confirm the last base on a fresh measurement; fall back to the round's choice before fine-tuning, then to
        FINAL_ALTERNATIVES more of the last round's feasible candidates, most accurate first, each fine-tuned as the
        base was before it is judged."""
        state = self.state
        if state.final is not None:
            return state.final
        last = context.rounds - 1
        trials = context.study(last).get_trials(deepcopy=False)
        chosen = trials[state.rounds[-1]["chosen_trial"]]
        plan = CompressionPlan.from_json(chosen.user_attrs["plan"])
        base_model = original if last == 0 else load_checkpoint(state.run_dir, last - 1)
        space = context.space(base_model)
        options = [
            ("fine-tuned", load_checkpoint(state.run_dir, last), plan, False),
            (
                "best trial, not fine-tuned",
                apply_plan(base_model, plan, context.workload, space, device=context.host_device),
                plan,
                False,
            ),
        ]
        for other in decide.alternatives(trials, chosen.number, decide.FINAL_ALTERNATIVES):
            other_plan = CompressionPlan.from_json(other.user_attrs["plan"])
            model = apply_plan(base_model, other_plan, context.workload, space, device=context.host_device)
            # Fine-tuned before it is judged (only if reached): a fallback as pruning left it is a model the run
            # would never have delivered as a base, often many points under what its structure can do.
            options.append((f"trial {other.number}", model, other_plan, True))
        state.final = phases.confirm_final(options, space, context.space(original), original)
        state.save()
        # What check needs to re-judge the answer (or, when there is none, the last round's base) the same way.
        write_text(state.run_dir / CHECK_FILE, check_config(context, state.targets))
        return state.final


_Checked = tuple[list[Budget], list[tuple[str, DeviceProfile]], PoolSettings, Workload]


def study_name(config: TuneConfig) -> str:
    """The studies' name prefix: --name, else after the example or the model's entry point (tune-mypkg.models.build),
    so runs of different models in one storage stay apart."""
    if config.name:
        return config.name
    what = config.example or (config.model or "model").replace(":", ".")
    return f"tune-{what}"


def _check(config: TuneConfig) -> _Checked:
    """The budgets, the devices (spec and profile) with the pool's settings, and the workload of a configuration;
    ConfigError on the first mistake."""
    budgets, members, settings = check_tune_config(config)
    workload = load_workload(
        example=config.example,
        model=config.model,
        data=config.data,
        data_dir=config.data_dir,
        arch=config.arch,
        val_limit=config.val_limit,
    )
    return budgets, members, settings, workload


def settle_context(
    config: TuneConfig,
    members: list[tuple[str, DeviceProfile]],
    hellos: dict[str, dict[str, Any]],
    pool: DevicePool,
    budgets: list[Budget],
    workload: Workload,
    run_dir: Path,
    storage: str,
    name: str,
    on_event: Callable[[str], None],
) -> RunContext:
    """A run's context (the run's own host or a worker's), after checking before any device time that the devices
    can serve it: the export their runtime loads (members needing another left out), the batch, the budgets."""
    spec, profile, target = settle_target(members, hellos, config, pool, on_event)
    if config.batch > 1 and target.format != "onnx":
        raise ConfigError(
            f"batch {config.batch} needs an ONNX runtime: the {target.format} export has a fixed batch of 1"
        )
    on_event(target.describe())
    check_budgets_measurable(budgets, hellos[profile.name], profile.power.source, profile.power.command)
    host_device = resolve_host_device(config.host_device)
    on_event(f"host compute (fine-tuning, distillation, BatchNorm) on {host_device}")
    return RunContext(
        config=config,
        profile=profile,
        budgets=tuple(budgets),
        workload=workload,
        target=target,
        run_dir=run_dir,
        storage=storage,
        name=name,
        host_device=host_device,
        device_spec=spec,
    )


def host_id() -> str:
    """This host's process as trials name it (hostname-pid)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def run_tune(
    config: TuneConfig | None,
    out: Path | None,
    reporter: Reporter | None = None,
    resume: Path | None = None,
    command: str = "",
) -> TuneResult:
    """Start a tune run (or resume one) and run it to the end, to Ctrl-C, or to a device failure."""
    reporter = reporter or LogReporter()
    if resume is not None:
        return TuneRun.resume(resume, reporter).run()
    if config is None:
        raise EdgecompressError("run_tune needs a config or a run folder to resume")
    return TuneRun.start(config, out, reporter, command).run()
