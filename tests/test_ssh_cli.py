"""The command line against the loopback sshd: bench from an empty agent cache, host-key flags, devices check."""

from __future__ import annotations

import getpass
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from sshd import SshServer, bare_python, keygen, serve_for_tests, trusted_device, write_profile
from typer.testing import CliRunner

from edgecompress.cli import app
from edgecompress.cli._device_options import PROGRESS_MIN_BYTES, upload_progress
from edgecompress.config import resolve_device
from edgecompress.device import open_session
from edgecompress.device._check import check_device
from edgecompress.errors import ConfigError, DeviceError


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    yield from serve_for_tests(tmp_path_factory)


def edgecompress(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgecompress", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def conv_net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny conv net exported by torch, as a user's model would be."""
    import torch

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    ).eval()
    path = tmp_path_factory.mktemp("model") / "tiny_conv.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, input_names=["image"])
    return path


def test_bench_over_ssh_from_an_empty_agent_cache(sshd: SshServer, conv_net: Path, tmp_path: Path) -> None:
    profile = trusted_device(sshd, tmp_path)
    assert not (tmp_path / "device-cache").exists()
    run = edgecompress("bench", str(conv_net), "--device", str(profile), "--runs", "30", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["device"] == "loopback" and result["latency"]["count"] >= 30
    assert "installing the agent" in run.stderr
    assert list((tmp_path / "device-cache" / "agent").iterdir())


def test_unknown_host_fails_with_one_line_then_accept_new_host_works(sshd: SshServer, tmp_path: Path) -> None:
    profile = write_profile(sshd, tmp_path)
    refused = edgecompress("devices", "info", str(profile))
    assert refused.returncode == 3
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "--accept-new-host" in lines[0], refused.stderr
    # In process from here (a subprocess per command costs seconds of imports on this machine).
    accepted = CliRunner().invoke(app, ["devices", "info", str(profile), "--accept-new-host", "--json"])
    assert accepted.exit_code == 0, accepted.output
    assert json.loads(accepted.stdout)["python"]["executable"] == sys.executable
    assert sshd.known_hosts_line() in (tmp_path / "known_hosts").read_text()


def test_devices_check_reports_each_step(sshd: SshServer, tmp_path: Path) -> None:
    profile = trusted_device(sshd, tmp_path)
    run = CliRunner().invoke(app, ["devices", "check", str(profile), "--json"])
    assert run.exit_code == 0, run.output
    items = {item["name"]: item for item in json.loads(run.stdout)}
    for name in ("profile", "ssh", "host key", "python", "agent", "runtime onnxruntime", "numpy"):
        assert items[name]["status"] == "ok", items[name]
    assert "installed now" in items["agent"]["detail"]
    assert sys.executable in items["python"]["detail"]
    # This machine (a VM) has no power rails: reported as a warning with a fix, never as a failure.
    assert items["power"]["status"] in ("ok", "warn") and (items["power"]["status"] == "ok" or items["power"]["hint"])
    table = CliRunner().invoke(app, ["devices", "check", str(profile)], terminal_width=200)
    assert table.exit_code == 0, table.output
    assert "already installed" in table.output and "FAIL" not in table.output


def test_devices_check_fails_with_the_fix_for_a_missing_runtime_and_an_unknown_key(
    sshd: SshServer, tmp_path: Path
) -> None:
    profile = trusted_device(sshd, tmp_path / "a")
    bare = bare_python(tmp_path / "bare")  # a device Python without numpy or any runtime
    profile.write_text(profile.read_text().replace(f'python = "{sys.executable}"', f'python = "{bare}"'))
    run = edgecompress("devices", "check", str(profile), "--json")
    assert run.returncode == 3
    failed = {item["name"]: item for item in json.loads(run.stdout) if item["status"] == "fail"}
    assert list(failed) == ["runtime onnxruntime", "numpy"]
    assert f"`{bare} -m pip install --user onnxruntime`" in failed["runtime onnxruntime"]["hint"]
    assert f"`{bare} -m pip install --user numpy`" in failed["numpy"]["hint"]
    assert "2 check(s) failed: runtime onnxruntime, numpy" in run.stderr
    unknown = check_device(resolve_device(str(write_profile(sshd, tmp_path / "b"))))
    assert [(i.name, i.status) for i in unknown] == [("profile", "ok"), ("host key", "fail")]
    assert "--accept-new-host" in unknown[-1].detail


def test_upload_progress_only_for_large_models_on_a_terminal() -> None:
    quiet = Console(file=io.StringIO(), force_terminal=False)
    with upload_progress(quiet, 10 * PROGRESS_MIN_BYTES, "x") as callback:
        assert callback is None
    out = io.StringIO()
    tty = Console(file=out, force_terminal=True, width=100)
    with upload_progress(tty, PROGRESS_MIN_BYTES - 1, "x") as callback:
        assert callback is None
    with upload_progress(tty, 2 * PROGRESS_MIN_BYTES, "sending m.onnx") as callback:
        assert callback is not None
        callback(PROGRESS_MIN_BYTES, 2 * PROGRESS_MIN_BYTES)
        callback(2 * PROGRESS_MIN_BYTES, 2 * PROGRESS_MIN_BYTES)
    assert "sending m.onnx" in out.getvalue()


def test_a_host_alias_from_the_ssh_config_is_a_device(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host lab-pi\n    HostName {sshd.address}\n    Port {sshd.port}\n    User {getpass.getuser()}\n"
        f"    IdentityFile {sshd.client_key}\n    IdentitiesOnly yes\n"
    )
    # From the command line, with no profile of that name: the alias is reached, and its host key is not yet known.
    env = dict(os.environ, HOME=str(home), XDG_CACHE_HOME=str(tmp_path / "cache"))
    run = subprocess.run(
        [sys.executable, "-m", "edgecompress", "devices", "info", "lab-pi"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 3, run.stderr
    assert (
        f"lab-pi ({getpass.getuser()}@{sshd.address}:{sshd.port})" in run.stderr and "--accept-new-host" in run.stderr
    )
    # Trusted, the alias opens a session: HostName, Port, User and IdentityFile all come from ~/.ssh/config.
    (home / ".ssh" / "known_hosts").write_text(sshd.known_hosts_line())
    monkeypatch.setenv("HOME", str(home))
    profile = resolve_device("lab-pi", user_dir=tmp_path / "no-profiles")
    assert (profile.name, profile.transport, profile.ssh.host) == ("lab-pi", "ssh", "lab-pi")
    local = profile.model_copy(update={"python": sys.executable, "cache_dir": str(tmp_path / "device-cache")})
    with open_session(local) as session:
        assert session.info["python"]["executable"] == sys.executable
    with pytest.raises(ConfigError, match="unknown device .lab-pj.*Host aliases in ~/.ssh/config: lab-pi"):
        resolve_device("lab-pj", user_dir=tmp_path / "no-profiles")


@pytest.mark.parametrize("accept_new_host", [False, True])
def test_a_known_hosts_that_is_a_directory_is_named_and_not_retried(
    sshd: SshServer, tmp_path: Path, accept_new_host: bool
) -> None:
    folder = tmp_path / "hosts-dir"
    folder.mkdir()
    profile = write_profile(sshd, tmp_path, known_hosts=str(folder))
    flags = ["--accept-new-host"] if accept_new_host else []
    run = edgecompress("devices", "info", str(profile), *flags)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and f"known_hosts {folder} is a directory" in lines[0], run.stderr
    assert "cannot reach" not in run.stderr and "retrying" not in run.stderr


@pytest.mark.parametrize("allow_agent", [False, True])
def test_a_refused_key_names_ssh_agent_only_when_it_was_tried(
    sshd: SshServer, tmp_path: Path, allow_agent: bool
) -> None:
    stranger = keygen(tmp_path / "stranger")
    profile = write_profile(sshd, tmp_path, identity_file=str(stranger), allow_agent=allow_agent)
    (tmp_path / "known_hosts").write_text(sshd.known_hosts_line())
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SSH_AUTH_SOCK", raising=False)
        with pytest.raises(DeviceError, match="authentication as .* failed") as caught:
            open_session(resolve_device(str(profile)))
        assert str(stranger) in str(caught.value) and "tried ssh-agent" not in str(caught.value)
        assert ("allow_agent = false" in str(caught.value)) is not allow_agent, caught.value
        assert ("SSH_AUTH_SOCK unset" in str(caught.value)) is allow_agent, caught.value
        # No key at all: the message says whether ssh-agent was asked, as the profile allows.
        bare = write_profile(sshd, tmp_path / "bare", identity_file=None, allow_agent=allow_agent)
        (tmp_path / "bare" / "known_hosts").write_text(sshd.known_hosts_line())
        with pytest.raises(DeviceError, match="no key to log in") as caught:
            open_session(resolve_device(str(bare)))
        assert ("allow_agent = false" in str(caught.value)) is not allow_agent, caught.value
