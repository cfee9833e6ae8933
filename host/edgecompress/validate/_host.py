"""The host's side of a parity check: the artifact's bytes in the host's runtime (onnxruntime on the CPU, or the
LiteRT interpreter), fed exactly what the device is fed and run in the same slices."""

from __future__ import annotations

import numpy as np

from edgecompress.artifact import Artifact
from edgecompress.errors import ConfigError, ExportError

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}


class HostModel:
    """One model input, fed the same array on both sides; outputs decoded to float the same way on both sides."""

    runtime: str  # name and version, e.g. "onnxruntime 1.32.0"
    input_name: str
    input_dtype: np.dtype
    fixed_batch: int | None  # the model's batch when its first axis is not dynamic

    def encode(self, inputs: np.ndarray) -> np.ndarray:
        """The array both sides are fed for float inputs (cast, or quantized for an integer input)."""
        raise NotImplementedError

    def run(self, feed: np.ndarray, batch: int) -> list[np.ndarray]:
        """The raw outputs for ``feed``, run ``batch`` samples at a time, as the agent runs them."""
        raise NotImplementedError

    def decode(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs as float64 (dequantized for integer outputs)."""
        return [np.asarray(o, dtype=np.float64) for o in outputs]

    def batch_for(self, batch: int | None) -> int:
        """The inference batch: the model's fixed one, else ``batch`` or 1."""
        if self.fixed_batch is not None:
            if batch is not None and batch != self.fixed_batch:
                raise ConfigError(f"the model takes batches of {self.fixed_batch} only; --batch {batch} cannot run")
            return self.fixed_batch
        return batch or 1


def _slices(feed: np.ndarray, batch: int):
    for start in range(0, len(feed), batch):
        yield feed[start : start + batch]


def _join(parts: list[list[np.ndarray]]) -> list[np.ndarray]:
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


class OnnxHostModel(HostModel):
    def __init__(self, data: bytes):
        import onnxruntime as ort

        from edgecompress.compress._export import onnx_session

        self.session = onnx_session(data)
        self.runtime = f"onnxruntime {ort.__version__}"
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ConfigError(f"validate feeds models with one input; this one has {len(inputs)}")
        self.input_name = inputs[0].name
        if inputs[0].type not in _ORT_TYPES:
            raise ConfigError(f"validate cannot feed an input of type {inputs[0].type}")
        self.input_dtype = np.dtype(_ORT_TYPES[inputs[0].type])
        first = inputs[0].shape[0] if inputs[0].shape else None
        self.fixed_batch = first if isinstance(first, int) and first > 0 else None

    def encode(self, inputs: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(inputs, dtype=self.input_dtype)

    def run(self, feed: np.ndarray, batch: int) -> list[np.ndarray]:
        return _join([self.session.run(None, {self.input_name: part}) for part in _slices(feed, batch)])


class TfliteHostModel(HostModel):
    def __init__(self, data: bytes):
        from edgecompress.compress._tflite import interpreter_module

        module = interpreter_module()
        package = __import__(module.__name__.split(".")[0])
        self.runtime = f"{package.__name__} {getattr(package, '__version__', '?')}"
        try:
            self.interpreter = module.Interpreter(model_content=data)
            self.interpreter.allocate_tensors()
        except Exception as exc:  # the interpreter raises RuntimeError, ValueError... for a bad flatbuffer
            raise ExportError(f"the TFLite interpreter cannot load the model: {type(exc).__name__}: {exc}") from exc
        details = self.interpreter.get_input_details()
        if len(details) != 1:
            raise ConfigError(f"validate feeds models with one input; this one has {len(details)}")
        self.input = details[0]
        self.outputs = self.interpreter.get_output_details()
        self.input_name = self.input["name"]
        self.input_dtype = np.dtype(self.input["dtype"])
        self.fixed_batch = int(self.input["shape"][0])

    def encode(self, inputs: np.ndarray) -> np.ndarray:
        scale, zero = self.input["quantization"]
        if self.input_dtype.kind == "f" or not scale:
            return np.ascontiguousarray(inputs, dtype=self.input_dtype)
        info = np.iinfo(self.input_dtype)
        return np.clip(np.round(inputs / scale) + zero, info.min, info.max).astype(self.input_dtype)

    def run(self, feed: np.ndarray, batch: int) -> list[np.ndarray]:
        parts = []
        for part in _slices(feed, batch):
            self.interpreter.set_tensor(self.input["index"], part)
            self.interpreter.invoke()
            parts.append([self.interpreter.get_tensor(d["index"]) for d in self.outputs])
        return _join(parts)

    def decode(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        decoded = []
        for detail, values in zip(self.outputs, outputs, strict=True):
            scale, zero = detail["quantization"]
            if np.dtype(detail["dtype"]).kind == "f" or not scale:
                decoded.append(np.asarray(values, dtype=np.float64))
            else:
                decoded.append((values.astype(np.float64) - zero) * scale)
        return decoded


def host_model(artifact: Artifact) -> HostModel:
    """The artifact loaded in the host's runtime for its format."""
    if artifact.format == "tflite":
        return TfliteHostModel(artifact.data)
    return OnnxHostModel(artifact.data)
