"""Export to ONNX at a chosen opset, as one self-contained file, checked by onnx.checker and against torch."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable

import numpy as np
import onnx
import torch
from torch import nn

from edgecompress.errors import ConfigError, ExportError

# The TorchScript exporter honours these; torch 2.13's dynamo exporter would silently emit opset 18+ instead.
MIN_OPSET, MAX_OPSET = 13, 20
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def check_opset(opset: int) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"ONNX opset {opset!r} is not supported; choose {MIN_OPSET} to {MAX_OPSET}")
    return opset


def export_onnx(model: nn.Module, input_shape: Iterable[int], opset: int = 17) -> bytes:
    """The model as ONNX bytes with a dynamic batch dimension; ExportError when it does not export or check."""
    check_opset(opset)
    example = torch.zeros(tuple(int(d) for d in input_shape))
    buffer = io.BytesIO()
    model = model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript path is deprecated in torch 2.9+ and says so on every call; it is the one that
            # produces low opsets, so the warning carries no news.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                buffer,  # type: ignore[arg-type]  # a file object works for the TorchScript exporter
                opset_version=opset,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
    except Exception as exc:
        raise ExportError(
            f"cannot export the model to ONNX opset {opset}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    data = buffer.getvalue()
    check_onnx(data)
    return data


def check_onnx(data: bytes) -> onnx.ModelProto:
    """Parse and check a model; it must carry all its weights (the device gets one file, no side files)."""
    try:
        proto = onnx.load_model_from_string(data)
        onnx.checker.check_model(proto, full_check=False)
    except Exception as exc:
        raise ExportError(f"the exported ONNX model does not check: {type(exc).__name__}: {exc}") from exc
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ExportError(
            f"the ONNX model refers to external data for {len(external)} tensor(s); the device needs "
            "one self-contained file"
        )
    return proto


def onnx_session(data: bytes, threads: int | None = None):
    """An onnxruntime CPU session over model bytes (the same bytes the device runs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # initializer-as-input notices of every exported model are noise here
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot load the model: {type(exc).__name__}: {exc}") from exc


def max_abs_diff(data: bytes, model: nn.Module, inputs: torch.Tensor) -> float:
    """Largest absolute difference between onnxruntime's outputs for ``data`` and the torch model's, on ``inputs``."""
    session = onnx_session(data)
    if not session.get_inputs():
        raise ExportError("the exported model does not use its input (the output was traced as a constant)")
    name = session.get_inputs()[0].name
    ours = session.run(None, {name: inputs.numpy().astype(np.float32)})[0]
    with torch.no_grad():
        theirs = model.eval()(inputs).numpy()
    return float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64))))


def onnx_node_prefix(module_name: str) -> str:
    """The node-name prefix the TorchScript exporter gives a module's operators.

    Scopes are the attribute path, with Sequential indices written as ``parent.index``:
    ``layer2.0.downsample.0`` becomes ``/layer2/layer2.0/downsample/downsample.0/``.
    """
    parts = module_name.split(".")
    segments = [f"{parts[i - 1]}.{p}" if p.isdigit() and i > 0 else p for i, p in enumerate(parts)]
    return "/" + "/".join(segments) + "/"
