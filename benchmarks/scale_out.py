"""How busy the device is and how many trials an hour a tune run gets: 1 device without overlap, 1 device with
overlap, 2 devices (a pool), and 2 hosts (the run and a worker on PostgreSQL, one device each).
(docs/benchmarks.md, "Scale-out")

One piece per (setup, seed), resumable (a piece whose result file exists is skipped); each piece starts its own
noisy SSH devices (sshd inside a cgroup CPU quota of 30% of a core, benchmarks/_noisy_device.py: a loaded board) and,
for the workers, a throwaway PostgreSQL server (tests/postgres.py). Every setup runs the same tune: the
MobileNetV2-style Fashion-MNIST network at batch 32, one p50 budget relative to the original, one round of 24
trials (every one measured: --no-screen), no fine-tuning (the trials are what scales).

    python benchmarks/scale_out.py run --setup one --seed 0 --out benchmarks/results/scale-v1
    python benchmarks/scale_out.py run --setup one-overlap --seed 0 --out ...
    python benchmarks/scale_out.py run --setup two --seed 0 --out ...
    python benchmarks/scale_out.py run --setup two-hosts --seed 0 --out ...
    python benchmarks/scale_out.py report --out benchmarks/results/scale-v1

Figures are over the round's trials (the span of TrialPipeline.run_round): trials per hour, each device's busy
fraction (its time leased: upload and measurement), the host worker's busy fraction (building and scoring).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _noisy_device import noisy_device  # noqa: E402
from postgres import start_postgres, stop_postgres  # noqa: E402

SETUPS = ("one", "one-overlap", "two", "two-hosts")
TUNE = [
    "--example",
    "fashion-mnist",
    "--arch",
    "mobilenetv2",
    "--batch",
    "32",
    "--budget",
    "latency.p50<=0.7x",
    "--rounds",
    "1",
    "--trials-per-round",
    "24",
    "--finetune-steps",
    "0",
    "--val-limit",
    "1000",
    "--no-validate",
    "--no-screen",  # every candidate measured: the loop's throughput, not the screening's savings
]


def run_piece(setup: str, seed: int, out: Path) -> None:
    piece = out / f"{setup}-s{seed}.json"
    if piece.exists():
        print(f"{setup} seed {seed}: done already ({piece})")
        return
    work = Path(tempfile.mkdtemp(prefix=f"scale-{setup}-", dir=os.environ.get("BENCH_TMP")))
    env = dict(os.environ, XDG_CACHE_HOME=str(work / "cache"), COLUMNS="200")
    run_dir = work / "run"
    with ExitStack() as stack:
        devices = 1 if setup.startswith("one") else 2
        profiles = [
            stack.enter_context(noisy_device(work / f"noisy-{i}", name=f"edgecompress-scale-{i}"))
            for i in range(devices)
        ]
        args = [*TUNE, "--seed", str(seed), "--out", str(run_dir)]
        args += ["--overlap", "no" if setup == "one" else "auto"]
        worker = None
        started = time.time()
        if setup == "two-hosts":
            server = start_postgres(work / "postgres")
            stack.callback(stop_postgres, server)
            args += ["--device", str(profiles[0]), "--storage", server.url()]
            tune = subprocess.Popen([sys.executable, "-m", "edgecompress", "tune", *args], env=env, text=True)
            worker = subprocess.Popen(
                [sys.executable, "-m", "edgecompress", "worker", "--storage", server.url()]
                + ["--run", "tune-fashion-mnist", "--device", str(profiles[1]), "--out", str(work / "worker")],
                env=dict(env, XDG_CACHE_HOME=str(work / "cache-worker")),
                text=True,
            )
        elif devices == 2:
            # Two cgroups on one machine: the screening's default tolerance would leave one out on noise alone.
            pool = work / "pool.toml"
            members = ", ".join(f'"{p}"' for p in profiles)
            pool.write_text(f'name = "noisy-pair"\n[pool]\nmembers = [{members}]\ntolerance = 1.0\n')
            args += ["--device", str(pool)]
            tune = subprocess.Popen([sys.executable, "-m", "edgecompress", "tune", *args], env=env, text=True)
        else:
            args += ["--device", str(profiles[0])]
            tune = subprocess.Popen([sys.executable, "-m", "edgecompress", "tune", *args], env=env, text=True)
        code = tune.wait()
        if worker is not None:
            worker.wait(timeout=300)
    if code not in (0, 1):
        raise SystemExit(f"{setup} seed {seed}: tune exited {code}; see {run_dir}")
    results = json.loads((run_dir / "results.json").read_text())
    scale = results["device"]["scale"]
    trials = [t for t in results["trials"] if t["state"] in ("COMPLETE", "FAIL")]
    counted = [t for t in trials if not str(t.get("fail_reason") or "").startswith(("stale", "surplus", "device unav"))]
    worker_scale = None
    if setup == "two-hosts":
        log = (work / "worker" / "tune.log").read_text()
        worker_scale = log.strip().splitlines()[-1]
    record = {
        "setup": setup,
        "seed": seed,
        "trials": len(counted),
        "trials_wall_s": scale["trials_wall_s"],
        "trials_per_hour": 3600 * len(counted) / scale["trials_wall_s"],
        "busy_in_trials": {n: m.get("busy_fraction_in_trials") for n, m in scale["members"].items()},
        "busy_over_run": {n: m.get("busy_fraction") for n, m in scale["members"].items()},
        "host_busy_s": scale["host_busy_s"],
        "in_flight_max": scale["in_flight_max"],
        "overlap": results["device"]["overlap"],
        "by_host": _by_host(results["trials"]),
        "worker_line": worker_scale,
        "run_wall_s": time.time() - started,
        "loop": _loop(results),
        "run_dir": str(run_dir),
    }
    out.mkdir(parents=True, exist_ok=True)
    piece.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


def _by_host(trials: list[dict]) -> dict[str, int]:
    hosts: dict[str, int] = {}
    for t in trials:
        if t["state"] == "COMPLETE":
            who = (t.get("worker") or "tune@").split("@")[0]
            hosts[who] = hosts.get(who, 0) + 1
    return hosts


def _loop(results: dict) -> dict[str, float]:
    """The per-stage loop overhead of the measured trials (benchmarks/loop_overhead.py's columns)."""
    timings = [t["timings"] for t in results["trials"] if t.get("timings")]
    return {key: statistics.fmean(t[key] for t in timings) for key in ("build_s", "eval_s", "transfer_s", "measure_s")}


def report(out: Path) -> None:
    pieces = [json.loads(p.read_text()) for p in sorted(out.glob("*-s*.json"))]
    by_setup = {s: [p for p in pieces if p["setup"] == s] for s in SETUPS}
    print(
        "| setup | seeds | trials/hour | device busy in trials | host worker busy | in flight | build s | measure s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rates: dict[str, float] = {}
    for setup, runs in by_setup.items():
        if not runs:
            continue
        rate = [r["trials_per_hour"] for r in runs]
        rates[setup] = statistics.fmean(rate)
        busy = [b for r in runs for b in r["busy_in_trials"].values() if b is not None]
        host = [r["host_busy_s"] / r["trials_wall_s"] for r in runs]
        build = [r["loop"]["build_s"] + r["loop"]["eval_s"] for r in runs]
        measure = [r["loop"]["measure_s"] for r in runs]
        print(
            f"| {setup} | {len(runs)} | {_range(rate, '.0f')} | {_range([100 * b for b in busy], '.0f')}% | "
            f"{_range([100 * h for h in host], '.0f')}% | {max(r['in_flight_max'] for r in runs)} | "
            f"{_range(build, '.2f')} | {_range(measure, '.2f')} |"
        )
    if "one" in rates:
        for setup in ("one-overlap", "two", "two-hosts"):
            if setup in rates:
                print(f"{setup}: {rates[setup] / rates['one']:.2f}x the trials per hour of one device without overlap")
    if "one-overlap" in rates and "two" in rates:
        print(f"two: {rates['two'] / rates['one-overlap']:.2f}x the trials per hour of one device with overlap")


def _range(values: list[float], spec: str) -> str:
    low, high = min(values), max(values)
    return f"{low:{spec}}" if f"{low:{spec}}" == f"{high:{spec}}" else f"{low:{spec}}-{high:{spec}}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--setup", choices=SETUPS, required=True)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", type=Path, required=True)
    rep = sub.add_parser("report")
    rep.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "run":
        run_piece(args.setup, args.seed, args.out)
    else:
        report(args.out)


if __name__ == "__main__":
    main()
