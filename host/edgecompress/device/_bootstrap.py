"""Zero-install agent bootstrap over SSH: probe the device's Python, upload the agent once per version, start it.

The agent package is copied over SFTP into ``<cache>/agent/<hash>/`` (``<cache>`` defaults to
``~/.cache/edgecompress`` on the device) only when that version is missing, and run from there with PYTHONPATH
pointing at it. Nothing is installed system-wide and nothing needs root.
"""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import paramiko

from edgecompress.device._transport import agent_source_root
from edgecompress.errors import ConnectionLost, DeviceError

MIN_PYTHON = (3, 6)

# Runs under whatever Python the profile names, so it must parse on Python 2 too: that is how we can say
# "Python 2.7 is too old" instead of printing a SyntaxError. find_spec checks importability without paying for the
# import (onnxruntime takes a second to import on a Pi).
PROBE_SCRIPT = """\
import json, os, sys, time
cache = os.path.abspath(os.path.expanduser(sys.argv[1] or os.path.join("~", ".cache", "edgecompress")))
agent = os.path.join(cache, "agent", sys.argv[2])
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
run = os.path.join(cache, "run")
for name in (os.listdir(run) if os.path.isdir(run) else []):
    path = os.path.join(run, name)
    try:
        if os.path.getmtime(path) < time.time() - 86400:
            os.remove(path)  # pid files of agents from sessions that ended more than a day ago
    except OSError:
        pass
sys.stdout.write(json.dumps({
    "version": list(sys.version_info[:3]), "executable": sys.executable, "modules": modules,
    "cache_dir": cache, "agent_dir": agent,
    "agent_present": os.path.isfile(os.path.join(agent, "edgecompress_agent", "__main__.py")),
}))
"""


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


def run(client: paramiko.SSHClient, command: str, timeout_s: float) -> tuple[int, str, str]:
    """Run a short command on an exec channel: (exit code, stdout, stderr)."""
    try:
        _, stdout, stderr = client.exec_command(command, timeout=timeout_s)
        out = stdout.read().decode("utf-8", "replace")
        err = stderr.read().decode("utf-8", "replace")
        return stdout.channel.recv_exit_status(), out, err
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise ConnectionLost(f"lost the SSH connection while running {command.split()[0]}: {exc}") from exc


