"""edgecompress devices: list profiles, show what a device reports."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from edgecompress.cli._app import app, console
from edgecompress.cli._device_options import accept_new_host_option
from edgecompress.config import all_profiles, resolve_device
from edgecompress.device import open_session
from edgecompress.errors import DeviceError

devices_app = typer.Typer(help="Device profiles and what the devices report.", invoke_without_command=True)
app.add_typer(devices_app, name="devices")


@devices_app.callback()
def _list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the device profiles (built-in and ~/.config/edgecompress/profiles)."""
    if ctx.invoked_subcommand is not None:
        return
    profiles = all_profiles()
    if as_json:
        console.print_json(json.dumps({name: p.model_dump() for name, p in profiles.items()}))
        return
    table = Table("name", "transport", "runtime", "description")
    for name, profile in sorted(profiles.items()):
        table.add_row(name, profile.transport, profile.runtime.name, profile.description)
    console.print(table)


@devices_app.command("info")
def info(
    device: str = typer.Argument(..., help="Profile name, .toml file, or user@host[:port]."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    accept_new_host: bool = accept_new_host_option(),
) -> None:
    """Start the agent on a device and print what it reports (hello)."""
    profile = resolve_device(device)
    session = open_session(profile, accept_new_host=accept_new_host)
    try:
        hello = session.hello()
    finally:
        session.close()
    if as_json:
        console.print_json(json.dumps(hello))
        return
    table = Table("property", "value", show_header=False)
    table.add_row("board", str(hello.get("board")))
    cpu = hello.get("cpu") or {}
    table.add_row("cpu", f"{cpu.get('model')} ({cpu.get('arch')}, {cpu.get('count')} cores)")
    mem = (hello.get("memory") or {}).get("total_bytes")
    table.add_row("memory", f"{mem / 2**30:.1f} GiB" if mem else "unknown")
    python = hello.get("python") or {}
    table.add_row("python", f"{python.get('version')} ({python.get('executable')})")
    table.add_row("agent", f"{hello.get('agent_version')} (protocol {hello.get('protocol')})")
    for runtime in hello.get("runtimes") or []:
        table.add_row(
            f"runtime {runtime['name']}", f"{runtime.get('version')}  {', '.join(runtime.get('providers') or [])}"
        )
    if not hello.get("runtimes"):
        table.add_row("runtimes", "none importable")
    sources = hello.get("power_sources") or []
    for source in sources:
        # Which rails make the total and why (the board's power tree), as the agent reads them.
        table.add_row(
            f"power {source.get('name', '?')}", str(source.get("note") or ", ".join(source.get("rails") or []))
        )
    if not sources:
        table.add_row("power", "none")
    zones = hello.get("thermal_zones") or {}
    table.add_row("thermal", ", ".join(f"{k} {v:.0f}°C" for k, v in zones.items()) or "none readable")
    console.print(table)


@devices_app.command("check")
def check(
    device: str = typer.Argument(..., help="Profile name, .toml file, or user@host[:port]."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    accept_new_host: bool = accept_new_host_option(),
) -> None:
    """Check a device: connection, host key, Python, agent, runtimes, power, thermal zones, CPU governor.

    Each problem comes with a fix. Exit code 3 when something fails (warnings alone exit 0).
    """
    from edgecompress.device._check import check_device

    items = check_device(resolve_device(device), accept_new_host=accept_new_host)
    if as_json:
        print(json.dumps([item.to_json() for item in items], indent=2))
    else:
        styles = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]"}
        table = Table("check", "", "detail", "fix", title=f"device {device}", title_justify="left")
        for item in items:
            table.add_row(item.name, styles[item.status], item.detail, item.hint)
        console.print(table)
    failed = [item.name for item in items if item.status == "fail"]
    if failed:
        raise DeviceError(f"device {device}: {len(failed)} check(s) failed: {', '.join(failed)}")
