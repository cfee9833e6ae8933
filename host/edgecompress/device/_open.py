"""From a device profile to an open Session."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgecompress.config import DeviceProfile
from edgecompress.device._session import MeasureRequest, Session
from edgecompress.device._transport import LocalTransport, Transport
from edgecompress.errors import ConfigError


def transport_for(profile: DeviceProfile, **options: Any) -> Transport:
    """The transport a profile names; SSH options: accept_new_host, known_hosts, ssh_config, cache_dir, on_event."""
    if profile.transport == "local":
        return LocalTransport(
            python=profile.python,
            cache_dir=options.get("cache_dir") or profile.cache_dir,
            name=profile.name,
            sysfs_root=profile.sysfs_root,
        )
    if profile.transport == "ssh":
        from edgecompress.device._ssh import SshTransport  # paramiko is only imported for SSH devices

        return SshTransport(
            profile,
            accept_new_host=options.get("accept_new_host"),
            known_hosts=options.get("known_hosts"),
            ssh_config=options.get("ssh_config"),
            cache_dir=options.get("cache_dir"),
            on_event=options.get("on_event"),
        )
    raise ConfigError(f"device {profile.name}: transport {profile.transport!r} is not available yet")


def open_session(profile: DeviceProfile, on_event: Callable[[str], None] | None = None, **options: Any) -> Session:
    """Start (or reach) the agent for a profile and say hello; use as a context manager."""
    session = Session(transport_for(profile, on_event=on_event, **options), on_event=on_event)
    session.hello()
    return session


def measure_request(profile: DeviceProfile, **overrides: Any) -> MeasureRequest:
    """The profile's measurement defaults (timing, power, thermal), with any non-None overrides."""
    fields: dict[str, Any] = {
        "runtime": profile.runtime.name,
        "threads": profile.runtime.threads,
        "providers": tuple(profile.runtime.providers),
        "affinity": tuple(profile.runtime.affinity),
        **profile.measure.model_dump(),
    }
    power, heat = profile.power, profile.thermal
    extra: dict[str, Any] = {
        "power_source": power.source,
        "power_command": power.command,
        "power_interval_s": power.interval_s,
        "idle_seconds": power.idle_seconds,
        "start_temp_c": heat.start_temp_c,
        "max_wait_s": heat.max_wait_s,
        "repeat_if_throttled": heat.repeat_if_throttled,
    }
    extra = {k: v for k, v in extra.items() if v is not None}
    extra.update(overrides.pop("extra", None) or {})
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return MeasureRequest(**fields, extra=extra)
