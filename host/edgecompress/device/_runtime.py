"""What the device's runtime can load, from its ``hello``: checked once, before any search or measurement.

One function, ``check_runtime``, is called by tune, bench and check, so a profile that expects CUDA on a device
whose onnxruntime has none, a tflite profile on a device without a TFLite interpreter, or a model stamped with a
newer opset than the device's onnxruntime implements, are one clear ConfigError instead of a failed measurement.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from edgecompress.config import DeviceProfile
from edgecompress.errors import ConfigError

# The highest ONNX opset whose kernels each onnxruntime release has, from onnxruntime's compatibility table
# (docs/reference/compatibility.md: "ONNX opset version" per release) with one correction measured here:
# 1.15 lists opset 19, but its CPU provider has no QuantizeLinear-19 or Cast-19 kernel, so an int8 or fp16 model
# at opset 19 fails to load (onnxruntime 1.15.1, tests/test_runtimes.py); 18 is what it really runs.
ORT_MAX_OPSET: dict[tuple[int, int], int] = {
    (1, 8): 14,
    (1, 9): 15,
    (1, 10): 15,
    (1, 11): 16,
    (1, 12): 17,
    (1, 13): 17,
    (1, 14): 18,
    (1, 15): 18,
    (1, 16): 19,
    (1, 17): 20,
    (1, 18): 21,
    (1, 19): 21,
    (1, 20): 21,
}
# Providers whose kernels run float16 natively: fp16 candidates are worth searching only there (on a CPU provider
# an fp16 model is cast back to float32 op by op and is slower than fp32).
GPU_PROVIDERS = (
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
    "DmlExecutionProvider",
)


def version_tuple(version: str | None) -> tuple[int, ...]:
    """(major, minor, patch) of a version string ("1.16.0rc1" -> (1, 16, 0)); () when it is not numeric."""
    parts = []
    for piece in (version or "").split(".")[:3]:
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
        if match.end() < len(piece):
            break
    return tuple(parts)


def max_opset_for(version: str | None, exporter_max: int | None = None) -> int | None:
    """The highest ONNX opset an onnxruntime version loads; None when the version is unknown.

    A release newer than the table loads at least what the newest listed one does; ``exporter_max`` caps it.
    """
    key = version_tuple(version)[:2]
    if len(key) < 2:
        return None
    if key in ORT_MAX_OPSET:
        opset = ORT_MAX_OPSET[key]
    elif key > max(ORT_MAX_OPSET):
        opset = ORT_MAX_OPSET[max(ORT_MAX_OPSET)] if exporter_max is None else exporter_max
    else:
        return None
    return opset if exporter_max is None else min(opset, exporter_max)


def runtime_entry(hello: Mapping[str, Any], runtime: str) -> Mapping[str, Any] | None:
    return next((r for r in hello.get("runtimes") or () if r.get("name") == runtime), None)


def _python(hello: Mapping[str, Any]) -> str:
    python = hello.get("python") or {}
    return str(python.get("executable") or "the device's Python")


def onnx_opset(data: bytes) -> int | None:
    """The default-domain opset an ONNX model is stamped with."""
    import onnx

    proto = onnx.load_model_from_string(data)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def check_runtime(
    profile: DeviceProfile, hello: Mapping[str, Any], runtime: str | None = None, model: bytes | None = None
) -> Mapping[str, Any]:
    """The device's entry for ``runtime`` (default: the profile's), or a ConfigError saying what is missing.

    Checked: the runtime is importable on the device, its version is at least the profile's ``min_version``, it
    has the profile's providers (when it is the profile's runtime), and an ONNX ``model`` is stamped with an opset
    that version implements.
    """
    wanted = runtime or profile.runtime.name
    board = hello.get("board") or profile.name
    entry = runtime_entry(hello, wanted)
    if entry is None:
        found = ", ".join(f"{r.get('name')} {r.get('version')}" for r in hello.get("runtimes") or ()) or "none"
        hint = (
            "pip install ai-edge-litert (or tflite-runtime) for that Python"
            if wanted == "tflite"
            else "pip install onnxruntime (onnxruntime-gpu on a Jetson) for that Python"
        )
        raise ConfigError(
            f"device {profile.name} ({board}): {wanted} is not importable by {_python(hello)} "
            f"(runtimes found: {found}); {hint}"
        )
    version = entry.get("version")
    if wanted == profile.runtime.name:
        minimum = profile.runtime.min_version
        if minimum and version_tuple(version) < version_tuple(minimum):
            raise ConfigError(
                f"device {profile.name}: {wanted} {version} is older than the profile's min_version {minimum}"
            )
        available = list(entry.get("providers") or ())
        missing = [p for p in profile.runtime.providers if p not in available]
        if missing:
            raise ConfigError(
                f"device {profile.name}: the profile expects {', '.join(missing)} but {wanted} "
                f"{version} on {board} reports {', '.join(available) or 'no providers'}; install a "
                "build with those providers or remove them from [runtime] providers"
            )
    if model is not None and wanted == "onnxruntime":
        limit, opset = max_opset_for(version), onnx_opset(model)
        if limit is not None and opset is not None and opset > limit:
            raise ConfigError(
                f"the model is ONNX opset {opset}, above what onnxruntime {version} on "
                f"{profile.name} loads (at most {limit}); export it at opset {limit} or lower"
            )
    return entry


def gpu_providers(profile: DeviceProfile, entry: Mapping[str, Any]) -> list[str]:
    """The profile's providers that the device has and that run float16 natively."""
    available = set(entry.get("providers") or ())
    return [p for p in profile.runtime.providers if p in GPU_PROVIDERS and p in available]
