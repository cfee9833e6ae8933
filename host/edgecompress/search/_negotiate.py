"""What the device can run: the ONNX opset its onnxruntime loads."""

from __future__ import annotations

from typing import Any

from edgecompress.compress import MAX_OPSET, MIN_OPSET
from edgecompress.errors import ConfigError

# The highest opset each onnxruntime release implements (onnxruntime's compatibility table).
ORT_MAX_OPSET = {
    (1, 10): 15,
    (1, 11): 16,
    (1, 12): 17,
    (1, 13): 17,
    (1, 14): 18,
    (1, 15): 19,
    (1, 16): 19,
    (1, 17): 20,
    (1, 18): 21,
    (1, 19): 21,
    (1, 20): 21,
}


def max_opset_for(version: str | None) -> int:
    """The highest ONNX opset an onnxruntime version loads (capped to what the exporter writes)."""
    if not version:
        return MIN_OPSET
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        return MIN_OPSET
    if (major, minor) in ORT_MAX_OPSET:
        opset = ORT_MAX_OPSET[(major, minor)]
    elif (major, minor) > max(ORT_MAX_OPSET):
        opset = MAX_OPSET
    else:
        opset = MIN_OPSET
    return min(opset, MAX_OPSET)


def choose_opset(hello: dict[str, Any], requested: int | None) -> int:
    """The opset to export at for this device; a requested opset the device cannot load is refused up front."""
    ort = next((r for r in hello.get("runtimes", []) if r.get("name") == "onnxruntime"), None)
    if ort is None:
        raise ConfigError(f"the device ({hello.get('board')}) has no importable onnxruntime")
    limit = max_opset_for(ort.get("version"))
    if requested is None:
        return limit
    if requested > limit:
        raise ConfigError(
            f"opset {requested} is above what onnxruntime {ort.get('version')} on the device loads (at most {limit})"
        )
    if requested < MIN_OPSET:
        raise ConfigError(f"opset {requested} is below the lowest the exporter supports ({MIN_OPSET})")
    return requested
