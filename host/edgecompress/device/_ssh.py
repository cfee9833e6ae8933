"""The SSH transport: paramiko, ~/.ssh/config, strict host keys, and the agent on an exec channel.

Every ``open()`` makes a fresh SSH connection, bootstraps the agent if needed and starts it; ``abort()`` tears the
whole connection down. A reconnect therefore never reuses a connection that may be silently dead.
"""

from __future__ import annotations

import base64
import dataclasses
import getpass
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko

from edgecompress.config import DeviceProfile, SshSettings
from edgecompress.device._bootstrap import AgentPackage, BootstrapResult, Started, agent_package, bootstrap, start_agent
from edgecompress.device._transport import Channel
from edgecompress.errors import ConfigError, ConnectionLost, DeviceError

DEFAULT_CONFIG = "~/.ssh/config"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
# paramiko's failures of a handshake: the port answered with no SSH banner, garbage, or nothing in time.
_NO_SSH = ("Error reading SSH protocol banner", "Indecipherable protocol version", "No existing session")

log = logging.getLogger("edgecompress.device.ssh")


class _PassToOurLog(logging.Handler):
    """Re-logs paramiko's records under edgecompress.device.ssh at INFO at most.

    paramiko logs a failed handshake's traceback and "Socket exception" lines from its transport thread at ERROR;
    with no handler configured, logging's last resort prints them on the console, next to the one line the
    transport's own error already gives. At INFO they go where the run's log goes (tune.log) and nowhere else.
    """

    def emit(self, record: logging.LogRecord) -> None:
        log.log(min(record.levelno, logging.INFO), "%s: %s", record.name, record.getMessage())


def _route_paramiko_logs() -> None:
    paramiko_log = logging.getLogger("paramiko")
    if not any(isinstance(handler, _PassToOurLog) for handler in paramiko_log.handlers):
        paramiko_log.addHandler(_PassToOurLog())
    paramiko_log.propagate = False


_route_paramiko_logs()


class HostKeyError(DeviceError):
    """The device's host key is unknown (and not accepted) or differs from the one in known_hosts."""


def fingerprint(key: paramiko.PKey) -> str:
    """The OpenSSH-style SHA256 fingerprint of a key, as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class SshTarget:
    """Where to connect, after ~/.ssh/config and the profile are merged (the profile wins, like the command line)."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...] = ()
    proxy_command: str | None = None
    proxy_jump: str | None = None
    known_hosts: str = DEFAULT_KNOWN_HOSTS
    host_key_alias: str | None = None
    accept_new_host: bool = False
    allow_agent: bool = True
    look_for_keys: bool = True
    connect_timeout_s: float = 15.0
    keepalive_s: float = 15.0
    config_file: str = DEFAULT_CONFIG

    @property
    def display(self) -> str:
        where = f"{self.user}@{self.hostname}" + (f":{self.port}" if self.port != 22 else "")
        return where if self.alias == self.hostname else f"{self.alias} ({where})"

    @property
    def host_key_name(self) -> str:
        """The name known_hosts files this host under, as OpenSSH writes it (a HostKeyAlias as it is)."""
        if self.host_key_alias:
            return self.host_key_alias
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def _ssh_config(path: str) -> paramiko.SSHConfig:
    expanded = Path(path).expanduser()
    if not expanded.is_file():
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(str(expanded))
    except Exception as exc:  # paramiko raises several kinds for bad configs
        raise ConfigError(f"cannot read the SSH config {expanded}: {exc}") from exc


def ssh_config_hosts(path: str = DEFAULT_CONFIG) -> list[str]:
    """The Host aliases an ssh config names literally (patterns such as ``*`` or ``pi-*`` left out), sorted."""
    names = _ssh_config(path).get_hostnames()
    return sorted(name for name in names if not any(c in name for c in "*?!"))


def _lookup(config: paramiko.SSHConfig, settings: SshSettings) -> dict[str, Any]:
    """The ssh config entry for a host, with the profile's user and port taking precedence as command-line options do
    in OpenSSH, so that tokens such as %p in ProxyCommand expand to the profile's values."""
    seed = paramiko.SSHConfigDict()
    if settings.port:
        seed["port"] = str(settings.port)
    if settings.user:
        seed["user"] = settings.user
    if not seed:
        return dict(config.lookup(settings.host))
    # paramiko's public lookup() cannot take command-line options; its two-pass _lookup() can (first value wins).
    options = config._lookup(settings.host, seed)
    options.setdefault("hostname", settings.host)
    return dict(config._lookup(settings.host, options, final=True))


