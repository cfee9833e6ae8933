"""edgecompress tune: the annealed constrained search on a device."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from edgecompress.budgets import format_value, unit_of
from edgecompress.cli._app import app, console
from edgecompress.config import check_out_folder, check_tune_config, load_tune_config
from edgecompress.report import paired_decisions


class ConsoleReporter:
    """Round headers, one line per trial with its feasibility mark, best so far and an ETA."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.units: dict[str, str] = {}

    def message(self, text: str) -> None:
        if not self.quiet:
            console.print(text, highlight=False)

    def round_started(self, round_index: int, rounds: int, thresholds: dict[str, float], trials: int) -> None:
        if self.quiet:
            return
        limits = ", ".join(f"{k} <= {format_value(v, unit_of(k))}" for k, v in thresholds.items())
        console.rule(f"round {round_index + 1}/{rounds}: {trials} trials, thresholds {limits}")

    def trial_finished(self, record: dict[str, Any], best: float | None, eta_s: float | None) -> None:
        if self.quiet:
            return
        if record.get("state") == "FAIL":
            console.print(f"  #{record['number']:<3} [red]failed[/] {record.get('fail_reason')}", highlight=False)
            return
        if record.get("screened"):
            accuracy = record.get("accuracy", float("nan"))
            console.print(
                f"  #{record['number']:<3} · acc {accuracy:.4f}  not measured: {record['screened']}", highlight=False
            )
            return
        mark = "[green]✓[/]" if record.get("feasible") else "[red]✗[/]"
        values = record.get("values") or {}
        decisions = record.get("decisions") or {}
        shown = "  ".join(_shown(k, values.get(k), decisions.get(k)) for k in record.get("thresholds", {}))
        plan = record.get("plan") or {}
        ratios = plan.get("ratios") or {}
        mean_ratio = sum(ratios.values()) / len(ratios) if ratios else 0.0
        best_text = f"{best:.4f}" if best is not None else "-"
        eta = f"{eta_s / 60:.1f} min of trials" if eta_s is not None else "-"
        where = f"  on {record['where']}" if record.get("where") else ""
        console.print(
            f"  #{record['number']:<3} {mark} acc {record.get('accuracy', float('nan')):.4f}  {shown}  "
            f"{plan.get('quant', '?')} prune~{mean_ratio:.2f}  best {best_text}  ETA {eta}{where}",
            highlight=False,
        )


def _shown(key: str, value: float | None, decision: dict[str, Any] | None) -> str:
    """A budget's figure in a trial line: the value and, where windows judged it, the bound the verdict used."""
    if not decision or decision.get("value") is None:
        return f"{key} {format_value(value, unit_of(key))}"
    paired = decision.get("paired")

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}x" if paired else format_value(x, unit_of(key))

    name = f"{key}/orig" if paired else key
    return f"{name} {fmt(decision['value'])} (ub {fmt(decision.get('upper'))}, {decision.get('windows')}w)"


