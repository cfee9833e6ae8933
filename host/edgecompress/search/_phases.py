"""The phases of a tune run around its rounds of trials: measuring the original, probing the reduced-precision
formats, checking the device for drift before a round, finishing a round (fine-tune the chosen candidate into the
next base) and confirming the final model. Each records what it decided in the run state; the driver orders them.
"""

from __future__ import annotations

import time
from typing import Any, cast

from torch import nn

from edgecompress import verdict
from edgecompress.artifact import Artifact
from edgecompress.budgets import REFERENCE_ACCURACY, accuracy_drop_points, accuracy_floor, format_value, unit_of
from edgecompress.compress import CompressionPlan, apply_plan, finetune
from edgecompress.compress._space import Quant
from edgecompress.device import DevicePool
from edgecompress.errors import DeviceError, EdgecompressError
from edgecompress.gate import unit_spelling
from edgecompress.report import group_channels
from edgecompress.search import _decide as decide
from edgecompress.search._candidate import Candidate
from edgecompress.search._context import RunContext
from edgecompress.search._pipeline import DeviceRecord, measure_on
from edgecompress.search._progress import Reporter
from edgecompress.search._state import RunState, save_checkpoint, save_json
from edgecompress.validate import ValidationResult, validate_model

CHECK_FILE = "check.toml"


def check_config(context: RunContext, targets: dict[str, float]) -> str:
    """An edgecompress.toml for ``check`` that re-judges the final model as tune judged it: the same device, window,
    batch, threads and confidence, and every budget as the absolute limit tune resolved (a relative budget on the
    original's measurement at the start of the run) and a relative device budget kept relative, judged against the
    run's original.<format> measured in alternate windows."""
    request, config = context.request, context.config
    model = f"model.{context.target.format}"
    lines = [
        "# Written by edgecompress tune: re-judges this run's final model with the verdict tune used.",
        f"#   edgecompress check {context.run_dir / model} --config {context.run_dir / CHECK_FILE}",
        "",
        "[budgets]",
    ]
    for budget in context.budgets:
        if budget.spec.requires == "accuracy":
            # check measures on the device only: it has neither the validation data nor the original's accuracy.
            lines.append(
                f"# {budget.text}: not re-judged by check, which measures on the device only; tune judged the "
                "accuracy floor on the host (results.json, final.verdict)"
            )
            continue
        if budget.relative is not None and not budget.spec.on_host:
            # Judged as tune judged it: on windows alternating with the original (reference below).
            lines.append(f'"{budget.key}" = "{budget.relative!r}x"')
            continue
        note = f"  # {budget.text}, on the original's {budget.key}" if budget.relative is not None else ""
        lines.append(f'"{budget.key}" = "{targets[budget.key]!r}{unit_spelling(budget.metric)}"{note}')
    lines += [
        "",
        "[check]",
        f'device = "{context.device_spec or config.devices[0]}"',
        f"runs = {request.runs}",
        f"min_seconds = {request.min_seconds!r}",
        f"warmup_seconds = {request.warmup_seconds!r}",
        f"batch = {config.batch}",
        f"confidence = {config.confidence!r}",
        f"min_windows = {min(config.min_windows, config.confirm_windows)}",
        f"max_windows = {max(config.max_windows, config.confirm_windows)}",
        f'reference = "{context.run_dir.resolve() / f"original.{context.target.format}"}"',
    ]
    if request.threads:
        lines.append(f"threads = {request.threads}")
    return "\n".join(lines) + "\n"


# The base choice by short fine-tune (--base-choice short-finetune) weighs this many of the round's best trials.
BASE_CANDIDATES = 3

# L0 anchors every relative budget and every threshold: the median of a few measurements, so one disturbed window
# on a busy device does not move the whole search.
ORIGINAL_MEASUREMENTS = 3


