"""SSH devices against a real sshd on loopback: bootstrap, host keys, ssh config, reconnects."""

from __future__ import annotations

import dataclasses
import getpass
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd import (
    SshServer,
    bare_python,
    cpu_ticks,
    dense_onnx,
    free_port,
    keygen,
    serve_for_tests,
    trusted_device,
    wait_until,
    write_profile,
)

from edgecompress.config import resolve_device
from edgecompress.device import measure_request, open_session
from edgecompress.device._ssh import HostKeyError
from edgecompress.errors import ConnectionLost, DeviceError


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    yield from serve_for_tests(tmp_path_factory)


@pytest.fixture
def ssh_device(sshd: SshServer, tmp_path: Path) -> Path:
    return trusted_device(sshd, tmp_path / "device")


def _measure_in_thread(session, sha, spec):
    """Run a measurement in the background; returns (thread, box) where box gets the result or the error."""
    box: dict[str, object] = {}

    def work() -> None:
        try:
            box["result"] = session.measure(sha, spec)
        except Exception as exc:  # handed to the test thread, which re-raises it
            box["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, box


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait_measuring(pid: int, baseline: int, box: dict) -> None:
    # The agent only burns CPU while it measures: 0.3 s of CPU time means inference is under way.
    wait_until(lambda: "error" in box or cpu_ticks(pid) - baseline >= 30, what=f"agent {pid} to start measuring")


def test_first_connection_bootstraps_then_second_is_cached(ssh_device: Path, tmp_path: Path) -> None:
    profile = resolve_device(str(ssh_device))
    events: list[str] = []
    with open_session(profile, on_event=events.append) as session:
        boot = session.transport.last_bootstrap
        assert boot.uploaded and not boot.probe.agent_present
        assert Path(boot.probe.agent_dir, "edgecompress_agent", "__main__.py").is_file()
        assert boot.probe.agent_dir.startswith(str(tmp_path / "device" / "device-cache" / "agent"))
        assert session.info["python"]["executable"] == sys.executable
        assert "onnxruntime" in [r["name"] for r in session.info["runtimes"]]
        sha = session.put_model(dense_onnx(tmp_path / "m.onnx").read_bytes())
        result = session.measure(sha, measure_request(profile, runs=5))
        assert len(result.latencies_ns) >= 5 and min(result.latencies_ns) > 0
    assert any("installing the agent" in e for e in events)
    with open_session(profile) as session:
        assert session.transport.last_bootstrap.uploaded is False
        # The model cache survives too: a model the agent holds is not sent again.
        assert session.request("has_model", {"sha256": sha})[0]["cached"] is True
    # Nothing left behind but the agent and the model: no half-uploaded folders.
    agent_root = tmp_path / "device" / "device-cache" / "agent"
    assert [p.name for p in agent_root.iterdir()] == [boot.probe.agent_dir.rsplit("/", 1)[1]]


def test_unknown_host_key_is_refused_with_the_way_to_accept_it(sshd: SshServer, tmp_path: Path) -> None:
    profile = resolve_device(str(write_profile(sshd, tmp_path)))
    with pytest.raises(HostKeyError) as caught:
        open_session(profile)
    message = str(caught.value)
    assert "unknown" in message and "--accept-new-host" in message
    assert "SHA256:" in message and "\n" not in message
    assert (tmp_path / "known_hosts").read_text() == ""


def test_accept_new_host_records_the_key_then_it_is_trusted(sshd: SshServer, tmp_path: Path) -> None:
    profile = resolve_device(str(write_profile(sshd, tmp_path)))
    known = tmp_path / "known_hosts"
    other = keygen(tmp_path / "other").with_suffix(".pub").read_text().split()[:2]
    known.write_text(f"# my hosts\nexample.org {other[0]} {other[1]}")  # no final newline: we must add one
    with open_session(profile, accept_new_host=True) as session:
        assert session.info["agent_version"]
    lines = known.read_text().splitlines()
    assert lines[0] == "# my hosts" and lines[1].startswith("example.org ")  # appended, not rewritten
    assert lines[2] + "\n" == sshd.known_hosts_line()
    assert oct(known.stat().st_mode & 0o777) == "0o600"
    with open_session(profile) as session:  # now known: no flag needed
        assert session.info["agent_version"]


def test_hashed_known_hosts_with_marker_lines_is_read(sshd: SshServer, tmp_path: Path) -> None:
    profile = resolve_device(str(write_profile(sshd, tmp_path)))
    known = tmp_path / "known_hosts"
    other = keygen(tmp_path / "ca").with_suffix(".pub").read_text().split()[:2]
    known.write_text(sshd.known_hosts_line())
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known)], check=True, capture_output=True)
    assert known.read_text().startswith("|1|")  # as Debian's HashKnownHosts writes them
    known.write_text(f"@cert-authority *.lab {other[0]} {other[1]}\n" + known.read_text())
    with open_session(profile) as session:
        assert session.info["agent_version"]


