"""Compression outcome at matched latency: the searched model against int8 alone and against uniform pruning.

    python benchmarks/compression_outcome.py RUN_DIR [--metric latency.p50] [--finetune-steps 450]

RUN_DIR is a finished `edgecompress tune` run on the local device with a built-in example. In one session on the
device this measures: the original (fp32), the original in int8 (no pruning), the run's final model, and a uniform
plan (one global ratio, found by bisection to land within 5% of the final model's latency) fine-tuned with the same
distillation budget the search spent in total. It prints speedup over the original and accuracy drop for each.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgecompress.compress import MAX_OPSET, MIN_OPSET, CompressionPlan, apply_plan, finetune, search_space
from edgecompress.config import TuneConfig, resolve_device
from edgecompress.device import max_opset_for, open_session
from edgecompress.search import tune_measure_request
from edgecompress.search._candidate import build_candidate, measure_candidate
from edgecompress.workload import load_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--metric", default="latency.p50")
    parser.add_argument("--bisections", type=int, default=6)
    args = parser.parse_args()
    results = json.loads((args.run_dir / "results.json").read_text())
    config = TuneConfig.model_validate(results["config"])
    if not (results.get("final") or {}).get("met"):
        raise SystemExit(f"{args.run_dir}: the run did not meet its budgets; nothing to compare")
    workload = load_workload(example=config.example, arch=config.arch, val_limit=config.val_limit)
    profile = resolve_device(config.device)
    spec = tune_measure_request(profile, config, workload.input_shape)
    original = workload.build_model().eval()
    space = search_space(original, workload.input_shape, workload.ignore)
    runtime = next(r for r in results["device"]["hello"]["runtimes"] if r["name"] == "onnxruntime")
    opset = max_opset_for(runtime["version"], exporter_max=MAX_OPSET) or MIN_OPSET
    finetune_steps = config.finetune_steps * len(results["rounds"])
    session = open_session(profile)
    rows = []

    def measure(label: str, model, plan: CompressionPlan) -> dict[str, Any]:
        _, candidate = build_candidate(model, plan, workload, space, opset, config.val_limit, model=model)
        observation = measure_candidate(session, candidate.artifact, spec, []).observation
        row = {
            "model": label,
            "accuracy": candidate.accuracy,
            "latency": observation.values[args.metric],
            "size_bytes": candidate.artifact.size_bytes,
        }
        print(json.dumps(row), flush=True)
        return row

    try:
        base = measure("original fp32", original, CompressionPlan())
        rows.append(base)
        rows.append(measure("original int8 (no pruning)", original, CompressionPlan(quant="int8")))
        final_bytes = (args.run_dir / "model.onnx").read_bytes()
        from edgecompress.artifact import Artifact
        from edgecompress.compress import evaluate_artifact

        final_artifact = Artifact.from_bytes(final_bytes, "onnx")
        final_obs = measure_candidate(session, final_artifact, spec, []).observation
        final: dict[str, Any] = {
            "model": "searched (final of the run)",
            "accuracy": evaluate_artifact(final_artifact, workload, limit=config.val_limit),
            "latency": final_obs.values[args.metric],
            "size_bytes": len(final_bytes),
        }
        rows.append(final)
        print(json.dumps(final), flush=True)
        low, high = 0.0, config.max_ratio
        best = None
        for _ in range(args.bisections):
            ratio = round((low + high) / 2, 3)
            # round_to=1 as docs/benchmarks.md's figures were measured (the default is 8).
            plan = CompressionPlan(ratios={g.name: ratio for g in space.groups}, round_to=1)
            pruned = apply_plan(original, plan, workload, space)
            row = measure(f"uniform {ratio:.3f}, not fine-tuned", pruned, plan)
            if row["latency"] > final["latency"] * 1.05:
                low = ratio
            else:
                high = ratio
                best = (ratio, pruned, plan)
                if row["latency"] >= final["latency"] * 0.95:
                    break
        if best is not None:
            ratio, pruned, plan = best
            tuned = finetune(pruned, original, workload, steps=finetune_steps, lr=config.finetune_lr)
            rows.append(measure(f"uniform {ratio:.3f} + {finetune_steps} KD steps", tuned, plan))
    finally:
        session.close()
    print("\n| model | accuracy | drop (points) | " + args.metric + " (ms) | speedup | size |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        if "not fine-tuned" in row["model"]:
            continue
        print(
            f"| {row['model']} | {row['accuracy']:.4f} | {100 * (base['accuracy'] - row['accuracy']):.2f} | "
            f"{row['latency']:.3f} | {base['latency'] / row['latency']:.2f}x | {row['size_bytes'] / 1e3:.0f} kB |"
        )


if __name__ == "__main__":
    main()