def structure(model: nn.Module, plan: CompressionPlan) -> tuple[Any, ...]:
    """What a model's latency and energy depend on: its layers' shapes and its format, not its weights (a fine-tuned
    model and the trial it was fine-tuned from share it)."""
    shapes = tuple((name, tuple(tensor.shape)) for name, tensor in model.state_dict().items())
    return (shapes, plan.quant, tuple(plan.float_fallback))


class Phases:
    """The run's phases on one context, device pool, reporter and state."""

    def __init__(self, context: RunContext, pool: DevicePool, reporter: Reporter, state: RunState):
        self.context = context
        self.pool = pool
        self.reporter = reporter
        self.state = state

    def measure_original(self, original: nn.Module) -> dict[str, Any]:
        """The original's record: its candidate, median values, absolute targets and every round's thresholds."""
        context = self.context
        self.reporter.message("measuring the original model on the device")
        space = context.space(original)
        _, candidate = context.build(original, CompressionPlan(ratios={}, quant="fp32"), space, model=original)
        repeats = [
            measure_on(self.pool, context, candidate.artifact, None, self.reporter.message)
            for _ in range(ORIGINAL_MEASUREMENTS)
        ]
        values = decide.median_values([r.values for r in repeats])
        kept = repeats[decide.closest_to([r.values for r in repeats], values)]
        # The reference of an accuracy floor, kept with the values every trial is judged against (its own drop: 0).
        values[REFERENCE_ACCURACY] = candidate.accuracy
        values.update(candidate.host_values(list(context.budgets), values))
        targets, schedule = decide.cooling_plan(context.budgets, values, context.config)
        (context.run_dir / f"original.{context.target.format}").write_bytes(candidate.artifact.data)
        for b in context.budgets:
            self.reporter.message(
                f"{b.key}: original {format_value(values.get(b.key), b.unit)}, budget "
                f"{format_value(targets[b.key], b.unit)}, thresholds "
                + ", ".join(format_value(c, b.unit) for c in schedule[b.key])
            )
        return {
            "candidate": candidate.to_json(),
            "values": values,
            "targets": targets,
            "thresholds": schedule,
            "observation": kept.observation,
            "drift_reference": values,
        }

    def probe_formats(self, original: nn.Module, fp32: Artifact) -> dict[str, Any]:
        """Measure the original once in each reduced-precision format the search would sample, in windows
        alternating with the fp32 original's artifact ``fp32`` (the ratio of the same minutes: a load that comes or
        goes between two measurements must not decide). A format shown slower than fp32 by more than
        QUANT_PROBE_MARGIN on every device budget (the ratio's lower bound above it) is left out, unless a host budget
        (size) rewards it: trials spent on it are wasted, and a few trials per round are too few for a sampler to
        learn that."""
        context, config = self.context, self.context.config
        modes = list(context.target.quant_modes)
        probe: dict[str, Any] = {"kept": modes, "measured": {}, "dropped": []}
        device_keys = [b.key for b in context.device_budgets]
        if not config.quant_probe or config.strategy == "uniform" or "fp32" not in modes or len(modes) < 2:
            return probe
        # An accuracy floor rewards no format; a size budget rewards the smaller ones whatever their speed.
        if any(b.spec.on_host and b.spec.requires != "accuracy" for b in context.budgets):
            probe["skipped"] = "a host-checked budget (size) rewards the smaller formats"
            return probe
        paired = context.keeping(tuple(modes), fp32)
        limits = {k: 1 + decide.QUANT_PROBE_MARGIN for k in device_keys}
        space = context.space(original)
        for mode in modes:
            if mode == "fp32":
                continue
            try:
                plan = CompressionPlan(quant=cast(Quant, mode))
                _, candidate = context.build(original, plan, space, model=original)
                record = measure_on(
                    self.pool, paired, candidate.artifact, limits, self.reporter.message, paired=frozenset(device_keys)
                )
            except DeviceError:
                raise
            except (EdgecompressError, RuntimeError, ValueError) as exc:
                probe["measured"][mode] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            ratios = {k: d.value for k, d in record.decisions.items()}
            lower = {k: d.lower for k, d in record.decisions.items()}
            probe["measured"][mode] = {
                "values": {k: record.values.get(k) for k in device_keys},
                "ratios": ratios,
                "lower": lower,
                "paired": True,
            }
            shown = ", ".join(f"{k} {r:.2f}x of fp32" for k, r in ratios.items() if r is not None)
            if decide.formats_to_drop({mode: lower}):
                probe["dropped"].append(mode)
                self.reporter.message(
                    f"{mode}: the original measured {shown} on this device; {mode} is left out of the search "
                    "(--no-quant-probe keeps it)"
                )
            else:
                self.reporter.message(f"{mode}: the original measured {shown} on this device; {mode} stays")
        probe["kept"] = [m for m in modes if m not in probe["dropped"]]
        return probe

    def check_drift(self, t: int) -> None:
        """Before round t (t > 0): re-measure the original; past the tolerance, wait once and measure again."""
        context, config, state = self.context, self.context.config, self.state
        if t == 0 or len(state.rounds) > t:
            return
        assert state.original is not None
        original_bytes = (context.run_dir / f"original.{context.target.format}").read_bytes()
        reference = state.original["drift_reference"]
        keys = [b.key for b in context.device_budgets]
        record: dict[str, Any] = {"round": t, "measurements": []}
        for attempt in range(2):
            artifact = Artifact.from_bytes(original_bytes, context.target.format)
            values = measure_on(self.pool, context, artifact, None, self.reporter.message).values
            change = decide.drift(values, reference, keys)
            record["measurements"].append({"values": {k: values.get(k) for k in keys}, "drift": change})
            worst = max((abs(v) for v in change.values()), default=0.0)
            if worst <= config.drift_tolerance:
                break
            self.reporter.message(
                f"round {t + 1}: the original model drifted by {worst:.1%} since the start "
                f"(tolerance {config.drift_tolerance:.0%})"
                + (
                    f"; waiting {config.drift_wait_s:.0f} s and re-measuring"
                    if attempt == 0
                    else "; continuing, figures may be shifted"
                )
            )
            record["warned"] = True
            if attempt == 0:
                time.sleep(config.drift_wait_s)  # let the device cool or settle before re-measuring
        state.drift.append(record)
        state.save()

    def finish_round(self, t: int, base_model: nn.Module, teacher: nn.Module) -> None:
        """Choose round t's candidate, fine-tune it by distillation from ``teacher``, measure it: the next base."""
        context, config = self.context, self.context.config
        study = context.study(t)
        thresholds = self.state.thresholds(t)
        chosen, feasible = decide.select(study.get_trials(deepcopy=False), thresholds)
        if chosen is None:
            raise EdgecompressError(f"round {t + 1}: every trial failed; see {context.run_dir / 'tune.log'}")
        if not feasible:
            self.reporter.message(
                f"round {t + 1}: no trial met the thresholds; keeping the least violating one "
                f"(trial {chosen.number}) as the next base"
            )
        space = context.space(base_model)
        base_choice = None
        if feasible and config.base_choice == "short-finetune":
            chosen, base_choice = self._short_finetune_choice(t, study, chosen, base_model, space, teacher)
        plan = CompressionPlan.from_json(chosen.user_attrs["plan"])
        self.reporter.message(
            f"round {t + 1}: best trial {chosen.number} (accuracy "
            f"{chosen.user_attrs['candidate']['accuracy']:.4f}); fine-tuning "
            f"{config.finetune_steps} steps with distillation"
        )
        pruned = apply_plan(base_model, plan, context.workload, space, device=context.host_device)
        tuned = self.finetune(pruned, teacher, f"round {t + 1}")
        _, candidate = context.build(base_model, plan, space, model=tuned)
        device = self._judge(candidate, thresholds)
        base_verdict = self._verdict(candidate, thresholds, device)
        save_checkpoint(context.run_dir, t, tuned, candidate.artifact.data, context.target.format)
        self.state.record_round(
            {
                "round": t,
                "thresholds": thresholds,
                "chosen_trial": chosen.number,
                "feasible": feasible,
                "before_finetune_accuracy": chosen.user_attrs["candidate"]["accuracy"],
                # Channels per group before and after this round, for reports (the plan alone holds only ratios).
                "groups": group_channels(space, plan),
                "next_base": {
                    **candidate.to_json(),
                    "values": {**device.values, **self._host_values(candidate)},
                    "observation": device.observation,
                },
                "base_verdict": base_verdict,
                "base_choice": base_choice,
            }
        )
        self.reporter.message(
            f"round {t + 1}: fine-tuned accuracy {candidate.accuracy:.4f}; " + base_verdict["summary"]
        )
        if not base_verdict["met"]:
            # The next round starts from it all the same (its thresholds cool further); the report says so too.
            self.reporter.message(
                f"round {t + 1}: the fine-tuned base does not meet this round's thresholds on a fresh measurement"
            )

    def finetune(self, pruned: nn.Module, teacher: nn.Module, what: str) -> nn.Module:
        """``pruned`` fine-tuned by distillation from ``teacher`` with the run's --finetune-steps, its progress said
        a few times (minutes of fine-tuning on a large model, instead of going quiet)."""
        config = self.context.config
        steps = config.finetune_steps
        marks = {max(1, steps * q // 4) for q in (1, 2, 3)}

        def progress(step: int, loss: float) -> None:
            if step in marks:
                self.reporter.message(f"{what}: fine-tuning step {step}/{steps}, distillation loss {loss:.3f}")

        return finetune(
            pruned,
            teacher,
            self.context.workload,
            steps=steps,
            lr=config.finetune_lr,
            progress=progress,
            device=self.context.host_device,
        )

    def _short_finetune_choice(
        self, t: int, study: Any, chosen: Any, base_model: nn.Module, space: Any, teacher: nn.Module
    ) -> tuple[Any, dict[str, Any]]:
        """The round's base among its most accurate feasible trials (the choice and BASE_CANDIDATES - 1 more), each
        fine-tuned base_probe_steps steps and scored again: the best after that short fine-tune wins (the search's
        score ranks candidates as pruning left them; a short fine-tune ranks them closer to what the full one
        makes of them: docs/benchmarks.md, "Accuracy proxy")."""
        context, config = self.context, self.context.config
        options = [chosen, *decide.alternatives(study.get_trials(deepcopy=False), chosen.number, BASE_CANDIDATES - 1)]
        scored = []
        for trial in options:
            plan = CompressionPlan.from_json(trial.user_attrs["plan"])
            pruned = apply_plan(base_model, plan, context.workload, space, device=context.host_device)
            probe = finetune(
                pruned,
                teacher,
                context.workload,
                steps=config.base_probe_steps,
                lr=config.finetune_lr,
                device=context.host_device,
            )
            _, candidate = context.build(base_model, plan, space, model=probe)
            scored.append((candidate.accuracy, trial))
            self.reporter.message(
                f"round {t + 1}: trial {trial.number} scores {candidate.accuracy:.4f} after "
                f"{config.base_probe_steps} steps (was {trial.user_attrs['candidate']['accuracy']:.4f})"
            )
        best = max(scored, key=lambda pair: pair[0])[1]
        return best, {
            "rule": f"short-finetune ({config.base_probe_steps} steps, {len(options)} candidates)",
            "scores": {str(trial.number): accuracy for accuracy, trial in scored},
            "by_score": chosen.number,
            "chosen": best.number,
        }

    def _judge(self, candidate: Candidate, thresholds: dict[str, float]) -> DeviceRecord:
        """A fresh measurement of a candidate, every device budget judged with the confirmation's windows."""
        assert self.state.original is not None
        judged = self.context.judged(thresholds, self.state.original["values"])
        return measure_on(
            self.pool, self.context, candidate.artifact, judged, self.reporter.message, self.context.confirm_windows
        )

    def _host_values(self, candidate: Candidate) -> dict[str, float | None]:
        """The candidate's host-checked values: size, and its accuracy drop from the original's."""
        assert self.state.original is not None
        return candidate.host_values(list(self.context.budgets), self.state.original["values"])

    def _verdict(self, candidate: Candidate, thresholds: dict[str, float], device: DeviceRecord) -> dict[str, Any]:
        """Host budgets on the candidate's values, device budgets by their decisions: met only when every one is."""
        values = self._host_values(candidate)
        host = {
            b.key: verdict.judge(b.key, values.get(b.key), thresholds[b.key])
            for b in self.context.budgets
            if b.spec.on_host
        }
        lines = [v.reason for v in host.values()]
        lines += [d.describe(unit_of(k)) for k, d in device.decisions.items()]
        outcome = verdict.overall(host, device.decisions, (b.key for b in self.context.device_budgets))
        return {
            "met": outcome == "met",
            "outcome": outcome,
            "decisions": {k: d.to_json() for k, d in device.decisions.items()},
            "host": {k: {"value": v.value, "threshold": v.threshold, "met": v.met} for k, v in host.items()},
            "summary": "; ".join(lines),
        }

    def confirm_final(
        self,
        options: list[tuple[str, nn.Module, CompressionPlan, bool]],
        space: Any,
        original_space: Any,
        teacher: nn.Module,
    ) -> dict[str, Any]:
        """The first option (most accurate first) whose verdict on a fresh measurement is "met" for every budget
        becomes the final model; else the answer is "not met" (or "inconclusive"), with why each was rejected.
        An option marked to be fine-tuned is fine-tuned by distillation from ``teacher`` (the run's steps) once the
        options before it were rejected and its structure is not one the device rejected: a fallback is delivered
        as the rounds deliver their bases, not as pruning left it. ``space`` is the last round's base's; plan.json
        is written against ``original_space`` (the rounds composed), so ``compress --plan`` rebuilds the final
        model's shape."""
        context, state = self.context, self.state
        assert state.original is not None
        targets = state.targets
        base_acc = state.original["candidate"]["accuracy"]
        floor = accuracy_floor(context.budgets) is not None
        rejected: list[dict[str, Any]] = []
        # Structures the device did not confirm, and which option it was: a model's latency is its structure's, so
        # the same structure with other weights (the fine-tuned base's trial before fine-tuning) is not measured
        # again; a second try of one structure is a second roll of the dice, not a second model.
        unconfirmed: dict[tuple[Any, ...], dict[str, Any]] = {}
        for label, model, plan, tune in options:
            shape = structure(model, plan)
            if shape in unconfirmed:
                twin = unconfirmed[shape]
                _, candidate = context.build(model, plan, space, model=model)
                rejected.append(
                    {
                        "which": label,
                        "accuracy": candidate.accuracy,
                        "sha256": candidate.artifact.sha256,
                        "outcome": twin["outcome"],
                        "summary": f"the structure of the {twin['which']} candidate, which the device did not confirm "
                        f"({twin['summary']}); not measured again",
                        "same_structure_as": twin["which"],
                    }
                )
                self.reporter.message(
                    f"{label} candidate (accuracy {candidate.accuracy:.4f}) has the structure of the {twin['which']} "
                    "candidate, which the device did not confirm: not measured again"
                )
                continue
            if tune:
                model = self.finetune(model, teacher, f"final answer, {label}")
                label = f"{label}, fine-tuned"
            _, candidate = context.build(model, plan, space, model=model)
            device = self._judge(candidate, targets)
            judged = self._verdict(candidate, targets, device)
            identical = context.original is not None and candidate.artifact.sha256 == context.original.sha256
            parity = self._validate(candidate) if judged["met"] and context.config.validate_final else None
            if parity is not None and not parity.passed:
                rejected.append(
                    {
                        "which": label,
                        "accuracy": candidate.accuracy,
                        "sha256": candidate.artifact.sha256,
                        "outcome": "device outputs disagree",
                        "summary": parity.describe(),
                        "validation": parity.to_json(),
                    }
                )
                self.reporter.message(
                    f"{label} candidate meets the budgets but the device does not compute what the host scored: "
                    f"{parity.describe()}"
                )
                continue
            if judged["met"]:
                collapsed = verdict.accuracy_collapsed(base_acc, candidate.accuracy, floor)
                self._write_final(candidate, decide.composed_plan(original_space, context.space(model), plan))
                if identical:
                    # Never reported as a compression: the bytes are the original's.
                    self.reporter.message(
                        "the original already meets the budgets: the search found no compressed model that does, and "
                        f"model.{context.target.format} is the original ({judged['summary']})"
                    )
                else:
                    self.reporter.message(
                        f"final model ({label}) meets every budget on a fresh measurement: accuracy "
                        f"{candidate.accuracy:.4f} (original {base_acc:.4f}, drop "
                        f"{accuracy_drop_points(base_acc, candidate.accuracy):.2f} points); {judged['summary']}"
                    )
                if collapsed:
                    self.reporter.message(verdict.collapse_message(base_acc, candidate.accuracy))
                return {
                    "met": True,
                    "which": "original" if identical else label,
                    "identical_to_original": identical,
                    **candidate.to_json(),
                    "values": {**device.values, **self._host_values(candidate)},
                    "verdict": judged,
                    "accuracy_drop": base_acc - candidate.accuracy,
                    "accuracy_drop_points": accuracy_drop_points(base_acc, candidate.accuracy),
                    # Far below the original without a floor (verdict.COLLAPSE_DROP_POINTS): met, but said plainly.
                    "accuracy_collapsed": collapsed,
                    "observation": device.observation,
                    "rejected": rejected,
                    "validation": parity.to_json() if parity is not None else None,
                }
            rejected.append(
                {
                    "which": label,
                    "accuracy": candidate.accuracy,
                    "sha256": candidate.artifact.sha256,
                    "outcome": judged["outcome"],
                    "summary": judged["summary"],
                }
            )
            if not all(d.met for d in device.decisions.values()):
                unconfirmed[shape] = rejected[-1]
            self.reporter.message(
                f"{label} candidate (accuracy {candidate.accuracy:.4f}) is not confirmed on a fresh measurement "
                f"({judged['outcome']}): {judged['summary']}"
            )
        outcomes = {r["outcome"] for r in rejected}
        outcome = "inconclusive" if outcomes == {"inconclusive"} else "not met"
        self.reporter.message(
            f"budgets {outcome}: no candidate was confirmed on the device as meeting every budget"
            + (
                " (the measurements could not decide; try more --confirm-windows or a quieter device)"
                if outcome == "inconclusive"
                else ""
            )
        )
        return {"met": False, "outcome": outcome, "rejected": rejected}

    def _validate(self, candidate: Candidate) -> ValidationResult:
        """The candidate's outputs on the device against the host's, on the same validation inputs and bytes."""
        context = self.context
        profile, config = context.profile, context.config
        same_runtime = candidate.artifact.runtime == profile.runtime.name
        with self.pool.lease() as lease:
            parity = validate_model(
                lease.session,
                candidate.artifact,
                context.workload,
                samples=config.validate_samples,
                threads=context.request.threads,
                providers=tuple(profile.runtime.providers) if same_runtime else (),
                batch=config.batch if config.batch > 1 else None,
                min_agreement=config.min_agreement,
                device_name=lease.member,
            )
        self.reporter.message(f"validation on the device: {parity.describe()}")
        return parity

    def _write_final(self, candidate: Candidate, plan: CompressionPlan) -> None:
        run_dir = self.context.run_dir
        (run_dir / f"model.{self.context.target.format}").write_bytes(candidate.artifact.data)
        save_json(run_dir / "plan.json", plan.to_json())
