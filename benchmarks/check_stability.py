"""Does `edgecompress check` stay quiet on an unchanged model? The same model checked N times in a row.

Exports a reference network once, then runs the real command line N times (default 10) with default settings on the
local device, each run taking the history's last passing run as its baseline, exactly as a nightly job would. Prints
one line per run (median, ratio to the baseline with its interval, verdict) and a summary; exits 1 if any run
reported a regression. With --then-wider, one more night checks the same network with every stage twice as wide
(same file name, so the same history series): that one should be caught. The results are recorded in docs/ci.md.

    nice python benchmarks/check_stability.py [--runs-of-check 10] [--model fashion_resnet|resnet18] [--then-wider]
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
from torch import nn

from edgecompress import zoo

SHAPES = {"fashion_resnet": (1, 1, 28, 28), "resnet18": (1, 3, 224, 224)}


def build(name: str, wider: bool) -> nn.Module:
    if not wider:
        return getattr(zoo, name)()
    if name == "fashion_resnet":
        return zoo.FashionResNet(widths=(32, 64, 128))
    raise SystemExit(f"--then-wider is defined for fashion_resnet only, not {name}")


def export(name: str, path: Path, wider: bool = False) -> Path:
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(build(name, wider).eval(), torch.randn(*SHAPES[name]), str(path), dynamo=False)
    return path


def check(model: Path, history: Path, result_path: Path, device: str, extra: list[str]) -> dict:
    command = [
        sys.executable,
        "-m",
        "edgecompress",
        "check",
        str(model),
        "--device",
        device,
        "--history",
        str(history),
        "--json",
        str(result_path),
        *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode not in (0, 1) or not result_path.exists():
        raise SystemExit(f"check exited {done.returncode}: {done.stderr.strip()}")
    return json.loads(result_path.read_text())


def describe(label: str, result: dict) -> tuple[str, float | None, bool]:
    regression = result["regressions"][0]
    r = regression.get("result")
    over = "alternating rounds" if r and r["method"] == "paired" else "baseline run(s)"
    figures = (
        "no baseline"
        if r is None
        else (
            f"ratio {r['ratio']:.3f} (CI {r['ci_low']:.3f}-{r['ci_high']:.3f} "
            f"over {r.get('baseline_runs') or 1} {over}, p={r['p_value']:.2g})"
        )
    )
    again = " after a re-measurement" if "suspected" in result["extra"] else ""
    if "side_by_side" in result["extra"]:
        first = result["extra"]["side_by_side"]["first"][0]["result"]["ratio"]
        again = f" (first measurement: ratio {first:.3f}, re-measured side by side)"
    line = (
        f"{label}: p50 {result['latency']['p50_ms']:.3f} ms, n={result['latency']['count']}, {figures}: "
        f"{regression['status']}{again}"
    )
    return line, None if r is None else r["ratio"], regression["status"] == "fail"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-of-check", type=int, default=10)
    parser.add_argument("--model", default="fashion_resnet", choices=sorted(SHAPES))
    parser.add_argument("--device", default="local")
    parser.add_argument("--then-wider", action="store_true", help="finally check a 2x wider network")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more flags for check")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        model = export(args.model, work / "same" / f"{args.model}.onnx")
        history = work / "history.jsonl"
        regressions, ratios = 0, []
        started = time.monotonic()
        for index in range(args.runs_of_check):
            result = check(model, history, work / f"run{index}.json", args.device, args.extra)
            line, ratio, failed = describe(f"run {index + 1:2d}", result)
            print(line, flush=True)
            ratios += [ratio] if ratio is not None else []
            regressions += failed
        elapsed = time.monotonic() - started
        spread = f"ratios {min(ratios):.3f}-{max(ratios):.3f}" if ratios else "no ratios"
        print(
            f"{args.model} on {args.device}: {args.runs_of_check} checks in {elapsed:.0f} s, {spread}, "
            f"{regressions} reported a regression",
            flush=True,
        )
        caught = True
        if args.then_wider:
            wider = export(args.model, work / "wider" / f"{args.model}.onnx", wider=True)
            line, _, caught = describe("2x wider", check(wider, history, work / "wider.json", args.device, args.extra))
            print(line + ("" if caught else "  <- NOT caught"))
    return 1 if regressions or not caught else 0


if __name__ == "__main__":
    sys.exit(main())