def resolve_target(
    settings: SshSettings,
    accept_new_host: bool | None = None,
    known_hosts: str | None = None,
    config_file: str | None = None,
) -> SshTarget:
    """Merge a profile's [ssh] table with ~/.ssh/config for its host (which may be an alias there)."""
    config_path = config_file or settings.config_file or DEFAULT_CONFIG
    entry = _lookup(_ssh_config(config_path), settings)
    explicit = settings.model_fields_set

    def number(key: str, default: float) -> float:
        try:
            return float(entry[key]) if key in entry else default
        except ValueError as exc:
            raise ConfigError(f"{config_path}: {key} {entry[key]!r} is not a number") from exc

    identity = [settings.identity_file] if settings.identity_file else []
    identity += list(entry.get("identityfile") or [])
    files = tuple(os.path.expanduser(p) for p in identity)
    proxy_command = entry.get("proxycommand")
    proxy_jump = entry.get("proxyjump")
    # StrictHostKeyChecking=accept-new in the ssh config is honoured; "no" is not (a changed key is never accepted).
    config_accepts_new = str(entry.get("stricthostkeychecking", "")).lower() == "accept-new"
    return SshTarget(
        alias=settings.host,
        hostname=entry.get("hostname") or settings.host,
        port=settings.port or int(number("port", 22)),
        user=settings.user or entry.get("user") or getpass.getuser(),
        identity_files=files,
        proxy_command=None if not proxy_command or proxy_command.lower() == "none" else proxy_command,
        proxy_jump=None if not proxy_jump or proxy_jump.lower() == "none" else proxy_jump,
        known_hosts=known_hosts
        or settings.known_hosts
        or (entry.get("userknownhostsfile") or "").split(" ")[0]
        or DEFAULT_KNOWN_HOSTS,
        host_key_alias=entry.get("hostkeyalias"),
        accept_new_host=bool(accept_new_host or settings.accept_new_host or config_accepts_new),
        allow_agent=settings.allow_agent,
        look_for_keys=str(entry.get("identitiesonly", "no")).lower() != "yes",
        connect_timeout_s=settings.connect_timeout_s
        if "connect_timeout_s" in explicit
        else number("connecttimeout", settings.connect_timeout_s),
        keepalive_s=settings.keepalive_s
        if "keepalive_s" in explicit
        else number("serveraliveinterval", settings.keepalive_s),
        config_file=config_path,
    )


class _StrictPolicy(paramiko.MissingHostKeyPolicy):
    """Called by paramiko for a key it cannot match: refuse, or with accept-new append it to known_hosts.

    paramiko itself raises BadHostKeyException when a known key of the same type differs and prefers the key type
    known_hosts holds; a key of another type than the known ones is treated here as a changed key.
    """

    def __init__(self, target: SshTarget, known: paramiko.HostKeys, revoked: set[str]):
        self.target = target
        self.known = known
        self.revoked = revoked

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        hostname = self.target.host_key_name  # paramiko's name ignores HostKeyAlias
        known = self.known.lookup(hostname)
        path = Path(self.target.known_hosts).expanduser()
        if key.get_base64() in self.revoked:
            raise HostKeyError(
                f"the host key of {self.target.display} ({key.get_name()} {fingerprint(key)}) is "
                f"marked @revoked in known_hosts; refusing to connect"
            )
        if known:
            types = ", ".join(sorted(known.keys()))
            raise HostKeyError(
                f"HOST KEY OF {self.target.display} HAS CHANGED: it now offers {key.get_name()} {fingerprint(key)}, "
                f"known_hosts ({path}) holds only {types} keys for {hostname}. Refusing to connect, even with "
                f"--accept-new-host: someone may be intercepting the connection, or the device was reinstalled; "
                f"if you know it was, remove the old key with `ssh-keygen -R '{hostname}' -f {path}`"
            )
        if not self.target.accept_new_host:
            raise HostKeyError(
                f"the host key of {self.target.display} is unknown ({key.get_name()} {fingerprint(key)}, not in "
                f"{path}); if that fingerprint is right, accept it once with --accept-new-host "
                f"(or accept_new_host = true in the profile's [ssh] table)"
            )
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            needs_newline = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
            # Append, never rewrite: known_hosts may hold comments and hashed entries that paramiko would not keep.
            with open(path, "a", encoding="utf-8") as handle:
                os.chmod(path, 0o600)
                handle.write(("\n" if needs_newline else "") + line)
        except OSError as exc:  # a local file that cannot be written: the user's to fix, not a link to retry
            raise ConfigError(
                f"cannot add the host key of {self.target.display} to known_hosts {path}: {exc.strerror or exc}"
            ) from exc
        client.get_host_keys().add(hostname, key.get_name(), key)


