"""A Session speaks the agent protocol over any transport: hello, put_model, measure, validate."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from edgecompress.device._transport import Channel, Transport
from edgecompress.errors import AgentError, ConnectionLost, DeviceError
from edgecompress_agent import PROTOCOL_VERSION
from edgecompress_agent.protocol import ProtocolError, read_frame, write_frame

CHUNK_BYTES = 1024 * 1024
T = TypeVar("T")

# A measure's answer is due after its timed windows (warm-up, then at most max_seconds each) and the waits the
# request allows (idle power reading, cool-down); past that plus these allowances the link is called stalled,
# broken and re-opened. The agent sends nothing while it measures, so the deadline is all the host has.
# Loading the model, the first inference and the warm-up runs on a CPU: seconds for a large model on a Pi.
LOAD_ALLOWANCE_S = 20.0
# TensorRT builds an engine each time the agent creates a session for the model: tens of seconds per candidate on
# a Nano (docs/devices.md), minutes for a large network.
TENSORRT_LOAD_ALLOWANCE_S = 300.0
# The last inference running past max_seconds, the answer's transfer (up to ~6 MB of latencies and power trace)
# and scheduling jitter on a loaded device.
STALL_MARGIN_S = 10.0


@dataclass(frozen=True)
class MeasureRequest:
    """How to measure one model; fields mirror the agent's ``measure`` request."""

    runtime: str = "onnxruntime"
    threads: int | None = None
    providers: tuple[str, ...] = ()
    warmup_runs: int = 10
    warmup_seconds: float = 0.5
    runs: int = 100
    min_seconds: float = 1.0
    max_seconds: float = 60.0
    affinity: tuple[int, ...] = ()
    input_shapes: Mapping[str, tuple[int, ...]] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "runtime": self.runtime,
            "warmup_runs": self.warmup_runs,
            "warmup_seconds": self.warmup_seconds,
            "runs": self.runs,
            "min_seconds": self.min_seconds,
            "max_seconds": self.max_seconds,
        }
        if self.threads:
            fields["threads"] = self.threads
        if self.providers:
            fields["providers"] = list(self.providers)
        if self.affinity:
            fields["affinity"] = list(self.affinity)
        if self.input_shapes:
            fields["input_shapes"] = {k: list(v) for k, v in self.input_shapes.items()}
        fields.update(self.extra)
        return fields

    def timeout_s(self) -> float:
        """How long the answer to this measure may take before the host calls the link stalled."""
        # One window: the idle power reading, the warm-up, the timed runs (the agent stops at max_seconds).
        window = float(self.extra.get("idle_seconds", 0.5)) + self.warmup_seconds + self.max_seconds
        max_wait_s = float(self.extra.get("max_wait_s", 120.0) or 0.0)
        # The agent waits (bounded by max_wait_s) to cool below start_temp_c only when one is set.
        total = window + (max_wait_s if self.extra.get("start_temp_c") is not None else 0.0)
        if self.extra.get("repeat_if_throttled", True):
            # A throttled window is measured once more after a cool-down until throttling stops.
            total += max_wait_s + window
        load = TENSORRT_LOAD_ALLOWANCE_S if "TensorrtExecutionProvider" in self.providers else LOAD_ALLOWANCE_S
        return total + load + STALL_MARGIN_S


