"""A pool of devices of one kind: one connector (Session) per member, one lease per member at a time, and one policy
for members that fail (pyinfra's model: a bounded pool around per-host connectors, failed hosts dropped).

A tune run holds one pool. With one member it behaves as a bare Session did: a measurement that fails raises, and a
member that fails ``max_failures`` leases in a row is dropped; a pool with no member left is down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from edgecompress.device._session import Session
from edgecompress.errors import DeviceError

# While waiting for a device that went away: how often to knock. Each knock is a hello, which itself retries the
# link a few times with backoff (Session), so a knock every 5 s costs nothing the device would notice.
WAIT_POLL_S = 5.0


@dataclass
class Member:
    """One device of the pool, with its connector and what the pool knows about its health."""

    name: str
    session: Session
    consecutive_failures: int = 0
    leases: int = 0
    failures: int = 0
    last_error: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Lease:
    """The right to use one member for one piece of work (a measurement) until the lease is returned."""

    member: str
    session: Session


class PoolDown(DeviceError):
    """Every member of the pool was dropped after failing too many leases in a row."""


class DeviceUnavailable(DeviceError):
    """A member stopped answering and did not come back within the time it was given."""


class DevicePool:
    """Members of one kind; ``lease()`` hands out an idle member, and a DeviceError inside the lease counts against
    it. A member that failed ``max_failures`` leases in a row is dropped (closed); the pool is down when none is
    left."""

    def __init__(self, sessions: dict[str, Session], max_failures: int = 3):
        if not sessions:
            raise ValueError("a device pool needs at least one member")
        self.max_failures = max_failures
        self._members = {name: Member(name, session) for name, session in sessions.items()}
        self._idle = list(self._members)
        self.dropped: list[Member] = []
        self._available = threading.Condition()

    @property
    def members(self) -> tuple[Member, ...]:
        return tuple(self._members.values())

    @property
    def size(self) -> int:
        return len(self._members)

    @contextmanager
    def lease(self) -> Iterator[Lease]:
        """An idle member for the duration of the block (waits while every member is leased)."""
        with self._available:
            while not self._idle:
                if not self._members:
                    raise PoolDown("every device of the pool was dropped")
                self._available.wait()
            name = self._idle.pop(0)
            member = self._members[name]
            member.leases += 1
        try:
            yield Lease(name, member.session)
        except DeviceError as exc:
            self._returned(member, exc)
            raise
        except BaseException:
            self._returned(member, None)
            raise
        else:
            self._returned(member, None)

    def _returned(self, member: Member, error: DeviceError | None) -> None:
        with self._available:
            if error is None:
                member.consecutive_failures = 0
            else:
                member.consecutive_failures += 1
                member.failures += 1
                member.last_error = str(error)
            if member.consecutive_failures >= self.max_failures:
                del self._members[member.name]
                self.dropped.append(member)
                member.session.close()
            else:
                self._idle.append(member.name)
            self._available.notify_all()

    @property
    def is_down(self) -> bool:
        """No member is left: every one failed ``max_failures`` leases in a row."""
        return not self._members

    def wait_for(
        self, name: str, timeout_s: float, on_event: Callable[[str], None], poll_s: float = WAIT_POLL_S
    ) -> float | None:
        """After a failed lease: None when the member answers at once (the failure was the work's, not the
        device's); else wait up to ``timeout_s`` for it to answer again and return how long it was away.
        DeviceUnavailable when it does not come back in time, PoolDown when it was dropped."""
        member = self._members.get(name)
        if member is None:
            raise PoolDown(f"device {name} was dropped from the pool")
        started = time.monotonic()
        try:
            member.session.hello()
            return None
        except DeviceError as exc:
            last: DeviceError = exc
        on_event(
            f"device {name} does not answer; waiting up to {timeout_s:.0f} s for it to come back "
            f"(--device-wait): {last}"
        )
        while (left := timeout_s - (time.monotonic() - started)) > 0:
            time.sleep(min(poll_s, left))
            try:
                member.session.hello()
            except DeviceError as exc:
                last = exc
                continue
            away = time.monotonic() - started
            on_event(f"device {name} is back after {away:.0f} s")
            return away
        raise DeviceUnavailable(f"device {name} did not come back within {timeout_s:.0f} s; last: {last}")

    def close(self) -> None:
        with self._available:
            for member in self._members.values():
                member.session.close()