def _load_known_hosts(path: Path, known: paramiko.HostKeys, revoked: set[str]) -> None:
    """Add a known_hosts file's keys to ``known`` and its @revoked keys to ``revoked``.

    Line by line, because paramiko's own loader gives up on the whole file at a marker line (@cert-authority,
    @revoked) or a key it cannot parse; such lines are skipped here, except that revoked keys are remembered so that
    --accept-new-host cannot let them in.
    """
    if not path.exists():
        return
    if not path.is_file():
        raise ConfigError(
            f"known_hosts {path} is {_what(path)}, not a file; point known_hosts in the profile's [ssh] "
            "table (or UserKnownHostsFile in the ssh config) at a file"
        )
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"cannot read known_hosts {path}: {exc.strerror or exc}") from exc
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            fields = line.split()
            if fields[0] == "@revoked" and len(fields) >= 4:
                revoked.add(fields[3])
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, number)
        except Exception:  # paramiko raises several kinds for a key it cannot read; OpenSSH skips those lines too
            continue
        if entry is not None and entry.key is not None:
            for name in entry.hostnames:
                known.add(name, entry.key.get_name(), entry.key)


def _what(path: Path) -> str:
    return "a directory" if path.is_dir() else "not a regular file"


def _tune_socket(sock: Any, keepalive_s: float) -> None:
    """Let the kernel notice a dead peer (a Pi that lost Wi-Fi) instead of waiting for TCP's 15-minute timeout."""
    if not isinstance(sock, socket.socket) or keepalive_s <= 0:
        return
    idle = max(1, int(keepalive_s))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", idle),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", idle * 4 * 1000),
    ):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


@dataclass
class Connection:
    """An authenticated SSH connection, with the jump hosts it goes through."""

    client: paramiko.SSHClient
    target: SshTarget
    jumps: list[paramiko.SSHClient] = field(default_factory=list)
    connect_s: float = 0.0

    def close(self) -> None:
        self.client.close()
        for jump in reversed(self.jumps):
            jump.close()

    @property
    def active(self) -> bool:
        transport = self.client.get_transport()
        return bool(transport and transport.is_active())


def _parse_hop(hop: str) -> SshSettings:
    user, _, rest = hop.rpartition("@")
    host, _, port = rest.partition(":") if not rest.startswith("[") else (rest[1 : rest.index("]")], "", "")
    return SshSettings(host=host, user=user or None, port=int(port) if port else None)


def connect(target: SshTarget, sock: Any = None) -> Connection:
    """Open and authenticate an SSH connection, verifying the host key; errors are one clear line."""
    t0 = time.perf_counter()
    jumps: list[paramiko.SSHClient] = []
    try:
        if sock is None and target.proxy_jump:
            for hop in target.proxy_jump.split(","):
                hop_target = resolve_target(
                    _parse_hop(hop.strip()),
                    accept_new_host=target.accept_new_host,
                    known_hosts=target.known_hosts,
                    config_file=target.config_file,
                )
                # Each hop resolves its own alias but not its own proxies: a ProxyJump * would loop forever.
                hop_target = dataclasses.replace(hop_target, proxy_jump=None, proxy_command=None)
                hop_connection = connect(hop_target, sock=_forward(jumps[-1], hop_target) if jumps else None)
                jumps.append(hop_connection.client)
            sock = _forward(jumps[-1], target)
        elif sock is None and target.proxy_command:
            try:
                sock = paramiko.ProxyCommand(target.proxy_command)  # tokens (%h, %p, %r) were expanded by the lookup
            except (OSError, paramiko.SSHException) as exc:
                raise DeviceError(f"ProxyCommand for {target.display} cannot start: {exc}") from exc
        client = paramiko.SSHClient()
        known = paramiko.HostKeys()
        revoked: set[str] = set()
        for path in (SYSTEM_KNOWN_HOSTS, target.known_hosts):
            _load_known_hosts(Path(path).expanduser(), known, revoked)
        # paramiko checks these itself (and prefers the key type they hold); the policy sees the rest.
        # Under the name paramiko looks up, which is the host's even when known_hosts files it under an alias.
        paramiko_name = target.hostname if target.port == 22 else f"[{target.hostname}]:{target.port}"
        for kind, key in (known.lookup(target.host_key_name) or {}).items():
            client.get_host_keys().add(paramiko_name, kind, key)
        client.set_missing_host_key_policy(_StrictPolicy(target, known, revoked))
        _connect_client(client, target, sock)
    except BaseException:
        for jump in reversed(jumps):
            jump.close()
        raise
    transport = client.get_transport()
    assert transport is not None
    if target.keepalive_s > 0:
        transport.set_keepalive(max(1, int(target.keepalive_s)))
    _tune_socket(transport.sock, target.keepalive_s)
    return Connection(client=client, target=target, jumps=jumps, connect_s=time.perf_counter() - t0)