def probe(client: paramiko.SSHClient, python: str, cache_dir: str | None, digest: str, device: str,
          timeout_s: float = 60.0) -> Probe:
    """Ask the device's Python for its version, importable modules and where the agent cache is."""
    command = " ".join(shlex.quote(part) for part in (python, "-c", PROBE_SCRIPT, cache_dir or "", digest))
    code, out, err = run(client, command, timeout_s)
    last = (err.strip().splitlines() or [""])[-1]
    if code == 127 or "not found" in last or "No such file" in last:
        raise DeviceError(f"{python} was not found on {device}: install Python {'.'.join(map(str, MIN_PYTHON))}+ "
                          f"there, or set python = \"/path/to/python3\" in the profile ({last or 'exit code 127'})")
    if code != 0:
        raise DeviceError(f"{python} on {device} failed to run the probe (exit code {code}): {last}")
    try:
        data = json.loads(out)
        return Probe(version=tuple(int(v) for v in data["version"]), executable=str(data["executable"] or python),
                     modules={k: bool(v) for k, v in data["modules"].items()}, cache_dir=str(data["cache_dir"]),
                     agent_dir=str(data["agent_dir"]), agent_present=bool(data["agent_present"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise DeviceError(f"{python} on {device} answered the probe with something unexpected: {out[:200]!r}") from exc


def problems(found: Probe, runtime: str, device: str) -> list[str]:
    """Everything missing on the device for this runtime, each as one sentence with the fix."""
    exe = found.executable
    if found.version < MIN_PYTHON:
        return [f"{exe} on {device} is Python {found.version_text}; the agent needs "
                f"{'.'.join(map(str, MIN_PYTHON))} or newer: set python = \"/usr/bin/python3\" (or another) "
                "in the profile"]
    missing = []
    if not found.modules.get("numpy"):
        missing.append(f"numpy is not importable by {exe} on {device}: install it with "
                       f"`{exe} -m pip install --user numpy` (or `sudo apt install python3-numpy`)")
    if runtime == "onnxruntime" and not found.modules.get("onnxruntime"):
        missing.append(f"onnxruntime is not importable by {exe} on {device}: install it with "
                       f"`{exe} -m pip install --user onnxruntime` "
                       "(on a Jetson: the onnxruntime-gpu wheel for its JetPack)")
    if runtime == "tflite" and not (found.modules.get("tflite_runtime") or found.modules.get("ai_edge_litert")):
        missing.append(f"no TFLite runtime is importable by {exe} on {device}: install one with "
                       f"`{exe} -m pip install --user ai-edge-litert` (or tflite-runtime)")
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
        raise DeviceError(f"cannot write the agent to {agent_dir} on {device}: permission denied; set cache_dir "
                          "in the profile to a folder the SSH user can write") from exc
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise ConnectionLost(f"uploading the agent to {device} failed: {exc}") from exc
    finally:
        sftp.close()


def serve_command(python: str, found: Probe, token: str | None = None) -> str:
    """The exec-channel command line that runs the uploaded agent.

    With a ``token`` (one per host-side transport) the agent's pid is kept in ``<cache>/run/<token>.pid`` and the
    previous agent of the same token is stopped first: after a cut link the old agent would otherwise finish its
    measurement alongside the retried one and skew both.
    """
    agent = " ".join(shlex.quote(part) for part in (
        "exec", "env", f"PYTHONPATH={found.agent_dir}", python, "-m", "edgecompress_agent",
        "--cache-dir", found.cache_dir, "serve"))
    if not token:
        return agent
    run = shlex.quote(f"{found.cache_dir}/run")
    pidfile = shlex.quote(f"{found.cache_dir}/run/{token}.pid")
    # /proc/<pid>/cmdline is checked so that a recycled pid is never killed; $$ becomes the agent's pid at exec.
    # sh -c: the login shell may be fish or zsh, which do not all read this syntax.
    script = (f"mkdir -p {run} && if [ -f {pidfile} ]; then old=$(cat {pidfile}); "
              f"if grep -q edgecompress_agent /proc/$old/cmdline 2>/dev/null; then kill $old; fi; fi; "
              f"echo $$ > {pidfile} && {agent}")
    return f"exec sh -c {shlex.quote(script)}"


def bootstrap(client: paramiko.SSHClient, python: str, cache_dir: str | None, runtime: str, device: str,
              require_runtime: bool = True, package: AgentPackage | None = None, token: str | None = None,
              on_event: Callable[[str], None] | None = None) -> BootstrapResult:
    """Probe the device, upload the agent if this version is missing, and return the command that serves."""
    package = package or agent_package()
    t0 = time.perf_counter()
    found = probe(client, python, cache_dir, package.digest, device)
    probe_s = time.perf_counter() - t0
    issues = problems(found, runtime, device)
    if issues and (require_runtime or found.version < MIN_PYTHON):
        raise DeviceError(issues[0] + (f" (and {len(issues) - 1} more problem(s))" if len(issues) > 1 else ""))
    result = BootstrapResult(probe=found, command=serve_command(python, found, token), uploaded=False, probe_s=probe_s,
                             problems=issues)
    if not found.agent_present:
        if on_event:
            on_event(f"installing the agent ({len(package.files)} files, {package.size_bytes / 1024:.0f} KiB) "
                     f"into {found.agent_dir} on {device}")
        t0 = time.perf_counter()
        upload(client, package, found.agent_dir, device)
        result.upload_s = time.perf_counter() - t0
        result.uploaded = True
    return result


__all__ = ["AgentPackage", "BootstrapResult", "Probe", "agent_package", "bootstrap", "problems", "probe",
           "serve_command", "upload"]