@dataclass(frozen=True)
class Measurement:
    """What the agent returned for one ``measure``: raw latencies (ns) and everything read around them."""

    sha256: str
    latencies_ns: tuple[int, ...]
    load_ns: int
    first_inference_ns: int
    raw: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "latencies_ns": list(self.latencies_ns),
            "load_ns": self.load_ns,
            "first_inference_ns": self.first_inference_ns,
            "raw": dict(self.raw),
        }


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Session:
    """One device, one agent. Lost links are re-opened and idempotent requests retried, with backoff."""

    def __init__(
        self,
        transport: Transport,
        retries: int = 3,
        backoff_s: float = 1.0,
        on_event: Callable[[str], None] | None = None,
    ):
        self.transport = transport
        self.retries = retries
        self.backoff_s = backoff_s
        self.on_event = on_event or (lambda message: None)
        self._channel: Channel | None = None
        self._next_id = 0
        self.info: dict[str, Any] = {}
        self.reconnects = 0

    # -- lifecycle ------------------------------------------------------------------------------------------

    def __enter__(self) -> Session:
        self.hello()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is None:
            return
        try:
            self._roundtrip(channel, "bye", {}, None, timeout_s=10)
        except DeviceError:
            pass
        channel.close()

    def _open(self) -> Channel:
        if self._channel is None:
            self._channel = self.transport.open()
            self.info = self._roundtrip(self._channel, "hello", {"protocol": [PROTOCOL_VERSION]}, None, 60)[0]
        return self._channel

    def _drop(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.abort()
            channel.close()

    # -- requests -------------------------------------------------------------------------------------------

    def _roundtrip(
        self, channel: Channel, op: str, fields: dict[str, Any], payload: bytes | None, timeout_s: float
    ) -> tuple[dict[str, Any], bytes]:
        self._next_id += 1
        request_id = self._next_id
        # A hung device must not hang the search: the watchdog breaks the link, the read below then fails.
        watchdog = threading.Timer(timeout_s, channel.abort)
        watchdog.daemon = True
        watchdog.start()
        try:
            write_frame(channel.writer, {"id": request_id, "op": op, **fields}, payload)
            frame = read_frame(channel.reader)
        except (OSError, EOFError, ValueError, ProtocolError) as exc:
            # EOFError: paramiko's packetizer raises it (not an OSError) when the socket dies under a write.
            reason = "timed out" if not watchdog.is_alive() else str(exc) or type(exc).__name__
            raise ConnectionLost(
                f"{op} on {self.transport.name}: link lost ({reason}); {channel.diagnostics()}"
            ) from exc
        finally:
            watchdog.cancel()
        if frame is None:
            reason = (
                f"timed out after {timeout_s:.0f} s"
                if not watchdog.is_alive() and watchdog.finished.is_set()
                else "agent closed the link"
            )
            raise ConnectionLost(f"{op} on {self.transport.name}: {reason}; {channel.diagnostics()}")
        header, data = frame
        if header.get("id") != request_id:
            raise ConnectionLost(f"{op}: answer to request {header.get('id')} while waiting for {request_id}")
        if not header.get("ok"):
            error = header.get("error") or {}
            raise AgentError(str(error.get("type")), f"{op} on {self.transport.name}: {error.get('message')}")
        return header.get("result") or {}, data

    def _retrying(self, action: Callable[[], T]) -> T:
        """Run ``action``; on a lost link re-open it and retry, with exponential backoff, a bounded number of times."""
        attempt = 0
        while True:
            try:
                return action()
            except ConnectionLost as exc:
                self._drop()
                attempt += 1
                if attempt > self.retries:
                    raise ConnectionLost(f"{exc} (gave up after {self.retries} retries)") from exc
                self.reconnects += 1
                # A device never reached has no link to lose: say so, not "lost".
                what = (
                    f"link to {self.transport.name} lost"
                    if self.info
                    else f"connecting to {self.transport.name} failed"
                )
                self.on_event(f"{what}, retry {attempt}/{self.retries}: {exc}")
                time.sleep(self.backoff_s * 2 ** (attempt - 1))

    def request(
        self, op: str, fields: dict[str, Any] | None = None, payload: bytes | None = None, timeout_s: float = 60.0
    ) -> tuple[dict[str, Any], bytes]:
        """Send one request, re-opening the link and retrying when it is lost (requests are idempotent)."""
        return self._retrying(lambda: self._roundtrip(self._open(), op, fields or {}, payload, timeout_s))

    def hello(self) -> dict[str, Any]:
        """Open the link (if needed) and return what the agent reports about the device."""
        self._retrying(self._open)
        return self.info

    def put_model(self, data: bytes, progress: Callable[[int, int], None] | None = None) -> str:
        """Make sure the agent holds these bytes; returns their sha256. Resumes a partial upload."""
        sha = sha256_bytes(data)
        status, _ = self.request("has_model", {"sha256": sha})
        if status.get("cached"):
            return sha
        offset = int(status.get("received", 0))
        while True:
            chunk = data[offset : offset + CHUNK_BYTES]
            try:
                answer, _ = self.request("put_model", {"sha256": sha, "size": len(data), "offset": offset}, chunk)
            except AgentError as exc:
                if "resend from there" not in str(exc):
                    raise
                # After a reconnect the agent may hold more or fewer bytes than we think: ask.
                status, _ = self.request("has_model", {"sha256": sha})
                if status.get("cached"):
                    return sha
                offset = int(status.get("received", 0))
                continue
            offset = int(answer["received"])
            if progress:
                progress(offset, len(data))
            if answer.get("complete"):
                return sha

    def measure(self, sha256: str, spec: MeasureRequest) -> Measurement:
        """Measure a model the agent holds."""
        result, _ = self.request("measure", {"sha256": sha256, **spec.to_fields()}, timeout_s=spec.timeout_s())
        return Measurement(
            sha256=sha256,
            latencies_ns=tuple(int(x) for x in result.pop("latencies_ns")),
            load_ns=int(result.pop("load_ns")),
            first_inference_ns=int(result.pop("first_inference_ns")),
            raw=result,
        )

    def validate(
        self,
        sha256: str,
        inputs: Mapping[str, np.ndarray],
        runtime: str = "onnxruntime",
        threads: int | None = None,
        providers: tuple[str, ...] = (),
        batch: int | None = None,
        timeout_s: float = 300.0,
    ) -> list[np.ndarray]:
        """Run the model on the device with these inputs; returns its outputs.

        With ``batch``, the agent runs the inputs ``batch`` samples at a time along their first axis and joins the
        outputs, so one request carries many inferences at the batch the model takes. Inputs and outputs must each
        fit in one frame's payload (edgecompress_agent.protocol.MAX_PAYLOAD_BYTES).
        """
        from edgecompress_agent.runtimes import decode_arrays, encode_arrays

        specs, payload = encode_arrays(list(inputs.items()))
        fields: dict[str, Any] = {"sha256": sha256, "runtime": runtime, "inputs": specs}
        if threads:
            fields["threads"] = threads
        if providers:
            fields["providers"] = list(providers)
        if batch is not None:
            fields["batch"] = batch
        result, data = self.request("validate", fields, payload, timeout_s=timeout_s)
        arrays = decode_arrays(result["outputs"], data)
        return [np.array(arrays[spec["name"]]) for spec in result["outputs"]]