def _forward(jump: paramiko.SSHClient, target: SshTarget) -> paramiko.Channel:
    transport = jump.get_transport()
    assert transport is not None
    try:
        return transport.open_channel(
            "direct-tcpip", (target.hostname, target.port), ("127.0.0.1", 0), timeout=target.connect_timeout_s
        )
    except (OSError, paramiko.SSHException) as exc:
        raise ConnectionLost(f"the jump host cannot reach {target.display}: {exc}") from exc


def _connect_client(client: paramiko.SSHClient, target: SshTarget, sock: Any) -> None:
    where = target.display
    keys = [p for p in target.identity_files if Path(p).is_file()]
    try:
        client.connect(
            target.hostname,
            target.port,
            username=target.user,
            key_filename=keys or None,
            timeout=target.connect_timeout_s,
            banner_timeout=target.connect_timeout_s,
            auth_timeout=target.connect_timeout_s,
            channel_timeout=target.connect_timeout_s,
            allow_agent=target.allow_agent,
            look_for_keys=target.look_for_keys,
            sock=sock,
        )
    except HostKeyError:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        path = Path(target.known_hosts).expanduser()
        raise HostKeyError(
            f"HOST KEY OF {where} HAS CHANGED: it offers {exc.key.get_name()} {fingerprint(exc.key)}, known_hosts "
            f"({path}) expects {fingerprint(exc.expected_key)}. Refusing to connect, even with --accept-new-host: "
            "someone may be intercepting the connection, or the device was reinstalled; if you know it was, "
            f"remove the old key with `ssh-keygen -R '{target.host_key_name}' -f {path}`"
        ) from exc
    except paramiko.PasswordRequiredException as exc:
        client.close()
        raise DeviceError(
            f"a key for {where} is encrypted: load it into ssh-agent with `ssh-add` "
            "(passwords and passphrases are never stored in profiles)"
        ) from exc
    except paramiko.AuthenticationException as exc:
        client.close()
        agent = _agent_state(target)
        tried = ("ssh-agent and " if agent is None else "") + (", ".join(keys) or "default keys")
        raise DeviceError(
            f"authentication as {target.user} on {where} failed (tried {tried}"
            + (f"; {agent}" if agent else "")
            + f"): add your public key to ~/.ssh/authorized_keys there, e.g. `ssh-copy-id -p {target.port} "
            f"{target.user}@{target.hostname}`"
        ) from exc
    except paramiko.SSHException as exc:
        if "No authentication methods" not in str(exc):
            client.close()
            raise _unreachable(where, exc, target.connect_timeout_s) from exc
        client.close()
        agent = _agent_state(target) or "ssh-agent holds no key"
        raise DeviceError(
            f"no key to log in to {where} with: no identity file found and {agent}; set "
            "identity_file in the profile, IdentityFile in ~/.ssh/config, or `ssh-add` a key"
        ) from exc
    except socket.gaierror as exc:
        client.close()
        raise DeviceError(f"cannot resolve {target.hostname} (device {where}): {exc.strerror}") from exc
    except (OSError, EOFError) as exc:
        client.close()
        raise _unreachable(where, exc, target.connect_timeout_s) from exc


def _agent_state(target: SshTarget) -> str | None:
    """Why ssh-agent was not asked for a key, or None when it was."""
    if not target.allow_agent:
        return "ssh-agent not asked (allow_agent = false in the profile)"
    if not os.environ.get("SSH_AUTH_SOCK"):
        return "no ssh-agent (SSH_AUTH_SOCK unset)"
    return None


