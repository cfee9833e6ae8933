"""edgecompress devices: list profiles, show what a device reports."""

from __future__ import annotations

import json

import typer
from rich.table import Table
from rich.text import Text

from edgecompress.cli._app import app, console
from edgecompress.cli._device_options import accept_new_host_option
from edgecompress.config import profile_catalog, resolve_device
from edgecompress.device import open_session
from edgecompress.errors import DeviceError

devices_app = typer.Typer(help="Device profiles and what the devices report.", invoke_without_command=True)
app.add_typer(devices_app, name="devices")


@devices_app.callback()
def _list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the device profiles (built-in and ~/.config/edgecompress/profiles)."""
    if ctx.invoked_subcommand is not None:
        return
    profiles, broken = profile_catalog()
    if as_json:
        listing = {name: p.model_dump() for name, p in profiles.items()}
        listing.update({name: {"broken": str(error)} for name, error in broken.items()})
        console.print_json(json.dumps(dict(sorted(listing.items()))))
        return
    table = Table("name", "transport", "runtime", "description")
    rows = [_plain(name, p.transport, p.runtime.name, p.description) for name, p in profiles.items()]
    rows += [
        [Text(name), Text("?"), Text("?"), Text(f"broken: {error}", style="red")] for name, error in broken.items()
    ]
    for row in sorted(rows, key=lambda cells: cells[0].plain):
        table.add_row(*row)
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
    cpu = hello.get("cpu") or {}
    mem = (hello.get("memory") or {}).get("total_bytes")
    python = hello.get("python") or {}
    rows = [
        ("board", str(hello.get("board"))),
        ("cpu", f"{cpu.get('model')} ({cpu.get('arch')}, {cpu.get('count')} cores)"),
        ("memory", f"{mem / 2**30:.1f} GiB" if mem else "unknown"),
        ("python", f"{python.get('version')} ({python.get('executable')})"),
        ("agent", f"{hello.get('agent_version')} (protocol {hello.get('protocol')})"),
    ]
    for runtime in hello.get("runtimes") or []:
        providers = ", ".join(runtime.get("providers") or [])
        rows.append((f"runtime {runtime['name']}", f"{runtime.get('version')}  {providers}"))
    if not hello.get("runtimes"):
        rows.append(("runtimes", "none importable"))
    sources = hello.get("power_sources") or []
    for source in sources:
        # Which rails make the total and why (the board's power tree), as the agent reads them.
        rails = str(source.get("note") or ", ".join(source.get("rails") or []))
        rows.append((f"power {source.get('name', '?')}", rails))
    if not sources:
        rows.append(("power", "none"))
    zones = hello.get("thermal_zones") or {}
    rows.append(("thermal", ", ".join(f"{k} {v:.0f}°C" for k, v in zones.items()) or "none readable"))
    table = Table("property", "value", show_header=False)
    for row in rows:
        table.add_row(*_plain(*row))
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
            name, detail, hint = _plain(item.name, item.detail, item.hint)
            table.add_row(name, styles[item.status], detail, hint)
        console.print(table)
    failed = [item.name for item in items if item.status == "fail"]
    if failed:
        raise DeviceError(f"device {device}: {len(failed)} check(s) failed: {', '.join(failed)}")


def _plain(*cells: str) -> list[Text]:
    """Table cells as text, not Rich markup: a fix such as "[power] command = ..." names a profile's table."""
    return [Text(cell) for cell in cells]
