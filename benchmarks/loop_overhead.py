"""Where a tune run's time goes, per candidate, and how busy the device was.

    python benchmarks/loop_overhead.py RUN_DIR [RUN_DIR ...]

Reads the run folders of `edgecompress tune` (results.json and state.json) and prints, per run: the mean time per
candidate spent building on the host (prune, BatchNorm recalibration, export, quantize), evaluating accuracy on the
host, transferring the model, and measuring on the device (of which: loading the model and the timed window); the
device's busy fraction (candidate measurement time over the whole run's wall time); and the wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def summarize(run_dir: Path) -> dict[str, float]:
    results = json.loads((run_dir / "results.json").read_text())
    measured = [t for t in results["trials"] if t.get("timings")]
    if not measured:
        raise SystemExit(f"{run_dir}: no measured trials")
    timings = [t["timings"] for t in measured]
    load_s = [t["latency"]["load_ms"] / 1e3 for t in measured]
    window_s = [t["latency"]["count"] * t["latency"]["mean_ms"] / 1e3 for t in measured]
    durations = [t["duration_s"] for t in results["trials"] if t.get("duration_s")]
    trials_s = sum(durations)
    # The whole run (base measurement, trials, fine-tuning, confirmation) where the run recorded its span.
    wall_s = (results["finished_unix"] - results["started_unix"]) if results.get("started_unix") else trials_s
    measure_total = sum(t["measure_s"] for t in timings)
    return {
        "candidates": len(measured),
        "build_s": statistics.fmean(t["build_s"] for t in timings),
        "eval_s": statistics.fmean(t["eval_s"] for t in timings),
        "transfer_s": statistics.fmean(t["transfer_s"] for t in timings),
        "measure_s": statistics.fmean(t["measure_s"] for t in timings),
        "load_s": statistics.fmean(load_s),
        "window_s": statistics.fmean(window_s),
        "trial_s": statistics.fmean(durations),
        "busy_fraction": measure_total / wall_s if wall_s else float("nan"),
        "wall_min": wall_s / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    print(
        "| run | candidates | build s | host eval s | transfer s | measure s (load, timed window) | per trial s | "
        "device busy | run wall |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in args.runs:
        s = summarize(run)
        print(
            f"| {run.name} | {s['candidates']} | {s['build_s']:.2f} | {s['eval_s']:.2f} | {s['transfer_s']:.3f} | "
            f"{s['measure_s']:.2f} ({s['load_s']:.2f}, {s['window_s']:.2f}) | {s['trial_s']:.2f} | "
            f"{100 * s['busy_fraction']:.0f}% | {s['wall_min']:.1f} min |"
        )


if __name__ == "__main__":
    main()
