"""The rounds loop: one Optuna study per round with a fixed threshold, then fine-tune the best and cool down."""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from edgecompress import __version__
from edgecompress.artifact import Artifact
from edgecompress.budgets import Budget, check_budgets_measurable, parse_budgets
from edgecompress.compress import CompressionPlan, SearchSpace, apply_plan, finetune, search_space
from edgecompress.compress._export import INPUT_NAME
from edgecompress.compress._space import Quant
from edgecompress.config import DeviceProfile, TuneConfig, resolve_device
from edgecompress.device import MeasureRequest, Session, measure_request, open_session
from edgecompress.errors import ConfigError, DeviceError, EdgecompressError
from edgecompress.report import group_channels, library_versions, write_tune_report_or_warn
from edgecompress.search._candidate import Candidate, build_candidate, measure_candidate
from edgecompress.search._negotiate import ExportTarget, export_target
from edgecompress.search._schedule import thresholds
from edgecompress.search._state import STATE_FILE, new_run_dir, read_state, write_json
from edgecompress.workload import Workload, load_workload

log = logging.getLogger("edgecompress.tune")
COARSEN_ABOVE_GROUPS = 12
BASE_MEASUREMENTS = 3
QUANT_PROBE_MARGIN = 0.10  # a format must be more than 10% slower than fp32 on every device budget to be left out
INTERRUPTED = "interrupted"


class Reporter(Protocol):
    """What the loop tells the person watching (the CLI prints it; tests may collect it)."""

    def message(self, text: str) -> None: ...

    def round_started(self, round_index: int, rounds: int, thresholds: dict[str, float], trials: int) -> None: ...

    def trial_finished(self, record: dict[str, Any], best: float | None, eta_s: float | None) -> None: ...


class LogReporter:
    def message(self, text: str) -> None:
        log.info(text)

    def round_started(self, round_index: int, rounds: int, thresholds: dict[str, float], trials: int) -> None:
        log.info("round %d/%d thresholds %s", round_index + 1, rounds, thresholds)

    def trial_finished(self, record: dict[str, Any], best: float | None, eta_s: float | None) -> None:
        log.info("trial %s", record.get("number"))


@dataclass(frozen=True)
class TuneResult:
    run_dir: Path
    met: bool
    final: dict[str, Any] | None
    base: dict[str, Any]
    interrupted: bool


class _StopFlag:
    """First Ctrl-C: finish the trial in flight, then stop. Second Ctrl-C: stop now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (tests driving the loop in a thread)
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after the trial in flight (Ctrl-C again to stop now)")

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _violations(values: dict[str, float | None], limits: dict[str, float]) -> dict[str, float]:
    """measured - threshold per budget (positive = violated); an unmeasured value counts as no evidence (0)."""
    result = {}
    for key, limit in limits.items():
        value = values.get(key)
        result[key] = 0.0 if value is None else float(value) - limit
    return result


def _relative_violation(violations: dict[str, float], limits: dict[str, float]) -> float:
    return sum(max(0.0, v) / limits[k] for k, v in violations.items() if limits[k] > 0)


def tune_measure_request(profile: DeviceProfile, config: TuneConfig, input_shape: tuple[int, ...]) -> MeasureRequest:
    """How a tune run measures every model: the profile's defaults, its runs and window, ``batch`` inputs a call."""
    shapes = {INPUT_NAME: (config.batch, *input_shape[1:])} if config.batch > 1 else None
    return measure_request(profile, runs=config.runs, min_seconds=config.min_seconds, input_shapes=shapes)


