"""What to export for the device: the format its runtime loads, the ONNX opset its onnxruntime implements, and
whether fp16 is worth searching there. Decided from ``hello`` before any search."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edgecompress.compress import MAX_OPSET, MIN_OPSET
from edgecompress.config import DeviceProfile
from edgecompress.device import check_runtime, gpu_providers, max_opset_for
from edgecompress.errors import ConfigError

__all__ = ["ExportTarget", "choose_opset", "export_target", "max_opset_for"]


@dataclass(frozen=True)
class ExportTarget:
    """The artifact format and opset for one device, and the quantization modes worth searching on it."""

    format: Literal["onnx", "tflite"]
    opset: int | None  # ONNX only
    runtime: str
    runtime_version: str | None
    quant_modes: tuple[str, ...]
    fp16_providers: tuple[str, ...] = ()

    def describe(self) -> str:
        what = f"ONNX opset {self.opset}" if self.format == "onnx" else "TFLite (litert-torch)"
        gpu = f", fp16 for {', '.join(self.fp16_providers)}" if self.fp16_providers else ""
        return f"exporting {what} for {self.runtime} {self.runtime_version}{gpu}"


def choose_opset(hello: Mapping[str, Any], requested: int | None) -> int:
    """The opset to export at for this device; a requested opset the device cannot load is refused up front."""
    ort = next((r for r in hello.get("runtimes") or () if r.get("name") == "onnxruntime"), None)
    if ort is None:
        raise ConfigError(f"the device ({hello.get('board')}) has no importable onnxruntime")
    version = ort.get("version")
    limit = max_opset_for(version, exporter_max=MAX_OPSET)
    if limit is None:
        # An unrecognised (or pre-1.8) version: the lowest opset the exporter writes is the one most likely to load.
        limit = MIN_OPSET
    if requested is None:
        return limit
    if requested > limit:
        raise ConfigError(
            f"opset {requested} is above what onnxruntime {version} on the device loads (at most "
            f"{limit}); leave --opset out to export at {limit}"
        )
    if requested < MIN_OPSET:
        raise ConfigError(f"opset {requested} is below the lowest the exporter supports ({MIN_OPSET})")
    return requested


def export_target(
    profile: DeviceProfile, hello: Mapping[str, Any], requested_opset: int | None, quant: Sequence[str]
) -> ExportTarget:
    """The export for this device and profile; ConfigError on any mismatch, before the search starts.

    ``quant`` is the modes the user asked for. fp16 is added where the profile runs a GPU provider the device has
    (CUDA, TensorRT...), whose kernels run it natively; on a CPU provider it is searched only when asked for, since
    there it is mostly casts. The TFLite path has fp32 and int8.
    """
    entry = check_runtime(profile, hello)
    version = entry.get("version")
    if profile.runtime.name == "tflite":
        if requested_opset is not None:
            raise ConfigError(f"--opset is for ONNX; device {profile.name} runs TFLite")
        modes = tuple(q for q in quant if q in ("fp32", "int8"))
        if not modes:
            raise ConfigError(
                f"device {profile.name} runs TFLite, which edgecompress exports as fp32 or int8; "
                f"none of {', '.join(quant)} is one of them"
            )
        return ExportTarget("tflite", None, "tflite", version, modes)
    opset = choose_opset(hello, requested_opset)
    fp16 = tuple(gpu_providers(profile, entry))
    modes = tuple(quant)
    if fp16 and "fp16" not in modes:
        modes += ("fp16",)
    return ExportTarget("onnx", opset, "onnxruntime", version, modes, fp16)
