"""The acceptance figures of the compression pipeline on a reference network (issue 3).

    nice python benchmarks/compression_acceptance.py --example fashion-mnist --arch resnet --finetune-steps 300

Every group pruned by 50%: MAC reduction, fp32 ONNX vs torch, int8 vs fp32 accuracy, accuracy before and after a
fixed number of distillation steps, and opsets 13/15/17/19 loaded and run in onnxruntime. Accuracies are of the
exported artifacts (onnxruntime on the host), on the full validation split and on the test set. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from edgecompress.compress import (
    CompressionPlan,
    apply_plan,
    build_artifact,
    evaluate_artifact,
    export_onnx,
    finetune,
    max_abs_diff,
    model_cost,
    predict,
    search_space,
)
from edgecompress.compress._export import onnx_session
from edgecompress.workload import load_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default="fashion-mnist")
    parser.add_argument("--arch", default=None)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    workload = load_workload(example=args.example, arch=args.arch)
    base = workload.build_model()
    space = search_space(base, workload.input_shape, workload.ignore)
    # round_to=1: the exact fraction, as the figures in docs/compression.md were measured (the default is 8).
    fp32_plan = CompressionPlan(ratios={g.name: args.ratio for g in space.groups}, round_to=1)
    int8_plan = CompressionPlan(ratios=fp32_plan.ratios, quant="int8", round_to=1)

    def scores(model, plan):
        artifact = build_artifact(model, plan, workload)
        test = None
        if workload.test is not None:
            test = float(workload.metric(*predict(artifact, workload.test)))
        return {"val": evaluate_artifact(artifact, workload), "test": test, "size_bytes": artifact.size_bytes}

    figures: dict = {"workload": workload.name, "groups": len(space.groups), "plan": fp32_plan.to_json()}
    figures["base"] = {"fp32": scores(base, CompressionPlan()), "int8": scores(base, CompressionPlan(quant="int8"))}
    macs_before, params_before = model_cost(base, workload.input_shape)
    pruned = apply_plan(base, fp32_plan, workload, space)
    macs_after, params_after = model_cost(pruned, workload.input_shape)
    figures["macs"] = {"before": macs_before, "after": macs_after, "reduction": 1 - macs_after / macs_before}
    figures["params"] = {"before": params_before, "after": params_after}

    batch = torch.cat([x for x, _ in workload.val])[:256]
    figures["fp32_onnx_vs_torch_max_abs_diff"] = {
        "base": max_abs_diff(export_onnx(base, workload.input_shape), base, batch),
        "pruned": max_abs_diff(export_onnx(pruned, workload.input_shape), pruned, batch),
    }
    figures["pruned_before_finetune"] = {"fp32": scores(pruned, fp32_plan), "int8": scores(pruned, int8_plan)}
    t0 = time.perf_counter()
    tuned = finetune(pruned, base, workload, steps=args.finetune_steps)
    figures["finetune"] = {"steps": args.finetune_steps, "batch": 128, "seconds": round(time.perf_counter() - t0, 1)}
    figures["pruned_after_finetune"] = {"fp32": scores(tuned, fp32_plan), "int8": scores(tuned, int8_plan)}

    opsets = {}
    for opset in (13, 15, 17, 19):
        data = export_onnx(tuned, workload.input_shape, opset)
        session = onnx_session(data)
        session.run(None, {session.get_inputs()[0].name: batch[:8].numpy()})
        opsets[opset] = {"loads_and_runs": True, "max_abs_diff": max_abs_diff(data, tuned, batch)}
    figures["opsets"] = opsets
    figures["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
