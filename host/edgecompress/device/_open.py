"""From a device profile to an open Session."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgecompress.config import DeviceProfile
from edgecompress.device._session import MeasureRequest, Session
from edgecompress.device._transport import LocalTransport, Transport
from edgecompress.errors import ConfigError


def transport_for(profile: DeviceProfile, **options: Any) -> Transport:
    """The transport a profile names."""
    if profile.transport == "local":
        return LocalTransport(python=profile.python, cache_dir=options.get("cache_dir") or profile.cache_dir,
                              name=profile.name)
    raise ConfigError(f"device {profile.name}: transport {profile.transport!r} is not available yet")


def open_session(profile: DeviceProfile, on_event: Callable[[str], None] | None = None, **options: Any) -> Session:
    """Start (or reach) the agent for a profile and say hello; use as a context manager."""
    session = Session(transport_for(profile, **options), on_event=on_event)
    session.hello()
    return session


def measure_request(profile: DeviceProfile, **overrides: Any) -> MeasureRequest:
    """The profile's measurement defaults, with any non-None overrides."""
    fields: dict[str, Any] = {
        "runtime": profile.runtime.name, "threads": profile.runtime.threads,
        "providers": tuple(profile.runtime.providers), "affinity": tuple(profile.runtime.affinity),
        **profile.measure.model_dump(),
    }
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return MeasureRequest(**fields)
