"""The host Session over the local transport: the same protocol as a remote device."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import onnxruntime as ort
import pytest

from edgecompress.analysis import latency_stats
from edgecompress.config import resolve_device
from edgecompress.device import LocalTransport, MeasureRequest, Session, measure_request, sha256_bytes
from edgecompress.errors import AgentError, ConnectionLost

QUICK = MeasureRequest(runs=20, min_seconds=0, warmup_runs=2, warmup_seconds=0, threads=1)


@pytest.fixture()
def session(tmp_path):
    s = Session(LocalTransport(cache_dir=str(tmp_path / "cache")), backoff_s=0.05)
    s.hello()
    yield s
    s.close()


def test_put_measure_validate(session, tiny_onnx):
    data = tiny_onnx.read_bytes()
    sha = session.put_model(data)
    assert sha == sha256_bytes(data)
    measurement = session.measure(sha, QUICK)
    stats = latency_stats(measurement)
    assert stats.count == 20 and 0 < stats.min_ms <= stats.p50_ms <= stats.p99_ms <= stats.max_ms
    x = np.ones((1, 3, 32, 32), np.float32)
    (logits,) = session.validate(sha, {"input": x})
    expected = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_put_model_sends_nothing_when_cached(session, tiny_onnx):
    data = tiny_onnx.read_bytes()
    progress: list[int] = []
    session.put_model(data, progress=lambda done, total: progress.append(done))
    assert progress[-1] == len(data)
    progress.clear()
    session.put_model(data, progress=lambda done, total: progress.append(done))
    assert progress == []


def test_agent_errors_are_raised_with_the_reason(session):
    with pytest.raises(AgentError, match="not in the agent's cache"):
        session.measure("0" * 64, QUICK)


def test_agent_killed_mid_measurement_is_restarted_and_the_measurement_retried(session, tiny_onnx):
    sha = session.put_model(tiny_onnx.read_bytes())
    first_pid = session.info["pid"]
    events: list[str] = []
    session.on_event = events.append
    slow = MeasureRequest(runs=1, min_seconds=3.0, warmup_runs=0, warmup_seconds=0, threads=1)
    # Kill the agent once the measure request is on its way: the retry must land on a fresh agent.
    killer = threading.Timer(0.5, os.kill, (first_pid, signal.SIGKILL))
    killer.start()
    measurement = session.measure(sha, slow)
    killer.join()
    assert session.info["pid"] != first_pid and session.reconnects == 1
    assert len(measurement.latencies_ns) > 1 and events and "lost" in events[0]


def test_a_dead_agent_fails_after_bounded_retries(tmp_path):
    s = Session(LocalTransport(python="/bin/false", cache_dir=str(tmp_path)), retries=2, backoff_s=0.01)
    with pytest.raises(ConnectionLost, match="gave up after 2 retries"):
        s.hello()


def test_measure_request_takes_profile_defaults_and_overrides():
    profile = resolve_device("local")
    spec = measure_request(profile, runs=7, threads=None)
    assert spec.runs == 7 and spec.min_seconds == profile.measure.min_seconds and spec.threads is None


def test_measure_deadline_is_its_expected_duration_plus_allowances():
    """The host gives up on a measure's answer after what the request allows, not after a fixed 10 minutes."""
    from dataclasses import replace

    from edgecompress.device._session import LOAD_ALLOWANCE_S, STALL_MARGIN_S, TENSORRT_LOAD_ALLOWANCE_S

    quiet = {"repeat_if_throttled": False, "idle_seconds": 0.5, "max_wait_s": 180.0}
    base = MeasureRequest(warmup_seconds=0.5, max_seconds=2.0, extra=quiet)
    window = 0.5 + 0.5 + 2.0
    assert base.timeout_s() == pytest.approx(window + LOAD_ALLOWANCE_S + STALL_MARGIN_S)
    assert replace(base, max_seconds=62.0).timeout_s() == pytest.approx(base.timeout_s() + 60)
    # Only the waits the request allows count: a cool-down before it, a throttled window measured again.
    assert replace(base, extra={**quiet, "start_temp_c": 60.0}).timeout_s() == pytest.approx(base.timeout_s() + 180)
    again = replace(base, extra={**quiet, "repeat_if_throttled": True})
    assert again.timeout_s() == pytest.approx(base.timeout_s() + 180 + window)
    trt = replace(base, providers=("TensorrtExecutionProvider", "CPUExecutionProvider"))
    assert trt.timeout_s() == pytest.approx(base.timeout_s() + TENSORRT_LOAD_ALLOWANCE_S - LOAD_ALLOWANCE_S)
    # The local profile's default measure (30 s windows, one repeat after up to 120 s): well under 604 s.
    assert measure_request(resolve_device("local")).timeout_s() < 250
