"""A deployable model: the exact bytes the host evaluates and the device runs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgecompress.errors import ConfigError

Format = Literal["onnx", "tflite"]


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
    """Read a model file; a clear ConfigError when it is missing or is neither ONNX nor TFLite."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist")
    data = path.read_bytes()
    fmt = sniff_format(data)
    if fmt is None:
        raise ConfigError(f"{path} is neither an ONNX model nor a TFLite flatbuffer")
    return Artifact.from_bytes(data, fmt)