@app.command()
def tune(
    example: str | None = typer.Option(None, help="A built-in example: digits or fashion-mnist."),
    model: str | None = typer.Option(None, help="Model factory entry point, package.module:attr."),
    data: str | None = typer.Option(None, help="Data entry point, package.module:attr."),
    data_dir: str | None = typer.Option(None, help="Data folder for a built-in example."),
    arch: str | None = typer.Option(None, help="Reference network of a built-in example (e.g. resnet, mobilenetv2)."),
    device: list[str] = typer.Option(
        [],
        "--device",
        "-d",
        help="Profile name, .toml file, or user@host[:port]. Repeat it (or give a pool profile) to measure on "
        "several devices of one kind side by side.",
    ),
    budget: list[str] = typer.Option(
        [],
        "--budget",
        "-b",
        help="A budget such as 'latency.p99<=20ms', "
        "'size<=2MB' or 'latency.mean<=0.5x' (relative to the original). Repeatable.",
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help="edgecompress.toml with [tune] and [budgets]."),
    rounds: int | None = typer.Option(None, min=1, help="Cooling rounds T (default 3)."),
    trials_per_round: int | None = typer.Option(None, min=1, help="Trials in each round (default 12)."),
    schedule: str | None = typer.Option(None, help="exponential (default), linear or one-step."),
    alpha: float | None = typer.Option(None, help="Exponential cooling rate (default 0.5)."),
    sampler: str | None = typer.Option(None, help="tpe (default), gp or random."),
    strategy: str | None = typer.Option(
        None,
        help="cooled (default), unconstrained (the trade-off objective), "
        "or uniform (one global ratio by binary search).",
    ),
    tradeoff_lambda: float | None = typer.Option(
        None, "--lambda", help="Weight of latency in the unconstrained objective."
    ),
    seed: int | None = typer.Option(None, help="Seed of the samplers."),
    finetune_steps: int | None = typer.Option(None, min=0, help="Distillation steps after each round (default 200)."),
    candidate_finetune_steps: int | None = typer.Option(
        None, min=0, help="Distillation steps for every pruned candidate before it is scored (default 0)."
    ),
    val_limit: int | None = typer.Option(None, min=1, help="Validation samples for the accuracy objective."),
    runs: int | None = typer.Option(None, min=1, help="Timed inferences per measurement (default: the profile's)."),
    min_seconds: float | None = typer.Option(None, min=0, help="Minimum timed window per measurement."),
    warmup_seconds: float | None = typer.Option(
        None, min=0, help="Untimed inferences for at least this long before each window (default: the profile's)."
    ),
    quant_probe: bool | None = typer.Option(
        None,
        "--quant-probe/--no-quant-probe",
        help="Measure the original in int8/fp16 first and leave a format out when it is slower than fp32 (default on).",
    ),
    batch: int | None = typer.Option(
        None, min=1, help="Inputs per call when measuring (default 1); latency and energy are per call."
    ),
    opset: int | None = typer.Option(None, help="ONNX opset (default: the highest the device's runtime loads)."),
    name: str | None = typer.Option(None, help="Study name (default tune-<example>)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: a new one under runs/)."),
    storage: str | None = typer.Option(
        None,
        help="Optuna storage URL (default: SQLite in the output folder). A given one (postgresql://...) makes the "
        "run shareable: edgecompress worker joins it from other hosts.",
    ),
    artifacts: str | None = typer.Option(
        None,
        help="Where a shared run's original and round bases travel to workers: a folder every host sees, or "
        "s3://BUCKET (default: artifacts/ in the output folder).",
    ),
    base_choice: str | None = typer.Option(
        None,
        "--base-choice",
        help="score (default): the next base is the round's most accurate feasible trial; short-finetune: the best "
        "of its top 3 after --base-probe-steps distillation steps each.",
    ),
    base_probe_steps: int | None = typer.Option(None, min=1, help="Steps of the short fine-tune (default 50)."),
    drift_wait: float | None = typer.Option(
        None,
        "--drift-wait",
        min=0,
        help="Seconds a device whose original drifted before a round is left to settle before it is measured "
        "again (default 30; 0: again at once).",
    ),
    screen: bool | None = typer.Option(
        None,
        "--screen/--no-screen",
        help="Leave unmeasured the candidates that cannot beat the round's best or that the run's latency model "
        "predicts infeasible (default on; screened trials do not count towards a round).",
    ),
    overlap: str | None = typer.Option(
        None,
        help="auto (default), yes or no: build the next candidate while the device measures (on a local device "
        "only when host and agent can be pinned to cores of their own).",
    ),
    resume: Path | None = typer.Option(None, help="Continue the run in this folder (other flags are ignored)."),
    accept_new_host: bool = typer.Option(
        False,
        "--accept-new-host",
        help="Trust an SSH host key not yet in "
        "known_hosts (like OpenSSH's accept-new). A changed key is always refused.",
    ),
    confidence: float | None = typer.Option(
        None,
        min=0.51,
        max=0.999,
        help="Confidence of every verdict: met means the one-sided bound is under the budget (default 0.95).",
    ),
    max_windows: int | None = typer.Option(
        None, min=1, help="Measurement windows a candidate may take while its verdict is undecided (default 6)."
    ),
    confirm_windows: int | None = typer.Option(
        None, min=1, help="Windows the final confirmation may take (default 10)."
    ),
    coarsen: str | None = typer.Option(
        None,
        "--coarsen",
        help="Search one ratio per stage instead of per group: auto (default: above 12 groups), yes, no.",
    ),
    validate: bool | None = typer.Option(
        None,
        "--validate/--no-validate",
        help="Run the final model's validation inputs on the device and the host and compare (default on); a "
        "model whose outputs disagree (below --min-agreement) is not the answer.",
    ),
    min_agreement: float | None = typer.Option(
        None, min=0, max=1, help="Top-1 agreement of device and host outputs the final model needs (default 0.99)."
    ),
    host_device: str | None = typer.Option(
        None,
        "--host-device",
        help="Where fine-tuning, distillation and BatchNorm recalibration run: auto (CUDA when torch sees a GPU), "
        "cpu, cuda or mps. Export and scoring stay on the CPU.",
    ),
    device_wait: float | None = typer.Option(
        None,
        "--device-wait",
        min=0,
        help="Seconds to wait for a device that stopped answering before the run stops (default 300); the trial "
        "it was measuring is measured again when it is back.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the final result as JSON."),
) -> None:
    """Find the most accurate compressed model that meets the budgets measured on the device.

    Exit codes: 0 budgets met; 1 not met; 2 configuration error; 3 device failure; 130 interrupted.
    """
    reporter = ConsoleReporter(quiet=as_json)
    command = shlex.join(["edgecompress", *sys.argv[1:]])
    if resume is not None:
        from edgecompress.search import run_tune

        result = run_tune(None, None, reporter, resume=resume)
    else:
        overrides = {
            "example": example,
            "model": model,
            "data": data,
            "data_dir": data_dir,
            "arch": arch,
            "device": (device[0] if len(device) == 1 else device) or None,
            "budgets": budget,
            "rounds": rounds,
            "trials_per_round": trials_per_round,
            "schedule": schedule,
            "alpha": alpha,
            "sampler": sampler,
            "strategy": strategy,
            "tradeoff_lambda": tradeoff_lambda,
            "seed": seed,
            "finetune_steps": finetune_steps,
            "candidate_finetune_steps": candidate_finetune_steps,
            "val_limit": val_limit,
            "runs": runs,
            "min_seconds": min_seconds,
            "warmup_seconds": warmup_seconds,
            "batch": batch,
            "quant_probe": quant_probe,
            "opset": opset,
            "name": name,
            "storage": storage,
            "artifacts": artifacts,
            "overlap": overlap,
            "screen": screen,
            "drift_wait_s": drift_wait,
            "base_choice": base_choice,
            "base_probe_steps": base_probe_steps,
            "accept_new_host": accept_new_host or None,
            "device_wait_s": device_wait,
            "host_device": host_device,
            "validate_final": validate,
            "min_agreement": min_agreement,
            "coarsen": coarsen,
            "confidence": confidence,
            "max_windows": max_windows,
            "confirm_windows": confirm_windows,
        }
        settings = load_tune_config(config, overrides)
        # What can be checked without torch is, before the search's imports (seconds): a mistake is answered fast.
        check_tune_config(settings)
        if out is not None:
            check_out_folder(out)
        from edgecompress.search import run_tune

        result = run_tune(settings, out, reporter, command=command)
    if as_json:
        print(
            json.dumps(
                {
                    "run_dir": str(result.run_dir),
                    "met": result.met,
                    "interrupted": result.interrupted,
                    "final": {k: v for k, v in (result.final or {}).items() if k != "observation"},
                },
                indent=2,
            )
        )
    else:
        _summary(result)
    if result.interrupted:
        raise typer.Exit(130)
    if not result.met:
        raise typer.Exit(1)


