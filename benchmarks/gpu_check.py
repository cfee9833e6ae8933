"""Host compute on a GPU: the digits and Fashion-MNIST tune runs with --host-device cuda beside --host-device cpu.

For a machine with a CUDA GPU (not needed by the tests). Each run uses the local device and the same seed; the table
gives wall time, the final accuracy and whether the budgets were met, per workload and host device. The accuracies
should agree within the noise of distillation on another device (float reductions differ), and the CUDA runs should
be faster where fine-tuning dominates (Fashion-MNIST).

    python benchmarks/gpu_check.py --out bench-runs/gpu [--workloads digits fashion-mnist]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

RUNS = {
    "digits": ["--example", "digits", "--budget", "latency.p50<=2x", "--budget", "size<=40kB"],
    "fashion-mnist": ["--example", "fashion-mnist", "--arch", "mobilenetv2", "--budget", "latency.p50<=1.5x"],
}
COMMON = ["--rounds", "2", "--trials-per-round", "4", "--finetune-steps", "300", "--seed", "0", "--val-limit", "1000"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-runs/gpu"))
    parser.add_argument("--workloads", nargs="+", default=list(RUNS), choices=list(RUNS))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU seen by torch: nothing to compare", file=sys.stderr)
        return 2
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print("| workload | host device | wall s | final accuracy | met |")
    print("|---|---|---|---|---|")
    env = dict(os.environ, XDG_CACHE_HOME=str(args.out / "cache"))
    for workload in args.workloads:
        for device in ("cpu", "cuda"):
            out = args.out / f"{workload}-{device}"
            if not (out / "results.json").exists():
                started = time.monotonic()
                command = [sys.executable, "-m", "edgecompress", "tune", *RUNS[workload], *COMMON]
                subprocess.run([*command, "--host-device", device, "--out", str(out)], env=env, check=False)
                (out / "wall_s").write_text(f"{time.monotonic() - started:.1f}")
            results = json.loads((out / "results.json").read_text())
            final = results.get("final") or {}
            recorded = (results.get("device") or {}).get("host_device")
            wall = (out / "wall_s").read_text() if (out / "wall_s").exists() else "?"
            accuracy = f"{final['accuracy']:.4f}" if final.get("met") else "-"
            print(f"| {workload} | {recorded} | {wall} | {accuracy} | {final.get('met')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
