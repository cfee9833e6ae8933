"""Scaling a tune run out: the overlap decision, pools of devices (two local agents, two SSH devices), members that
go away, and workers on another host joining a run through a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from postgres import PostgresServer, serve_postgres
from sshd import SshServer, outage, restart, serve_for_tests, write_profile

from edgecompress.config import DeviceProfile, SshSettings, resolve_device, resolve_pool
from edgecompress.device import DevicePool, DeviceUnavailable, MemberAway, open_session
from edgecompress.errors import ConfigError, DeviceError
from edgecompress.search._scale import outliers, overlap_plan

QUICK = [
    "--runs",
    "20",
    "--min-seconds",
    "0",
    "--finetune-steps",
    "5",
    "--val-limit",
    "200",
    "--no-quant-probe",
    "--no-screen",
]
QUICK += ["--drift-wait", "0", "--warmup-seconds", "0.05"]
TUNE = ["--example", "digits", "--budget", "latency.p50<=3x", "--rounds", "1", "--trials-per-round", "4"]

# -- decisions ------------------------------------------------------------------------------------------------------


def test_remote_devices_overlap_and_a_local_one_only_on_cores_of_its_own() -> None:
    pi = DeviceProfile(name="pi", transport="ssh", ssh=SshSettings(host="pi"))
    local, local2 = DeviceProfile(name="local"), DeviceProfile(name="local#2")
    assert overlap_plan("auto", [pi], [0, 1]).overlap
    assert overlap_plan("auto", [pi], [0, 1]).host_cpus == ()  # the device's cores are not the host's
    shared = overlap_plan("auto", [local], [0, 1])
    assert not shared.overlap
    assert "share 2 cores" in shared.describe()
    pinned = overlap_plan("auto", [local], list(range(8)))
    assert pinned.overlap
    assert pinned.host_cpus == (0, 1, 2, 3)
    assert pinned.agent_cpus == {"local": (4, 5, 6, 7)}
    two = overlap_plan("auto", [local, local2], list(range(6)))
    assert two.agent_cpus == {"local": (2, 3), "local#2": (4, 5)}
    assert not overlap_plan("no", [pi], [0, 1]).overlap
    forced = overlap_plan("yes", [local], [0, 1])
    assert forced.overlap
    assert forced.host_cpus == ()


def test_a_member_whose_original_is_off_the_median_is_named_with_why() -> None:
    values = {"a": {"latency.p50": 2.0}, "b": {"latency.p50": 2.1}, "c": {"latency.p50": 3.0}}
    found = outliers(values, ["latency.p50"], tolerance=0.15)
    assert list(found) == ["c"]
    assert "43% off the pool's median" in found["c"]
    assert outliers(values, ["latency.p50"], tolerance=0.5) == {}
    assert outliers({"a": {"latency.p50": None}, "b": {"latency.p50": 2.0}}, ["latency.p50"], 0.1) == {}


def test_a_device_named_twice_is_two_members_with_caches_of_their_own(tmp_path: Path) -> None:
    members, settings = resolve_pool(["local", "local"], user_dir=tmp_path)
    assert [p.name for _, p in members] == ["local", "local#2"]
    assert members[0][1].cache_dir != members[1][1].cache_dir
    assert settings.tolerance == 0.15


def test_a_pool_profile_stands_for_its_members_and_single_device_commands_refuse_it(
    tmp_path: Path, tiny_onnx: Path
) -> None:
    (tmp_path / "a.toml").write_text('name = "bench-a"\n')
    (tmp_path / "b.toml").write_text('name = "bench-b"\n')
    pool = tmp_path / "lab.toml"
    pool.write_text('name = "lab"\n[pool]\nmembers = ["a.toml", "b.toml"]\ntolerance = 0.3\n')
    members, settings = resolve_pool([str(pool)], user_dir=tmp_path)
    assert [p.name for _, p in members] == ["bench-a", "bench-b"]
    assert members[0][0] == str(tmp_path / "a.toml")  # check.toml names a member it can reach alone
    assert settings.tolerance == 0.3
    with pytest.raises(ConfigError, match="is a pool; this command measures on one device: give one of a.toml"):
        resolve_device(str(pool))
    result = subprocess.run(
        [sys.executable, "-m", "edgecompress", "bench", str(tiny_onnx), "--device", str(pool)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "is a pool" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- the pool on real local agents ------------------------------------------------------------------------------------


@pytest.fixture()
def two_agents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    members, _ = resolve_pool(["local", "local"])
    sessions = {p.name: open_session(p) for _, p in members}
    yield sessions
    for session in sessions.values():
        session.close()


def test_a_member_that_stops_answering_is_away_its_work_moves_on_and_it_rejoins(two_agents: dict) -> None:
    events: list[str] = []
    pool = DevicePool(two_agents, on_event=events.append, wait_s=30, poll_s=0.2)
    transport = two_agents["local"].transport
    python = transport.python
    with pytest.raises(MemberAway), pool.lease(member="local"):
        # The device goes away in the middle of the work: its agent cannot be started again.
        transport.python = "/nonexistent/python"
        two_agents["local"].close()
        raise DeviceError("link lost")
    assert any("does not answer" in e and "its work moves to local#2" in e for e in events), events
    with pool.lease() as lease:
        assert lease.member == "local#2"  # the away member gets no work
    transport.python = python  # back
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any("is back after" in e for e in events):
        time.sleep(0.1)
    with pool.lease(member="local") as lease:
        assert lease.session.hello()["agent_version"]
    stats = pool.stats()["members"]
    assert stats["local"]["leases_lost"] == 1
    assert stats["local"]["failures"] == 0  # not the work's failure: it does not count towards dropping the member
    pool.close()


def test_a_lease_waits_for_an_away_pool_at_most_the_device_wait(two_agents: dict) -> None:
    pool = DevicePool({"local": two_agents["local"]}, wait_s=1.0, poll_s=0.2)
    two_agents["local"].transport.python = "/nonexistent/python"
    two_agents["local"].close()
    with pytest.raises(MemberAway), pool.lease():
        raise DeviceError("link lost")
    started = time.monotonic()
    with pytest.raises(DeviceUnavailable, match="no device of the pool came back within 1 s"), pool.lease():
        pass
    assert time.monotonic() - started < 10
    pool.close()


# -- tune on pools ---------------------------------------------------------------------------------------------------


def _trials(storage: str, name: str = "tune-digits/round-0") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def _none_lost_or_repeated(trials: list[optuna.trial.FrozenTrial], planned: int) -> None:
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == planned, [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    evaluated = [json.dumps(t.params, sort_keys=True) for t in complete if "duplicate_of" not in t.user_attrs]
    assert len(evaluated) == len(set(evaluated)), evaluated  # no plan built and measured twice
    failed = [t for t in trials if t.state.name == "FAIL"]
    for trial in failed:  # a trial lost to a device or a host is queued again, and its plan evaluated
        assert not trial.user_attrs["fail_reason"].startswith("device:"), trial.user_attrs["fail_reason"]
        assert json.dumps(trial.params, sort_keys=True) in evaluated


def _tune(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edgecompress", "tune", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _has_complete(storage: str) -> bool:
    """Whether the run's first round has a complete trial (False while its storage does not exist yet)."""
    try:
        return any(t.state.name == "COMPLETE" for t in _trials(storage))
    except Exception:
        return False


