"""Does channel alignment matter? The fashion-mnist ResNet pruned uniformly, channels rounded to 1 or to 8.

    python benchmarks/channel_alignment.py [--repeats 3] [--runs 300]

Builds the unpruned model and uniform plans at 25/40/60% with round_to 1 and 8, puts all of them on the local
device, and measures them round-robin (so all see the same machine state); prints the median p50 per model.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _roundrobin import round_robin_p50s

from edgecompress.compress import CompressionPlan, apply_plan, build_artifact, search_space
from edgecompress.config import resolve_device
from edgecompress.device import measure_request, open_session
from edgecompress.workload import load_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    workload = load_workload(example="fashion-mnist", val_limit=500)
    original = workload.build_model().eval()
    space = search_space(original, workload.input_shape, workload.ignore)
    artifacts = {"unpruned": build_artifact(original, CompressionPlan(), workload, opset=17)}
    for ratio in (0.25, 0.4, 0.6):
        for round_to in (1, 8):
            plan = CompressionPlan(ratios={g.name: ratio for g in space.groups}, round_to=round_to)
            pruned = apply_plan(original, plan, workload, space)
            artifacts[f"{ratio:.0%} pruned, round_to {round_to}"] = build_artifact(pruned, plan, workload, opset=17)
    profile = resolve_device("local")
    spec = measure_request(profile, runs=args.runs, min_seconds=0.3)
    session = open_session(profile)
    try:
        shas = {name: session.put_model(a.data) for name, a in artifacts.items()}
        p50s = round_robin_p50s(session, shas, spec, args.repeats)
    finally:
        session.close()
    for name, values in p50s.items():
        print(f"{name:<28} median p50 {statistics.median(values):.3f} ms  ({', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
