"""Flags and progress shared by every command that talks to a device (bench, devices, tune, check)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

# Below this an upload takes well under a second on a LAN: a progress bar would only flicker.
PROGRESS_MIN_BYTES = 4 * 1024 * 1024


def accept_new_host_option() -> bool:
    """``--accept-new-host``: trust an SSH device's key on first contact, like OpenSSH's accept-new."""
    return typer.Option(
        False,
        "--accept-new-host",
        help="Trust an SSH device's host key the first time it is seen and add it to known_hosts "
        "(like OpenSSH StrictHostKeyChecking=accept-new). A changed key is always refused.",
    )


@contextmanager
def upload_progress(console: Console, total_bytes: int, label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done, total)`` callback drawing a transfer bar on ``console`` for large models, else None."""
    if total_bytes < PROGRESS_MIN_BYTES or not console.is_terminal:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(label, total=total_bytes)
        yield lambda done, total: progress.update(task, completed=done, total=total)