def _summary(result: Any) -> None:
    if result.interrupted:
        console.print(f"[yellow]stopped early[/]; continue with: edgecompress tune --resume {result.run_dir}")
        return
    table = Table(title=f"result in {result.run_dir}", title_justify="left")
    table.add_column("")
    table.add_column("original", justify="right")
    table.add_column("final", justify="right")
    final = result.final or {}
    base = result.base
    table.add_row(
        "accuracy",
        f"{base['candidate']['accuracy']:.4f}",
        f"{final['accuracy']:.4f}" if final.get("met") else "not met",
    )
    paired_by_key = paired_decisions(final)
    for key, target in base["targets"].items():
        unit = unit_of(key)
        paired = paired_by_key.get(key)
        if paired is not None:  # judged on the ratio to the original in alternating windows: show that ratio
            table.add_row(f"{key} / original (budget {paired['threshold']:g}x)", "1.000x", f"{paired['value']:.3f}x")
            continue
        final_value = format_value((final.get("values") or {}).get(key), unit) if final.get("met") else "-"
        table.add_row(
            f"{key} (budget {format_value(target, unit)})", format_value(base["values"].get(key), unit), final_value
        )
    if "size" not in base["targets"]:  # a size budget already has its row
        table.add_row(
            "size",
            format_value(base["candidate"]["size_bytes"], "bytes"),
            format_value(final.get("size_bytes"), "bytes") if final.get("met") else "-",
        )
    console.print(table)
    parity = final.get("validation") or {}
    if parity:
        agreement = parity.get("agreement")
        shown = f"{agreement:.2%}" if isinstance(agreement, float) else "?"
        console.print(f"validation on the device: top-1 agreement {shown} with the host", highlight=False)
    if final.get("identical_to_original"):
        console.print(
            "the final model is the original (same sha256): it already meets the budgets, no compression was needed",
            highlight=False,
        )
    verdict = final.get("verdict") or {}
    if verdict.get("summary"):
        console.print(f"verdict: {verdict['summary']}", highlight=False, markup=False)
    for rejected in final.get("rejected") or []:
        console.print(
            f"rejected {rejected['which']} (accuracy {rejected['accuracy']:.4f}): {rejected['outcome']}",
            highlight=False,
            markup=False,
        )
    if final.get("met"):
        check = result.run_dir / "check.toml"
        model = next(result.run_dir.glob("model.*"), result.run_dir / "model.onnx")
        console.print(f"re-judge it (CI): edgecompress check {model} --config {check}", highlight=False, markup=False)
    if final.get("accuracy_collapsed"):
        from edgecompress.verdict import collapse_message

        line = collapse_message(base["candidate"]["accuracy"], final["accuracy"])
        console.print(line, style="bold red", highlight=False, markup=False)
