"""A deployable model: the exact bytes the host evaluates and the device runs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edgecompress.errors import ConfigError

if TYPE_CHECKING:
    import onnx

Format = Literal["onnx", "tflite"]

# One serialized protobuf message cannot exceed 2 GiB; beyond it ONNX keeps weights in external data files.
PROTOBUF_LIMIT_BYTES = 2**31 - 1


@dataclass(frozen=True)
class Artifact:
    """Model bytes with their sha256 and format."""

    data: bytes
    format: Format
    sha256: str

    @classmethod
    def from_bytes(cls, data: bytes, format: Format) -> Artifact:
        return cls(data=data, format=format, sha256=hashlib.sha256(data).hexdigest())

    @property
    def size_bytes(self) -> int:
        return len(self.data)

    @property
    def runtime(self) -> str:
        return "onnxruntime" if self.format == "onnx" else "tflite"

    def write(self, path: Path) -> Path:
        path.write_bytes(self.data)
        return path


def sniff_format(data: bytes) -> Format | None:
    """'tflite' for a FlatBuffer with the TFL3 identifier, 'onnx' for a parseable ONNX ModelProto, else None."""
    if len(data) >= 8 and data[4:8] == b"TFL3":
        return "tflite"
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError):
        return None
    # Protobuf parses many byte strings leniently; a real model has an IR version and a graph with nodes.
    if model.ir_version > 0 and len(model.graph.node) > 0:
        return "onnx"
    return None


def load_artifact(path: str | Path) -> Artifact:
    """Read a model file; a clear ConfigError when it is missing or is neither ONNX nor TFLite.

    An ONNX model whose weights are in external data files beside it comes back with them inlined: the device
    receives one self-contained file (its cache holds models by sha256, not the user's file names).
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a model file; pass the .onnx or .tflite file in it")
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist")
    data = path.read_bytes()
    fmt = sniff_format(data)
    if fmt is None:
        raise ConfigError(f"{path} is neither an ONNX model nor a TFLite flatbuffer")
    if fmt == "onnx":
        data = _inline_external_data(path, data)
    return Artifact.from_bytes(data, fmt)


def _inline_external_data(path: Path, data: bytes) -> bytes:
    """The model's bytes with the weights it keeps in external data files read into it (unchanged without any)."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    model = onnx.load_model_from_string(data)
    external = [t for t in _tensors(model.graph) if uses_external_data(t)]
    if not external:
        return data
    locations = sorted({e.value for t in external for e in t.external_data if e.key == "location"})
    named = ", ".join(locations)
    try:
        load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise ConfigError(
            f"{path} keeps its weights in external data ({named}) that cannot be read: {exc}; put the data "
            "file(s) beside the model, or save the model with its weights inside"
        ) from exc
    size = model.ByteSize()
    if size > PROTOBUF_LIMIT_BYTES:
        raise ConfigError(
            f"{path} with its external data ({named}) is {size / 2**30:.2f} GiB, over the 2 GB a single ONNX "
            "file can hold; edgecompress sends the device one file, so this model cannot be measured as is"
        )
    return model.SerializeToString()


def _tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """Every TensorProto of a graph that can hold external data: initializers and attribute tensors, subgraphs too."""
    tensors = list(graph.initializer)
    tensors += [s.values for s in graph.sparse_initializer] + [s.indices for s in graph.sparse_initializer]
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                tensors.append(attribute.t)
            tensors += list(attribute.tensors)
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                tensors += _tensors(subgraph)
    return tensors
