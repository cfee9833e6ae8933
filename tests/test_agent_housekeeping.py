"""What interrupted runs leave on a device: partial uploads and installs, pid files; names that are not sha256s."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from test_agent import Client

HOUR = 3600.0


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _serve(env: dict[str, str], *args: str, pidfile: Path | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "edgecompress_agent", *args, "serve"]
    if pidfile is not None:  # as the SSH start script does: the shell's pid, kept by exec, is the agent's
        command = ["sh", "-c", f'echo $$ > "{pidfile}" && exec "$@"', "sh", *command]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)


def _say_hello_and_bye(process: subprocess.Popen) -> None:
    client = Client(process)
    assert client.call("hello", protocol=[1])[0]["ok"]
    assert client.call("bye")[0]["ok"]
    assert process.wait(timeout=30) == 0


def test_a_sha256_with_a_trailing_newline_is_not_a_file_name(agent_process, agent_env):
    client = Client(agent_process)
    data = b"model bytes"
    sha = hashlib.sha256(data).hexdigest()
    for op, fields in (("has_model", {}), ("put_model", {"size": len(data), "offset": 0})):
        answer, _ = client.call(op, data if op == "put_model" else None, sha256=sha + "\n", **fields)
        assert not answer["ok"] and "64 lowercase hex digits" in answer["error"]["message"], answer
    models = Path(agent_env["XDG_CACHE_HOME"]) / "edgecompress" / "models"
    assert not [p.name for p in models.iterdir() if "\n" in p.name]


def test_abandoned_uploads_and_installs_are_removed_at_start_and_live_ones_kept(agent_env):
    cache = Path(agent_env["XDG_CACHE_HOME"]) / "edgecompress"
    (cache / "models").mkdir(parents=True)
    old_part, live_part = cache / "models" / f"{'a' * 64}.part", cache / "models" / f"{'b' * 64}.part"
    old_part.write_bytes(b"x" * 100)
    live_part.write_bytes(b"y" * 100)
    _age(old_part, 2 * HOUR)
    old_install, live_install = cache / "agent" / "0123abcd.partial-1a2b3c4d", cache / "agent" / "0123abcd.partial-5e6f"
    for folder in (old_install, live_install):
        (folder / "edgecompress_agent").mkdir(parents=True)
        (folder / "edgecompress_agent" / "server.py").write_text("# half an agent\n")
    _age(old_install, 2 * HOUR)
    _say_hello_and_bye(_serve(agent_env))
    assert not old_part.exists() and not old_install.exists()
    assert live_part.exists() and live_install.exists()  # another host may be uploading them right now


def test_partial_uploads_count_against_the_cache_bound(tmp_path):
    from edgecompress_agent.cache import ModelCache

    (tmp_path / f"{'c' * 64}.part").write_bytes(b"z" * 100)  # another host's upload under way
    cache = ModelCache(str(tmp_path), max_bytes=250)
    blobs = [bytes([i]) * 100 for i in range(2)]
    for blob in blobs:
        cache.write_chunk(hashlib.sha256(blob).hexdigest(), len(blob), 0, blob)
    assert [cache.status(hashlib.sha256(b).hexdigest())[0] for b in blobs] == [False, True]


def test_pid_files_of_agents_that_are_gone_are_removed_and_the_agent_removes_its_own(agent_env, agent_process):
    run = Path(agent_env["XDG_CACHE_HOME"]) / "edgecompress" / "run"
    run.mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    stranger = subprocess.Popen(["sleep", "60"])  # alive, but no agent: a pid recycled by another program
    try:
        (run / "gone.pid").write_text(f"{gone.pid}\n")
        (run / "recycled.pid").write_text(f"{stranger.pid}\n")
        (run / "other-agent.pid").write_text(f"{agent_process.pid}\n")  # another host's agent, still serving
        mine = run / "mine.pid"
        process = _serve(agent_env, pidfile=mine)
        Client(process).call("hello", protocol=[1])
        assert mine.read_text().strip() == str(process.pid)
        assert sorted(p.name for p in run.iterdir()) == ["mine.pid", "other-agent.pid"]
        Client(process).call("bye")
        assert process.wait(timeout=30) == 0
        assert sorted(p.name for p in run.iterdir()) == ["other-agent.pid"]
    finally:
        stranger.kill()
        stranger.wait()
