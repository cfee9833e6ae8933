"""tune against a real SSH device that goes away mid-run: the run waits for it and loses no trial; when it does not
come back in time the run stops, and --resume runs the trial that failed on the device again."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from sshd import SshServer, outage, restart, serve_for_tests, trusted_device

QUICK = ["--runs", "20", "--min-seconds", "0", "--finetune-steps", "5", "--val-limit", "200", "--no-quant-probe"]
QUICK += ["--no-screen"]  # every trial measured: the test counts them
QUICK += ["--warmup-seconds", "0.05"]


@pytest.fixture()
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    yield from serve_for_tests(tmp_path_factory)


def _complete(run_dir: Path) -> int:
    path = run_dir / "study.sqlite3"
    if not path.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:
        return 0


def _trials(run_dir: Path) -> list[tuple[str, str | None]]:
    storage = f"sqlite:///{run_dir / 'study.sqlite3'}"
    study = optuna.load_study(study_name="tune-digits/round-0", storage=storage)
    return [(t.state.name, t.user_attrs.get("fail_reason")) for t in study.trials]


def _tune(profile: Path, out: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    args = ["--example", "digits", "--budget", "latency.p50<=3x", "--rounds", "1", "--trials-per-round", "4"]
    return subprocess.Popen(
        [sys.executable, "-m", "edgecompress", "tune", "--device", str(profile), *args, *QUICK, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _when_a_trial_completed(out: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None and _complete(out) < 1:
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()


def test_an_outage_shorter_than_the_wait_costs_no_trial(sshd: SshServer, tmp_path: Path) -> None:
    profile = trusted_device(sshd, tmp_path / "device")
    out = tmp_path / "run"
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), COLUMNS="200")
    process = _tune(profile, out, env, "--out", str(out), "--device-wait", "120")
    _when_a_trial_completed(out, process)
    outage(sshd)
    back = threading.Timer(20.0, restart, args=(sshd,))  # the outage lasts 20 s: longer than the link's retries
    back.start()
    stdout, stderr = process.communicate(timeout=600)
    back.join()
    assert process.returncode in (0, 1), (stdout, stderr)
    assert "waiting up to 120 s" in stdout
    assert "is back after" in stdout
    trials = _trials(out)
    assert [s for s, _ in trials].count("COMPLETE") == 4, trials
    assert not [why for s, why in trials if s == "FAIL"], trials
    results = json.loads((out / "results.json").read_text())
    assert results["final"] is not None


def test_a_device_that_stays_away_stops_the_run_and_resume_runs_the_trial_again(
    sshd: SshServer, tmp_path: Path
) -> None:
    profile = trusted_device(sshd, tmp_path / "device")
    out = tmp_path / "run"
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), COLUMNS="200")
    process = _tune(profile, out, env, "--out", str(out), "--device-wait", "5")
    _when_a_trial_completed(out, process)
    outage(sshd)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 3, (stdout, stderr)
    assert "--resume" in stderr
    lost = [(s, why) for s, why in _trials(out) if s == "FAIL"]
    assert lost and all(why.startswith("device unavailable") for _, why in lost), lost
    restart(sshd)
    resumed = subprocess.run(
        [sys.executable, "-m", "edgecompress", "tune", "--resume", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert resumed.returncode in (0, 1), resumed.stderr
    trials = _trials(out)
    assert [s for s, _ in trials].count("COMPLETE") == 4, trials
    # The plans that failed on the device were evaluated after the resume, not counted as the candidates' failures.
    complete_params = [
        json.dumps(t.params, sort_keys=True)
        for t in optuna.load_study(
            study_name="tune-digits/round-0", storage=f"sqlite:///{out / 'study.sqlite3'}"
        ).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    ]
    failed_params = [
        json.dumps(t.params, sort_keys=True)
        for t in optuna.load_study(
            study_name="tune-digits/round-0", storage=f"sqlite:///{out / 'study.sqlite3'}"
        ).get_trials(states=(optuna.trial.TrialState.FAIL,))
    ]
    assert set(failed_params) <= set(complete_params)
