"""From a pruned torch model and a plan to a deployable artifact: export, check, quantize."""

from __future__ import annotations

import torch
from torch import nn

from edgecompress.artifact import Artifact
from edgecompress.compress._compat import drop_unused_domains
from edgecompress.compress._export import export_onnx, max_abs_diff, onnx_node_prefix
from edgecompress.compress._quantize import convert_fp16, quantize_int8
from edgecompress.compress._space import CompressionPlan, search_space
from edgecompress.errors import ExportError

# fp32 ONNX against torch: float reassociation in fused kernels stays far below this; a real export bug does not.
FP32_TOLERANCE = 1e-3


def fallback_nodes(model: nn.Module, plan: CompressionPlan, workload, node_names: list[str]) -> list[str]:
    """ONNX node names of the layers of the plan's float-fallback groups (their Conv/Gemm/MatMul nodes)."""
    if not plan.float_fallback:
        return []
    space = search_space(model, workload.input_shape, workload.ignore)
    nodes = []
    for name in plan.float_fallback:
        group = space.group(name)
        for module in group.modules:
            prefix = onnx_node_prefix(module)
            matched = [n for n in node_names if n.startswith(prefix)]
            if not matched:
                raise ExportError(f"float fallback group {name}: no ONNX node found for layer {module}")
            nodes += matched
    return nodes


def first_batch(workload) -> torch.Tensor:
    for inputs, _ in workload.calib:
        return inputs[:32]
    raise ExportError("the workload's calibration data is empty")


def build_artifact(
    model: nn.Module, plan: CompressionPlan, workload, opset: int = 17, format: str = "onnx"
) -> Artifact:
    """The deployable artifact of an (already pruned) model: ONNX at ``opset``, then int8 or fp16 per the plan
    (or, with ``format="tflite"``, a .tflite flatbuffer from litert-torch; ``opset`` is then unused).

    The fp32 export is checked against torch on a calibration batch before any quantization, so a wrong export
    is an ExportError rather than a silently bad accuracy.
    """
    if format == "tflite":
        return _build_tflite(model, plan, workload)
    if format != "onnx":
        raise ExportError(f"export format {format!r} is not available; choose onnx or tflite")
    fp32 = export_onnx(model, workload.input_shape, opset)
    diff = max_abs_diff(fp32, model, first_batch(workload))
    if not diff <= FP32_TOLERANCE:
        raise ExportError(f"the ONNX export differs from torch by {diff:.3g} (tolerance {FP32_TOLERANCE})")
    if plan.quant == "fp32":
        data = fp32
    elif plan.quant == "fp16":
        data = convert_fp16(fp32)
    else:
        import onnx

        names = [node.name for node in onnx.load_model_from_string(fp32).graph.node]
        data = drop_unused_domains(quantize_int8(fp32, workload.calib, fallback_nodes(model, plan, workload, names)))
    return Artifact.from_bytes(data, "onnx")


def _build_tflite(model: nn.Module, plan: CompressionPlan, workload) -> Artifact:
    """The TFLite artifact (litert-torch): fp32 checked against torch like the ONNX export, or int8 by PT2E."""
    from edgecompress.compress._tflite import export_tflite, tflite_max_abs_diff

    if plan.float_fallback:
        raise ExportError("float-fallback groups are not available on the TFLite path; use the ONNX export")
    if plan.quant != "fp32":
        # Scored as they are on the host, so a bad conversion shows as accuracy; a second, fp32 conversion just to
        # compare would double the build time (litert-torch takes seconds per model).
        return Artifact.from_bytes(export_tflite(model, workload.input_shape, plan.quant, workload.calib), "tflite")
    fp32 = export_tflite(model, workload.input_shape, "fp32")
    diff = tflite_max_abs_diff(fp32, model, first_batch(workload))
    if not diff <= FP32_TOLERANCE:
        raise ExportError(f"the TFLite export differs from torch by {diff:.3g} (tolerance {FP32_TOLERANCE})")
    return Artifact.from_bytes(fp32, "tflite")
