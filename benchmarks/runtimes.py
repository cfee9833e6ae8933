"""fp32 and int8 latency of one reference network on this machine, ONNX Runtime against TFLite, in one run.

    nice python benchmarks/runtimes.py [--example fashion-mnist] [--arch resnet] [--rounds 5] [--runs 300]
        [--threads 1] [--json out.json]

Builds the four artifacts with edgecompress's own pipeline (ONNX opset 17 fp32 and static int8 QDQ; TFLite fp32
and PT2E int8 from litert-torch), scores each on the host with the same bytes, then measures them on the local
agent over the device protocol, alternating the four in every round so that all see the same machine state. Prints
a Markdown table (median over rounds of each round's mean and p50/p99) and, with --json, the raw figures.
When the example's checkpoint is not shipped yet it says so and falls back to the digits CNN.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

from edgecompress.compress import CompressionPlan, build_artifact, evaluate_artifact
from edgecompress.config import DeviceProfile, MeasureSettings, PowerSettings
from edgecompress.device import measure_request, open_session
from edgecompress.errors import WorkloadError
from edgecompress.observe import observe
from edgecompress.workload import load_workload


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default="fashion-mnist")
    parser.add_argument("--arch", default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--val-limit", type=int, default=2000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    try:
        workload = load_workload(example=args.example, arch=args.arch, val_limit=args.val_limit)
    except WorkloadError as exc:
        print(f"note: {exc}; using the digits CNN instead", file=sys.stderr)
        workload = load_workload(example="digits", val_limit=args.val_limit)
    model = workload.build_model().eval()

    artifacts = {}
    for fmt in ("onnx", "tflite"):
        for quant in ("fp32", "int8"):
            t0 = time.perf_counter()
            artifact = build_artifact(model, CompressionPlan(quant=quant), workload, opset=17, format=fmt)
            build_s = time.perf_counter() - t0
            accuracy = evaluate_artifact(artifact, workload, limit=args.val_limit)
            artifacts[(fmt, quant)] = (artifact, build_s, accuracy)
            print(
                f"built {fmt} {quant}: {artifact.size_bytes} bytes in {build_s:.1f} s, accuracy {accuracy:.4f}",
                file=sys.stderr,
            )

    # The local agent, timing like the built-in local profile but with fixed threads and no power sampling.
    profile = DeviceProfile(
        name="local",
        measure=MeasureSettings(runs=args.runs, min_seconds=0.5, max_seconds=30),
        power=PowerSettings(source="none"),
    )
    rows: dict[tuple[str, str], list[dict[str, float]]] = {key: [] for key in artifacts}
    with open_session(profile) as session:
        hello = session.hello()
        shas = {key: session.put_model(a.data) for key, (a, _, _) in artifacts.items()}
        for r in range(args.rounds):
            for key, (artifact, _, _) in artifacts.items():
                spec = measure_request(profile, runtime=artifact.runtime, threads=args.threads)
                stats = observe(session, shas[key], artifact.size_bytes, spec).latency
                rows[key].append(
                    {"mean_ms": stats.mean_ms, "p50_ms": stats.p50_ms, "p99_ms": stats.p99_ms, "count": stats.count}
                )
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    versions = {rt["name"]: rt.get("version") for rt in hello.get("runtimes") or []}
    print(
        f"\n{workload.name}, {args.threads} thread(s), {args.rounds} rounds x >= {args.runs} runs, "
        f"{platform.processor() or platform.machine()}, onnxruntime {versions.get('onnxruntime')}, "
        f"TFLite ({(hello.get('runtimes') or [{}])[-1].get('module', 'tflite')}) {versions.get('tflite')}\n"
    )
    print("| runtime | format | size (KB) | host accuracy | mean (ms) | p50 (ms) | p99 (ms) | mean range over rounds |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    result = []
    for (fmt, quant), (artifact, build_s, accuracy) in artifacts.items():
        runs = rows[(fmt, quant)]
        med = {k: statistics.median(r[k] for r in runs) for k in ("mean_ms", "p50_ms", "p99_ms")}
        lo, hi = min(r["mean_ms"] for r in runs), max(r["mean_ms"] for r in runs)
        runtime = "ONNX Runtime" if fmt == "onnx" else "TFLite (XNNPACK)"
        print(
            f"| {runtime} | {quant} | {artifact.size_bytes / 1024:.1f} | {accuracy:.4f} | {med['mean_ms']:.4f} | "
            f"{med['p50_ms']:.4f} | {med['p99_ms']:.4f} | {lo:.4f}-{hi:.4f} |"
        )
        result.append(
            {
                "format": fmt,
                "quant": quant,
                "size_bytes": artifact.size_bytes,
                "accuracy": accuracy,
                "build_s": build_s,
                "rounds": runs,
                **med,
            }
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(
                {"workload": workload.name, "threads": args.threads, "versions": versions, "rows": result},
                handle,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