def _agents_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines()]
    return [int(p) for p, pp, args in rows if int(pp) == pid and "edgecompress_agent" in args]


def _when(condition, timeout_s: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None and not condition():
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()
    assert condition()


def test_two_local_agents_measure_one_run_and_an_agent_killed_mid_measure_costs_no_trial(tmp_path: Path) -> None:
    pool = tmp_path / "two.toml"
    # Both agents share this machine's cores, so their figures differ more than real boards of one kind would.
    pool.write_text('name = "two"\n[pool]\nmembers = ["local", "local"]\ntolerance = 5.0\n')
    out = tmp_path / "run"
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), COLUMNS="200")
    args = [*TUNE[:-1], "6", "--device", str(pool), *QUICK, "--out", str(out)]
    process = _tune(args, env)
    storage = f"sqlite:///{out / 'study.sqlite3'}"

    def measuring() -> bool:
        return _has_complete(storage) and len(_agents_of(process.pid)) == 2

    _when(measuring, 300, process)
    os.kill(_agents_of(process.pid)[0], signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode in (0, 1), stdout + stderr
    trials = _trials(storage)
    _none_lost_or_repeated(trials, 6)
    members = {t.user_attrs.get("member") for t in trials if t.user_attrs.get("member")}
    assert members == {"local", "local#2"}
    assert "on local#2" in stdout
    results = json.loads((out / "results.json").read_text())
    scale = results["device"]["scale"]
    assert set(scale["members"]) == {"local", "local#2"}
    assert scale["in_flight_max"] == 2
    assert results["device"]["overlap"]["on"] is False  # 2 cores: the host and the agents would time each other
    assert set(results["base"]["members"]["values"]) == {"local", "local#2"}  # each measured the original
    assert "devices: local " in stdout


@pytest.fixture()
def two_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SshServer, SshServer]]:
    first = serve_for_tests(tmp_path_factory)
    second = serve_for_tests(tmp_path_factory)
    yield next(first), next(second)
    for server in (first, second):
        next(server, None)


