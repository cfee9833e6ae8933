"""``devices check``: walk a device from SSH to the CPU governor and say, for each problem, how to fix it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from edgecompress.config import DeviceProfile
from edgecompress.device._open import transport_for
from edgecompress.device._session import Session
from edgecompress.device._transport import Channel
from edgecompress.errors import DeviceError

Status = Literal["ok", "warn", "fail"]

_GOVERNOR_HINT = (
    "set the performance governor before measuring: `echo performance | sudo tee "
    "/sys/devices/system/cpu/cpu*/cpufreq/scaling_governor` (or `sudo cpupower frequency-set -g "
    "performance`); on a Jetson `sudo nvpmodel -m 0 && sudo jetson_clocks`"
)


@dataclass(frozen=True)
class CheckItem:
    """One line of the check: what was looked at, how it went, and the fix when it did not."""

    name: str
    status: Status
    detail: str
    hint: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


class _Started:
    """A transport whose first ``open()`` hands out a channel that is already running; later ones re-open."""

    def __init__(self, transport: Any, channel: Channel):
        self.transport = transport
        self.name = transport.name
        self._channel: Channel | None = channel

    def open(self) -> Channel:
        channel, self._channel = self._channel, None
        return channel if channel is not None else self.transport.open()


def _version_tuple(text: str | None) -> tuple[int, ...]:
    parts = []
    for piece in (text or "").split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _ssh_steps(profile: DeviceProfile, transport: Any, items: list[CheckItem]) -> Session | None:
    from edgecompress.device._ssh import HostKeyError, fingerprint

    target = transport.target
    route = (
        f" via ProxyJump {target.proxy_jump}"
        if target.proxy_jump
        else (" via ProxyCommand" if target.proxy_command else "")
    )
    try:
        connection = transport.connect()
    except HostKeyError as exc:
        items.append(CheckItem("host key", "fail", str(exc)))
        return None
    except DeviceError as exc:
        items.append(
            CheckItem(
                "ssh",
                "fail",
                str(exc),
                "check the address, that sshd runs on the device, and "
                f"`ssh -p {target.port} {target.user}@{target.hostname}` from this machine",
            )
        )
        return None
    items.append(
        CheckItem(
            "ssh",
            "ok",
            f"{target.user}@{target.hostname}:{target.port}{route}, connected in {connection.connect_s * 1000:.0f} ms",
        )
    )
    remote = connection.client.get_transport()
    key = remote.get_remote_server_key() if remote else None
    items.append(
        CheckItem(
            "host key", "ok", f"{key.get_name()} {fingerprint(key)} matches {target.known_hosts}" if key else "verified"
        )
    )
    try:
        boot = transport.prepare(connection)
    except DeviceError as exc:
        connection.close()
        items.append(CheckItem("python", "fail", str(exc)))
        return None
    probe = boot.probe
    items.append(CheckItem("python", "ok", f"Python {probe.version_text} at {probe.executable}"))
    how = (
        f"installed now ({transport.package.size_bytes / 1024:.0f} KiB in {boot.upload_s * 1000:.0f} ms)"
        if boot.uploaded
        else "already installed"
    )
    items.append(CheckItem("agent", "ok", f"{how} in {probe.agent_dir}"))
    try:
        channel = transport.start(connection)  # installed by prepare(): starts on the first exec
    except DeviceError as exc:
        items.append(CheckItem("agent", "fail", str(exc)))
        return None
    return Session(_Started(transport, channel), retries=1, backoff_s=0.5)  # type: ignore[arg-type]


def _hello_steps(profile: DeviceProfile, hello: dict[str, Any], problems: list[str], items: list[CheckItem]) -> None:
    python = hello.get("python") or {}
    if profile.transport != "ssh":
        items.append(CheckItem("python", "ok", f"Python {python.get('version')} at {python.get('executable')}"))
    runtimes = {r["name"]: r for r in hello.get("runtimes") or []}
    wanted = profile.runtime.name
    for name, runtime in sorted(runtimes.items()):
        providers = ", ".join(runtime.get("providers") or [])
        items.append(CheckItem(f"runtime {name}", "ok", f"{runtime.get('version')} ({providers})"))
    if wanted not in runtimes:
        hint = next((p for p in problems if wanted in p or "TFLite" in p), "")
        items.append(
            CheckItem(
                f"runtime {wanted}",
                "fail",
                f"{wanted} (the profile's runtime) is not importable by {python.get('executable')}",
                hint.split(": ", 1)[-1] if hint else f"install {wanted} for that Python",
            )
        )
    elif profile.runtime.min_version and (
        _version_tuple(runtimes[wanted].get("version")) < _version_tuple(profile.runtime.min_version)
    ):
        items.append(
            CheckItem(
                f"runtime {wanted}",
                "fail",
                f"{runtimes[wanted].get('version')} is older than the "
                f"profile's min_version {profile.runtime.min_version}",
                f"`{python.get('executable')} -m pip install --user --upgrade {wanted}`",
            )
        )
    missing = [
        name
        for name in profile.runtime.providers
        if wanted in runtimes and name not in (runtimes[wanted].get("providers") or [])
    ]
    if missing:
        items.append(
            CheckItem(
                "providers",
                "fail",
                f"{', '.join(missing)} not available in {wanted}",
                "install the runtime build with those providers, or remove them from the profile",
            )
        )
    if hello.get("numpy"):
        items.append(CheckItem("numpy", "ok", str(hello["numpy"])))
    else:
        items.append(
            CheckItem(
                "numpy", "fail", "numpy is not importable", f"`{python.get('executable')} -m pip install --user numpy`"
            )
        )
    sources = hello.get("power_sources") or []
    if sources:
        detail = "; ".join(f"{s.get('name')} ({s['note']})" if s.get("note") else str(s.get("name")) for s in sources)
        items.append(CheckItem("power", "ok", detail))
    else:
        items.append(
            CheckItem(
                "power",
                "warn",
                "no power source found: energy budgets cannot be checked",
                "on a Raspberry Pi 4 or a bare board, add an external meter: [power] command = "
                '"..." in the profile; on a Jetson, check that the INA3221 hwmon/iio files are '
                "readable",
            )
        )
    zones = hello.get("thermal_zones") or {}
    if zones:
        items.append(CheckItem("thermal", "ok", ", ".join(f"{k} {v:.0f} °C" for k, v in zones.items())))
    else:
        items.append(
            CheckItem(
                "thermal",
                "warn",
                "no readable thermal zone: throttling cannot be detected",
                "check /sys/class/thermal/thermal_zone*/temp on the device",
            )
        )
    cpufreq = hello.get("cpufreq") or {}
    governors = sorted({str(c.get("governor")) for c in cpufreq.values()})
    if not cpufreq:
        items.append(
            CheckItem(
                "cpu governor",
                "warn",
                "cpufreq is not readable (a VM or a fixed-clock board?)",
                "nothing to do if the clock is fixed; otherwise check /sys/devices/system/cpu/cpu0/cpufreq",
            )
        )
    elif governors == ["performance"]:
        items.append(CheckItem("cpu governor", "ok", f"performance on {len(cpufreq)} CPUs"))
    else:
        items.append(
            CheckItem(
                "cpu governor", "warn", f"{', '.join(governors)}: latency will vary with the clock", _GOVERNOR_HINT
            )
        )


def check_device(profile: DeviceProfile, **options: Any) -> list[CheckItem]:
    """Check a device step by step; stops at the first step that makes the next ones meaningless."""
    where = f"{profile.transport}"
    if profile.ssh is not None:
        where += f" to {profile.ssh.host}"
    python = profile.python or ("python3" if profile.transport == "ssh" else "the host's own Python")
    items = [CheckItem("profile", "ok", f"{profile.name}: {where}, python {python}, runtime {profile.runtime.name}")]
    problems: list[str] = []
    if profile.transport == "ssh":
        transport = transport_for(profile, **options)
        transport.require_runtime = False  # type: ignore[attr-defined]  # report what is missing, do not stop
        session = _ssh_steps(profile, transport, items)
        if session is None:
            return items
        boot = transport.last_bootstrap  # type: ignore[attr-defined]
        problems = boot.problems if boot else []
    else:
        session = Session(transport_for(profile, **options), retries=1, backoff_s=0.5)
    try:
        hello = session.hello()
    except DeviceError as exc:
        items.append(CheckItem("agent", "fail", str(exc)))
        return items
    finally:
        session.close()
    _hello_steps(profile, hello, problems, items)
    return items