def test_revoked_host_key_is_refused_even_with_accept_new(sshd: SshServer, tmp_path: Path) -> None:
    profile = resolve_device(str(write_profile(sshd, tmp_path)))
    (tmp_path / "known_hosts").write_text("@revoked * " + sshd.known_hosts_line().split(" ", 1)[1])
    with pytest.raises(HostKeyError, match="marked @revoked"):
        open_session(profile, accept_new_host=True)
    assert (tmp_path / "known_hosts").read_text().count("\n") == 1


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_changed_host_key_is_refused_even_with_accept_new(sshd: SshServer, tmp_path: Path, kind: str) -> None:
    # ed25519: the same key type with other bits; rsa: only another type is known, which is no excuse either.
    impostor = keygen(tmp_path / "impostor", kind)
    profile = resolve_device(str(write_profile(sshd, tmp_path)))
    before = sshd.known_hosts_line(impostor)
    (tmp_path / "known_hosts").write_text(before)
    for accept in (False, True):
        with pytest.raises(HostKeyError, match="HAS CHANGED") as caught:
            open_session(profile, accept_new_host=accept)
        assert "ssh-keygen -R" in str(caught.value)
    assert (tmp_path / "known_hosts").read_text() == before


def test_ssh_config_alias_gives_hostname_port_user_and_key(sshd: SshServer, tmp_path: Path) -> None:
    folder = tmp_path / "dev"
    folder.mkdir()
    (folder / "ssh_config").write_text(
        f"Host mypi\n    HostName 127.0.0.1\n    Port {sshd.port}\n    User {getpass.getuser()}\n"
        f"    IdentityFile {sshd.client_key}\n    IdentitiesOnly yes\n"
    )
    profile = resolve_device(str(write_profile(sshd, folder, host="mypi", port=None, user=None, identity_file=None)))
    (folder / "known_hosts").write_text(sshd.known_hosts_line())
    with open_session(profile) as session:
        target = session.transport.target
        assert (target.alias, target.hostname, target.port) == ("mypi", "127.0.0.1", sshd.port)
        assert session.info["agent_version"]


