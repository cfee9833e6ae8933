"""One candidate: built and evaluated on the host, then measured on the device. Two steps, two functions."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from edgecompress.artifact import Artifact
from edgecompress.budgets import METRICS, REFERENCE_ACCURACY, Budget, Evidence
from edgecompress.compress import (
    CompressionPlan,
    SearchSpace,
    apply_plan,
    build_artifact,
    evaluate_artifact,
    finetune,
    model_cost,
)
from edgecompress.device import MeasureRequest, Session
from edgecompress.observe import Observation, observe, pair_with
from edgecompress.verdict import WindowPlan
from edgecompress.workload import Workload


@dataclass(frozen=True)
class Candidate:
    """A plan turned into deployable bytes, with the accuracy of those exact bytes on the host."""

    plan: CompressionPlan
    artifact: Artifact
    accuracy: float
    macs: int
    params: int
    build_s: float
    eval_s: float

    def host_values(
        self, budgets: list[Budget], original: Mapping[str, float | None] | None = None
    ) -> dict[str, float | None]:
        """Metric values the host knows without the device: size, and the accuracy drop from the original's
        accuracy, which ``original`` (the original's values) holds under REFERENCE_ACCURACY.

        Without the original's accuracy the drop is left out, not None: absent is "never measured, no evidence"
        (verdict's one missing-value rule), where None would fail the candidate as if it had no value."""
        reference = (original or {}).get(REFERENCE_ACCURACY)
        evidence = Evidence(size_bytes=self.artifact.size_bytes, accuracy=self.accuracy, reference_accuracy=reference)
        return {
            b.key: b.value(evidence)
            for b in budgets
            if b.spec.on_host and not (b.spec.requires == "accuracy" and reference is None)
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_json(),
            "sha256": self.artifact.sha256,
            "size_bytes": self.artifact.size_bytes,
            "format": self.artifact.format,
            "accuracy": self.accuracy,
            "macs": self.macs,
            "params": self.params,
            "build_s": self.build_s,
            "eval_s": self.eval_s,
        }


def build_candidate(
    base: nn.Module,
    plan: CompressionPlan,
    workload: Workload,
    space: SearchSpace,
    opset: int | None,
    val_limit: int | None = None,
    model: nn.Module | None = None,
    format: Literal["onnx", "tflite"] = "onnx",
    teacher: nn.Module | None = None,
    finetune_steps: int = 0,
    finetune_lr: float = 1e-3,
    on_stage: Callable[[str], None] | None = None,
    device: str = "cpu",
) -> tuple[nn.Module, Candidate]:
    """Prune ``base`` by ``plan`` (or take an already pruned ``model``), export (ONNX at ``opset``, or TFLite),
    quantize and evaluate it.

    With a ``teacher`` and ``finetune_steps``, a pruned candidate gets that many distillation steps before it is
    scored, so candidates are ranked closer to what they become after fine-tuning than to what pruning left.
    ``on_stage`` hears what is being done (for a spinner), fine-tuning steps included. Pruning's BatchNorm
    recalibration and the distillation run on ``device`` (host compute); export and scoring on the CPU.
    """
    stage = on_stage or (lambda text: None)
    if format == "onnx" and opset is None:
        raise ValueError("an ONNX candidate needs an opset")
    t0 = time.perf_counter()
    if model is None:
        stage("pruning and recalibrating BatchNorm")
        pruned = apply_plan(base, plan, workload, space, device=device)
    else:
        pruned = model
    if model is None and teacher is not None and finetune_steps > 0 and not plan.is_identity:
        stage(f"fine-tuning ({finetune_steps} distillation steps)")
        pruned = finetune(
            pruned,
            teacher,
            workload,
            steps=finetune_steps,
            lr=finetune_lr,
            progress=lambda step, loss: stage(f"fine-tuning: step {step}/{finetune_steps}, loss {loss:.3f}"),
            device=device,
        )
    stage(f"exporting {'ONNX opset ' + str(opset) if format == 'onnx' else 'TFLite'} ({plan.quant})")
    artifact = build_artifact(pruned, plan, workload, opset=opset or 0, format=format)
    t1 = time.perf_counter()
    stage("evaluating on the validation set")
    accuracy = evaluate_artifact(artifact, workload, limit=val_limit)
    t2 = time.perf_counter()
    macs, params = model_cost(pruned, workload.input_shape)
    return pruned, Candidate(plan, artifact, float(accuracy), int(macs), int(params), t1 - t0, t2 - t1)


@dataclass(frozen=True)
class DeviceResult:
    observation: Observation
    transfer_s: float
    measure_s: float


def measure_candidate(
    session: Session,
    artifact: Artifact,
    spec: MeasureRequest,
    budgets: list[Budget],
    thresholds: dict[str, float] | None = None,
    windows: WindowPlan | None = None,
    reference: tuple[Artifact, frozenset[str]] | None = None,
) -> DeviceResult:
    """Send the artifact (only if the device lacks it) and measure it.

    With ``thresholds``, every device budget gets a verdict from repeated windows (``windows``); the budgets named
    in ``reference`` are judged on the ratio to that artifact (the original), measured in alternate windows.
    """
    t0 = time.perf_counter()
    sha = session.put_model(artifact.data)
    paired = pair_with(session, *reference) if reference is not None else None
    t1 = time.perf_counter()
    observation = observe(
        session, sha, artifact.size_bytes, spec, budgets, thresholds=thresholds, windows=windows, reference=paired
    )
    return DeviceResult(device_only(observation), t1 - t0, time.perf_counter() - t1)


def device_only(observation: Observation) -> Observation:
    """The observation without the metrics no device can measure (the accuracy drop): the device was never asked
    for them, so they are absent rather than None, and merging the device's values into the host's keeps the host's."""
    host_only = {name for name, metric in METRICS.items() if metric.requires == "accuracy"}
    if not host_only & observation.values.keys():
        return observation
    values = {k: v for k, v in observation.values.items() if k not in host_only}
    return dataclasses.replace(observation, values=values)
