"""Scoring an artifact on the host with its runtime (onnxruntime or the LiteRT interpreter): the same bytes the
device runs, on the validation set."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from torch import Tensor

from edgecompress.artifact import Artifact
from edgecompress.compress._export import onnx_session
from edgecompress.errors import ExportError


def predict(
    artifact: Artifact,
    batches: Iterable[tuple[Tensor, Tensor]],
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(outputs, labels) of the artifact over ``batches`` (at most ``limit`` samples), one session run per batch."""
    if artifact.format == "tflite":
        from edgecompress.compress._tflite import predict_tflite

        return predict_tflite(artifact.data, batches, limit)
    if artifact.format != "onnx":
        raise ExportError(f"host evaluation needs an ONNX or TFLite artifact, got {artifact.format}")
    session = onnx_session(artifact.data)
    name = session.get_inputs()[0].name
    outputs, labels, seen = [], [], 0
    for inputs, targets in batches:
        if limit is not None and seen >= limit:
            break
        if limit is not None and seen + len(targets) > limit:
            inputs, targets = inputs[: limit - seen], targets[: limit - seen]
        outputs.append(session.run(None, {name: inputs.numpy().astype(np.float32, copy=False)})[0])
        labels.append(targets.numpy())
        seen += len(targets)
    if not outputs:
        raise ExportError("the evaluation data is empty")
    return np.concatenate(outputs), np.concatenate(labels)


def evaluate_artifact(artifact: Artifact, workload, limit: int | None = None) -> float:
    """The workload's metric of the artifact on its validation set (the first ``limit`` samples when given)."""
    outputs, labels = predict(artifact, workload.val, limit)
    return float(workload.metric(outputs, labels))
