"""edgecompress report (rewrite a run's report.html) and edgecompress dashboard (optuna-dashboard on its study)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from edgecompress.cli._app import app, console, err_console
from edgecompress.errors import ConfigError

# The README's hint, word for word.
DASHBOARD_MISSING = "optuna-dashboard is not installed; install it with: pip install 'edgecompress[dashboard]'"


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A tune output folder (holds results.json).")],
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Write the page here instead of DIR/report.html ('-' for stdout).")
    ] = None,
) -> None:
    """Regenerate a tune run's report.html from its stored results.json (no device needed)."""
    from edgecompress.report import write_tune_report

    path = write_tune_report(run_dir, out)
    if str(path) != "-":
        console.print(f"report written to {path}", highlight=False)


def study_storage(run_dir: Path) -> str:
    """The Optuna storage URL of a run: the one it was started with, else the SQLite file in its folder."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a folder")
    config: dict[str, Any] = {}
    for name in ("results.json", "state.json"):
        path = run_dir / name
        if path.is_file():
            try:
                config = json.loads(path.read_text(encoding="utf-8")).get("config") or {}
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{path}: cannot read it as JSON ({exc})") from exc
            break
    else:
        raise ConfigError(f"{run_dir} is not an edgecompress tune folder (no results.json or state.json)")
    if config.get("storage"):
        return str(config["storage"])
    database = run_dir / "study.sqlite3"
    if not database.is_file():
        raise ConfigError(f"{database} does not exist: the run has no study yet")
    return f"sqlite:///{database.resolve()}"


@app.command()
def dashboard(
    run_dir: Annotated[Path, typer.Argument(help="A tune output folder.")],
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port on localhost (0: any free port).")] = 8080,
) -> None:
    """Serve the run's Optuna studies (one per round) with optuna-dashboard on localhost until Ctrl-C."""
    storage = study_storage(run_dir)
    try:
        import optuna_dashboard
    except ImportError as exc:
        raise ConfigError(DASHBOARD_MISSING) from exc
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True  # the page keeps polling; a stop must not wait for its requests

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass  # one line per poll of the page would bury the console

    # Bound before the address is printed: whoever reads it (a person, a test) can connect at once.
    server = make_server(
        "127.0.0.1", port, optuna_dashboard.wsgi(storage), server_class=Server, handler_class=QuietHandler
    )
    url = f"http://127.0.0.1:{server.server_port}/dashboard"
    console.print(f"optuna-dashboard for {storage}", highlight=False)
    print(url, flush=True)
    err_console.print("Ctrl-C to stop", highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
