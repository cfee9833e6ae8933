"""Writing files atomically (a crash never leaves half a report for CI to parse, or half a run state); ``-`` for
stdout."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from edgecompress.errors import ConfigError


def check_report_target(path: str | Path) -> Path:
    """A ConfigError, before any work, when a report could not be written to ``path`` (``-`` is stdout)."""
    path = Path(path)
    if str(path) == "-":
        return path
    if path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a folder; give a file name such as {path / 'report.html'}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {path}: folder {folder} is not writable")
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Replace ``path`` with ``text``; the file is named on the command line, so replacing it is what was asked."""
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return Path("-")
    path = check_report_target(path)
    folder = path.parent if str(path.parent) else Path(".")
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())  # on disk before the rename: a power cut leaves the old file or the new one
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