def _unreachable(where: str, exc: BaseException, timeout_s: float) -> ConnectionLost:
    """A network-level failure: worth retrying, since a rebooting device or a Wi-Fi hiccup comes back."""
    reason = "timed out" if isinstance(exc, TimeoutError | socket.timeout) else str(exc) or type(exc).__name__
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        reason = "connection refused"
    elif isinstance(exc, paramiko.SSHException) and str(exc).startswith(_NO_SSH):
        reason = (
            f"no SSH handshake within {timeout_s:g} s (the port does not speak SSH, or the SSH server there is stuck)"
        )
    return ConnectionLost(f"cannot reach {where}: {reason}")


class SshChannel:
    """The agent's stdin/stdout over an exec channel, and its stderr kept for error messages."""

    def __init__(self, connection: Connection, started: Started, name: str):
        self.connection = connection
        self.channel = started.channel
        self.name = name
        self.reader = started.reader  # already past the stub's probe line
        self.writer = started.channel.makefile_stdin("wb")
        self._stderr = started.stderr

    def abort(self) -> None:
        self.connection.close()

    def close(self) -> None:
        try:
            self.channel.shutdown_write()  # end of input: the agent exits on its own
            self.channel.status_event.wait(5)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        self.connection.close()

    def diagnostics(self) -> str:
        parts = []
        if self.connection.active:
            # The agent's end of output comes before its exit status: give the status a moment to arrive.
            self.channel.status_event.wait(2.0)
        if not self.connection.active:
            # A dropped connection also closes the channel without an exit status: say which end went away.
            parts.append(f"SSH connection to {self.connection.target.display} closed")
        elif self.channel.exit_status_ready():
            code = self.channel.exit_status
            parts.append("agent was killed" if code == -1 else f"agent exited with code {code}")
        tail = self._stderr.text() if self.channel.exit_status_ready() else ""
        if tail:
            parts.append(tail.splitlines()[-1])
        return "; ".join(parts)


class SshTransport:
    """Starts the agent on a device over SSH; each ``open()`` is a new connection (see the module docstring)."""

    def __init__(
        self,
        profile: DeviceProfile,
        accept_new_host: bool | None = None,
        known_hosts: str | None = None,
        ssh_config: str | None = None,
        cache_dir: str | None = None,
        on_event: Callable[[str], None] | None = None,
        require_runtime: bool = True,
    ):
        if profile.ssh is None:
            raise ConfigError(f"device {profile.name}: transport = 'ssh' needs an [ssh] table with a host")
        self.profile = profile
        self.name = profile.name
        self.target = resolve_target(profile.ssh, accept_new_host, known_hosts, ssh_config)
        self.python = profile.python or "python3"
        self.cache_dir = cache_dir or profile.cache_dir
        self.on_event = on_event
        self.require_runtime = require_runtime
        self.package: AgentPackage = agent_package()
        self.device = f"{profile.name} ({self.target.display})"
        self.probe_timeout_s = 60.0  # a Pi on an SD card can take seconds to start Python cold
        self.token = uuid.uuid4().hex[:12]  # names this host-side transport's agent on the device (see agent_command)
        self.connections = 0
        self.last_bootstrap: BootstrapResult | None = None
        self.last_connect_s = 0.0

    def connect(self) -> Connection:
        """An authenticated connection with a verified host key (no agent yet)."""
        connection = connect(self.target)
        self.connections += 1
        self.last_connect_s = connection.connect_s
        return connection

    def _agent_options(self) -> dict[str, Any]:
        """What bootstrap and start_agent both need to know about this device's agent."""
        return {
            "python": self.python,
            "cache_dir": self.cache_dir,
            "runtime": self.profile.runtime.name,
            "device": self.device,
            "require_runtime": self.require_runtime,
            "package": self.package,
            "on_event": self.on_event,
            "timeout_s": self.probe_timeout_s,
        }

    def prepare(self, connection: Connection) -> BootstrapResult:
        """Probe the device and install the agent if this version is missing, without starting it."""
        result = bootstrap(connection.client, **self._agent_options())
        self.last_bootstrap = result
        return result

    def open(self) -> Channel:
        return self.start(self.connect())

    def start(self, connection: Connection) -> SshChannel:
        """Start the agent on an exec channel of ``connection``, installing it first if it is missing."""
        try:
            started, result = start_agent(connection.client, token=self.token, **self._agent_options())
        except BaseException:
            connection.close()
            raise
        self.last_bootstrap = result
        return SshChannel(connection, started, self.name)
