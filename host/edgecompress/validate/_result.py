"""What a parity check found, and the arithmetic behind it: the same inputs' outputs on the host and on the device."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA = "edgecompress.validate/1"
# Disagreeing samples listed in the result (the count is always exact).
MAX_LISTED = 100


@dataclass(frozen=True)
class Disagreement:
    """One sample whose top-1 class differs between the host and the device."""

    index: int
    label: int | None
    host_class: int
    device_class: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ValidationResult:
    """The device's outputs against the host's on the same inputs and the same model bytes."""

    model: str
    sha256: str
    format: str
    device: str
    board: str | None
    device_runtime: str
    providers: tuple[str, ...]
    host_runtime: str
    samples: int
    batch: int
    requests: int
    seed: int | None
    inputs_sha256: str
    agreement: float
    agreeing: int
    max_abs_diff: float
    mean_abs_diff: float
    nonfinite_mismatches: int
    host_accuracy: float | None
    device_accuracy: float | None
    min_agreement: float
    disagreements: tuple[Disagreement, ...]
    elapsed_s: float
    # Per sample, the largest absolute difference over all its outputs (for plots; not in the JSON).
    sample_max_abs_diff: tuple[float, ...] = field(default=(), repr=False)

    @property
    def passed(self) -> bool:
        """Top-1 agreement at least the minimum, and no output finite on one side and not on the other."""
        return self.agreement >= self.min_agreement and self.nonfinite_mismatches == 0

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def describe(self) -> str:
        """One line: agreement against the minimum, output differences, accuracy on each side."""
        text = (
            f"top-1 agreement {self.agreement:.2%} ({self.agreeing}/{self.samples}, minimum "
            f"{self.min_agreement:.2%}); max |diff| {self.max_abs_diff:.4g}, mean |diff| {self.mean_abs_diff:.4g}"
        )
        if self.host_accuracy is not None and self.device_accuracy is not None:
            text += f"; accuracy host {self.host_accuracy:.2%}, device {self.device_accuracy:.2%}"
        if self.nonfinite_mismatches:
            text += f"; {self.nonfinite_mismatches} outputs finite on one side only"
        return text

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "sample_max_abs_diff"}
        data["providers"] = list(self.providers)
        data["disagreements"] = [d.to_json() for d in self.disagreements]
        data["max_abs_diff"] = _finite_or_none(self.max_abs_diff)
        data["mean_abs_diff"] = _finite_or_none(self.mean_abs_diff)
        return {"schema": SCHEMA, "passed": self.passed, "exit_code": self.exit_code, **data}


def _class_label(labels: np.ndarray | None, index: int) -> int | None:
    """The label of a sample when labels are class numbers (a metric of the user's own may read them otherwise)."""
    if labels is None or labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        return None
    return int(labels[index])


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


class Tally:
    """Outputs compared request by request; ``figures`` gives the totals."""

    def __init__(self) -> None:
        self.host_scores: list[np.ndarray] = []
        self.device_scores: list[np.ndarray] = []
        self.sample_max: list[np.ndarray] = []
        self.diff_sum = 0.0
        self.diff_count = 0
        self.nonfinite = 0

    def add(self, host: Sequence[np.ndarray], device: Sequence[np.ndarray]) -> None:
        """One request's decoded outputs (float, sample axis first), host and device in the same order."""
        if len(host) != len(device):
            raise ValueError(f"the device returned {len(device)} outputs, the host {len(host)}")
        n = len(host[0])
        sample_max = np.zeros(n)
        for h, d in zip(host, device, strict=True):
            if h.shape != d.shape:
                raise ValueError(f"an output of shape {d.shape} on the device is {h.shape} on the host")
            h2, d2 = h.reshape(n, -1), d.reshape(n, -1)
            finite_h, finite_d = np.isfinite(h2), np.isfinite(d2)
            both = finite_h & finite_d
            self.nonfinite += int(np.count_nonzero(finite_h != finite_d))
            diff = np.where(both, np.abs(h2 - d2), 0.0)
            self.diff_sum += float(diff.sum())
            self.diff_count += int(both.sum())
            sample_max = np.maximum(sample_max, diff.max(axis=1) if diff.shape[1] else 0.0)
            sample_max[(finite_h != finite_d).any(axis=1)] = np.inf
        self.host_scores.append(host[0].reshape(n, -1))
        self.device_scores.append(device[0].reshape(n, -1))
        self.sample_max.append(sample_max)

    def figures(
        self, labels: np.ndarray | None, metric: Callable[[np.ndarray, np.ndarray], float] | None
    ) -> dict[str, Any]:
        """Agreement, differences, accuracy on each side and the disagreeing samples."""
        host = np.concatenate(self.host_scores)
        device = np.concatenate(self.device_scores)
        host_top, device_top = np.argmax(host, axis=1), np.argmax(device, axis=1)
        agree = host_top == device_top
        sample_max = np.concatenate(self.sample_max)
        listed = [
            Disagreement(int(i), _class_label(labels, int(i)), int(host_top[i]), int(device_top[i]))
            for i in np.flatnonzero(~agree)[:MAX_LISTED]
        ]
        accuracy: tuple[float | None, float | None] = (None, None)
        if labels is not None and metric is not None:
            accuracy = (float(metric(host, labels)), float(metric(device, labels)))
        return {
            "agreement": float(agree.mean()),
            "agreeing": int(agree.sum()),
            "max_abs_diff": float(sample_max.max()),
            "mean_abs_diff": self.diff_sum / self.diff_count if self.diff_count else 0.0,
            "nonfinite_mismatches": self.nonfinite,
            "host_accuracy": accuracy[0],
            "device_accuracy": accuracy[1],
            "disagreements": tuple(listed),
            "sample_max_abs_diff": tuple(float(x) for x in sample_max),
        }
