"""Does `edgecompress check` stay quiet on an unchanged model? The same model checked N times in a row.

Exports a reference network once, then runs the real command line N times (default 10) with default settings on the
local device, each run taking the history's last passing run as its baseline, exactly as a nightly job would. Prints
one line per run (median, ratio to the baseline with its interval, verdict) and a summary; exits 1 if any run
reported a regression. The results are recorded in docs/ci.md.

    nice python benchmarks/check_stability.py [--runs-of-check 10] [--model fashion_resnet|digits_cnn|resnet18]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from edgecompress import zoo

SHAPES = {"fashion_resnet": (1, 1, 28, 28), "digits_cnn": (1, 1, 8, 8), "resnet18": (1, 3, 224, 224)}


def export(name: str, path: Path) -> Path:
    torch.manual_seed(0)
    model = getattr(zoo, name)().eval()
    torch.onnx.export(model, torch.randn(*SHAPES[name]), str(path), dynamo=False)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-of-check", type=int, default=10)
    parser.add_argument("--model", default="fashion_resnet", choices=sorted(SHAPES))
    parser.add_argument("--device", default="local")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more flags for check")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        model = export(args.model, work / f"{args.model}.onnx")
        history = work / "history.jsonl"
        regressions = 0
        ratios = []
        started = time.monotonic()
        for index in range(args.runs_of_check):
            result_path = work / f"run{index}.json"
            command = [sys.executable, "-m", "edgecompress", "check", str(model), "--device", args.device,
                       "--history", str(history), "--json", str(result_path), *args.extra]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode not in (0, 1):
                print(done.stderr, file=sys.stderr)
                return 2
            result = json.loads(result_path.read_text())
            regression = result["regressions"][0]
            r = regression.get("result")
            figures = "no baseline" if r is None else (
                f"ratio {r['ratio']:.3f} (CI {r['ci_low']:.3f}-{r['ci_high']:.3f}, p={r['p_value']:.2g})")
            again = " after a re-measurement" if "suspected" in result["extra"] else ""
            print(f"run {index + 1:2d}: p50 {result['latency']['p50_ms']:.3f} ms, n={result['latency']['count']}, "
                  f"{figures}: {regression['status']}{again}", flush=True)
            if r is not None:
                ratios.append(r["ratio"])
            regressions += regression["status"] == "fail"
        elapsed = time.monotonic() - started
    spread = f"ratios {min(ratios):.3f}-{max(ratios):.3f}" if ratios else "no ratios"
    print(f"{args.model} on {args.device}: {args.runs_of_check} checks in {elapsed:.0f} s, {spread}, "
          f"{regressions} reported a regression")
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
