"""The Typer application and the error boundary: every EdgecompressError becomes one line and an exit code."""

from __future__ import annotations

import re
import sys
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperOption

app = typer.Typer(
    name="edgecompress",
    help="Compress a PyTorch model until it meets budgets measured on the target device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}

EXIT_CODES = """Exit codes: 0 success; 1 a budget or regression failed; 2 usage or configuration error;
3 device unreachable or agent failure; 130 interrupted."""


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.")) -> None:
    """Compress a PyTorch model until it meets budgets measured on the target device."""
    _state["debug"] = debug


def debug_enabled() -> bool:
    return _state["debug"]


# What Rich reads as a markup tag ("[ssh]", "[budgets]", "[/]"), unless a backslash already escapes it.
_MARKUP_TAG = re.compile(r"(?<!\\)(\[[a-z#/@][^\[]*?\])")


def _literal(text: str | None) -> str | None:
    return None if text is None else _MARKUP_TAG.sub(r"\\\1", text)


def literal_help(command: Any) -> Any:
    """Help texts are plain text: Typer renders them as Rich markup, which would swallow "[tune]" or "[budgets]"."""
    command.help, command.short_help = _literal(command.help), _literal(command.short_help)
    for param in command.params:
        if isinstance(param, (TyperOption, TyperArgument)):
            param.help = _literal(param.help)
    for sub in getattr(command, "commands", {}).values():
        literal_help(sub)
    return command


# The click that Typer runs on: its own copy since Typer 0.22 (whose errors are not the click package's), the click
# package before. typer.BadParameter derives from that click's ClickException either way.
_ClickException: Any = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main() -> None:
    """Console entry point."""
    from edgecompress.errors import EdgecompressError

    try:
        # Without standalone mode click returns (not raises) the code of typer.Exit.
        code = literal_help(typer.main.get_command(app))(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except EdgecompressError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click's usage errors and anything unexpected
        if isinstance(exc, typer.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, _ClickException):
            exc.show()
            sys.exit(2)
        if isinstance(exc, typer.Abort):
            err_console.print("aborted")
            sys.exit(130)
        if _state["debug"]:
            raise
        err_console.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} "
            "(run with --debug for the traceback)",
            highlight=False,
        )
        sys.exit(4)
