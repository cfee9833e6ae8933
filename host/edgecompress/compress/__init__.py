"""The compression pipeline: search space, plans, pruning, fine-tuning, export, quantization, host evaluation.

Typical use, one candidate:

space = search_space(model, workload.input_shape, workload.ignore)
plan = CompressionPlan(ratios={"layer2.0.conv1": 0.5}, quant="int8")
pruned = apply_plan(model, plan, workload, space)          # pruned copy, BatchNorm recalibrated
pruned = finetune(pruned, model, workload, steps=200)     # optional knowledge distillation
artifact = build_artifact(pruned, plan, workload, opset=17)
accuracy = evaluate_artifact(artifact, workload)
"""

from edgecompress.compress._build import build_artifact
from edgecompress.compress._evaluate import evaluate_artifact, predict
from edgecompress.compress._export import MAX_OPSET, MIN_OPSET, export_onnx, max_abs_diff
from edgecompress.compress._finetune import finetune, resolve_host_device
from edgecompress.compress._prune import apply_plan, model_cost, recalibrate_batchnorm
from edgecompress.compress._space import CompressionPlan, Group, SearchSpace, kept_channels, plan_template, search_space

__all__ = [
    "MAX_OPSET",
    "MIN_OPSET",
    "CompressionPlan",
    "Group",
    "SearchSpace",
    "apply_plan",
    "build_artifact",
    "evaluate_artifact",
    "export_onnx",
    "finetune",
    "resolve_host_device",
    "kept_channels",
    "max_abs_diff",
    "model_cost",
    "plan_template",
    "predict",
    "recalibrate_batchnorm",
    "search_space",
]