class Tuner:
    """One tune run in one output folder; ``run()`` is resumable at any point."""

    def __init__(self, config: TuneConfig, run_dir: Path, reporter: Reporter, state: dict[str, Any], command: str = ""):
        self.config = config
        self.run_dir = run_dir
        self.reporter = reporter
        self.state = state
        self.command = command
        self.budgets: list[Budget] = parse_budgets(config.budgets)
        if not self.budgets:
            raise ConfigError("give at least one --budget (e.g. --budget 'latency.mean<=0.5x')")
        self.profile: DeviceProfile = resolve_device(config.device)
        self.stop = _StopFlag()
        self.storage = config.storage or f"sqlite:///{(run_dir / 'study.sqlite3').resolve()}"
        self.name = config.name or f"tune-{config.example or 'model'}"
        self.session: Session | None = None
        self.workload: Workload | None = None
        self.consecutive_device_failures = 0
        self.original: nn.Module | None = None

    # -- set-up -----------------------------------------------------------------------------------------------

    @classmethod
    def start(cls, config: TuneConfig, out: Path | None, reporter: Reporter, command: str = "") -> Tuner:
        run_dir = new_run_dir(out)
        state = {
            "version": 1,
            "edgecompress": __version__,
            "command": command,
            "config": config.model_dump(),
            "created_unix": time.time(),
            "rounds": [],
        }
        write_json(run_dir / STATE_FILE, state)
        return cls(config, run_dir, reporter, state, command)

    @classmethod
    def resume(cls, run_dir: Path, reporter: Reporter) -> Tuner:
        state = read_state(run_dir)
        config = TuneConfig.model_validate(state["config"])
        return cls(config, run_dir, reporter, state, state.get("command", ""))

    def _save(self) -> None:
        write_json(self.run_dir / STATE_FILE, self.state)

    def _rounds(self) -> int:
        if self.config.schedule == "one-step" or self.config.strategy in ("unconstrained", "uniform"):
            return 1
        return self.config.rounds

    def _spec(self) -> MeasureRequest:
        assert self.workload is not None
        return tune_measure_request(self.profile, self.config, self.workload.input_shape)

    def _build(
        self, base: nn.Module, plan: CompressionPlan, space: SearchSpace, **options: Any
    ) -> tuple[nn.Module, Candidate]:
        """build_candidate with this run's workload, export target and validation limit."""
        assert self.workload is not None
        return build_candidate(
            base, plan, self.workload, space, self.opset, self.config.val_limit, format=self.target.format, **options
        )

    def _measure(self, candidate: Candidate, limits: dict[str, float] | None = None) -> dict[str, Any]:
        """Measure on the device; with ``limits``, borderline budgets get more runs before they are judged."""
        assert self.session is not None
        result = measure_candidate(self.session, candidate.artifact, self._spec(), self.budgets, limits)
        self.consecutive_device_failures = 0
        return {
            "observation": result.observation.to_json(with_raw=True),
            "values": result.observation.values,
            "transfer_s": result.transfer_s,
            "measure_s": result.measure_s,
        }

    # -- the run ------------------------------------------------------------------------------------------------

    def run(self) -> TuneResult:
        handler = self._attach_log()
        try:
            return self._run_logged()
        finally:
            # A later run in the same process (a notebook, a benchmark) must not write into this run's log.
            for name in ("edgecompress", "optuna"):
                logging.getLogger(name).removeHandler(handler)
            handler.close()

    def _run_logged(self) -> TuneResult:
        config = self.config
        self.reporter.message(f"run folder {self.run_dir}")
        self.workload = load_workload(
            example=config.example,
            model=config.model,
            data=config.data,
            data_dir=config.data_dir,
            arch=config.arch,
            val_limit=config.val_limit,
        )
        with self.stop:
            self.session = open_session(
                self.profile, on_event=self.reporter.message, accept_new_host=config.accept_new_host
            )
            try:
                return self._run()
            finally:
                self.session.close()

    def _attach_log(self) -> logging.Handler:
        handler = logging.FileHandler(self.run_dir / "tune.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        for name in ("edgecompress", "optuna"):
            logging.getLogger(name).addHandler(handler)
        logging.getLogger("edgecompress").setLevel(logging.INFO)
        # Optuna's own lines go to the log file; the console shows the reporter's.
        optuna.logging.disable_default_handler()
        optuna.logging.set_verbosity(optuna.logging.INFO)
        return handler

    def _run(self) -> TuneResult:
        assert self.session is not None and self.workload is not None
        hello = self.session.hello()
        self.state.setdefault("device", {"profile": self.profile.name, "hello": hello})
        # The runtime, its providers and the opset it loads are checked here, before any device time is spent.
        self.target: ExportTarget = export_target(self.profile, hello, self.config.opset, self.config.quant)
        self.opset = self.target.opset
        if self.config.batch > 1 and self.target.format != "onnx":
            raise ConfigError(
                f"batch {self.config.batch} needs an ONNX runtime: "
                f"the {self.target.format} export has a fixed batch of 1"
            )
        self.reporter.message(self.target.describe())
        self._check_measurable(hello)
        original = self.workload.build_model().eval()
        self.original = original
        if "base" not in self.state:
            self.state["base"] = self._measure_base(original)
            self._save()
        base_info = self.state["base"]
        if "quant_probe" not in base_info:
            base_info["quant_probe"] = self._probe_quant(original)
            self._save()
        kept = tuple(base_info["quant_probe"]["kept"])
        self.target = dataclasses.replace(self.target, quant_modes=kept)
        rounds = self._rounds()
        for t in range(rounds):
            if t < len(self.state["rounds"]) and "next_base" in self.state["rounds"][t]:
                continue
            if self.stop.requested:
                break
            base_model = original if t == 0 else self._load_checkpoint(t - 1)
            self._drift_check(t)
            finished = self._search_round(t, base_model)
            if not finished:
                break
            self._finish_round(t, base_model, original)
        completed = sum(1 for r in self.state["rounds"] if "next_base" in r)
        interrupted = completed < rounds
        final = None if interrupted else self._final(original)
        self._write_results()
        write_tune_report_or_warn(self.run_dir, warn=self.reporter.message)
        met = bool(final and final.get("met"))
        return TuneResult(self.run_dir, met, final, base_info, interrupted)

    def _check_measurable(self, hello: dict[str, Any]) -> None:
        check_budgets_measurable(self.budgets, hello, self.profile.power.source, self.profile.power.command)

    def _probe_quant(self, original: nn.Module) -> dict[str, Any]:
        """Measure the original once in each reduced-precision format the search would sample. A format slower than
        fp32 by more than QUANT_PROBE_MARGIN on every device budget is left out, unless a host budget (size) rewards
        it: trials spent on it are wasted, and a few trials per round are too few for a sampler to learn that."""
        modes = list(self.target.quant_modes)
        probe: dict[str, Any] = {"kept": modes, "measured": {}, "dropped": []}
        device_budgets = [b for b in self.budgets if not b.spec.on_host]
        if not self.config.quant_probe or self.config.strategy == "uniform" or "fp32" not in modes or len(modes) < 2:
            return probe
        if len(device_budgets) < len(self.budgets):
            probe["skipped"] = "a host-checked budget (size) rewards the smaller formats"
            return probe
        base = self.state["base"]["values"]
        space = self._space(original)
        for mode in modes:
            if mode == "fp32":
                continue
            try:
                _, candidate = self._build(original, CompressionPlan(quant=cast(Quant, mode)), space, model=original)
                values = self._measure(candidate)["values"]
            except DeviceError:
                raise
            except (EdgecompressError, RuntimeError, ValueError) as exc:
                probe["measured"][mode] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            ratios = {
                b.key: values[b.key] / base[b.key] if values.get(b.key) is not None and base.get(b.key) else None
                for b in device_budgets
            }
            probe["measured"][mode] = {"values": {b.key: values.get(b.key) for b in device_budgets}, "ratios": ratios}
            slower = all(r is not None and r > 1 + QUANT_PROBE_MARGIN for r in ratios.values())
            shown = ", ".join(f"{k} {r:.2f}x of fp32" for k, r in ratios.items() if r is not None)
            if slower:
                probe["dropped"].append(mode)
                self.reporter.message(
                    f"{mode}: the original measured {shown} on this device; {mode} is left out of the search "
                    "(--no-quant-probe keeps it)"
                )
            else:
                self.reporter.message(f"{mode}: the original measured {shown} on this device; {mode} stays")
        probe["kept"] = [m for m in modes if m not in probe["dropped"]]
        return probe

    def _measure_base(self, original: nn.Module) -> dict[str, Any]:
        assert self.workload is not None
        self.reporter.message("measuring the original model on the device")
        space = self._space(original)
        plan = CompressionPlan(ratios={}, quant="fp32")
        _, candidate = self._build(
            original,
            plan,
            space,
            model=original,
        )
        # L0 anchors every relative budget and every threshold: take the median of a few measurements, so one
        # disturbed window on a busy device does not move the whole search.
        repeats = [self._measure(candidate) for _ in range(BASE_MEASUREMENTS)]
        values = _median_values([r["values"] for r in repeats])
        device = min(repeats, key=lambda r: abs(_first_latency(r["values"]) - _first_latency(values)))
        targets = {b.key: b.target(values.get(b.key)) for b in self.budgets}
        schedule: dict[str, list[float]] = {}
        for b in self.budgets:
            base_value = values.get(b.key)
            kind = "one-step" if self._rounds() == 1 else self.config.schedule
            if base_value is None:
                raise ConfigError(f"the device did not report {b.key} for the original model")
            schedule[b.key] = thresholds(float(base_value), targets[b.key], self._rounds(), kind, self.config.alpha)
        (self.run_dir / f"original.{self.target.format}").write_bytes(candidate.artifact.data)
        for b in self.budgets:
            self.reporter.message(
                f"{b.key}: original {values.get(b.key):.4g} {b.unit}, budget {targets[b.key]:.4g} "
                f"{b.unit}, thresholds " + ", ".join(f"{c:.4g}" for c in schedule[b.key])
            )
        return {
            "candidate": candidate.to_json(),
            "values": values,
            "targets": targets,
            "thresholds": schedule,
            "observation": device["observation"],
            "drift_reference": values,
        }

    def _space(self, model: nn.Module) -> SearchSpace:
        assert self.workload is not None
        space = search_space(model, self.workload.input_shape, self.workload.ignore)
        coarse = self.config.coarsen == "yes" or (
            self.config.coarsen == "auto" and len(space.groups) > COARSEN_ABOVE_GROUPS
        )
        return search_space(model, self.workload.input_shape, self.workload.ignore, coarsen=coarse) if coarse else space

    def _checkpoint_path(self, t: int) -> Path:
        return self.run_dir / f"round-{t}" / "base.pt"

    def _load_checkpoint(self, t: int) -> nn.Module:
        # Our own file, written by this run: the pruned architecture differs from the factory's, so the whole
        # module is saved, not just a state dict.
        return torch.load(self._checkpoint_path(t), weights_only=False).eval()

    def _drift_check(self, t: int) -> None:
        if t == 0 or len(self.state["rounds"]) > t:
            return
        assert self.workload is not None
        original_bytes = (self.run_dir / f"original.{self.target.format}").read_bytes()
        reference = self.state["base"]["drift_reference"]
        keys = [b.key for b in self.budgets if not b.spec.on_host]
        record: dict[str, Any] = {"round": t, "measurements": []}
        for attempt in range(2):
            original = Artifact.from_bytes(original_bytes, self.target.format)
            candidate = Candidate(CompressionPlan(), original, math.nan, 0, 0, 0, 0)
            values = self._measure(candidate)["values"]
            drift = {
                k: (values[k] - reference[k]) / reference[k]
                for k in keys
                if values.get(k) is not None and reference.get(k)
            }
            record["measurements"].append({"values": {k: values.get(k) for k in keys}, "drift": drift})
            worst = max((abs(v) for v in drift.values()), default=0.0)
            if worst <= self.config.drift_tolerance:
                break
            self.reporter.message(
                f"round {t}: the original model drifted by {worst:.1%} since the start "
                f"(tolerance {self.config.drift_tolerance:.0%})"
                + (
                    f"; waiting {self.config.drift_wait_s:.0f} s and re-measuring"
                    if attempt == 0
                    else "; continuing, figures may be shifted"
                )
            )
            record["warned"] = True
            if attempt == 0:
                time.sleep(self.config.drift_wait_s)  # let the device cool or settle before re-measuring
        self.state.setdefault("drift", []).append(record)
        self._save()

    # -- one round ------------------------------------------------------------------------------------------------

    def _sampler(self, t: int) -> optuna.samplers.BaseSampler:
        seed = self.config.seed * 1000 + t
        if self.config.sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        if self.config.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, self.config.trials_per_round))

    def _study(self, t: int) -> optuna.Study:
        return optuna.create_study(
            study_name=f"{self.name}/round-{t}",
            storage=self.storage,
            sampler=self._sampler(t),
            direction="maximize",
            load_if_exists=True,
        )

    def _round_limits(self, t: int) -> dict[str, float]:
        return {key: values[t] for key, values in self.state["base"]["thresholds"].items()}

    def _sample_plan(self, trial: optuna.Trial, space: SearchSpace) -> CompressionPlan:
        ratios = {
            dim: trial.suggest_float(f"ratio:{dim}", 0.0, self.config.max_ratio, step=self.config.ratio_step)
            for dim in space.dimensions
        }
        quant = trial.suggest_categorical("quant", list(self.target.quant_modes))
        return CompressionPlan(
            ratios={k: v for k, v in ratios.items() if v > 0}, quant=cast(Quant, quant), round_to=self.config.round_to
        )

    def _identity_params(self, space: SearchSpace) -> dict[str, Any]:
        modes = self.target.quant_modes
        quant = "fp32" if "fp32" in modes else modes[0]
        return {**{f"ratio:{d}": 0.0 for d in space.dimensions}, "quant": quant}

    def _recover(self, study: optuna.Study) -> None:
        """Trials left RUNNING by a killed run failed; their parameters are evaluated again, not lost."""
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", INTERRUPTED)
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            study.enqueue_trial(trial.params, skip_if_exists=False)
            self.reporter.message(f"trial {trial.number} was interrupted; its parameters are queued again")

    @staticmethod
    def _counted(study: optuna.Study) -> list[FrozenTrial]:
        return [
            tr
            for tr in study.get_trials(deepcopy=False)
            if tr.state == TrialState.COMPLETE
            or (tr.state == TrialState.FAIL and tr.user_attrs.get("fail_reason") != INTERRUPTED)
        ]

    def _search_round(self, t: int, base_model: nn.Module) -> bool:
        """Run trials until the round has its number of finished trials; False when stopped early."""
        assert self.workload is not None
        space = self._space(base_model)
        study = self._study(t)
        self._recover(study)
        if not study.get_trials(deepcopy=False):
            if self.config.strategy != "uniform":
                study.enqueue_trial(self._identity_params(space))
        limits = self._round_limits(t)
        self.reporter.round_started(t, self._rounds(), limits, self.config.trials_per_round)
        uniform = (
            _UniformSearch(self.config.max_ratio, self.config.ratio_step) if self.config.strategy == "uniform" else None
        )
        started = time.perf_counter()
        done_here = 0
        while len(self._counted(study)) < self.config.trials_per_round:
            if self.stop.requested:
                return False
            if uniform is not None and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                ratio = uniform.next_ratio(self._counted(study))
                if ratio in uniform.tried(self._counted(study)):
                    self.reporter.message(f"uniform search converged at ratio {ratio:g}")
                    return True
                params: dict[str, Any] = {f"ratio:{d}": ratio for d in space.dimensions}
                params["quant"] = self.target.quant_modes[0]
                study.enqueue_trial(params)
            trial = study.ask()
            record = self._trial(t, trial, space, base_model, limits)
            done_here += 1
            remaining = self.config.trials_per_round - len(self._counted(study))
            eta = (time.perf_counter() - started) / done_here * remaining
            self.reporter.trial_finished(record, self._best_accuracy(study), eta)
        return True

    def _trial(
        self, t: int, trial: optuna.Trial, space: SearchSpace, base_model: nn.Module, limits: dict[str, float]
    ) -> dict[str, Any]:
        assert self.workload is not None
        study = trial.study
        trial.set_user_attr("round", t)
        trial.set_user_attr("thresholds", limits)
        record: dict[str, Any] = {"round": t, "number": trial.number, "thresholds": limits}
        try:
            plan = self._sample_plan(trial, space)
            trial.set_user_attr("plan", plan.to_json())
            record["plan"] = plan.to_json()
            _, candidate = self._build(
                base_model,
                plan,
                space,
                teacher=self.original,
                finetune_steps=self.config.candidate_finetune_steps,
                finetune_lr=self.config.finetune_lr,
            )
            trial.set_user_attr("candidate", candidate.to_json())
            values: dict[str, float | None] = dict(candidate.host_values(self.budgets))
            host_violations = _violations(values, {b.key: limits[b.key] for b in self.budgets if b.spec.on_host})
            if any(v > 0 for v in host_violations.values()):
                # No device time for a candidate the host already knows is over budget.
                trial.set_user_attr("device", "skipped: over a host-checked budget")
            else:
                device = self._measure(candidate, limits)
                values.update(device["values"])
                trial.set_user_attr("observation", device["observation"])
                trial.set_user_attr(
                    "timings",
                    {
                        "build_s": candidate.build_s,
                        "eval_s": candidate.eval_s,
                        "transfer_s": device["transfer_s"],
                        "measure_s": device["measure_s"],
                    },
                )
            violations = _violations(values, limits)
            feasible = all(v <= 0 for v in violations.values())
            trial.set_user_attr("values", values)
            trial.set_user_attr("feasible", feasible)
            if self.config.strategy != "unconstrained":
                for key, violation in violations.items():
                    trial.set_constraint(key, violation)
            else:
                trial.set_user_attr("violations", violations)
            objective = self._objective(candidate.accuracy, values)
            study.tell(trial, objective)
            record.update(
                accuracy=candidate.accuracy,
                values=values,
                feasible=feasible,
                state="COMPLETE",
                violations=violations,
                objective=objective,
            )
        except DeviceError as exc:
            self.consecutive_device_failures += 1
            self._fail(trial, f"device: {exc}", record)
            if self.consecutive_device_failures >= self.config.max_device_failures:
                raise DeviceError(
                    f"device {self.profile.name} is down: {self.consecutive_device_failures} trials in a "
                    f"row failed on it; last: {exc}. Fix it and resume with --resume {self.run_dir}"
                ) from exc
        except (EdgecompressError, RuntimeError, ValueError) as exc:
            # A broken candidate fails its trial, not the study.
            self._fail(trial, f"{type(exc).__name__}: {exc}", record)
        return record

    def _fail(self, trial: optuna.Trial, reason: str, record: dict[str, Any]) -> None:
        trial.set_user_attr("fail_reason", reason[:2000])
        trial.study.tell(trial, state=TrialState.FAIL)
        record.update(state="FAIL", fail_reason=reason)
        log.warning("trial %d failed: %s", trial.number, reason)

    def _objective(self, accuracy: float, values: dict[str, float | None]) -> float:
        if self.config.strategy != "unconstrained":
            return accuracy
        # The paper's unconstrained baseline: maximise 100 acc + lambda (L0 - latency) of the first device budget.
        device_budget = next((b for b in self.budgets if not b.spec.on_host), self.budgets[0])
        base = self.state["base"]["values"][device_budget.key]
        value = values.get(device_budget.key)
        return 100 * accuracy + self.config.tradeoff_lambda * (base - (value if value is not None else base))

    @staticmethod
    def _best_accuracy(study: optuna.Study) -> float | None:
        feasible = [
            tr.user_attrs.get("candidate", {}).get("accuracy")
            for tr in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if tr.user_attrs.get("feasible")
        ]
        return max(feasible) if feasible else None

    # -- after a round ------------------------------------------------------------------------------------------

    def _select(self, study: optuna.Study, limits: dict[str, float]) -> tuple[FrozenTrial | None, bool]:
        """Best feasible trial (highest accuracy, ties to the lower constrained metric), else the least violating."""
        complete = [
            tr for tr in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "candidate" in tr.user_attrs
        ]
        if not complete:
            return None, False

        def accuracy(tr: FrozenTrial) -> float:
            return float(tr.user_attrs["candidate"]["accuracy"])

        def load(tr: FrozenTrial) -> float:
            values = tr.user_attrs.get("values", {})
            return sum(float(values.get(k) or 0.0) / limits[k] for k in limits if limits[k] > 0)

        feasible = [tr for tr in complete if tr.user_attrs.get("feasible")]
        if feasible:
            return max(feasible, key=lambda tr: (accuracy(tr), -load(tr))), True
        measured = [tr for tr in complete if "observation" in tr.user_attrs] or complete
        chosen = min(
            measured,
            key=lambda tr: (
                _relative_violation(_violations(tr.user_attrs.get("values", {}), limits), limits),
                -accuracy(tr),
            ),
        )
        return chosen, False

    def _finish_round(self, t: int, base_model: nn.Module, original: nn.Module) -> None:
        assert self.workload is not None
        study = self._study(t)
        limits = self._round_limits(t)
        chosen, feasible = self._select(study, limits)
        if chosen is None:
            raise EdgecompressError(f"round {t}: every trial failed; see {self.run_dir / 'tune.log'}")
        if not feasible:
            self.reporter.message(
                f"round {t}: no trial met the thresholds; keeping the least violating one "
                f"(trial {chosen.number}) as the next base"
            )
        space = self._space(base_model)
        plan = CompressionPlan.from_json(chosen.user_attrs["plan"])
        self.reporter.message(
            f"round {t}: best trial {chosen.number} (accuracy "
            f"{chosen.user_attrs['candidate']['accuracy']:.4f}); fine-tuning "
            f"{self.config.finetune_steps} steps with distillation"
        )
        pruned = apply_plan(base_model, plan, self.workload, space)
        tuned = finetune(pruned, original, self.workload, steps=self.config.finetune_steps, lr=self.config.finetune_lr)
        _, candidate = self._build(
            base_model,
            plan,
            space,
            model=tuned,
        )
        device = self._measure(candidate, limits)
        path = self._checkpoint_path(t)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(tuned, path)
        (path.parent / f"model.{self.target.format}").write_bytes(candidate.artifact.data)
        entry = {
            "round": t,
            "thresholds": limits,
            "chosen_trial": chosen.number,
            "feasible": feasible,
            "before_finetune_accuracy": chosen.user_attrs["candidate"]["accuracy"],
            # Channels per group before and after this round, for reports (the plan alone holds only ratios).
            "groups": group_channels(space, plan),
            "next_base": {**candidate.to_json(), "values": device["values"], "observation": device["observation"]},
        }
        self.state["rounds"] = [r for r in self.state["rounds"] if r["round"] != t] + [entry]
        self._save()
        self.reporter.message(
            f"round {t}: fine-tuned accuracy {candidate.accuracy:.4f}, "
            + ", ".join(f"{k} {device['values'].get(k):.4g}" for k in limits)
        )

    def _meets(self, values: dict[str, float | None]) -> bool:
        targets = self.state["base"]["targets"]
        return all(values.get(k) is not None and values[k] <= targets[k] for k in targets)

    def _final(self, original: nn.Module) -> dict[str, Any]:
        """Confirm the last base on a fresh measurement; fall back to the best confirmed candidate, else 'not met'."""
        assert self.workload is not None
        if "final" in self.state:
            return self.state["final"]
        last = self._rounds() - 1
        tuned = self._load_checkpoint(last)
        options: list[tuple[str, nn.Module, CompressionPlan]] = []
        plan = CompressionPlan.from_json(
            self._study(last).trials[self.state["rounds"][-1]["chosen_trial"]].user_attrs["plan"]
        )
        options.append(("fine-tuned", tuned, plan))
        base_model = original if last == 0 else self._load_checkpoint(last - 1)
        space = self._space(base_model)
        options.append(("best trial, not fine-tuned", apply_plan(base_model, plan, self.workload, space), plan))
        for label, model, plan in options:
            _, candidate = self._build(
                model,
                plan,
                space,
                model=model,
            )
            device = self._measure(candidate, self.state["base"]["targets"])
            if self._meets(device["values"]):
                (self.run_dir / f"model.{self.target.format}").write_bytes(candidate.artifact.data)
                write_json(self.run_dir / "plan.json", plan.to_json())
                base_acc = self.state["base"]["candidate"]["accuracy"]
                final = {
                    "met": True,
                    "which": label,
                    **candidate.to_json(),
                    "values": device["values"],
                    "accuracy_drop": base_acc - candidate.accuracy,
                    "observation": device["observation"],
                }
                self.reporter.message(
                    f"final model ({label}) meets every budget on a fresh measurement: accuracy "
                    f"{candidate.accuracy:.4f} (original {base_acc:.4f}, drop "
                    f"{100 * (base_acc - candidate.accuracy):.2f} points)"
                )
                break
            self.reporter.message(
                f"{label} candidate does not meet the budgets on confirmation: "
                + ", ".join(f"{k} {device['values'].get(k):.4g}" for k in self.state["base"]["targets"])
            )
        else:
            final = {"met": False}
            self.reporter.message("budgets not met: no candidate was confirmed on the device as meeting every budget")
        self.state["final"] = final
        self._save()
        return final

    # -- results ------------------------------------------------------------------------------------------------

    def _write_results(self) -> None:
        trials = []
        for t in range(self._rounds()):
            try:
                study = optuna.load_study(study_name=f"{self.name}/round-{t}", storage=self.storage)
            except KeyError:
                break
            for tr in study.get_trials(deepcopy=False):
                attrs = tr.user_attrs
                trials.append(
                    {
                        "round": t,
                        "number": tr.number,
                        "state": tr.state.name,
                        "thresholds": attrs.get("thresholds"),
                        "plan": attrs.get("plan"),
                        "accuracy": attrs.get("candidate", {}).get("accuracy"),
                        "objective": tr.value,
                        "values": attrs.get("values"),
                        "constraints": tr.constraints,
                        "feasible": attrs.get("feasible"),
                        "candidate": attrs.get("candidate"),
                        "latency": (attrs.get("observation") or {}).get("latency"),
                        "observation": {k: v for k, v in (attrs.get("observation") or {}).items() if k != "measurement"}
                        or None,
                        "timings": attrs.get("timings"),
                        "fail_reason": attrs.get("fail_reason"),
                        "duration_s": tr.duration.total_seconds() if tr.duration else None,
                    }
                )
        results = {
            "edgecompress": __version__,
            "started_unix": self.state.get("created_unix"),
            "finished_unix": time.time(),
            "command": self.command,
            "config": self.config.model_dump(),
            "device": self.state.get("device"),
            "budgets": [b.to_json() for b in self.budgets],
            "base": self.state.get("base", {}),  # with the original's observation: reports compare raw latencies
            "host": library_versions(),
            "rounds": self.state["rounds"],
            "drift": self.state.get("drift", []),
            "final": self.state.get("final"),
            "trials": trials,
        }
        write_json(self.run_dir / "results.json", results)


