"""The TFLite path: export with litert-torch (fp32, or int8 through PT2E calibrated on the workload) and score the
exact .tflite bytes on the host with the LiteRT interpreter the device also runs.

Everything here needs the ``tflite`` extra (``pip install 'edgecompress[tflite]'``); the imports are local so the
ONNX path never pays for them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

import numpy as np
import torch
from torch import Tensor, nn

from edgecompress.errors import ExportError

EXTRA_HINT = "install the TFLite extra: pip install 'edgecompress[tflite]'"
# Largest calibration batch pushed through the observed model at once: bounds memory on large inputs.
CALIB_BATCH = 128

log = logging.getLogger("edgecompress.compress.tflite")
_STDERR_LOCK = threading.Lock()  # fd 2 is one per process: one conversion redirects it at a time


def _litert_torch():
    # litert-torch draws a Rich progress tree on every convert unless told otherwise (read at call time).
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    try:
        import litert_torch
    except ImportError as exc:
        raise ExportError(f"TFLite export needs litert-torch ({exc}); {EXTRA_HINT}") from exc
    return litert_torch


def interpreter_module():
    """The LiteRT interpreter module: ai_edge_litert, else tflite_runtime (the two the agent can use)."""
    for name in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            return __import__(name, fromlist=["Interpreter"])
        except ImportError:
            continue
    raise ExportError(f"no TFLite interpreter (ai_edge_litert or tflite_runtime) on the host; {EXTRA_HINT}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """litert-torch, torchao and torch.export print pages of notices per model; keep them off the console.

    Their Python loggers are turned down; what the converter's C++ code (absl and TF logging: ``I0000 ...
    flatbuffer_export.cc``) and handlers bound to the original stderr write to the process's stderr goes to this
    module's log (tune.log in a run) instead.
    """
    loggers = [logging.getLogger(n) for n in ("torch", "torchao", "absl", "litert_torch", "jax")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with _stderr_to_log(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _stderr_to_log() -> Iterator[None]:
    """File descriptor 2 into a temporary file, logged line by line afterwards.

    C++ code writes to the descriptor itself, so sys.stderr cannot catch it. Python code keeps the console
    meanwhile (a progress bar drawn by another thread): sys.stderr is pointed at a copy of the original descriptor.
    Records of the root logger (``logging.warning`` in litert-torch) come to this log too: with no handler there,
    the first one would install a console handler (logging.basicConfig).
    """
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        previous = sys.stderr
        previous.flush()
        console = os.fdopen(os.dup(2), "w", buffering=1, encoding=previous.encoding or "utf-8", errors="replace")
        root = logging.getLogger()
        catcher = None if root.handlers else _RootToLog()
        if catcher is not None:
            root.addHandler(catcher)
        sys.stderr = console
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            console.flush()
            os.dup2(console.fileno(), 2)
            sys.stderr = previous
            if catcher is not None:
                root.removeHandler(catcher)
            _rebind(console, previous)
            console.close()
            sink.seek(0)
            for line in sink.read().decode("utf-8", "replace").splitlines():
                if line.strip():
                    log.info("converter: %s", line)


class _RootToLog(logging.Handler):
    """Library records that reach the root logger during a conversion, into this module's log at INFO at most."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("edgecompress"):
            last_resort = logging.lastResort  # what logging does for our records when no handler is set
            if last_resort is not None and record.levelno >= last_resort.level and not _handled_below_root(record.name):
                last_resort.handle(record)
            return
        log.log(min(record.levelno, logging.INFO), "%s: %s", record.name, record.getMessage())


def _handled_below_root(name: str) -> bool:
    logger: logging.Logger | None = logging.getLogger(name)
    while logger is not None and logger is not logging.getLogger():
        if logger.handlers or not logger.propagate:
            return True
        logger = logger.parent
    return False


def _rebind(stream: TextIO, replacement: TextIO) -> None:
    """Stream handlers a library created during the conversion (on the temporary sys.stderr) write to the real one."""
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values())]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and handler.stream is stream:
                handler.setStream(replacement)


def _fail(what: str, exc: Exception) -> ExportError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return ExportError(f"{what}: {type(exc).__name__}: {first[:400]}")


def _calibrate(observed: nn.Module, calib: Iterable[tuple[Tensor, Tensor]]) -> int:
    seen = 0
    with torch.no_grad():
        for inputs, _ in calib:
            for start in range(0, len(inputs), CALIB_BATCH):
                observed(inputs[start : start + CALIB_BATCH].float())
                seen += len(inputs[start : start + CALIB_BATCH])
    if seen == 0:
        raise ExportError("the workload's calibration data is empty")
    return seen


