"""Transports start the agent and hand back a byte channel to it; the protocol is the same on all of them."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Protocol

import edgecompress_agent
from edgecompress.errors import DeviceError


class Channel(Protocol):
    """An open link to a running agent."""

    reader: IO[bytes]
    writer: IO[bytes]

    def close(self) -> None: ...

    def abort(self) -> None:
        """Break the link now, from any thread, so a blocked read returns."""

    def diagnostics(self) -> str:
        """What the agent said last on stderr (for error messages)."""


class Transport(Protocol):
    """Something that can (re)start an agent: ``open()`` may be called again after a lost link."""

    name: str

    def open(self) -> Channel: ...


class StderrTail:
    """Drains a stream in a thread, keeping the last lines for error messages."""

    def __init__(self, stream: IO[bytes], lines: int = 40):
        self._lines: collections.deque[str] = collections.deque(maxlen=lines)
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        while True:
            try:
                raw = stream.readline()
            except TimeoutError:
                # An SSH channel's read begun under the probe's timeout still times out once after it was lifted.
                continue
            except (OSError, EOFError, ValueError):
                # The link or the pipe closed under the read: the request that notices says why, with these lines.
                return
            if not raw:
                return
            self._lines.append(raw.decode("utf-8", "replace").rstrip())

    def text(self) -> str:
        self._thread.join(timeout=0.5)
        return "\n".join(self._lines)


def agent_source_root() -> Path:
    """The folder that holds the ``edgecompress_agent`` package (put on the agent's PYTHONPATH)."""
    return Path(edgecompress_agent.__file__).resolve().parent.parent


def agent_args(cache_dir: str | None, sysfs_root: str | None = None) -> list[str]:
    args = ["-m", "edgecompress_agent"]
    if cache_dir:
        args += ["--cache-dir", cache_dir]
    if sysfs_root:
        args += ["--sysfs-root", sysfs_root]
    return args + ["serve"]


class _ProcessChannel:
    def __init__(self, process: subprocess.Popen[bytes]):
        self.process = process
        assert process.stdout is not None and process.stdin is not None and process.stderr is not None
        self.reader = process.stdout
        self.writer = process.stdin
        self._stderr = StderrTail(process.stderr)

    def abort(self) -> None:
        if self.process.poll() is None:
            self.process.kill()

    def close(self) -> None:
        for stream in (self.writer, self.reader):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def diagnostics(self) -> str:
        code = self.process.poll()
        status = "" if code is None else f"agent exited with code {code}"
        tail = self._stderr.text()
        return "; ".join(part for part in (status, tail.splitlines()[-1] if tail else "") if part)


class LocalTransport:
    """Runs the agent as a subprocess of the host: the embedded default device."""

    def __init__(
        self,
        python: str | None = None,
        cache_dir: str | None = None,
        name: str = "local",
        sysfs_root: str | None = None,
    ):
        self.python = python or sys.executable
        self.cache_dir = cache_dir
        self.name = name
        self.sysfs_root = sysfs_root  # a fixture tree standing in for /sys and /proc (tests, demos)

    def open(self) -> Channel:
        env = dict(os.environ)
        root = str(agent_source_root())
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            process = subprocess.Popen(
                [self.python, *agent_args(self.cache_dir, self.sysfs_root)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                # Ctrl-C goes to the host, which stops cleanly and then closes the agent itself.
                start_new_session=True,
            )
        except OSError as exc:
            raise DeviceError(f"cannot start the agent with {self.python}: {exc}") from exc
        return _ProcessChannel(process)
