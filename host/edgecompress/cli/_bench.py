"""edgecompress bench: measure one model on a device and print its latency statistics."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from edgecompress.artifact import load_artifact
from edgecompress.cli._app import app, console, err_console
from edgecompress.cli._device_options import accept_new_host_option, upload_progress
from edgecompress.config import resolve_device
from edgecompress.device import MeasureRequest, measure_request
from edgecompress.gate import batch_input_shapes, measure_model
from edgecompress.observe import Observation


@app.command()
def bench(
    model: Path = typer.Argument(..., help="An .onnx or .tflite model file."),
    device: str = typer.Option("local", "--device", "-d", help="Profile name, .toml file, or user@host[:port]."),
    runs: int | None = typer.Option(None, min=1, help="At least this many timed inferences."),
    threads: int | None = typer.Option(None, min=1, help="Runtime threads (default: the profile's)."),
    min_seconds: float | None = typer.Option(None, min=0, help="Time at least this long."),
    max_seconds: float | None = typer.Option(None, min=0, help="Stop after this long, whatever the run count."),
    warmup_runs: int | None = typer.Option(None, min=0, help="Untimed inferences first."),
    batch: int = typer.Option(1, min=1, help="Inputs per call, as tune --batch measured them (ONNX models)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    html: Path | None = typer.Option(None, "--html", help="Also write a self-contained HTML page (plots) here."),
    accept_new_host: bool = accept_new_host_option(),
) -> None:
    """Measure a model on a device: latency distribution, first inference, load time."""
    profile = resolve_device(device)
    artifact = load_artifact(model)
    if html is not None:
        from edgecompress.report import check_report_target

        check_report_target(html)  # a page that cannot be written fails now, not after the device time
    spec = measure_request(
        profile,
        runs=runs,
        threads=threads,
        min_seconds=min_seconds,
        max_seconds=max_seconds,
        warmup_runs=warmup_runs,
        runtime=artifact.runtime,
        input_shapes=batch_input_shapes(artifact, batch),
    )
    run = measure_model(
        profile,
        artifact,
        spec,
        [],
        on_event=lambda m: err_console.print(f"[yellow]{escape(m)}[/]"),
        upload=lambda size: upload_progress(err_console, size, f"sending {model.name} to {profile.name}"),
        accept_new_host=accept_new_host,
    )
    observation, hello = run.observation, run.hello
    note = _run_count_note(spec, observation.latency.count)
    if note:
        err_console.print(f"note: {note}", highlight=False, markup=False)
    if html is not None:
        from edgecompress.report import bench_report_html, write_html

        page = bench_report_html(
            str(model),
            profile.name,
            spec.runtime,
            observation,
            hello,
            spec.to_fields(),
            shlex.join(["edgecompress", *sys.argv[1:]]),
        )
        err_console.print(f"HTML page written to {write_html(page, html)}", highlight=False)
        if str(html) == "-":
            return  # stdout holds the page; a table after it would break it
    if as_json:
        print(json.dumps(_bench_json(str(model), profile.name, spec.runtime, observation, hello), indent=2))
    else:
        _print_bench(model.name, profile.name, spec.runtime, observation, hello)


def _run_count_note(spec: MeasureRequest, count: int) -> str | None:
    """Why the timed loop ran another number of inferences than --runs: it runs at least min_seconds too, and
    stops at max_seconds whatever the count."""
    if count > spec.runs and spec.min_seconds > 0:
        return (
            f"{count} runs, not {spec.runs}: the timed loop also runs for at least --min-seconds "
            f"{spec.min_seconds:g} (the profile's default unless given); --min-seconds 0 for exactly {spec.runs}"
        )
    if count < spec.runs:
        return f"{count} runs, not {spec.runs}: --max-seconds {spec.max_seconds:g} stopped the timed loop first"
    return None


def _bench_json(
    model: str, device: str, runtime: str, observation: Observation, hello: Mapping[str, Any]
) -> dict[str, Any]:
    tail, energy = observation.tail, observation.energy
    return {
        "model": model,
        "sha256": observation.sha256,
        "device": device,
        "runtime": runtime,
        "board": hello.get("board"),
        "latency": observation.latency.to_json(),
        "providers": observation.measurement.raw.get("providers"),
        "tail": tail.to_json() if tail else None,
        "energy": energy.to_json() if energy else None,
        "flags": list(observation.flags),
        "thermal": observation.details.get("thermal"),
        "threads": observation.details.get("threads"),
        "input_shapes": observation.details.get("input_shapes"),
    }


def _print_bench(model: str, device: str, runtime: str, observation: Observation, hello: Mapping[str, Any]) -> None:
    stats, tail, energy = observation.latency, observation.tail, observation.energy
    table = Table(title=f"{model} on {device} ({hello.get('board')}), {runtime}", title_justify="left")
    table.add_column("statistic")
    table.add_column("ms", justify="right")
    for name in ("mean", "std", "min", "p50", "p90", "p95", "p99", "p999", "max"):
        table.add_row(name, f"{stats.get(name):.3f}")
    table.add_row("runs", str(stats.count))
    table.add_row("threads", str(observation.details.get("threads")))
    table.add_row("first inference", f"{stats.first_inference_ms:.3f}")
    table.add_row("load", f"{stats.load_ms:.3f}")
    if tail is not None:
        for p, value in tail.pwcet_ms.items():
            table.add_row(f"pWCET @{p:g}/run", f"{value:.3f}")
    console.print(table)
    if tail is not None:
        verdict = tail.iid.verdict() if tail.iid else "i.i.d. not checked (too few runs)"
        console.print(f"pWCET by {tail.method}; {verdict}", highlight=False)
        for warning in tail.warnings:
            err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if energy is None:
        console.print("energy/power: unavailable (no power source on the device)", highlight=False)
    else:
        active = "n/a" if energy.active_energy_mj is None else f"{energy.active_energy_mj:.3f} mJ"
        idle = "n/a" if energy.idle_power_w is None else f"{energy.idle_power_w:.3f} W"
        partial = ", partial: not all rails" if energy.partial else ""
        console.print(
            f"energy {energy.energy_mj:.3f} mJ/inference (above idle {active}), mean power "
            f"{energy.mean_power_w:.3f} W, idle {idle} [{energy.source}{partial}]",
            highlight=False,
        )
    if observation.flags:
        console.print(f"flags: {', '.join(observation.flags)}", highlight=False)
