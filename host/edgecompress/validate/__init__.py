"""Output parity: the device runs what the host scored, on the same inputs and the same bytes.

with open_session(profile) as session:
    result = validate_model(session, artifact, workload, samples=1000, providers=tuple(profile.runtime.providers))
result.passed, result.agreement, result.max_abs_diff, result.host_accuracy, result.device_accuracy
"""

from edgecompress.validate._result import Disagreement, ValidationResult
from edgecompress.validate._run import (
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_SAMPLES,
    REQUEST_BYTES,
    LabelledBatches,
    take_samples,
    validate_model,
)

__all__ = [
    "DEFAULT_MIN_AGREEMENT",
    "DEFAULT_SAMPLES",
    "REQUEST_BYTES",
    "Disagreement",
    "LabelledBatches",
    "ValidationResult",
    "take_samples",
    "validate_model",
]
