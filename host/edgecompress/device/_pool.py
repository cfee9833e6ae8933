"""A pool of devices of one kind: one connector (Session) per member, one lease per member at a time, and one policy
for members that fail (pyinfra's model: a bounded pool around per-host connectors, failed hosts dropped).

Three ways a member leaves the rotation:

- it stops answering (the device rebooted, the link went down): it is *away*; the lease it held is lost (the work
  moves to another member), a knocker says hello every WAIT_POLL_S and the member rejoins when it answers;
- it keeps failing work while it answers: after ``max_failures`` leases in a row it is *dropped* (closed for good);
- it was *left out* before any work (its measurement of the original disagreed with the other members').

A pool with no member left is down; a lease waits while every member is busy, and while every member is away it
waits at most ``wait_s`` (``--device-wait``) before the device is called unavailable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from edgecompress.device._session import Session
from edgecompress.errors import AgentError, DeviceError

# While a member is away: how often to knock. Each knock is a hello, which itself retries the link a few times with
# backoff (Session), so a knock every 5 s costs nothing the device would notice.
WAIT_POLL_S = 5.0


@dataclass
class Member:
    """One device of the pool, with its connector and what the pool knows about its health and its work."""

    name: str
    session: Session
    consecutive_failures: int = 0
    leases: int = 0
    failures: int = 0
    lost: int = 0  # leases cut short because the device stopped answering
    busy_s: float = 0.0
    away_since: float | None = None
    affinity: tuple[int, ...] = ()  # the cores its agent is pinned to (local agents sharing the host's cores)
    last_error: str | None = field(default=None, repr=False)

    def to_json(self, wall_s: float) -> dict[str, Any]:
        return {
            "leases": self.leases,
            "failures": self.failures,
            "leases_lost": self.lost,
            "busy_s": round(self.busy_s, 3),
            "busy_fraction": round(self.busy_s / wall_s, 4) if wall_s > 0 else None,
            "away": self.away_since is not None,
        }


@dataclass(frozen=True)
class Lease:
    """The right to use one member for one piece of work (a measurement) until the lease is returned."""

    member: str
    session: Session
    affinity: tuple[int, ...] = ()


class PoolDown(DeviceError):
    """Every member of the pool was dropped after failing too many leases in a row."""


class DeviceUnavailable(DeviceError):
    """No member answered within the time the pool was given to wait for one."""


class LinkLost(DeviceError):
    """The link to the member broke during a lease and the member answers again: not proof against the work (the
    device may have rebooted), not proof for it (the work may have crashed the agent)."""

    def __init__(self, member: str, cause: DeviceError):
        super().__init__(f"the link to device {member} broke: {cause}")
        self.member = member
        self.cause = cause


class MemberAway(DeviceError):
    """The member stopped answering during a lease: the work was not its fault and may run on another member."""

    def __init__(self, member: str, cause: DeviceError):
        super().__init__(f"device {member} does not answer: {cause}")
        self.member = member


class DevicePool:
    """Members of one kind; ``lease()`` hands out an idle member. A DeviceError inside the lease is the work's when
    the agent answered with an error (it counts towards dropping the member); a broken link is LinkLost when the
    member answers again (it counts too: a member whose links keep breaking is dropped) and MemberAway when it does
    not (the member is away until a knock answers)."""

    def __init__(
        self,
        sessions: dict[str, Session],
        max_failures: int = 3,
        on_event: Callable[[str], None] | None = None,
        wait_s: float | None = None,
        poll_s: float = WAIT_POLL_S,
        affinity: dict[str, tuple[int, ...]] | None = None,
    ):
        if not sessions:
            raise ValueError("a device pool needs at least one member")
        self.max_failures = max_failures
        self.on_event = on_event or (lambda message: None)
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.started = time.monotonic()
        pins = affinity or {}
        self._members = {name: Member(name, session, affinity=pins.get(name, ())) for name, session in sessions.items()}
        self._idle = list(self._members)
        self.dropped: list[Member] = []
        self.left_out: dict[str, str] = {}
        self._available = threading.Condition()
        self._closed = threading.Event()

    @property
    def members(self) -> tuple[Member, ...]:
        return tuple(self._members.values())

    @property
    def size(self) -> int:
        """Members that can take work now or after a knock (neither dropped nor left out)."""
        return len(self._members)

    @property
    def is_down(self) -> bool:
        """No member is left: every one failed ``max_failures`` leases in a row."""
        return not self._members

    @contextmanager
    def lease(self, member: str | None = None, wait_s: float | None = None) -> Iterator[Lease]:
        """An idle member (``member``: that one) for the duration of the block. Waits while every member is busy;
        while every member is away, waits at most ``wait_s`` (default: the pool's; None: as long as it takes)."""
        chosen = self._take(member, self.wait_s if wait_s is None else wait_s)
        started = time.monotonic()
        try:
            yield Lease(chosen.name, chosen.session, chosen.affinity)
        except DeviceError as exc:
            if isinstance(exc, (AgentError, MemberAway, LinkLost)):
                # The agent answered with an error: the work's failure (a model it cannot load...).
                self._returned(chosen, started, exc)
                raise
            if self._answers(chosen):
                # The link broke but the device answers again: the device rebooted or the link dropped, or the
                # work crashed the agent; the caller may run it once more, preferably on another member.
                self._returned(chosen, started, exc)
                raise LinkLost(chosen.name, exc) from exc
            self._away(chosen, started, exc)
            raise MemberAway(chosen.name, exc) from exc
        except BaseException:
            self._returned(chosen, started, None)
            raise
        else:
            self._returned(chosen, started, None)

    def _take(self, wanted: str | None, wait_s: float | None) -> Member:
        waited_from = time.monotonic()
        with self._available:
            while True:
                if self._closed.is_set():
                    raise PoolDown("the device pool was closed")
                if not self._members:
                    raise PoolDown("every device of the pool was dropped")
                if wanted is not None and wanted not in self._members:
                    raise PoolDown(f"device {wanted} is no longer in the pool")
                idle = [name for name in self._idle if wanted in (None, name)]
                if idle:
                    self._idle.remove(idle[0])
                    chosen = self._members[idle[0]]
                    chosen.leases += 1
                    return chosen
                timeout = None
                if wait_s is not None and all(m.away_since is not None for m in self._members.values()):
                    timeout = wait_s - (time.monotonic() - waited_from)
                    if timeout <= 0:
                        last = "; ".join(f"{m.name}: {m.last_error}" for m in self._members.values())
                        raise DeviceUnavailable(
                            f"no device of the pool came back within {wait_s:.0f} s (--device-wait); last: {last}"
                        )
                self._available.wait(timeout)

    def _answers(self, member: Member) -> bool:
        """After a failed lease: does the member still answer (the failure was the work's)?"""
        try:
            member.session.hello()
        except DeviceError as exc:
            member.last_error = str(exc)
            return False
        return True

    def _returned(self, member: Member, started: float, error: DeviceError | None) -> None:
        with self._available:
            member.busy_s += time.monotonic() - started
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

    def _away(self, member: Member, started: float, error: DeviceError) -> None:
        with self._available:
            member.busy_s += time.monotonic() - started
            member.lost += 1
            member.away_since = time.monotonic()
            member.last_error = str(error)
            others = [m.name for m in self._members.values() if m.away_since is None]
            self._available.notify_all()
        wait = f"up to {self.wait_s:.0f} s " if self.wait_s is not None else ""
        where = f"waiting {wait}for it to come back (--device-wait)"
        if others:
            where = f"its work moves to {', '.join(others)}; it rejoins when it answers"
        self.on_event(f"device {member.name} does not answer ({error}); {where}")
        threading.Thread(target=self._knock, args=(member,), name=f"knock-{member.name}", daemon=True).start()

    def _knock(self, member: Member) -> None:
        """Say hello to an away member every poll_s until it answers (it rejoins) or the pool closes."""
        while not self._closed.wait(self.poll_s):
            if member.name not in self._members:
                return
            if not self._answers(member):
                continue
            with self._available:
                away_s = time.monotonic() - (member.away_since or time.monotonic())
                member.away_since = None
                member.consecutive_failures = 0
                self._idle.append(member.name)
                self._available.notify_all()
            self.on_event(f"device {member.name} is back after {away_s:.0f} s")
            return

    def leave_out(self, name: str, reason: str) -> None:
        """Take an idle member out of the pool before any work (it is closed); ``reason`` is kept for the report."""
        with self._available:
            member = self._members.pop(name)
            self._idle.remove(name)
            self.left_out[name] = reason
        member.session.close()

    def stats(self) -> dict[str, Any]:
        """Per member (left-out and dropped ones too): leases, failures, leases lost and time busy."""
        wall_s = time.monotonic() - self.started
        with self._available:
            members = {m.name: m.to_json(wall_s) for m in (*self._members.values(), *self.dropped)}
            for member in self.dropped:
                members[member.name]["dropped"] = True
            for name, reason in self.left_out.items():
                members[name] = {"left_out": reason}
        return {"wall_s": round(wall_s, 3), "members": members}

    def close(self) -> None:
        self._closed.set()
        with self._available:
            for member in self._members.values():
                member.session.close()
            self._available.notify_all()
