"""validate_model: the same samples through the model on the device and on the host, compared.

Samples are the first N of the data's ``val`` batches, read under a fixed torch seed (so a shuffling loader gives the
same order on every run, and the caller's random state is left as it was). They travel in requests of at most
``request_bytes`` of inputs or outputs, far under the protocol's frame bound; each request is run on the device in
slices of the inference batch, and the host runs the very same slices.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np

from edgecompress.artifact import Artifact
from edgecompress.device import Session
from edgecompress.device._session import LOAD_ALLOWANCE_S, TENSORRT_LOAD_ALLOWANCE_S
from edgecompress.errors import ConfigError, DeviceError, WorkloadError
from edgecompress.validate._host import HostModel, host_model
from edgecompress.validate._result import Tally, ValidationResult
from edgecompress_agent.protocol import MAX_PAYLOAD_BYTES

DEFAULT_SAMPLES = 1000
DEFAULT_MIN_AGREEMENT = 0.99
# Inputs (or outputs) per validate request: an eighth of the frame's payload bound, a few seconds on a slow link.
REQUEST_BYTES = 8 * 1024 * 1024
# Samples per request whatever their size: bounds one request's time on a slow device.
MAX_SAMPLES_PER_REQUEST = 1024
# A request's answer is due after loading (first request) and its inferences; this much per sample is generous.
SECONDS_PER_SAMPLE = 0.5


class LabelledBatches(Protocol):
    """What validation reads of a workload: ``val`` (inputs, labels) batches and the metric (a Workload has both)."""

    @property
    def val(self) -> Iterable[Any]: ...

    @property
    def metric(self) -> Callable[[np.ndarray, np.ndarray], float]: ...


def take_samples(batches: Iterable[Any], samples: int, seed: int | None = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """The first ``samples`` (inputs, labels) of ``batches`` as float32 inputs and labels (None without labels)."""
    import torch

    inputs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    seen = 0
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        for batch in batches:
            if seen >= samples:
                break
            x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) and len(batch) >= 2 else (batch, None)
            keep = min(len(x), samples - seen)
            inputs.append(np.asarray(x[:keep], dtype=np.float32))
            if y is not None:
                labels.append(np.asarray(y[:keep]))
            seen += keep
    if not seen:
        raise WorkloadError("the validation data is empty")
    return np.concatenate(inputs), (np.concatenate(labels) if len(labels) == len(inputs) else None)


def request_size(host: HostModel, feed: np.ndarray, batch: int, request_bytes: int) -> int:
    """Samples per request: a multiple of the inference batch whose inputs and outputs fit in ``request_bytes``."""
    first = host.run(feed[:batch], batch)
    n = len(feed[:batch])
    if first[0].size // n < 2:
        raise ConfigError(
            "validate compares top-1 classes, but the model's first output has one value per sample (not class scores)"
        )
    per_sample = max(feed[:batch].nbytes / n, sum(o.nbytes for o in first) / n)
    if per_sample * batch > MAX_PAYLOAD_BYTES:
        raise ConfigError(
            f"one inference batch of {batch} takes {per_sample * batch / 2**20:.0f} MiB of inputs or outputs, more "
            f"than a frame carries ({MAX_PAYLOAD_BYTES / 2**20:.0f} MiB)"
        )
    fitting = int(min(request_bytes, MAX_PAYLOAD_BYTES) // per_sample)
    return max(batch, min(fitting, MAX_SAMPLES_PER_REQUEST) // batch * batch)


def validate_model(
    session: Session,
    artifact: Artifact,
    workload: LabelledBatches,
    samples: int = DEFAULT_SAMPLES,
    *,
    threads: int | None = None,
    providers: tuple[str, ...] = (),
    batch: int | None = None,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    seed: int | None = 0,
    model_name: str | None = None,
    device_name: str | None = None,
    request_bytes: int = REQUEST_BYTES,
    on_progress: Callable[[int, int], None] | None = None,
) -> ValidationResult:
    """Run the same ``samples`` inputs through ``artifact`` on the device (``session``) and on the host; compare.

    The device runs the artifact's exact bytes (put on it here, checked against their sha256 by the agent) with
    ``threads`` and ``providers`` (the profile's); the host runs them with onnxruntime on the CPU or the LiteRT
    interpreter. ConfigError or WorkloadError (exit 2) before any device time; DeviceError (exit 3) when the device
    fails. The result's ``passed`` says whether top-1 agreement reached ``min_agreement``.
    """
    if samples < 1:
        raise ConfigError(f"samples must be positive, got {samples}")
    if not 0.0 <= min_agreement <= 1.0:
        raise ConfigError(f"the minimum agreement is a fraction in [0, 1], got {min_agreement}")
    started = time.monotonic()
    host = host_model(artifact)
    batch = host.batch_for(batch)
    inputs, labels = take_samples(workload.val, samples, seed)
    if host.fixed_batch is not None and len(inputs) % batch:
        # A model of a fixed batch cannot take a last, smaller slice: validate the whole batches.
        inputs = inputs[: len(inputs) // batch * batch]
        labels = None if labels is None else labels[: len(inputs)]
        if not len(inputs):
            raise WorkloadError(f"fewer samples than one batch of {batch}")
    feed = host.encode(inputs)
    per_request = request_size(host, feed, batch, request_bytes)
    runtime = artifact.runtime
    sha = session.put_model(artifact.data)
    hello = session.hello()
    load = TENSORRT_LOAD_ALLOWANCE_S if "TensorrtExecutionProvider" in providers else LOAD_ALLOWANCE_S
    tally = Tally()
    requests = 0
    for start in range(0, len(feed), per_request):
        part = feed[start : start + per_request]
        device_out = session.validate(
            sha,
            {host.input_name: part},
            runtime=runtime,
            threads=threads,
            providers=providers,
            batch=batch,
            timeout_s=load + 60.0 + SECONDS_PER_SAMPLE * len(part),
        )
        host_out = host.run(part, batch)
        try:
            tally.add(host.decode(host_out), host.decode(device_out))
        except ValueError as exc:
            raise DeviceError(f"validate on {session.transport.name}: {exc}") from exc
        requests += 1
        if on_progress:
            on_progress(start + len(part), len(feed))
    figures = tally.figures(labels, workload.metric)
    entry: dict[str, Any] = next((r for r in hello.get("runtimes") or () if r.get("name") == runtime), {})
    return ValidationResult(
        model=model_name or artifact.sha256[:12],
        sha256=artifact.sha256,
        format=artifact.format,
        device=device_name or session.transport.name,
        board=hello.get("board"),
        device_runtime=f"{entry.get('module') or runtime} {entry.get('version')}",
        providers=tuple(providers) or (("CPUExecutionProvider",) if runtime == "onnxruntime" else ("xnnpack",)),
        host_runtime=host.runtime,
        samples=len(feed),
        batch=batch,
        requests=requests,
        seed=seed,
        inputs_sha256=hashlib.sha256(feed.tobytes()).hexdigest(),
        min_agreement=min_agreement,
        elapsed_s=time.monotonic() - started,
        **figures,
    )