def test_key_from_ssh_agent(sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No identity file anywhere: the only way in is the key held by a real ssh-agent.
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        wait_until(socket_path.exists, what="ssh-agent's socket")
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        subprocess.run(["ssh-add", "-q", str(sshd.client_key)], check=True, capture_output=True)
        path = write_profile(sshd, tmp_path, identity_file=None, allow_agent=True)
        (tmp_path / "known_hosts").write_text(sshd.known_hosts_line())
        with open_session(resolve_device(str(path))) as session:
            assert session.transport.target.identity_files == ()
            assert session.info["agent_version"]
        monkeypatch.delenv("SSH_AUTH_SOCK")
        with pytest.raises(DeviceError, match=r"no key to log in to .* no ssh-agent \(SSH_AUTH_SOCK unset\)"):
            open_session(resolve_device(str(path)))
    finally:
        agent.terminate()
        agent.wait()


def test_key_not_authorized_is_one_line_with_the_fix(sshd: SshServer, tmp_path: Path) -> None:
    stranger = keygen(tmp_path / "stranger")
    path = write_profile(sshd, tmp_path, identity_file=str(stranger))
    (tmp_path / "known_hosts").write_text(sshd.known_hosts_line())
    with pytest.raises(DeviceError, match=r"authentication as \w+ on .* failed .*ssh-copy-id -p") as caught:
        open_session(resolve_device(str(path)))
    assert not isinstance(caught.value, ConnectionLost)  # not retried: a wrong key stays wrong


def test_host_key_alias_from_ssh_config(sshd: SshServer, tmp_path: Path) -> None:
    (tmp_path / "ssh_config").write_text("Host *\n    IdentitiesOnly yes\n    HostKeyAlias lab-pi\n")
    profile = resolve_device(str(write_profile(sshd, tmp_path)))
    kind, key = sshd.known_hosts_line().split()[1:3]
    (tmp_path / "known_hosts").write_text(f"lab-pi {kind} {key}\n")  # filed under the alias, as OpenSSH does
    with open_session(profile) as session:
        assert session.info["agent_version"]
    impostor = keygen(tmp_path / "impostor").with_suffix(".pub").read_text().split()[:2]
    (tmp_path / "known_hosts").write_text(f"lab-pi {impostor[0]} {impostor[1]}\n")
    with pytest.raises(HostKeyError, match="HAS CHANGED.*ssh-keygen -R 'lab-pi'"):
        open_session(profile, accept_new_host=True)


def test_proxy_jump_through_a_bastion(sshd: SshServer, tmp_path: Path) -> None:
    # The loopback sshd is its own bastion: the device is reached through a direct-tcpip channel of a first login.
    folder = tmp_path / "dev"
    folder.mkdir()
    (folder / "ssh_config").write_text(
        f"Host bastion\n    HostName 127.0.0.1\n    Port {sshd.port}\n    User {getpass.getuser()}\n"
        f"    IdentityFile {sshd.client_key}\n\nHost *\n    IdentitiesOnly yes\n    ProxyJump bastion\n"
    )
    profile = resolve_device(str(write_profile(sshd, folder)))
    (folder / "known_hosts").write_text(sshd.known_hosts_line())
    with open_session(profile) as session:
        assert session.transport.target.proxy_jump == "bastion"
        assert session.info["agent_version"]
        serving = sshd.sessions_serving(session.info["pid"])
        assert serving, "the agent should be a child of an sshd session"


def test_missing_python_and_missing_runtime_say_what_to_do(sshd: SshServer, tmp_path: Path) -> None:
    path = write_profile(sshd, tmp_path)
    (tmp_path / "known_hosts").write_text(sshd.known_hosts_line())
    text = path.read_text()
    path.write_text(text.replace(f'python = "{sys.executable}"', 'python = "/nonexistent/python3"'))
    with pytest.raises(DeviceError, match=r"/nonexistent/python3 was not found on loopback.*set python ="):
        open_session(resolve_device(str(path)))
    bare = bare_python(tmp_path / "bare")
    path.write_text(text.replace(f'python = "{sys.executable}"', f'python = "{bare}"'))
    with pytest.raises(DeviceError) as caught:
        open_session(resolve_device(str(path)))
    message = str(caught.value)
    assert message.startswith(f"numpy is not importable by {bare} on loopback")
    assert f"`{bare} -m pip install --user numpy`" in message and message.endswith("(and 1 more problem(s))")
    path.write_text(
        text.replace(f'python = "{sys.executable}"', f'python = "{bare}"').replace(
            'name = "onnxruntime"', 'name = "tflite"'
        )
    )
    from edgecompress.device._check import check_device

    items = {item.name: item for item in check_device(resolve_device(str(path)))}
    assert "pip install --user ai-edge-litert" in items["runtime tflite"].hint


def _pyenv_python(version: str) -> str:
    # Old interpreters as a device would have them; this machine has them under pyenv, CI may not.
    path = Path(f"~/.pyenv/versions/{version}/bin/python").expanduser()
    if not path.exists():
        pytest.skip(f"no Python {version} at {path} to play an old device's interpreter")
    return str(path)


def test_python_2_device_is_named_too_old(sshd: SshServer, tmp_path: Path) -> None:
    python = _pyenv_python("2.7.18")
    path = write_profile(sshd, tmp_path)
    path.write_text(path.read_text().replace(f'python = "{sys.executable}"', f'python = "{python}"'))
    (tmp_path / "known_hosts").write_text(sshd.known_hosts_line())
    with pytest.raises(DeviceError, match=r"is Python 2\.7\.18; the agent needs 3\.6 or newer: set python ="):
        open_session(resolve_device(str(path)))


def test_python_36_device_runs_the_agent_and_check_names_what_is_missing(sshd: SshServer, tmp_path: Path) -> None:
    # Python 3.6 without numpy or onnxruntime: the stub and the agent run there; the check says what to install.
    from edgecompress.device._check import check_device

    python = _pyenv_python("3.6.15")
    path = write_profile(sshd, tmp_path)
    path.write_text(path.read_text().replace(f'python = "{sys.executable}"', f'python = "{python}"'))
    (tmp_path / "known_hosts").write_text(sshd.known_hosts_line())
    profile = resolve_device(str(path))
    with pytest.raises(DeviceError, match=r"numpy is not importable by .*3\.6\.15.* pip install --user numpy"):
        open_session(profile)
    items = {item.name: item for item in check_device(profile)}
    assert items["python"].detail.startswith("Python 3.6.15")
    assert items["agent"].status == "ok"  # the agent answered hello from Python 3.6
    assert (
        items["runtime onnxruntime"].status == "fail"
        and "pip install --user onnxruntime" in items["runtime onnxruntime"].hint
    )
    assert items["numpy"].status == "fail"


def test_agent_killed_mid_measurement_is_restarted_and_retried(ssh_device: Path, tmp_path: Path) -> None:
    profile = resolve_device(str(ssh_device))
    events: list[str] = []
    with open_session(profile, on_event=events.append) as session:
        session.backoff_s = 0.1
        sha = session.put_model(dense_onnx(tmp_path / "m.onnx").read_bytes())
        pid = session.info["pid"]
        baseline = cpu_ticks(pid)
        spec = measure_request(profile, runs=10, min_seconds=3.0)
        thread, box = _measure_in_thread(session, sha, spec)
        _wait_measuring(pid, baseline, box)
        os.kill(pid, signal.SIGKILL)
        thread.join(timeout=60)
        assert "error" not in box, box.get("error")
        assert len(box["result"].latencies_ns) >= 10
        assert session.reconnects == 1 and session.info["pid"] != pid
        assert session.transport.last_bootstrap.uploaded is False  # the retry did not re-install
    assert [e for e in events if "lost" in e] == [events[-1]] and "agent was killed" in events[-1]


def test_ssh_connection_cut_mid_measurement_is_reopened(ssh_device: Path, sshd: SshServer, tmp_path: Path) -> None:
    profile = resolve_device(str(ssh_device))
    events: list[str] = []
    with open_session(profile, on_event=events.append) as session:
        session.backoff_s = 0.1
        sha = session.put_model(dense_onnx(tmp_path / "m.onnx").read_bytes())
        pid = session.info["pid"]
        connections = session.transport.connections
        baseline = cpu_ticks(pid)
        thread, box = _measure_in_thread(session, sha, measure_request(profile, runs=10, min_seconds=5.0))
        _wait_measuring(pid, baseline, box)
        sshd.cut_connection(pid)
        wait_until(lambda: "error" in box or session.info["pid"] != pid, what="the agent to be restarted")
        # The orphaned agent had seconds of measuring left: starting the new one stopped it, so that the retried
        # measurement does not share the CPU with it.
        assert not _alive(pid)
        thread.join(timeout=60)
        assert "error" not in box, box.get("error")
        assert len(box["result"].latencies_ns) >= 10
        assert session.reconnects == 1 and session.transport.connections == connections + 1
    lost = [e for e in events if "lost" in e]
    assert len(lost) == 1 and "link to loopback lost" in lost[0] and "SSH connection to" in lost[0]


def test_device_down_gives_up_after_bounded_retries(ssh_device: Path, sshd: SshServer) -> None:
    profile = resolve_device(str(ssh_device))
    session = open_session(profile)
    session.backoff_s = 0.05
    # The device goes away for good: every re-open is refused.
    session.transport.target = dataclasses.replace(session.transport.target, port=free_port())
    sshd.cut_connection(session.info["pid"])
    with pytest.raises(ConnectionLost, match=r"connection refused.*gave up after 3 retries"):
        session.request("has_model", {"sha256": "0" * 64})
    assert session.reconnects == 3


def test_profiles_refuse_passwords_and_need_an_ssh_table() -> None:
    from edgecompress.config import parse_profile
    from edgecompress.errors import ConfigError

    with pytest.raises(ConfigError, match=r"p\.toml: ssh: .*password is not accepted in a profile: use a key file"):
        parse_profile('transport = "ssh"\n[ssh]\nhost = "pi"\npassword = "raspberry"\n', "p.toml")
    with pytest.raises(ConfigError, match=r"transport = 'ssh' needs an \[ssh\] table"):
        parse_profile('transport = "ssh"\n', "q.toml")
    ad_hoc = resolve_device("pi@10.0.0.7:2222")
    assert (ad_hoc.transport, ad_hoc.ssh.user, ad_hoc.ssh.host, ad_hoc.ssh.port) == ("ssh", "pi", "10.0.0.7", 2222)