def test_two_ssh_devices_one_goes_away_mid_run_its_trial_moves_and_it_rejoins(
    two_sshd: tuple[SshServer, SshServer], tmp_path: Path
) -> None:
    a, b = two_sshd
    profiles = []
    for server, name in ((a, "pi-a"), (b, "pi-b")):
        profile = write_profile(server, tmp_path / name, name=name)
        (tmp_path / name / "known_hosts").write_text(server.known_hosts_line())
        profiles.append(profile)
    pool = tmp_path / "pis.toml"
    members = ", ".join(f'"{p}"' for p in profiles)
    pool.write_text(f'name = "pis"\n[pool]\nmembers = [{members}]\ntolerance = 5.0\n')
    out = tmp_path / "run"
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), COLUMNS="200")
    args = [*TUNE[:-1], "6", "--device", str(pool), *QUICK, "--device-wait", "120", "--out", str(out)]
    process = _tune(args, env)
    storage = f"sqlite:///{out / 'study.sqlite3'}"

    _when(lambda: _has_complete(storage), 300, process)
    outage(a)
    time.sleep(15)  # longer than the link's own retries: pi-a is away
    restart(a)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode in (0, 1), stdout + stderr
    _none_lost_or_repeated(_trials(storage), 6)
    # The measurement pi-a was doing when it went away ran again (on pi-b, the idle member): whether pi-a was
    # still away when the link gave up ("does not answer": away, rejoins later) or already back (the link broke).
    assert "measuring again (2 of 3 tries)" in stdout, stdout
    assert "device pi-a does not answer" in stdout or "the link to device pi-a broke" in stdout
    results = json.loads((out / "results.json").read_text())
    measured_by = [t["member"] for t in results["trials"] if t["state"] == "COMPLETE"]
    assert "pi-b" in measured_by
    # Away (it did not answer after the link broke): it rejoined (the knocker said so) or the run ended while it was
    # away, never silently out of the pool. (When it answered again at once the link broke but it never left.)
    away_at_end = results["device"]["scale"]["members"]["pi-a"]["away"]
    if "device pi-a does not answer" in stdout:
        assert "device pi-a is back after" in stdout or away_at_end, stdout
    else:
        assert not away_at_end, stdout


# -- several hosts on PostgreSQL ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    yield from serve_postgres(tmp_path_factory)


def test_two_workers_join_a_run_on_postgresql_and_a_worker_killed_mid_trial_costs_no_trial(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.url()
    env = dict(os.environ, COLUMNS="200")
    tune = subprocess.Popen(
        [sys.executable, "-m", "edgecompress", "tune", *TUNE[:4], "--rounds", "2", "--trials-per-round", "5"]
        # The profile's warm-up (0.5 s a window): round 1 must outlast the workers' start-up (imports, the run's
        # record, the original) for one to be killed in it; with QUICK's the run's host can finish it alone.
        + [*QUICK, "--warmup-seconds", "0.5", "--storage", url, "--out", str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env, XDG_CACHE_HOME=str(tmp_path / "cache-tune")),
    )

    def worker(name: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "edgecompress", "worker", "--storage", url, "--run", "tune-digits"]
            + ["--out", str(tmp_path / name)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env, XDG_CACHE_HOME=str(tmp_path / f"cache-{name}")),
        )

    kept, doomed = worker("w1"), worker("w2")

    def doomed_is_measuring() -> bool:
        try:
            trials = _trials(url)
        except Exception:
            return False
        name = f"worker@{_hostname()}-{doomed.pid}"
        return any(t.state.name == "RUNNING" and t.user_attrs.get("worker") == name for t in trials)

    _when(doomed_is_measuring, 600, tune)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    stdout, stderr = tune.communicate(timeout=900)
    assert tune.returncode in (0, 1), stdout + stderr
    worker_out, worker_err = kept.communicate(timeout=120)
    assert kept.returncode == 0, worker_out + worker_err
    assert "worker done" in worker_out
    for t in range(2):
        trials = _trials(url, f"tune-digits/round-{t}")
        _none_lost_or_repeated(trials, 5)
        if t == 0:
            stale = [tr for tr in trials if tr.state.name == "FAIL"]
            assert [tr.user_attrs["fail_reason"] for tr in stale] == ["stale: its host stopped keeping its heartbeat"]
    rounds = [_trials(url, f"tune-digits/round-{t}") for t in range(2)]
    hosts = {tr.user_attrs.get("worker", "").split("@")[0] for trials in rounds for tr in trials}
    assert hosts == {"tune", "worker"}
    # The second round's trials were worked by the surviving worker too: it followed the round barrier.
    second = {tr.user_attrs.get("worker") for tr in _trials(url, "tune-digits/round-1")}
    assert f"worker@{_hostname()}-{kept.pid}" in second
    assert "stopped beating; its parameters are queued again" in stdout + worker_out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["final"] is not None


def _hostname() -> str:
    import socket

    return socket.gethostname()
