"""A by-hand check (not in the suite: ~3 minutes): a shared run's host killed mid-round resumes with --resume while a
worker keeps working, and every round ends with its planned number of complete trials.

    python scripts/shared_resume_check.py [FOLDER]

Starts a throwaway PostgreSQL server (tests/postgres.py), `tune --storage` on the digits example (2 rounds of 5) and
one `edgecompress worker`; SIGKILLs the run's host once it has a trial in flight in round 2; runs `tune --resume`;
prints each round's trials (state, host, fail reason). Expected: the killed host's trial failed as stale, its plan
evaluated after the resume, 5 complete trials a round, the worker's exit 0.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from postgres import start_postgres, stop_postgres  # noqa: E402

QUICK = ["--runs", "20", "--min-seconds", "0", "--finetune-steps", "5", "--val-limit", "200"]
QUICK += ["--no-quant-probe", "--no-screen", "--drift-wait", "0"]


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="shared-resume-"))
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    server = start_postgres(root / "pg")
    url = server.url()
    env = dict(os.environ, XDG_CACHE_HOME=str(root / "cache"), COLUMNS="200")
    args = ["--example", "digits", "--budget", "latency.p50<=3x", "--rounds", "2", "--trials-per-round", "5"]
    args += [*QUICK, "--storage", url]

    def trials(t: int) -> list[optuna.trial.FrozenTrial]:
        try:
            return optuna.load_study(study_name=f"tune-digits/round-{t}", storage=url).get_trials(deepcopy=False)
        except KeyError:
            return []

    try:
        run = subprocess.Popen(
            [sys.executable, "-m", "edgecompress", "tune", *args, "--out", str(root / "run")],
            env=env,
            stdout=(root / "run.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        worker = subprocess.Popen(
            [sys.executable, "-m", "edgecompress", "worker", "--storage", url, "--run", "tune-digits"]
            + ["--out", str(root / "worker")],
            env=dict(env, XDG_CACHE_HOME=str(root / "cache-worker")),
            stdout=(root / "worker.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        started = time.time()
        while time.time() - started < 600 and not any(
            t.state.name == "RUNNING" and str(t.user_attrs.get("worker", "")).startswith("tune@") for t in trials(1)
        ):
            time.sleep(0.3)
        run.send_signal(signal.SIGKILL)
        run.wait()
        print(f"killed the run's host in round 2 after {time.time() - started:.0f} s")
        resumed = subprocess.run(
            [sys.executable, "-m", "edgecompress", "tune", "--resume", str(root / "run")],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        print("resume exit", resumed.returncode)
        print("worker exit", worker.wait(timeout=300))
        for t in range(2):
            rows = [
                (x.number, x.state.name, x.user_attrs.get("worker"), x.user_attrs.get("fail_reason")) for x in trials(t)
            ]
            print(f"round {t + 1}:", rows)
    finally:
        stop_postgres(server)


if __name__ == "__main__":
    main()
