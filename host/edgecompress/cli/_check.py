"""edgecompress check (the nightly hardware regression gate) and edgecompress history (its trend)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from edgecompress.artifact import load_artifact
from edgecompress.budgets import METRICS, metric_of, parse_budgets
from edgecompress.cli._app import app, console, err_console
from edgecompress.config import resolve_device
from edgecompress.device import measure_request
from edgecompress.errors import BudgetError, ConfigError, DeviceError
from edgecompress.gate import (
    Baseline,
    CheckResult,
    RegressionSettings,
    batch_input_shapes,
    load_baseline,
    load_check_config,
    merge_budgets,
    run_check,
)
from edgecompress.history import append_result, format_metric, plot_trend, read_history, trend
from edgecompress.report import (
    check_report_html,
    write_html,
    write_junit,
    write_junit_error,
    write_markdown,
    write_markdown_error,
    write_result_json,
)
from edgecompress.verdict import WindowPlan

CHECK_EXIT_CODES = (
    "Exit codes: 0 every budget met and no regression; 1 a budget failed or the model regressed (each failure named "
    "on one line); 2 usage or configuration error, or a budget this device cannot measure; 3 device unreachable or "
    "agent failure; 5 a budget's verdict inconclusive (the measurement windows could not decide it). See docs/ci.md."
)


def _output_folder_ok(path: str | None, flag: str) -> None:
    """Fail before spending device time when an output cannot be written."""
    if path is None or path == "-":
        return
    folder = Path(path).parent
    if not folder.is_dir():
        raise ConfigError(f"{flag} {path}: folder {folder} does not exist")


@app.command(epilog=CHECK_EXIT_CODES)
def check(
    model: Annotated[Path, typer.Argument(help="The .onnx or .tflite model to check.")],
    device: Annotated[
        str | None, typer.Option("--device", "-d", help="Profile name, .toml file, or user@host[:port].")
    ] = None,
    budget: Annotated[
        list[str] | None,
        typer.Option(
            "--budget",
            "-b",
            help="A budget such as 'latency.p99<=20ms' or 'latency.p50<=1.05x' (relative to the "
            "baseline); repeatable. Replaces a configured budget on the same metric.",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="edgecompress.toml with \\[check] and \\[budgets] tables.")
    ] = None,
    baseline: Annotated[Path | None, typer.Option(help="Compare with this previous --json result.")] = None,
    history: Annotated[
        Path | None,
        typer.Option(
            help="JSON-lines history: the baseline is its last passing run of this model, device and runtime (unless "
            "--baseline); this run is appended."
        ),
    ] = None,
    junit: Annotated[str | None, typer.Option(help="Write JUnit XML here ('-' for stdout).")] = None,
    json_path: Annotated[
        str | None,
        typer.Option("--json", help="Write the JSON result here, raw latencies included (a later --baseline)."),
    ] = None,
    markdown: Annotated[
        str | None, typer.Option(help="Write a Markdown summary here (append it to $GITHUB_STEP_SUMMARY).")
    ] = None,
    html: Annotated[
        str | None,
        typer.Option("--html", help="Write a self-contained HTML page (latency plots beside the baseline's) here."),
    ] = None,
    runs: Annotated[
        int | None, typer.Option(min=1, help="At least this many timed inferences (default: the profile's).")
    ] = None,
    min_seconds: Annotated[
        float | None, typer.Option(min=0, help="Time at least this long (default: the profile's).")
    ] = None,
    warmup_seconds: Annotated[
        float | None,
        typer.Option(min=0, help="Untimed inferences for this long before each window (default: the profile's)."),
    ] = None,
    batch: Annotated[
        int | None, typer.Option(min=1, help="Inputs per call, as tune --batch measured them (ONNX; default 1).")
    ] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Runtime threads (default: the profile's).")] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            help="The original model: a relative budget (0.7x) is judged on windows alternating with it, as tune "
            "judged it (tune's check.toml names it)."
        ),
    ] = None,
    confidence: Annotated[
        float | None,
        typer.Option(
            min=0.51, max=0.999, help="A budget passes when its one-sided bound at this confidence is under it."
        ),
    ] = None,
    max_windows: Annotated[
        int | None, typer.Option(min=1, help="Measurement windows a budget may take while undecided (default 6).")
    ] = None,
    tolerance: Annotated[
        list[str] | None,
        typer.Option(
            help="Tolerated slowdown: '5%' sets the default (5%), 'latency.p99=10%' also tests that metric; repeatable."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="The model's name in the history (default: its file name).")] = None,
    accept_new_host: Annotated[
        bool,
        typer.Option(
            "--accept-new-host",
            help="Trust an SSH host key not yet in known_hosts (and remember it), like OpenSSH's accept-new.",
        ),
    ] = False,
    validate: Annotated[
        bool,
        typer.Option(
            "--validate",
            help="Also run the model on the device and on the host on the same samples (--example or --data) and "
            "fail below --min-agreement top-1 agreement: a JUnit test case of its own.",
        ),
    ] = False,
    example: Annotated[str | None, typer.Option(help="--validate's samples: a built-in example.")] = None,
    data: Annotated[
        str | None, typer.Option(help="--validate's samples: a data entry point package.module:attribute.")
    ] = None,
    data_dir: Annotated[str | None, typer.Option(help="Fashion-MNIST's folder for --example fashion-mnist.")] = None,
    samples: Annotated[int, typer.Option(min=1, help="--validate compares on this many samples.")] = 1000,
    min_agreement: Annotated[
        float, typer.Option(min=0, max=1, help="--validate fails below this top-1 agreement.")
    ] = 0.99,
) -> None:
    """Measure MODEL on a device, apply every budget and test for a slowdown against a baseline (for nightly CI)."""
    from edgecompress.cli import _validate as parity_check

    labelled = parity_check.labelled_for_check(validate, example, data, data_dir)  # no device time for a data error
    settings = load_check_config(config)
    device_name = device or settings.device
    if device_name is None:
        raise ConfigError("no device: give --device NAME (or device = NAME in the check table of --config)")
    budgets = merge_budgets(settings.budgets(), parse_budgets(budget or []))
    regression = settings.regression.with_tolerances(tolerance or [])
    profile = resolve_device(device_name)
    artifact = load_artifact(model)
    model_name = name or settings.name or model.name
    spec = measure_request(
        profile,
        runs=runs or settings.runs,
        min_seconds=settings.min_seconds if min_seconds is None else min_seconds,
        warmup_seconds=settings.warmup_seconds if warmup_seconds is None else warmup_seconds,
        runtime=artifact.runtime,
        threads=threads or settings.threads,
        input_shapes=batch_input_shapes(artifact, batch or settings.batch),
    )
    top = max_windows or settings.max_windows
    windows = WindowPlan(confidence or settings.confidence, min(settings.min_windows, top), top)
    for path, flag in ((junit, "--junit"), (json_path, "--json"), (markdown, "--markdown"), (html, "--html")):
        _output_folder_ok(path, flag)
    history_path = history or (Path(settings.history) if settings.history else None)
    base = _baseline(baseline or settings.baseline, history_path, model_name, profile.name, spec.runtime, regression)
    reference_path = reference or (Path(settings.reference) if settings.reference else None)
    original = load_artifact(reference_path) if reference_path is not None else None

    try:
        with err_console.status(f"measuring {model.name} on {profile.name}"):
            result = run_check(
                artifact,
                model=model_name,
                model_path=str(model),
                profile=profile,
                spec=spec,
                budgets=budgets,
                regression=regression,
                baseline=base,
                windows=windows,
                reference=original,
                on_event=lambda m: err_console.print(f"[yellow]{m}[/]"),
                accept_new_host=accept_new_host,
            )
    except (DeviceError, BudgetError) as exc:
        # CI should show a red case, not a missing report, when the board is down or cannot measure a budget.
        if junit:
            write_junit_error(
                model_name, profile.name, str(exc), junit, "budgets" if isinstance(exc, BudgetError) else "device"
            )
        if markdown:
            write_markdown_error(model_name, profile.name, str(exc), markdown)
        raise

    parity = None
    if labelled is not None:
        parity = parity_check.validate_after_check(
            profile,
            artifact,
            labelled,
            model_name=model_name,
            samples=samples,
            min_agreement=min_agreement,
            accept_new_host=accept_new_host,
        )
        result = parity_check.with_parity(result, parity)

    _write_reports(result, parity, base, junit, json_path, markdown, html, history_path)
    for line in result.problems():
        err_console.print(line, highlight=False, soft_wrap=True, markup=False)
    if parity is None:
        sys.exit(result.exit_code)
    parity_check.print_parity_problem(parity)
    sys.exit(parity_check.combined_exit_code(result.exit_code, parity))


def _write_reports(
    result: CheckResult,
    parity: Any,
    base: Baseline | None,
    junit: str | None,
    json_path: str | None,
    markdown: str | None,
    html: str | None,
    history_path: Path | None,
) -> None:
    """Every report asked for, the history line, and the table on the console (unless a report took stdout)."""
    from edgecompress.cli import _validate as parity_check

    if junit:
        if parity is None:
            write_junit(result, junit)
        else:
            parity_check.write_check_junit(result, parity, junit)
    if json_path:
        write_result_json(result, json_path)
    if markdown:
        if parity is None:
            write_markdown(result, markdown)
        else:
            parity_check.write_check_markdown(result, parity, markdown)
    if html:
        write_html(check_report_html(result, base, command=shlex.join(["edgecompress", *sys.argv[1:]])), html)
    if history_path is not None:
        append_result(history_path, result)
    if "-" not in (junit, json_path, markdown, html):  # stdout belongs to the report that was asked for there
        _print_result(result)
        if parity is not None:
            parity_check.print_parity(parity)


def _baseline(
    baseline: Path | str | None,
    history_path: Path | None,
    model_name: str,
    device: str,
    runtime: str,
    regression: RegressionSettings,
) -> Baseline | None:
    """The baseline to compare with: --baseline, else the history's last passing runs of this model, device and
    runtime; None for the first run."""
    if history_path is not None:
        _output_folder_ok(str(history_path), "--history")
    if baseline is not None:
        return load_baseline(Path(baseline))
    if history_path is None:
        return None
    past = read_history(history_path)
    for problem in past.problems:
        err_console.print(f"[yellow]warning:[/] {escape(problem)}", highlight=False)
    return past.baseline(model_name, device, runtime, regression.baseline_runs)


def _print_result(result: CheckResult) -> None:
    colour = {"pass": "green", "fail": "red", "error": "yellow", "skipped": "dim", "inconclusive": "magenta"}
    table = Table(
        title=f"{result.model} on {result.device} ({result.board}), {result.runtime} {result.runtime_version}, "
        f"{result.settings.get('measure', {}).get('threads') or 'default'} threads",
        title_justify="left",
    )
    table.add_column("check")
    table.add_column("status")
    table.add_column("figures")
    for b in result.budgets:
        table.add_row(escape(b.budget), f"[{colour[b.status]}]{b.status}[/]", escape(b.message))
    for r in result.regressions:
        table.add_row(f"regression {r.metric}", f"[{colour[r.status]}]{r.status}[/]", escape(r.message))
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    console.print("[green]passed[/]" if result.passed else "[red]failed[/]")


@app.command("history")
def history_command(
    path: Annotated[Path, typer.Argument(help="The history file written by check --history.")],
    model: Annotated[str | None, typer.Option(help="Only this model (its name in the history).")] = None,
    device: Annotated[str | None, typer.Option("--device", "-d", help="Only this device profile.")] = None,
    runtime: Annotated[str | None, typer.Option(help="Only this runtime (onnxruntime, tflite).")] = None,
    metric: Annotated[
        list[str] | None, typer.Option(help="Metrics to show; repeatable (default: latency.p50 and latency.p99).")
    ] = None,
    last: Annotated[int | None, typer.Option(min=1, help="Only the last N runs.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Also save the trend as a PNG plot here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show the trend of a model on a device from the check history; optionally plot it."""
    metric = metric or ["latency.p50", "latency.p99"]
    for name in metric:
        if metric_of(name) is None:
            raise ConfigError(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}")
    past = read_history(path, must_exist=True)
    for problem in past.problems:
        err_console.print(f"[yellow]warning:[/] {escape(problem)}", highlight=False)
    series = [
        s
        for s in past.series()
        if (model is None or s[0] == model)
        and (device is None or s[1] == device)
        and (runtime is None or s[2] == runtime)
    ]
    if not series:
        known = "; ".join(f"{m} on {d} ({r})" for m, d, r in past.series()) or "none"
        raise ConfigError(f"no runs in {path} match; the history holds: {known}")
    if plot is not None and len(series) > 1:
        choices = "; ".join(f"--model {m} --device {d}" for m, d, _ in series)
        raise ConfigError(f"--plot draws one model on one device; choose with {choices}")
    output = []
    for model_name, device_name, runtime_name in series:
        rows = trend(past.select(model_name, device_name, runtime_name), metric)[-last if last else None :]
        title = f"{model_name} on {device_name} ({runtime_name})"
        if as_json:
            output.append(
                {
                    "model": model_name,
                    "device": device_name,
                    "runtime": runtime_name,
                    "runs": [r.to_json() for r in rows],
                }
            )
            continue
        table = Table(title=title, title_justify="left")
        for column in ("when (UTC)", "model", "runtime", *metric, "ratio", "result"):
            table.add_column(
                column,
                justify="right" if column in metric or column == "ratio" else "left",
                no_wrap=column in ("when (UTC)", "model"),
            )
        for r in rows:
            table.add_row(
                r.started_utc.replace("T", " ").rstrip("Z"),
                r.sha256[:8],
                r.runtime_version or "?",
                *(format_metric(m, r.values.get(m)) for m in metric),
                "" if r.ratio is None else f"{r.ratio:.3f}",
                "[green]pass[/]" if r.passed else f"[red]fail[/] {escape(', '.join(r.failed))}",
            )
        console.print(table)
        if plot is not None:
            plot_trend(rows, metric, plot, title)
            console.print(f"plot saved to {plot}")
    if as_json:
        print(json.dumps(output, indent=1))
