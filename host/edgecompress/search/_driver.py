"""The driver of a tune run: settle the context, then order the phases and the rounds; resumable at any point.

    original's measurement -> format probe -> for each round: drift check, trials (the pipeline), finish the round
    -> final confirmation -> results.json and the report

Each step records what it decided in the run state before the next begins, so ``--resume`` skips what is done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from torch import nn

from edgecompress.artifact import Artifact
from edgecompress.budgets import Budget, check_budgets_measurable, parse_budgets
from edgecompress.compress import CompressionPlan, apply_plan, resolve_host_device
from edgecompress.config import DeviceProfile, TuneConfig, resolve_device
from edgecompress.device import DevicePool, open_session
from edgecompress.errors import ConfigError, EdgecompressError
from edgecompress.report import write_tune_report_or_warn
from edgecompress.report._files import write_text
from edgecompress.search import _decide as decide
from edgecompress.search._context import RunContext
from edgecompress.search._negotiate import export_target
from edgecompress.search._phases import CHECK_FILE, Phases, check_config
from edgecompress.search._pipeline import RoundSetup, TrialPipeline
from edgecompress.search._progress import Logged, LogReporter, Reporter, StopFlag
from edgecompress.search._results import write_results
from edgecompress.search._state import RunState, load_checkpoint, new_run_dir
from edgecompress.workload import Workload, load_workload

# Besides the fine-tuned base and its trial, how many more of the last round's feasible trials the final
# confirmation may try (each costs a confirmation's windows on the device).
FINAL_ALTERNATIVES = 2


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
        self.budgets, self.profile, self.workload = checked
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
        handler = _attach_log(self.state.run_dir)
        try:
            self.reporter.message(f"run folder {self.state.run_dir}")
            # Flags and --config merged: say which budgets this run judges, before any device time.
            self.reporter.message("budgets: " + ", ".join(b.text for b in self.budgets))
            config, workload = self.config, self.workload
            with self.stop:
                session = open_session(
                    self.profile, on_event=self.reporter.message, accept_new_host=config.accept_new_host
                )
                pool = DevicePool({self.profile.name: session}, max_failures=config.max_device_failures)
                try:
                    return self._run(workload, pool, session.hello())
                finally:
                    pool.close()
        finally:
            # A later run in the same process (a notebook, a benchmark) must not write into this run's log.
            for name in ("edgecompress", "optuna"):
                logging.getLogger(name).removeHandler(handler)
            handler.close()

    def _context(self, workload: Workload, hello: dict[str, Any]) -> RunContext:
        """The run's context, after checking (before any device time) that the device can serve it."""
        config = self.config
        # The runtime, its providers and the opset it loads are checked here, before any device time is spent.
        target = export_target(self.profile, hello, config.opset, config.quant)
        if config.batch > 1 and target.format != "onnx":
            raise ConfigError(
                f"batch {config.batch} needs an ONNX runtime: the {target.format} export has a fixed batch of 1"
            )
        self.reporter.message(target.describe())
        check_budgets_measurable(self.budgets, hello, self.profile.power.source, self.profile.power.command)
        host_device = resolve_host_device(config.host_device)
        self.reporter.message(f"host compute (fine-tuning, distillation, BatchNorm) on {host_device}")
        if self.state.device is not None:
            self.state.device["host_device"] = host_device
        return RunContext(
            config=config,
            profile=self.profile,
            budgets=tuple(self.budgets),
            workload=workload,
            target=target,
            run_dir=self.state.run_dir,
            storage=self.storage,
            name=self.name,
            host_device=host_device,
        )

    def _run(self, workload: Workload, pool: DevicePool, hello: dict[str, Any]) -> TuneResult:
        state = self.state
        if state.device is None:
            state.device = {"profile": self.profile.name, "hello": hello}
        context = self._context(workload, hello)
        original = workload.build_model().eval()
        phases = Phases(context, pool, self.reporter, state)
        if state.original is None:
            state.original = phases.measure_original(original)
            state.save()
        if "quant_probe" not in state.original:
            state.original["quant_probe"] = phases.probe_formats(original)
            state.save()
        original_bytes = (state.run_dir / f"original.{context.target.format}").read_bytes()
        context = context.keeping(
            tuple(state.original["quant_probe"]["kept"]), Artifact.from_bytes(original_bytes, context.target.format)
        )
        phases = Phases(context, pool, self.reporter, state)
        pipeline = TrialPipeline(context, pool, self.reporter, self.stop, original, state.original["values"])
        try:
            for t in range(context.rounds):
                if state.finished_round(t):
                    continue
                if self.stop.requested:
                    break
                base_model = original if t == 0 else load_checkpoint(state.run_dir, t - 1)
                phases.check_drift(t)
                if not pipeline.run_round(self._round(context, t, base_model)):
                    break
                phases.finish_round(t, base_model, original)
        except KeyboardInterrupt:
            # The second Ctrl-C: the trial in flight stays RUNNING in the study, and --resume evaluates it again.
            self.reporter.message("stopping now; the trial in flight is evaluated again on --resume")
        interrupted = not all(state.finished_round(t) for t in range(context.rounds))
        final = None if interrupted else self._final(context, phases, original)
        write_results(state, self.budgets, self.storage, self.name, context.rounds)
        write_tune_report_or_warn(state.run_dir, warn=self.reporter.message)
        met = bool(final and final.get("met"))
        return TuneResult(state.run_dir, met, final, state.original, interrupted)

    def _round(self, context: RunContext, t: int, base_model: nn.Module) -> RoundSetup:
        """Round t's study, with interrupted trials re-queued and the identity plan first in a new one."""
        space = context.space(base_model)
        study = context.study(t)
        for trial in decide.interrupted(study.get_trials(deepcopy=False)):
            # Trials left RUNNING by a killed run failed; their parameters are evaluated again, not lost.
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", decide.INTERRUPTED)
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            study.enqueue_trial(trial.params, skip_if_exists=False)
            self.reporter.message(f"trial {trial.number} was interrupted; its parameters are queued again")
        if not study.get_trials(deepcopy=False) and context.config.strategy != "uniform":
            study.enqueue_trial(decide.identity_params(space, context.target.quant_modes))
        thresholds = self.state.thresholds(t)
        self.reporter.round_started(t, context.rounds, thresholds, context.config.trials_per_round)
        return RoundSetup(t, study, space, base_model, thresholds, rounds_after=context.rounds - t - 1)

    def _final(self, context: RunContext, phases: Phases, original: nn.Module) -> dict[str, Any]:
        """Confirm the last base on a fresh measurement; fall back to the last round's feasible candidates before
        fine-tuning, most accurate first (the round's choice, then FINAL_ALTERNATIVES more)."""
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
            ("fine-tuned", load_checkpoint(state.run_dir, last), plan),
            (
                "best trial, not fine-tuned",
                apply_plan(base_model, plan, context.workload, space, device=context.host_device),
                plan,
            ),
        ]
        for other in decide.alternatives(trials, chosen.number, FINAL_ALTERNATIVES):
            other_plan = CompressionPlan.from_json(other.user_attrs["plan"])
            model = apply_plan(base_model, other_plan, context.workload, space, device=context.host_device)
            options.append((f"trial {other.number}, not fine-tuned", model, other_plan))
        state.final = phases.confirm_final(options, space, context.space(original))
        state.save()
        # What check needs to re-judge the answer (or, when there is none, the last round's base) the same way.
        write_text(state.run_dir / CHECK_FILE, check_config(context, state.targets))
        return state.final


_Checked = tuple[list[Budget], DeviceProfile, Workload]


def study_name(config: TuneConfig) -> str:
    """The studies' name prefix: --name, else after the example or the model's entry point (tune-mypkg.models.build),
    so runs of different models in one storage stay apart."""
    if config.name:
        return config.name
    what = config.example or (config.model or "model").replace(":", ".")
    return f"tune-{what}"


def _check(config: TuneConfig) -> _Checked:
    """The budgets, the device profile and the workload of a configuration; ConfigError on the first mistake."""
    budgets = parse_budgets(config.budgets)
    if not budgets:
        raise ConfigError("give at least one --budget (e.g. --budget 'latency.mean<=0.5x')")
    profile = resolve_device(config.device)
    workload = load_workload(
        example=config.example,
        model=config.model,
        data=config.data,
        data_dir=config.data_dir,
        arch=config.arch,
        val_limit=config.val_limit,
    )
    return budgets, profile, workload


def _attach_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "tune.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for name in ("edgecompress", "optuna"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("edgecompress").setLevel(logging.INFO)
    # Optuna's own lines go to the log file; the console shows the reporter's.
    optuna.logging.disable_default_handler()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    return handler


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
