"""Zero-install agent bootstrap over SSH: probe the device's Python, upload the agent once per version, start it.

The agent package is copied over SFTP into ``<cache>/agent/<hash>/`` (``<cache>`` defaults to
``~/.cache/edgecompress`` on the device) only when that version is missing, and run from there. Nothing is
installed system-wide and nothing needs root.

One exec channel does both jobs when the agent is already there: a small stub prints what it found about the
device's Python (one marked line), then, if everything is in place, becomes the agent in the same process. Only a
missing agent costs a second exec, after the upload.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shlex
import stat
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO

import paramiko

from edgecompress.device._transport import StderrTail, agent_source_root
from edgecompress.errors import ConnectionLost, DeviceError

MIN_PYTHON = (3, 6)
PROBE_MARK = b"EDGECOMPRESS-PROBE "
# The stub's argv[1]: lets the start script recognise a stale agent in /proc/<pid>/cmdline.
_MARKER = "edgecompress_agent"

# Runs under whatever Python the profile names, so it must parse on Python 2 too: that is how we can say
# "Python 2.7 is too old" instead of printing a SyntaxError. find_spec checks importability without paying for the
# import (onnxruntime takes a second to import on a Pi). argv: marker, cache, agent hash, mode, required modules
# (each "a|b" for alternatives).
STUB = """\
import json, os, sys, time
cache = os.path.abspath(os.path.expanduser(sys.argv[2] or os.path.join("~", ".cache", "edgecompress")))
agent = os.path.join(cache, "agent", sys.argv[3])
mode, required = sys.argv[4], sys.argv[5:]
try:
    from importlib.util import find_spec
except ImportError:
    find_spec = None
modules = {}
for name in ("numpy", "onnxruntime", "tflite_runtime", "ai_edge_litert"):
    try:
        modules[name] = bool(find_spec and find_spec(name))
    except Exception:
        modules[name] = False
present = os.path.isfile(os.path.join(agent, "edgecompress_agent", "__main__.py"))
serving = (mode == "serve" and present and sys.version_info >= (3, 6)
           and all(any(modules.get(m) for m in need.split("|")) for need in required))
run = os.path.join(cache, "run")
for name in (os.listdir(run) if os.path.isdir(run) else []):
    try:
        if os.path.getmtime(os.path.join(run, name)) < time.time() - 86400:
            os.remove(os.path.join(run, name))
    except OSError:
        pass
sys.stdout.write("EDGECOMPRESS-PROBE " + json.dumps({
    "version": list(sys.version_info[:3]), "executable": sys.executable, "modules": modules,
    "cache_dir": cache, "agent_dir": agent, "agent_present": present, "serving": serving}) + "\\n")
sys.stdout.flush()
if serving:
    sys.path.insert(0, agent)
    os.environ["PYTHONPATH"] = agent
    sys.argv = ["edgecompress_agent", "--cache-dir", cache, "serve"]
    import runpy
    runpy.run_module("edgecompress_agent", run_name="__main__", alter_sys=True)
"""
# As base64 in one line: no newline or quote reaches the login shell, whatever it is (bash, fish, csh).
_STUB_ARG = f"import base64; exec(base64.b64decode('{base64.b64encode(STUB.encode()).decode()}'))"


@dataclass(frozen=True)
class AgentPackage:
    """The agent's source files as they will be laid out on the device, and the hash that names that version."""

    files: tuple[tuple[str, bytes], ...]
    digest: str

    @property
    def size_bytes(self) -> int:
        return sum(len(data) for _, data in self.files)


