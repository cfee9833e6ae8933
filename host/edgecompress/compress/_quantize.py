"""int8 (static QDQ, per-channel weights, calibrated on the workload) and fp16 versions of an fp32 ONNX model."""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from torch import Tensor

from edgecompress.errors import ExportError

log = logging.getLogger("edgecompress.compress.quantize")
# onnxruntime's MinMax calibration runs the model with every intermediate tensor reduced to its min and max: a run
# holds all of that run's activations, so fed the workload's batches whole its memory grew with the user's batch
# size (MobileNetV2 at 224x224: 4.1 GiB at batch 32, 13.8 GiB at batch 128). Chunks of CALIB_CHUNK samples bound
# it, and give the same ranges (min of the chunks' minima, max of their maxima). At most CALIB_MAX_SAMPLES samples
# (the default calibration set's size) are used, whatever the batches hold. (Its CalibMaxIntermediateOutputs option
# would bound the stored minima too, but onnxruntime discards the buffered ones instead of merging them:
# microsoft/onnxruntime#18893.)
CALIB_CHUNK = 16
CALIB_MAX_SAMPLES = 512


class _Chunks:
    """onnxruntime's CalibrationDataReader protocol over (inputs, labels) batches: chunks of CALIB_CHUNK samples,
    at most CALIB_MAX_SAMPLES in all, one batch converted at a time."""

    def __init__(self, input_name: str, batches: Iterable[tuple[Tensor, Tensor]]):
        self._iterator = self._chunks(input_name, batches)

    @staticmethod
    def _chunks(input_name: str, batches: Iterable[tuple[Tensor, Tensor]]) -> Iterator[dict[str, np.ndarray]]:
        seen = 0
        for inputs, _ in batches:
            array = inputs.numpy().astype(np.float32, copy=False)
            for start in range(0, len(array), CALIB_CHUNK):
                if seen >= CALIB_MAX_SAMPLES:
                    log.info("int8 calibration: the first %d samples used, the rest left out", seen)
                    return
                chunk = array[start : start + min(CALIB_CHUNK, CALIB_MAX_SAMPLES - seen)]
                seen += len(chunk)
                yield {input_name: np.ascontiguousarray(chunk)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iterator, None)


def quantize_int8(fp32: bytes, calib: Iterable[tuple[Tensor, Tensor]], exclude_nodes: Sequence[str] = ()) -> bytes:
    """Static int8 QDQ with per-channel weights and MinMax activation ranges from ``calib``.

    ``exclude_nodes`` stay in float (the per-group fallback). The result keeps the input and output in float32, so
    the device feeds it exactly like the fp32 model.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    proto = onnx.load_model_from_string(fp32)
    input_name = proto.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="edgecompress-int8-") as tmp:
        source, prepared, output = Path(tmp, "fp32.onnx"), Path(tmp, "prepared.onnx"), Path(tmp, "int8.onnx")
        source.write_bytes(fp32)
        # onnxruntime's quantization logs every calibration step at INFO through the root logger.
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(max(quiet, logging.WARNING))
        try:
            # Shape inference and graph clean-up first, as onnxruntime recommends before quantize_static.
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
            present = {node.name for node in onnx.load(str(prepared)).graph.node}
            missing = [name for name in exclude_nodes if name not in present]
            if missing:
                raise ExportError(f"float fallback names node(s) the model does not have: {', '.join(missing)}")
            quantize_static(
                str(prepared),
                str(output),
                _Chunks(input_name, calib),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(exclude_nodes),
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"int8 quantization failed: {type(exc).__name__}: {exc}") from exc
        finally:
            logging.getLogger().setLevel(quiet)
        return output.read_bytes()


def convert_fp16(fp32: bytes) -> bytes:
    """Weights and activations in float16, inputs and outputs kept in float32 (casts at the edges)."""
    from onnxconverter_common import float16

    try:
        with warnings.catch_warnings():
            # One warning per tiny weight clamped to float16's range: dozens per model, none actionable.
            warnings.filterwarnings("ignore", message="the float32 number", category=UserWarning)
            converted = float16.convert_float_to_float16(onnx.load_model_from_string(fp32), keep_io_types=True)
    except Exception as exc:
        raise ExportError(f"fp16 conversion failed: {type(exc).__name__}: {exc}") from exc
    return converted.SerializeToString()
