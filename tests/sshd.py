"""A real OpenSSH server on loopback for the SSH tests: throwaway host key, throwaway client key, temp config.

A test module defines its fixtures from ``serve_for_tests`` and ``trusted_device``. Where ``sshd`` is not installed
the tests skip with the reason, except under CI=true where they fail: CI installs openssh-server.
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"


def require_sshd() -> None:
    """Skip (locally) or fail (CI=true) when OpenSSH's server is not installed."""
    missing = [tool for tool in (SSHD, "/usr/bin/ssh-keygen") if not os.access(tool, os.X_OK)]
    if missing:
        reason = f"{', '.join(missing)} not installed (apt-get install openssh-server)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)


def keygen(path: Path, kind: str = "ed25519") -> Path:
    """A fresh unencrypted key pair at ``path`` / ``path.pub``."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "edgecompress-test", "-f", str(path)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields after the last ')' are fixed.
    return int(stat.rsplit(")", 1)[1].split()[1])


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cpu_ticks(pid: int) -> int:
    """User + system CPU time of a process, in clock ticks (to see that a measurement is running)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_until(condition, timeout_s: float = 30.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail the test with ``what`` when it does not in time."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class SshServer:
    """A running sshd and everything a client needs to reach it."""

    root: Path
    port: int
    process: subprocess.Popen[bytes]
    host_key: Path
    client_key: Path
    log: deque[str]
    address: str = "127.0.0.1"

    @property
    def host_key_name(self) -> str:
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    def known_hosts_line(self, key: Path | None = None) -> str:
        """A known_hosts line for this server's host key (or another public key, to fake a changed one)."""
        kind, b64 = (key or self.host_key).with_suffix(".pub").read_text().split()[:2]
        return f"{self.host_key_name} {kind} {b64}\n"

    def sessions_serving(self, agent_pid: int) -> list[int]:
        """The sshd processes between the listener and the agent: killing them cuts that SSH connection."""
        chain, pid = [], _ppid(agent_pid)
        while pid and pid != self.process.pid and pid > 1:
            if _comm(pid).startswith("sshd"):
                chain.append(pid)
            pid = _ppid(pid)
        return chain

    def cut_connection(self, agent_pid: int) -> list[int]:
        killed = self.sessions_serving(agent_pid)
        assert killed, f"no sshd process serves agent {agent_pid}; sshd log: {list(self.log)[-5:]}"
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        return killed

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_sshd(
    root: Path, address: str = "127.0.0.1", port: int | None = None, wrapper: tuple[str, ...] = ()
) -> SshServer:
    """Start ``sshd -D -e`` (on a free loopback port unless told otherwise) and wait for it to say it listens.

    ``wrapper`` prefixes the command, e.g. ``("ip", "netns", "exec", name)`` to run it in a network namespace.
    """
    require_sshd()
    root.mkdir(parents=True, exist_ok=True)
    host_key = keygen(root / "host_ed25519")
    client_key = keygen(root / "client_ed25519")
    authorized = root / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    if os.geteuid() == 0:
        # Privilege separation wants this folder; Debian creates it only when the service runs.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    last_error = ""
    for _ in range(5):  # the free port may be taken between free_port() and bind(): try another
        chosen = port or free_port()
        config = root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {chosen}",
                    f"ListenAddress {address}",
                    f"HostKey {host_key}",
                    f"PidFile {root / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized}",
                    "StrictModes no",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "PermitRootLogin prohibit-password",
                    "AllowTcpForwarding yes",
                    "Subsystem sftp internal-sftp",
                    "LogLevel VERBOSE",
                    "MaxStartups 50",
                    "",
                ]
            )
        )
        process = subprocess.Popen(
            [*wrapper, SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert process.stderr is not None
        log: deque[str] = deque(maxlen=200)
        listening = threading.Event()

        def drain(stream=process.stderr, log=log, listening=listening) -> None:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip()
                log.append(line)
                if "Server listening on" in line:
                    listening.set()
            listening.set()  # sshd exited: stop waiting

        threading.Thread(target=drain, daemon=True).start()
        listening.wait(timeout=30)
        if process.poll() is None and any("Server listening" in line for line in log):
            return SshServer(
                root=root,
                port=chosen,
                process=process,
                host_key=host_key,
                client_key=client_key,
                log=log,
                address=address,
            )
        process.kill()
        process.wait()
        last_error = " | ".join(list(log)[-3:])
    raise RuntimeError(f"sshd did not start: {last_error}")


def write_profile(server: SshServer, folder: Path, name: str = "loopback", **ssh: object) -> Path:
    """A device profile TOML for the loopback sshd, with its own known_hosts, ssh config and agent cache."""
    folder.mkdir(parents=True, exist_ok=True)
    known_hosts = folder / "known_hosts"
    known_hosts.touch()
    ssh_config = folder / "ssh_config"
    if not ssh_config.exists():
        ssh_config.write_text("Host *\n    IdentitiesOnly yes\n")
    fields = {
        "host": server.address,
        "port": server.port,
        "user": getpass.getuser(),
        "identity_file": str(server.client_key),
        "allow_agent": False,
        "config_file": str(ssh_config),
        "known_hosts": str(known_hosts),
        "connect_timeout_s": 10.0,
        **ssh,
    }
    lines = [
        f'name = "{name}"',
        'transport = "ssh"',
        f'python = "{sys.executable}"',
        f'cache_dir = "{folder / "device-cache"}"',
        "",
        "[ssh]",
    ]
    for key, value in fields.items():
        if value is None:
            continue
        lines.append(
            f"{key} = "
            + (
                "true"
                if value is True
                else "false"
                if value is False
                else repr(value)
                if isinstance(value, int | float)
                else f'"{value}"'
            )
        )
    lines += [
        "",
        "[runtime]",
        'name = "onnxruntime"',
        "threads = 1",
        "",
        "[measure]",
        "warmup_runs = 2",
        "warmup_seconds = 0.0",
        "runs = 20",
        "min_seconds = 0.0",
        "max_seconds = 10.0",
        "",
    ]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines))
    return path