def agent_package() -> AgentPackage:
    """The installed ``edgecompress_agent`` package (sources only), hashed over paths and contents."""
    root = agent_source_root()
    package = root / "edgecompress_agent"
    files = []
    for path in sorted(package.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        files.append((path.relative_to(root).as_posix(), path.read_bytes()))
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return AgentPackage(files=tuple(files), digest=digest.hexdigest()[:16])


@dataclass(frozen=True)
class Probe:
    """What the device's Python reported about itself and the agent cache."""

    version: tuple[int, ...]
    executable: str
    modules: dict[str, bool]
    cache_dir: str
    agent_dir: str
    agent_present: bool
    serving: bool = False

    @property
    def version_text(self) -> str:
        return ".".join(str(v) for v in self.version)


@dataclass
class BootstrapResult:
    """How the agent was made ready on one connection (timings feed the overhead benchmark)."""

    probe: Probe
    command: str
    uploaded: bool
    probe_s: float
    upload_s: float = 0.0
    problems: list[str] = field(default_factory=list)


def _cache_word(cache_dir: str | None) -> str:
    """The cache folder as a shell word, with ~ left for the device's shell to expand."""
    if not cache_dir:
        return '"$HOME"/.cache/edgecompress'
    if cache_dir == "~" or cache_dir.startswith("~/"):
        return '"$HOME"' + (("/" + shlex.quote(cache_dir[2:])) if cache_dir[2:] else "")
    return shlex.quote(cache_dir)


def required_modules(runtime: str) -> list[str]:
    """What the agent needs importable for a runtime ("a|b": either)."""
    return ["numpy", "onnxruntime" if runtime == "onnxruntime" else "tflite_runtime|ai_edge_litert"]


def agent_command(
    python: str,
    cache_dir: str | None,
    digest: str,
    mode: str = "serve",
    required: Sequence[str] = (),
    token: str | None = None,
) -> str:
    """The exec-channel command: the stub in ``mode`` "probe" (report and exit) or "serve" (report, then serve).

    With a ``token`` (one per host-side transport) the stub's pid, which stays the agent's, is kept in
    ``<cache>/run/<token>.pid`` and the previous agent of the same token is stopped first: after a cut link the old
    agent would otherwise finish its measurement alongside the retried one and skew both.
    """
    cache = _cache_word(cache_dir)
    stub = " ".join(
        [
            shlex.quote(python),
            "-c",
            shlex.quote(_STUB_ARG),
            _MARKER,
            cache,
            shlex.quote(digest),
            mode,
            *(shlex.quote(r) for r in required),
        ]
    )
    script = f"exec {stub}"
    if token:
        pidfile = f"{cache}/run/{token}.pid"
        # /proc/<pid>/cmdline is checked so that a recycled pid is never killed.
        script = (
            f"mkdir -p {cache}/run && if [ -f {pidfile} ]; then old=$(cat {pidfile}); "
            f"if grep -q {_MARKER} /proc/$old/cmdline 2>/dev/null; then kill $old; fi; fi; "
            f"echo $$ > {pidfile} && {script}"
        )
    # sh -c: the login shell may be fish or csh, which read other syntax.
    return f"exec sh -c {shlex.quote(script)}"


def _failed(code: int | None, stderr: str, python: str, device: str) -> DeviceError:
    last = (stderr.strip().splitlines() or [""])[-1]
    if code == 127 or "not found" in last or "No such file" in last:
        return DeviceError(
            f"{python} was not found on {device}: install Python {'.'.join(map(str, MIN_PYTHON))}+ "
            f'there, or set python = "/path/to/python3" in the profile ({last or "exit code 127"})'
        )
    return DeviceError(f"{python} on {device} failed to start the agent (exit code {code}): {last}")


def _parse(line: bytes, python: str, device: str) -> Probe:
    try:
        data = json.loads(line[len(PROBE_MARK) :].decode("utf-8"))
        return Probe(
            version=tuple(int(v) for v in data["version"]),
            executable=str(data["executable"] or python),
            modules={k: bool(v) for k, v in data["modules"].items()},
            cache_dir=str(data["cache_dir"]),
            agent_dir=str(data["agent_dir"]),
            agent_present=bool(data["agent_present"]),
            serving=bool(data["serving"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise DeviceError(f"{python} on {device} answered the probe with something unexpected: {line[:200]!r}") from exc


@dataclass
class Started:
    """An exec channel running the stub, after its probe line: the agent itself when ``probe.serving``."""

    channel: paramiko.Channel
    reader: IO[bytes]
    stderr: StderrTail
    probe: Probe
    probe_s: float


def start_stub(client: paramiko.SSHClient, command: str, python: str, device: str, timeout_s: float) -> Started:
    """Run the stub and read its probe line (skipping anything a login script printed before it)."""
    t0 = time.perf_counter()
    try:
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            raise ConnectionLost(f"the SSH connection to {device} is closed")
        channel = transport.open_session(timeout=timeout_s)
        channel.settimeout(timeout_s)
        channel.exec_command(command)
        reader = channel.makefile("rb")
        stderr = StderrTail(channel.makefile_stderr("rb"))
        line = b""
        for _ in range(1000):
            line = reader.readline()
            if not line or line.startswith(PROBE_MARK):
                break
        if not line.startswith(PROBE_MARK):
            channel.status_event.wait(5)
            code = channel.exit_status if channel.exit_status_ready() else None
            channel.close()
            raise _failed(code, stderr.text(), python, device)
        channel.settimeout(None)  # from here on the Session's watchdog times requests
    except TimeoutError as exc:
        raise ConnectionLost(f"{device} did not answer the agent's probe within {timeout_s:.0f} s") from exc
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise ConnectionLost(f"lost the SSH connection to {device} while starting the agent: {exc}") from exc
    return Started(channel, reader, stderr, _parse(line.rstrip(b"\n"), python, device), time.perf_counter() - t0)


def probe(
    client: paramiko.SSHClient, python: str, cache_dir: str | None, digest: str, device: str, timeout_s: float = 60.0
) -> Probe:
    """Ask the device's Python for its version, importable modules and where the agent cache is."""
    started = start_stub(client, agent_command(python, cache_dir, digest, "probe"), python, device, timeout_s)
    started.channel.close()
    return started.probe


def problems(found: Probe, runtime: str, device: str) -> list[str]:
    """Everything missing on the device for this runtime, each as one sentence with the fix."""
    exe = found.executable
    if found.version < MIN_PYTHON:
        return [
            f"{exe} on {device} is Python {found.version_text}; the agent needs "
            f'{".".join(map(str, MIN_PYTHON))} or newer: set python = "/usr/bin/python3" (or another) '
            "in the profile"
        ]
    missing = []
    if not found.modules.get("numpy"):
        missing.append(
            f"numpy is not importable by {exe} on {device}: install it with "
            f"`{exe} -m pip install --user numpy` (or `sudo apt install python3-numpy`)"
        )
    if runtime == "onnxruntime" and not found.modules.get("onnxruntime"):
        missing.append(
            f"onnxruntime is not importable by {exe} on {device}: install it with "
            f"`{exe} -m pip install --user onnxruntime` "
            "(on a Jetson: the onnxruntime-gpu wheel for its JetPack)"
        )
    if runtime == "tflite" and not (found.modules.get("tflite_runtime") or found.modules.get("ai_edge_litert")):
        missing.append(
            f"no TFLite runtime is importable by {exe} on {device}: install one with "
            f"`{exe} -m pip install --user ai-edge-litert` (or tflite-runtime)"
        )
    return missing


def _makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    current = ""
    for part in path.strip("/").split("/"):
        current += "/" + part
        try:
            if not stat.S_ISDIR(sftp.stat(current).st_mode or 0):
                raise DeviceError(f"{current} on the device is not a directory")
        except FileNotFoundError:
            sftp.mkdir(current, 0o700)


def _remove_tree(sftp: paramiko.SFTPClient, path: str) -> None:
    for entry in sftp.listdir_attr(path):
        child = f"{path}/{entry.filename}"
        if stat.S_ISDIR(entry.st_mode or 0):
            _remove_tree(sftp, child)
        else:
            sftp.remove(child)
    sftp.rmdir(path)


def upload(client: paramiko.SSHClient, package: AgentPackage, agent_dir: str, device: str) -> None:
    """Copy the agent into ``agent_dir`` atomically: write a temporary sibling, then rename it into place."""
    partial = f"{agent_dir}.partial-{uuid.uuid4().hex[:8]}"
    try:
        sftp = client.open_sftp()
        sftp.get_channel().settimeout(120)  # a link that dies mid-upload must not hang the host
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise ConnectionLost(f"cannot open SFTP on {device} to upload the agent: {exc}") from exc
    try:
        _makedirs(sftp, agent_dir.rsplit("/", 1)[0])
        # Every SFTP call is a round trip (10 ms on Wi-Fi): make each folder once, and no stat after each file
        # (the rename below only happens when every write succeeded).
        sftp.mkdir(partial, 0o700)
        made = {partial}
        for name, data in package.files:
            parts = name.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                folder = "/".join([partial, *parts[:depth]])
                if folder not in made:
                    sftp.mkdir(folder, 0o700)
                    made.add(folder)
            sftp.putfo(io.BytesIO(data), f"{partial}/{name}", confirm=False)
        try:
            # A rename is atomic: a host that races us either finds the whole agent or none of it.
            sftp.posix_rename(partial, agent_dir)
        except OSError:
            try:
                sftp.stat(f"{agent_dir}/edgecompress_agent/__main__.py")
            except FileNotFoundError:
                raise
            _remove_tree(sftp, partial)  # another host installed the same version first
    except PermissionError as exc:
        raise DeviceError(
            f"cannot write the agent to {agent_dir} on {device}: permission denied; set cache_dir "
            "in the profile to a folder the SSH user can write"
        ) from exc
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise ConnectionLost(f"uploading the agent to {device} failed: {exc}") from exc
    finally:
        sftp.close()


def _raise_problems(issues: list[str]) -> None:
    if issues:
        raise DeviceError(issues[0] + (f" (and {len(issues) - 1} more problem(s))" if len(issues) > 1 else ""))


def _install(
    client: paramiko.SSHClient, package: AgentPackage, found: Probe, device: str, on_event: Callable[[str], None] | None
) -> float:
    if on_event:
        on_event(
            f"installing the agent ({len(package.files)} files, {package.size_bytes / 1024:.0f} KiB) "
            f"into {found.agent_dir} on {device}"
        )
    t0 = time.perf_counter()
    upload(client, package, found.agent_dir, device)
    return time.perf_counter() - t0


def bootstrap(
    client: paramiko.SSHClient,
    python: str,
    cache_dir: str | None,
    runtime: str,
    device: str,
    require_runtime: bool = True,
    package: AgentPackage | None = None,
    on_event: Callable[[str], None] | None = None,
    timeout_s: float = 60.0,
) -> BootstrapResult:
    """Probe the device and upload the agent if this version is missing, without starting it (for checks)."""
    package = package or agent_package()
    t0 = time.perf_counter()
    found = probe(client, python, cache_dir, package.digest, device, timeout_s)
    result = BootstrapResult(
        probe=found,
        command="",
        uploaded=False,
        probe_s=time.perf_counter() - t0,
        problems=problems(found, runtime, device),
    )
    if require_runtime or found.version < MIN_PYTHON:
        _raise_problems(result.problems)
    if not found.agent_present:
        result.upload_s = _install(client, package, found, device, on_event)
        result.uploaded = True
    return result


def start_agent(
    client: paramiko.SSHClient,
    python: str,
    cache_dir: str | None,
    runtime: str,
    device: str,
    require_runtime: bool = True,
    package: AgentPackage | None = None,
    token: str | None = None,
    on_event: Callable[[str], None] | None = None,
    timeout_s: float = 60.0,
) -> tuple[Started, BootstrapResult]:
    """Start the agent on a new exec channel, installing it first if this version is missing."""
    package = package or agent_package()
    required = required_modules(runtime) if require_runtime else []
    command = agent_command(python, cache_dir, package.digest, "serve", required, token)
    started = start_stub(client, command, python, device, timeout_s)
    result = BootstrapResult(
        probe=started.probe,
        command=command,
        uploaded=False,
        probe_s=started.probe_s,
        problems=problems(started.probe, runtime, device),
    )
    if started.probe.serving:
        return started, result
    started.channel.close()
    if require_runtime or started.probe.version < MIN_PYTHON:
        _raise_problems(result.problems)
    if not started.probe.agent_present:
        result.upload_s = _install(client, package, started.probe, device, on_event)
        result.uploaded = True
    started = start_stub(client, command, python, device, timeout_s)
    if not started.probe.serving:
        started.channel.close()
        raise DeviceError(f"the agent did not start on {device} although it is installed in {started.probe.agent_dir}")
    return started, result


__all__ = [
    "AgentPackage",
    "BootstrapResult",
    "Probe",
    "Started",
    "agent_command",
    "agent_package",
    "bootstrap",
    "problems",
    "probe",
    "start_agent",
    "upload",
]
