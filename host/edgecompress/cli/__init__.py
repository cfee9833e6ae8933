"""The command line: each command module parses flags, calls the library, and prints."""

from edgecompress.cli import (  # noqa: F401  (registers the commands)
    _bench,
    _check,
    _compress,
    _devices,
    _report,
    _tune,
    _validate,
    _worker,
)
from edgecompress.cli._app import app, main

__all__ = ["app", "main"]
