"""Time building one search candidate: prune, BN recalibration, export, int8, evaluation on 2,000 val images.

    nice python benchmarks/build_candidate.py --example fashion-mnist --arch resnet --repeats 5

This is the host-side cost of every trial of `edgecompress tune` before the device measures anything. The plan is
the acceptance plan (every group 50%, int8). Prints one JSON object with the median of each stage over the repeats;
the figure goes in docs/compression.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from edgecompress.compress import (
    CompressionPlan,
    apply_plan,
    build_artifact,
    evaluate_artifact,
    search_space,
)
from edgecompress.workload import load_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default="fashion-mnist")
    parser.add_argument("--arch", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--val", type=int, default=2000, help="validation images evaluated")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--quant", default="int8", choices=("fp32", "fp16", "int8"))
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    workload = load_workload(example=args.example, arch=args.arch, val_limit=args.val)
    base = workload.build_model()
    space = search_space(base, workload.input_shape, workload.ignore)
    setup_s = time.perf_counter() - start
    # round_to=1 as docs/compression.md's timings were measured (the default is 8).
    plan = CompressionPlan(ratios={g.name: args.ratio for g in space.groups}, quant=args.quant, round_to=1)

    stages: dict[str, list[float]] = {"prune_and_bn_recalibration": [], "export_check_quantize": [], "evaluate": []}
    totals, scores = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        pruned = apply_plan(base, plan, workload, space)
        t1 = time.perf_counter()
        artifact = build_artifact(pruned, plan, workload, opset=args.opset)
        t2 = time.perf_counter()
        scores.append(evaluate_artifact(artifact, workload))
        t3 = time.perf_counter()
        stages["prune_and_bn_recalibration"].append(t1 - t0)
        stages["export_check_quantize"].append(t2 - t1)
        stages["evaluate"].append(t3 - t2)
        totals.append(t3 - t0)
    print(
        json.dumps(
            {
                "workload": workload.name,
                "plan": plan.to_json(),
                "val_images": args.val,
                "repeats": args.repeats,
                "candidate_seconds_median": round(statistics.median(totals), 2),
                "candidate_seconds_min": round(min(totals), 2),
                "candidate_seconds_max": round(max(totals), 2),
                "stage_seconds_median": {k: round(statistics.median(v), 2) for k, v in stages.items()},
                "workload_setup_seconds": round(setup_s, 2),
                "metric": scores[-1],
                "torch_threads": args.threads,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