def _median_values(samples: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Per metric, the median of the values measured (metrics a measurement did not report are left out of it)."""
    keys = {k for sample in samples for k in sample}
    result: dict[str, float | None] = {}
    for key in keys:
        present = sorted(float(v) for sample in samples if (v := sample.get(key)) is not None)
        result[key] = statistics.median(present) if present else None
    return result


def _first_latency(values: dict[str, float | None]) -> float:
    return float(values.get("latency.p50") or 0.0)


class _UniformSearch:
    """Binary search for the smallest global ratio whose uniform plan is feasible (the paper's uniform baseline)."""

    def __init__(self, max_ratio: float, step: float):
        self.max_ratio = max_ratio
        self.step = step

    @staticmethod
    def tried(finished: list[FrozenTrial]) -> set[float]:
        return {max((v for k, v in tr.params.items() if k.startswith("ratio:")), default=0.0) for tr in finished}

    def next_ratio(self, finished: list[FrozenTrial]) -> float:
        low, high = 0.0, self.max_ratio
        for tr in finished:
            ratio = max((v for k, v in tr.params.items() if k.startswith("ratio:")), default=0.0)
            if tr.state == TrialState.COMPLETE and tr.user_attrs.get("feasible"):
                high = min(high, ratio)
            else:
                low = max(low, ratio)
        middle = (low + high) / 2
        return min(self.max_ratio, round(round(middle / self.step) * self.step, 6))


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
        tuner = Tuner.resume(resume, reporter)
    else:
        assert config is not None
        tuner = Tuner.start(config, out, reporter, command)
    return tuner.run()
