"""What paramiko and the SSH transport's threads print: nothing on the console, whatever the port at the other end.

A port that speaks no SSH, a silent one, a frozen sshd, a link reset under a live session, a session longer than the
probe's timeout: each must end as one line from edgecompress (or not at all), never a traceback or paramiko's
"Socket exception" lines, which used to reach stderr through logging's last-resort handler and thread excepthooks.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd import SshServer, dense_onnx, serve_for_tests, start_sshd, trusted_device, write_profile
from tcpproxy import TcpProxy

from edgecompress.config import resolve_device
from edgecompress.device import measure_request, open_session

CONSOLE_NOISE = ("Traceback", "Socket exception", "Exception (client)", "Exception in thread")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    yield from serve_for_tests(tmp_path_factory)


class _Listener:
    """A TCP port that accepts and then says nothing, or sends something that is not an SSH banner."""

    def __init__(self, answer: bytes | None):
        self.answer = answer
        self.held: list[socket.socket] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.answer is None:
                self.held.append(conn)  # open and silent, as a port behind a firewall that swallows the banner
            else:
                conn.sendall(self.answer)
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def _cli_env(home: Path) -> dict[str, str]:
    """A HOME whose ssh config makes every attempt short (the CLI retries 3 times with backoff)."""
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    (home / ".ssh/config").write_text("Host *\n    ConnectTimeout 2\n    IdentitiesOnly yes\n")
    return dict(os.environ, HOME=str(home), XDG_CACHE_HOME=str(home / "cache"), COLUMNS="200")


def _bench(model: Path, port: int, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgecompress", "bench", str(model), "--device", f"pi@127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        env=_cli_env(home),
        timeout=180,
    )


def _assert_one_clean_line(run: subprocess.CompletedProcess[str], where: str) -> None:
    assert run.returncode == 3, run.stderr
    assert not [noise for noise in CONSOLE_NOISE if noise in run.stderr], run.stderr
    # One error line; before it only the session's notices of its bounded retries (bench prints them as they come).
    *notices, last = run.stderr.strip().splitlines()
    assert last.startswith("error:") and "gave up after 3 retries" in last, run.stderr
    assert [n.partition(": ")[0] for n in notices] == [f"connecting to {where} failed, retry {i}/3" for i in (1, 2, 3)]


@pytest.mark.parametrize(
    "answer",
    [None, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", os.urandom(512)],
    ids=["silent", "http", "random-bytes"],
)
def test_port_that_speaks_no_ssh_is_one_line(answer: bytes | None, tiny_onnx: Path, tmp_path: Path) -> None:
    listener = _Listener(answer)
    try:
        run = _bench(tiny_onnx, listener.port, tmp_path)
    finally:
        listener.close()
    _assert_one_clean_line(run, f"pi@127.0.0.1:{listener.port}")
    assert "no SSH handshake within 2 s" in run.stderr


def test_frozen_sshd_is_one_line(tiny_onnx: Path, tmp_path: Path) -> None:
    # SIGSTOP: the kernel still accepts connections into the listen backlog, but no banner ever comes.
    frozen = start_sshd(tmp_path / "frozen-sshd")
    os.kill(frozen.process.pid, signal.SIGSTOP)
    try:
        run = _bench(tiny_onnx, frozen.port, tmp_path / "home")
    finally:
        os.kill(frozen.process.pid, signal.SIGCONT)
        frozen.stop()
    _assert_one_clean_line(run, f"pi@127.0.0.1:{frozen.port}")


# Run in a process of its own: logging's last-resort handler writes to the real stderr only where no handler is
# configured, which pytest's log capture would hide in process.
_RESET_UNDER_A_SESSION = """
import sys
from sshd import wait_until
from edgecompress.config import resolve_device
from edgecompress.device import open_session

with open_session(resolve_device(sys.argv[1])) as session:
    session.backoff_s = 0.05
    old = session._channel.connection
    print("ready", flush=True)
    sys.stdin.readline()  # the parent resets the link
    wait_until(lambda: not old.active, what="paramiko's transport thread to notice the reset")
    session.request("has_model", {"sha256": "0" * 64})
    print("reconnects", session.reconnects, flush=True)
"""


def test_link_reset_under_a_session_prints_no_socket_exception(sshd: SshServer, tmp_path: Path) -> None:
    proxy = TcpProxy(("127.0.0.1", sshd.port))
    try:
        profile = write_profile(sshd, tmp_path, port=proxy.port)
        (tmp_path / "known_hosts").write_text(sshd.known_hosts_line().replace(f":{sshd.port} ", f":{proxy.port} "))
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_RESET_UNDER_A_SESSION), str(profile)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent)),
        )
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        proxy.cut()  # a TCP reset, as when a Wi-Fi access point drops the association
        out, err = child.communicate("go\n", timeout=120)
    finally:
        proxy.close()
    assert child.returncode == 0, err
    assert out.strip() == "reconnects 1"
    assert not [noise for noise in CONSOLE_NOISE if noise in err], err


def test_stderr_reader_outlives_the_probe_timeout(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's stderr is read on the exec channel that had the probe's timeout: it must not die of it."""
    crashed: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", crashed.append)
    profile = resolve_device(str(trusted_device(sshd, tmp_path)))
    with open_session(profile) as session:
        session.transport.probe_timeout_s = 1.5
        session._drop()
        session.hello()  # a fresh agent whose stderr reader started under the 1.5 s timeout
        channel = session._channel
        assert channel is not None
        sha = session.put_model(dense_onnx(tmp_path / "m.onnx").read_bytes())
        # Longer than the probe's timeout, measured on the device rather than slept here.
        result = session.measure(sha, measure_request(profile, runs=1, min_seconds=2.5))
        assert result.raw["window_ns"] >= 2.5e9
        assert channel._stderr._thread.is_alive(), [repr(c.exc_value) for c in crashed]
    assert not crashed, [f"{c.thread.name if c.thread else '?'}: {c.exc_value!r}" for c in crashed]
