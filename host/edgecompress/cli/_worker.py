"""edgecompress worker: another host joins a shared tune run with its own devices and host compute."""

from __future__ import annotations

from pathlib import Path

import typer

from edgecompress.cli._app import app, console
from edgecompress.cli._tune import ConsoleReporter


@app.command()
def worker(
    storage: str = typer.Option(..., help="The run's Optuna storage URL, as given to tune --storage."),
    run: str = typer.Option(..., "--run", help="The run's name (tune prints it: 'run NAME is shared')."),
    device: list[str] = typer.Option(
        ["local"], "--device", "-d", help="This host's device(s): profile name, .toml file or user@host[:port]."
    ),
    artifacts: str | None = typer.Option(
        None, help="The run's artifact store as this host sees it (default: the one the run names)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="This worker's log folder (default: under runs/)."),
    host_device: str | None = typer.Option(
        None, "--host-device", help="auto, cpu, cuda or mps: where this host fine-tunes and scores candidates."
    ),
    overlap: str | None = typer.Option(None, help="auto, yes or no (as tune --overlap)."),
    wait: float = typer.Option(600.0, min=0, help="Seconds to wait for the run to measure its original."),
) -> None:
    """Join a shared tune run (tune --storage postgresql://...) and work its rounds until its search is over.

    Exit codes: 0 the run's search is over; 2 configuration error; 3 device failure; 130 interrupted.
    """
    from edgecompress.search import run_worker

    result = run_worker(
        storage,
        run,
        device,
        ConsoleReporter(),
        artifacts=artifacts,
        out=out,
        host_device=host_device,
        overlap=overlap,
        wait_s=wait,
    )
    console.print(
        f"worker done: {result.trials} trials in rounds {', '.join(str(t + 1) for t in result.rounds) or '-'}"
    )
    if result.interrupted:
        raise typer.Exit(130)