def export_tflite(
    model: nn.Module, input_shape: Iterable[int], quant: str = "fp32", calib: Iterable[tuple[Tensor, Tensor]] = ()
) -> bytes:
    """The model as a .tflite flatbuffer with batch 1: fp32, or int8 (static, per-channel weights) calibrated on
    ``calib`` through litert-torch's PT2E quantizer. An int8 model takes and returns int8 tensors; their scale and
    zero point are in the flatbuffer (``predict_tflite`` applies them)."""
    with _quiet():
        litert_torch = _litert_torch()
    shape = tuple(int(d) for d in input_shape)
    example = (torch.zeros(shape),)
    model = model.eval()
    if quant == "fp32":
        try:
            with _quiet():
                return bytes(litert_torch.convert(model, example).model_content())
        except Exception as exc:
            raise _fail("litert-torch cannot convert the model", exc) from exc
    if quant != "int8":
        raise ExportError(f"the TFLite path exports fp32 and int8, not {quant}")
    with _quiet():
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    # Traced with a dynamic batch (an example of 2: torch.export specialises a size of 1) so calibration runs whole
    # batches; the converted flatbuffer is then specialised to batch 1 by the convert call's example.
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with _quiet():
            traced = torch.export.export(model, (torch.zeros((2, *shape[1:])),), dynamic_shapes=({0: batch},))
            observed = prepare_pt2e(traced.module(), quantizer)
            _calibrate(observed, calib)
            quantized = convert_pt2e(observed, fold_quantize=False)
            return bytes(
                litert_torch.convert(
                    quantized, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)
                ).model_content()
            )
    except ExportError:
        raise
    except Exception as exc:
        raise _fail("int8 TFLite export (PT2E) failed", exc) from exc


class TfliteModel:
    """An interpreter over .tflite bytes that takes and returns float32, quantizing at the edges when the model's
    input or output is integer (as the int8 export's are)."""

    def __init__(self, data: bytes, threads: int | None = None):
        module = interpreter_module()
        try:
            self.interpreter = module.Interpreter(model_content=data, num_threads=threads)
            self.interpreter.allocate_tensors()
        except Exception as exc:
            raise _fail("the TFLite interpreter cannot load the model", exc) from exc
        self.input: dict[str, Any] = self.interpreter.get_input_details()[0]
        self.output: dict[str, Any] = self.interpreter.get_output_details()[0]
        self.batch = int(self.input["shape"][0])

    def _quantize(self, values: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self.input["dtype"])
        scale, zero = self.input["quantization"]
        if dtype.kind == "f" or not scale:
            return values.astype(dtype, copy=False)
        info = np.iinfo(dtype)
        return np.clip(np.round(values / scale) + zero, info.min, info.max).astype(dtype)

    def _dequantize(self, values: np.ndarray) -> np.ndarray:
        scale, zero = self.output["quantization"]
        if np.dtype(self.output["dtype"]).kind == "f" or not scale:
            return values.astype(np.float32)
        return (values.astype(np.float32) - zero) * scale

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Outputs for a float32 batch of any size, invoked ``self.batch`` samples at a time."""
        outputs = []
        for start in range(0, len(inputs), self.batch):
            chunk = inputs[start : start + self.batch]
            self.interpreter.set_tensor(self.input["index"], self._quantize(np.ascontiguousarray(chunk)))
            self.interpreter.invoke()
            outputs.append(self._dequantize(self.interpreter.get_tensor(self.output["index"])))
        return np.concatenate(outputs)


def predict_tflite(
    data: bytes, batches: Iterable[tuple[Tensor, Tensor]], limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(outputs, labels) of .tflite bytes over ``batches`` (at most ``limit`` samples)."""
    model = TfliteModel(data)
    outputs, labels, seen = [], [], 0
    for inputs, targets in batches:
        if limit is not None and seen >= limit:
            break
        if limit is not None and seen + len(targets) > limit:
            inputs, targets = inputs[: limit - seen], targets[: limit - seen]
        outputs.append(model.run(inputs.numpy().astype(np.float32, copy=False)))
        labels.append(targets.numpy())
        seen += len(targets)
    if not outputs:
        raise ExportError("the evaluation data is empty")
    return np.concatenate(outputs), np.concatenate(labels)


def tflite_max_abs_diff(data: bytes, model: nn.Module, inputs: Tensor) -> float:
    """Largest absolute difference between the interpreter's outputs for ``data`` and the torch model's."""
    ours = TfliteModel(data).run(inputs.numpy().astype(np.float32))
    with torch.no_grad():
        theirs = model.eval()(inputs).numpy()
    return float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64))))
