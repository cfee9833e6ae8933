"""How much latency can pruning buy? The reference networks pruned uniformly, measured at several batch sizes.

    python benchmarks/latency_floor.py [--archs resnet mobilenetv2] [--batches 1 8 32] [--repeats 3]

For each Fashion-MNIST reference network: the unpruned model and uniform plans at 40/60/80% of every group
(channels rounded to 8, as tune does), all on the local device in one session, measured round-robin at each batch
size (so all see the same machine state). Prints the median p50 per model and its ratio to the unpruned one: the
lowest ratio is about the tightest relative latency budget a search can meet there.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _roundrobin import round_robin_p50s

from edgecompress.compress import CompressionPlan, apply_plan, build_artifact, model_cost, search_space
from edgecompress.compress._export import INPUT_NAME
from edgecompress.config import resolve_device
from edgecompress.device import measure_request, open_session
from edgecompress.workload import load_workload

RATIOS = (0.0, 0.4, 0.6, 0.8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet", "mobilenetv2"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    profile = resolve_device("local")
    print("| network | batch | " + " | ".join(f"{r:.0%} pruned" for r in RATIOS) + " |")
    print("| --- | --- |" + " --- |" * len(RATIOS))
    with open_session(profile) as session:
        for arch in args.archs:
            workload = load_workload(example="fashion-mnist", arch=arch, val_limit=100)
            original = workload.build_model().eval()
            space = search_space(original, workload.input_shape, workload.ignore)
            shas, macs = {}, {}
            for ratio in RATIOS:
                plan = CompressionPlan(ratios={g.name: ratio for g in space.groups if ratio}, round_to=8)
                model = apply_plan(original, plan, workload, space) if ratio else original
                macs[ratio] = model_cost(model, workload.input_shape)[0]
                shas[ratio] = session.put_model(build_artifact(model, plan, workload, opset=17).data)
            for batch in args.batches:
                shapes = {INPUT_NAME: (batch, *workload.input_shape[1:])}
                spec = measure_request(profile, runs=args.runs, min_seconds=0.3, input_shapes=shapes)
                p50s = round_robin_p50s(session, shas, spec, args.repeats)
                medians = {r: statistics.median(v) for r, v in p50s.items()}
                cells = [f"{medians[r]:.3f} ms ({medians[r] / medians[0.0]:.2f}x)" for r in RATIOS]
                print(f"| {arch} | {batch} | " + " | ".join(cells) + " |", flush=True)
            print(
                f"| {arch} | MACs per input | "
                + " | ".join(f"{macs[r] / 1e6:.2f} M ({macs[r] / macs[0.0]:.2f}x)" for r in RATIOS)
                + " |"
            )


if __name__ == "__main__":
    main()
