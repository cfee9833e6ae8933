"""The check itself: measure the model on the device, apply the budgets, compare with the baseline.

Two steps with one concern each: ``measure_model`` spends device time, ``evaluate`` decides from what came back (and
is what the tests drive with hand-made observations). ``run_check`` chains them, after settling everything that can
fail without the device (relative budgets without a baseline, unknown regression metrics), so a configuration error
never costs a measurement.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgecompress.analysis import compare_paired, compare_samples, compare_values
from edgecompress.artifact import Artifact
from edgecompress.budgets import Budget, check_budgets_measurable, check_budgets_on_device, format_value
from edgecompress.config import DeviceProfile
from edgecompress.device import MeasureRequest, check_runtime, open_session
from edgecompress.errors import ConfigError
from edgecompress.gate._config import RegressionSettings, check_regression_metric
from edgecompress.gate._result import Baseline, BudgetOutcome, CheckResult, RegressionOutcome, Status
from edgecompress.observe import Observation, observe, pair_with
from edgecompress.verdict import MET, NO_VALUE, VIOLATED, Decision, WindowPlan, judge


@dataclass(frozen=True)
class DeviceRun:
    """One measurement of the model and what the agent said about the device."""

    observation: Observation
    hello: Mapping[str, Any]
    started_utc: str


def load_baseline(path: str | Path) -> Baseline:
    """A baseline from a previous ``--json`` result."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"baseline {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"baseline {path}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"baseline {path}: not a check result")
    return Baseline.from_result_json(data, str(path))


def budget_targets(
    budgets: Sequence[Budget], baseline: Baseline | None, reference: Artifact | None = None
) -> dict[str, float]:
    """The limit of every budget: an absolute one as it is; a relative one (``0.9x``) as that ratio when a reference
    model is given (judged on windows alternating with it), else relative to the baseline's value. An accuracy
    floor is a BudgetError: check measures on the device only."""
    check_budgets_on_device(budgets)
    targets = {}
    for budget in budgets:
        if budget.relative is not None and reference is not None and not budget.spec.on_host:
            targets[budget.key] = budget.relative
            continue
        if budget.relative is not None and baseline is None:
            raise ConfigError(
                f"budget {budget.text!r} is relative to the baseline, but there is none: give "
                "--baseline FILE, or --history with a passing run of this model on this device"
            )
        if budget.relative is not None and baseline is not None and baseline.values.get(budget.key) is None:
            raise ConfigError(
                f"budget {budget.text!r} is relative, but the baseline ({baseline.source}) has no {budget.key}"
            )
        targets[budget.key] = budget.target(None if baseline is None else baseline.values.get(budget.key))
    return targets


def measure_model(
    profile: DeviceProfile,
    artifact: Artifact,
    spec: MeasureRequest,
    budgets: Sequence[Budget],
    targets: Mapping[str, float] | None = None,
    on_event: Callable[[str], None] | None = None,
    upload: Callable[[int], AbstractContextManager[Callable[[int, int], None] | None]] | None = None,
    windows: WindowPlan | None = None,
    reference: Artifact | None = None,
    **session_options: Any,
) -> DeviceRun:
    """Put the model on the device and measure it; DeviceError (exit 3) when the device or agent fails.

    With ``targets``, every device budget is judged on repeated windows (``windows``, default WindowPlan()): more
    only while one is undecided, so a model right at its budget does not pass or fail by the luck of one run.
    ``upload(total_bytes)``, when given, is entered around the upload and yields its progress callback.
    """
    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    session = open_session(profile, on_event=on_event, **session_options)
    try:
        hello = session.hello()
        # Energy on a board without a power source is a configuration error: say so before measuring.
        check_budgets_measurable(budgets, hello, profile.power.source, profile.power.command)
        check_runtime(profile, hello, runtime=spec.runtime, model=artifact.data)
        with upload(artifact.size_bytes) if upload else nullcontext() as progress:
            sha = session.put_model(artifact.data, progress=progress)
        relative = (b.key for b in budgets if b.relative is not None and not b.spec.on_host)
        paired = pair_with(session, reference, relative) if reference is not None else None
        observation = observe(
            session, sha, artifact.size_bytes, spec, budgets, thresholds=targets, windows=windows, reference=paired
        )
    finally:
        session.close()
    return DeviceRun(observation=observation, hello=hello, started_utc=started)


def apply_budget(budget: Budget, target: float, value: float | None) -> BudgetOutcome:
    """Pass, fail, or error (the metric has no value on this device), as the verdict judges it."""
    verdict = judge(budget.key, value, target)
    unit = budget.unit
    if verdict.missing:
        return BudgetOutcome(budget.text, budget.key, unit, target, None, "error", verdict.reason)
    assert verdict.value is not None
    limit = format_value(target, unit)
    if budget.relative is not None:
        limit += f" ({budget.relative:g}x the baseline)"
    shown = f"{budget.key} = {format_value(verdict.value, unit)}"
    if verdict.met:
        return BudgetOutcome(budget.text, budget.key, unit, target, verdict.value, "pass", f"{shown} <= {limit}")
    over = f", {verdict.value / target - 1:.1%} over" if target > 0 and math.isfinite(verdict.value) else ""
    return BudgetOutcome(budget.text, budget.key, unit, target, verdict.value, "fail", f"{shown} > {limit}{over}")


def judge_budget(budget: Budget, target: float, decision: Decision) -> BudgetOutcome:
    """A device budget from its verdict on repeated windows: pass (the bound is under the budget), fail (the other
    bound is over it), inconclusive (neither, after every window allowed), or error (no value on this device)."""
    unit = budget.unit
    if decision.value is None:
        return BudgetOutcome(budget.text, budget.key, unit, target, None, "error", f"{budget.key} {NO_VALUE}")
    status: Status = {MET: "pass", VIOLATED: "fail"}.get(decision.outcome, "inconclusive")  # type: ignore[assignment]
    message = decision.describe(unit)
    if budget.relative is not None and not decision.paired:
        message += f" (budget {budget.relative:g}x the baseline)"
    return BudgetOutcome(
        budget.text, budget.key, "x" if decision.paired else unit, target, decision.value, status, message
    )


def compare_with_baseline(
    metric: str,
    settings: RegressionSettings,
    baseline: Baseline | None,
    latencies_ns: Sequence[int],
    size_bytes: int,
    first_run: str,
) -> RegressionOutcome:
    """One regression metric against the baseline; skipped without one."""
    if baseline is None:
        return RegressionOutcome(metric, "skipped", f"no baseline: {first_run}")
    policy = settings.policy(metric)
    try:
        if metric == "size":
            result = compare_values(metric, float(baseline.size_bytes), float(size_bytes), policy.tolerance)
        else:
            # In ms, the unit of the latency metrics, so the result's values read like the budgets'.
            result = compare_samples(
                metric,
                [x / 1e6 for x in baseline.latencies_ns],
                [x / 1e6 for x in latencies_ns],
                policy,
                [v.get(metric) for v in baseline.run_values],
            )
    except ValueError as exc:
        return RegressionOutcome(metric, "error", f"cannot compare with the baseline: {exc}")
    return RegressionOutcome(metric, "fail" if result.regressed else "pass", result.describe(), result)


def _runtime_entry(hello: Mapping[str, Any], runtime: str) -> Mapping[str, Any]:
    return next((r for r in hello.get("runtimes") or () if r.get("name") == runtime), {})


def evaluate(
    run: DeviceRun,
    *,
    model: str,
    model_path: str,
    device: str,
    spec: MeasureRequest,
    budgets: Sequence[Budget],
    targets: Mapping[str, float],
    regression: RegressionSettings,
    baseline: Baseline | None,
) -> CheckResult:
    """Decide from one measurement: every budget, every regression metric, and notes on what changed."""
    observation = run.observation
    runtime = _runtime_entry(run.hello, spec.runtime)
    runtime_version = runtime.get("version")
    outcomes = tuple(
        judge_budget(b, targets[b.key], observation.decisions[b.key])
        if b.key in observation.decisions
        else apply_budget(b, targets[b.key], observation.values.get(b.key))
        for b in budgets
    )
    # The whole sample: every window the verdict took, pooled.
    parts = (observation.measurement, *observation.extra_measurements)
    latencies_ns = tuple(x for m in parts for x in m.latencies_ns)
    first_run = f"no passing run of {model} on {device} with {spec.runtime} yet (a passing run becomes the baseline)"
    regressions = tuple(
        compare_with_baseline(metric, regression, baseline, latencies_ns, observation.size_bytes, first_run)
        for metric in regression.metrics
    )
    notes = [f"measurement flag: {flag}" for flag in observation.flags]  # e.g. throttled, iid_failed
    if baseline is not None:
        if baseline.device != device:
            notes.append(f"the baseline was measured on {baseline.device}, this run on {device}")
        if baseline.runtime_version != runtime_version:
            notes.append(f"{spec.runtime} changed since the baseline: {baseline.runtime_version} -> {runtime_version}")
        if baseline.sha256 == observation.sha256:
            notes.append("same model bytes as the baseline: any difference comes from the device or the runtime")
    return CheckResult(
        model=model,
        model_path=model_path,
        sha256=observation.sha256,
        size_bytes=observation.size_bytes,
        device=device,
        board=run.hello.get("board"),
        runtime=spec.runtime,
        runtime_version=runtime_version,
        providers=tuple(observation.measurement.raw.get("providers") or ()),
        agent_version=run.hello.get("agent_version"),
        started_utc=run.started_utc,
        settings={"measure": spec.to_fields(), "regression": regression.model_dump()},
        values=dict(observation.values),
        latency=dict(observation.latency.to_json()),
        latencies_ns=latencies_ns,
        budgets=outcomes,
        regressions=regressions,
        baseline=None
        if baseline is None
        else {
            "source": baseline.source,
            "sha256": baseline.sha256,
            "started_utc": baseline.started_utc,
            "device": baseline.device,
            "runtime_version": baseline.runtime_version,
        },
        notes=tuple(notes),
        extra={
            "window_s": sum(float(m.raw.get("window_ns") or 0) for m in parts) / 1e9,
            "observation": {k: v for k, v in observation.to_json().items() if k not in ("values", "latency")},
            "measurement": {k: v for k, v in observation.measurement.raw.items() if k in ("before", "after")},
        },
    )


def measure_side_by_side(
    profile: DeviceProfile,
    artifact: Artifact,
    baseline_sha256: str,
    spec: MeasureRequest,
    rounds: int = 5,
    on_event: Callable[[str], None] | None = None,
    **session_options: Any,
) -> list[tuple[tuple[int, ...], tuple[int, ...]]] | None:
    """Measure the baseline's model and the model alternately in one session: per round, (baseline, current) raw
    latencies. Each measurement is half the usual length, so the rounds cost what about five checks would.

    None when the device no longer holds the baseline's bytes (its agent cache was cleared, another board): the
    host keeps no copy of old models. Interleaving is what makes the comparison fair on a noisy device: load that
    comes and goes slows both models alike.
    """
    session = open_session(profile, on_event=on_event, **session_options)
    try:
        status, _ = session.request("has_model", {"sha256": baseline_sha256})
        if not status.get("cached"):
            return None
        sha = session.put_model(artifact.data)
        half = replace(spec, runs=max(20, spec.runs // 2), min_seconds=spec.min_seconds / 2)
        pairs = []
        for index in range(rounds):
            # Alternate which goes first, so a slow start or a steady warm-up favours neither model. (The two may
            # be the same bytes: an unchanged model on a device that got slower.)
            if index % 2 == 0:
                reference = session.measure(baseline_sha256, half).latencies_ns
                current = session.measure(sha, half).latencies_ns
            else:
                current = session.measure(sha, half).latencies_ns
                reference = session.measure(baseline_sha256, half).latencies_ns
            pairs.append((reference, current))
    finally:
        session.close()
    return pairs


def confirm_side_by_side(
    suspected: CheckResult, rounds: Sequence[tuple[Sequence[int], Sequence[int]]], settings: RegressionSettings
) -> CheckResult:
    """Decide a flagged slowdown on the alternating measurement of both models: it counts only if it shows there.

    ``rounds`` holds (baseline model, model) latencies in ns per round. The budgets stay decided on the first
    measurement; only the regression verdicts change.
    """
    rounds_ms = [([x / 1e6 for x in base], [x / 1e6 for x in curr]) for base, curr in rounds]
    merged = []
    for outcome in suspected.regressions:
        if outcome.status != "fail" or outcome.result is None or outcome.metric == "size":
            merged.append(outcome)
            continue
        now = compare_paired(outcome.metric, rounds_ms, settings.policy(outcome.metric))
        verdict = "confirmed" if now.regressed else "not confirmed"
        message = (
            f"{now.describe()} (side by side with the baseline's model now, {verdict}; the first measurement "
            f"against the baseline run gave ratio {outcome.result.ratio:.3f})"
        )
        merged.append(RegressionOutcome(outcome.metric, "fail" if now.regressed else "pass", message, now))
    side = {"rounds": len(rounds), "first": [r.to_json() for r in suspected.regressions]}
    note = (
        "a slowdown was flagged, so the model and the baseline's model were measured alternately on the device "
        "to confirm it"
    )
    return replace(
        suspected,
        regressions=tuple(merged),
        extra={**suspected.extra, "side_by_side": side},
        notes=(*suspected.notes, note),
    )


def run_check(
    artifact: Artifact,
    *,
    model: str,
    model_path: str,
    profile: DeviceProfile,
    spec: MeasureRequest,
    budgets: Sequence[Budget],
    regression: RegressionSettings,
    baseline: Baseline | None,
    windows: WindowPlan | None = None,
    reference: Artifact | None = None,
    on_event: Callable[[str], None] | None = None,
    **session_options: Any,
) -> CheckResult:
    """Check one model on one device: ConfigError before any device time, DeviceError when the device fails. With a
    ``reference`` model (the original a tune run compressed), relative budgets are judged on the paired ratio."""
    targets = budget_targets(budgets, baseline, reference)
    for metric in regression.metrics:
        check_regression_metric(metric)

    def measure_and_evaluate() -> CheckResult:
        run = measure_model(
            profile,
            artifact,
            spec,
            budgets,
            targets,
            on_event=on_event,
            windows=windows,
            reference=reference,
            **session_options,
        )
        return evaluate(
            run,
            model=model,
            model_path=model_path,
            device=profile.name,
            spec=spec,
            budgets=budgets,
            targets=targets,
            regression=regression,
            baseline=baseline,
        )

    result = measure_and_evaluate()
    if regression.confirm == 0 or not any(r.status == "fail" for r in result.regressions):
        return result
    # Side by side when possible: the same runtime as the baseline (else a runtime regression would cancel out)
    # and the baseline's bytes still on the device.
    if baseline is not None and baseline.runtime_version == result.runtime_version:
        if on_event:
            on_event("slowdown flagged; measuring the model and the baseline's model alternately to confirm")
        paired = measure_side_by_side(
            profile,
            artifact,
            baseline.sha256,
            spec,
            rounds=4 + regression.confirm,
            on_event=on_event,
            **session_options,
        )
        if paired is not None:
            return confirm_side_by_side(result, paired, regression)
    for attempt in range(regression.confirm):
        if not any(r.status == "fail" for r in result.regressions):
            break
        if on_event:
            on_event(f"slowdown flagged; measuring again in a fresh agent ({attempt + 1}/{regression.confirm})")
        result = confirm(result, measure_and_evaluate())
    return result


def confirm(suspected: CheckResult, again: CheckResult) -> CheckResult:
    """Decide on a second measurement, a regression counting only when both measurements show it.

    A burst of load on the device (another process, a thermal event) slows one measurement; a slower model slows
    every one. The second measurement decides the budgets too: the first is suspected of being disturbed.
    """
    first = {r.metric: r for r in suspected.regressions}
    merged = []
    for outcome in again.regressions:
        before = first.get(outcome.metric)
        if before is None or before.status != "fail" or before.result is None:
            merged.append(outcome)
            continue
        earlier = f"first measurement: ratio {before.result.ratio:.3f}"
        if outcome.status == "fail":
            merged.append(replace(outcome, message=f"{outcome.message} (confirmed; {earlier})"))
        else:
            merged.append(
                replace(outcome, message=f"{outcome.message} ({earlier}, not confirmed by this second measurement)")
            )
    suspicions = [
        *suspected.extra.get("suspected", []),
        {
            "started_utc": suspected.started_utc,
            "values": suspected.values,
            "regressions": [r.to_json() for r in suspected.regressions],
        },
    ]
    return replace(
        again,
        regressions=tuple(merged),
        extra={**again.extra, "suspected": suspicions},
        notes=(
            *again.notes,
            f"measured twice: a slowdown flagged at {suspected.started_utc} was re-measured in a fresh agent",
        ),
    )


def batch_input_shapes(artifact: Artifact, batch: int) -> dict[str, tuple[int, ...]] | None:
    """The input shapes that make the device feed ``batch`` inputs per call (None for 1). Only an ONNX model whose
    inputs have a batch axis (first dimension symbolic, or already ``batch``) can; anything else is a ConfigError."""
    if batch == 1:
        return None
    if artifact.format != "onnx":
        raise ConfigError(f"--batch {batch} needs an ONNX model: a TFLite model has a fixed batch of 1")
    import onnx

    graph = onnx.load_model_from_string(artifact.data).graph
    weights = {init.name for init in graph.initializer}
    shapes: dict[str, tuple[int, ...]] = {}
    for value in graph.input:
        if value.name in weights:
            continue
        dims = value.type.tensor_type.shape.dim
        if not dims or any(not d.HasField("dim_value") for d in dims[1:]):
            raise ConfigError(f"--batch {batch}: input {value.name!r} has no fixed shape after its first axis")
        first = dims[0]
        if first.HasField("dim_value") and first.dim_value != batch:
            raise ConfigError(
                f"--batch {batch}: input {value.name!r} has a fixed batch of {first.dim_value}; export the model "
                "with a dynamic first axis"
            )
        shapes[value.name] = (batch, *(d.dim_value for d in dims[1:]))
    return shapes