def serve_for_tests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """Body of a module's ``sshd`` fixture: one sshd, stopped at the end."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def trusted_device(server: SshServer, folder: Path) -> Path:
    """A fresh profile (empty agent cache) whose known_hosts already trusts the loopback sshd."""
    path = write_profile(server, folder)
    (folder / "known_hosts").write_text(server.known_hosts_line())
    return path


def dense_onnx(path: Path, size_bytes: int = 64 * 1024, features: int = 64, seed: int = 0) -> Path:
    """A valid ONNX model of about ``size_bytes`` (x @ W, then a sum), to measure and to upload."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    columns = max(1, size_bytes // (4 * features))
    weight = np.random.default_rng(seed).standard_normal((features, columns), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("ReduceSum", ["h"], ["y"], keepdims=1)],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def bare_python(folder: Path) -> str:
    """A real interpreter with nothing installed (a venv without pip): a device that lacks numpy and every runtime,
    whatever this machine has installed."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    return str(folder / "bin" / "python")


def outage(server: SshServer) -> None:
    """The device goes away: every SSH session is killed and the listener stopped (connections are refused)."""
    for line in subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.splitlines():
        pid, ppid = (int(x) for x in line.split())
        if ppid == server.process.pid:
            os.kill(pid, signal.SIGKILL)
    server.stop()


def restart(server: SshServer) -> SshServer:
    """The device is back: sshd again on the same port, with the same host key and authorized key."""
    process = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(server.root / "sshd_config")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    for raw in iter(process.stderr.readline, b""):
        if b"Server listening on" in raw:
            break
    server.process = process
    threading.Thread(target=lambda: process.stderr.read() if process.stderr else None, daemon=True).start()
    return server
