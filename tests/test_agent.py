"""The agent over its real protocol: requests, bad requests, uploads, measurement, validation."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from edgecompress_agent.protocol import MAX_HEADER_BYTES, encode_frame, read_frame


class Client:
    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.next_id = 0

    def send_raw(self, data: bytes) -> None:
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def call(self, op: str, payload: bytes | None = None, **fields):
        self.next_id += 1
        self.send_raw(encode_frame({"id": self.next_id, "op": op, **fields}, payload))
        header, data = read_frame(self.process.stdout)
        assert header["id"] == self.next_id
        return header, data


def test_hello_reports_the_device(agent_process):
    header, _ = Client(agent_process).call("hello", protocol=[1])
    info = header["result"]
    assert header["ok"] and info["protocol"] == 1
    assert info["python"]["version"].startswith("3.")
    assert any(r["name"] == "onnxruntime" and r["version"] == ort.__version__ for r in info["runtimes"])
    assert info["cpu"]["count"] >= 1 and info["memory"]["total_bytes"] > 0


def test_hello_refuses_an_unknown_protocol(agent_process):
    header, _ = Client(agent_process).call("hello", protocol=[99])
    assert not header["ok"] and "protocol" in header["error"]["message"]


def test_chunked_upload_resumes_and_is_cached(agent_process, tiny_onnx):
    client = Client(agent_process)
    data = tiny_onnx.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    status, _ = client.call("has_model", sha256=sha)
    assert status["result"] == {"cached": False, "received": 0}
    half = len(data) // 2
    answer, _ = client.call("put_model", data[:half], sha256=sha, size=len(data), offset=0)
    assert answer["result"] == {"complete": False, "received": half}
    # A chunk at the wrong offset (as after a lost link) is refused with the offset to resend from.
    wrong, _ = client.call("put_model", data[half:], sha256=sha, size=len(data), offset=half + 1)
    assert not wrong["ok"] and "resend from there" in wrong["error"]["message"]
    answer, _ = client.call("put_model", data[half:], sha256=sha, size=len(data), offset=half)
    assert answer["result"]["complete"]
    status, _ = client.call("has_model", sha256=sha)
    assert status["result"]["cached"]


def test_wrong_sha256_is_refused_and_nothing_is_kept(agent_process, tiny_onnx):
    client = Client(agent_process)
    data = tiny_onnx.read_bytes()
    fake = hashlib.sha256(b"other").hexdigest()
    answer, _ = client.call("put_model", data, sha256=fake, size=len(data), offset=0)
    assert not answer["ok"] and "sha256 mismatch" in answer["error"]["message"]
    status, _ = client.call("has_model", sha256=fake)
    assert status["result"] == {"cached": False, "received": 0}


def _put(client: Client, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    answer, _ = client.call("put_model", data, sha256=sha, size=len(data), offset=0)
    assert answer["ok"], answer
    return sha


def test_measure_returns_raw_latencies(agent_process, tiny_onnx):
    client = Client(agent_process)
    sha = _put(client, tiny_onnx.read_bytes())
    header, _ = client.call("measure", sha256=sha, runs=25, min_seconds=0, warmup_runs=2, warmup_seconds=0, threads=1)
    result = header["result"]
    assert header["ok"] and len(result["latencies_ns"]) == 25
    assert all(isinstance(x, int) and x > 0 for x in result["latencies_ns"])
    assert result["load_ns"] > 0 and result["first_inference_ns"] > 0 and result["warmup_runs"] == 2
    assert result["inputs"] == [{"name": "input", "dtype": "float32", "shape": [1, 3, 32, 32]}]


def test_measure_honours_min_seconds(agent_process, tiny_onnx):
    client = Client(agent_process)
    sha = _put(client, tiny_onnx.read_bytes())
    header, _ = client.call("measure", sha256=sha, runs=1, min_seconds=0.3, warmup_runs=0, warmup_seconds=0)
    assert header["result"]["window_ns"] >= 0.3e9 and len(header["result"]["latencies_ns"]) > 1


def test_validate_matches_host_onnxruntime(agent_process, tiny_onnx):
    from edgecompress_agent.runtimes import decode_arrays, encode_arrays

    client = Client(agent_process)
    sha = _put(client, tiny_onnx.read_bytes())
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    specs, payload = encode_arrays([("input", x)])
    header, data = client.call("validate", payload, sha256=sha, inputs=specs)
    assert header["ok"], header
    outputs = decode_arrays(header["result"]["outputs"], data)
    expected = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(outputs["logits"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"op": "launch_missiles"}, "unknown op"),
        ({"op": "measure", "sha256": "../../etc/passwd"}, "sha256 must be 64"),
        ({"op": "measure", "sha256": "0" * 64}, "not in the agent's cache"),
        ({"op": "measure", "sha256": "0" * 64, "runs": -3}, "outside"),
        ({"op": "measure", "sha256": "0" * 64, "runs": "many"}, "must be int"),
        ({"op": "put_model", "sha256": "0" * 64}, "lacks 'size'"),
        ({"op": "validate", "sha256": "0" * 64, "inputs": "x"}, "must be list"),
    ],
)
def test_bad_requests_get_error_frames_and_the_agent_keeps_serving(agent_process, fields, needle):
    client = Client(agent_process)
    header, _ = client.call(fields.pop("op"), **fields)
    assert not header["ok"] and needle in header["error"]["message"]
    assert client.call("hello")[0]["ok"]


def test_malformed_json_is_answered_and_the_stream_stays_in_sync(agent_process):
    client = Client(agent_process)
    body = b"{not json"
    client.send_raw(struct.pack(">I", len(body)) + body)
    header, _ = read_frame(agent_process.stdout)
    assert not header["ok"] and "not UTF-8 JSON" in header["error"]["message"]
    assert client.call("hello")[0]["ok"]


def test_a_deeply_nested_header_is_a_bad_request_not_a_crash(agent_process):
    client = Client(agent_process)
    body = b'{"id":1,"op":"hello","protocol":' + b"[" * 3000 + b"]" * 3000 + b"}"  # 6 KB
    client.send_raw(struct.pack(">I", len(body)) + body)
    header, _ = read_frame(agent_process.stdout)
    assert not header["ok"] and header["error"]["type"] == "bad_request", header
    assert "nests too deeply" in header["error"]["message"]
    assert client.call("hello")[0]["ok"]


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"runs": "x"}, "'runs' must be int"),
        ({"threads": -1}, "'threads' = -1 is outside"),
        ({"min_seconds": "a"}, "'min_seconds' must be int/float"),
        ({"min_seconds": float("nan")}, "'min_seconds' must be a finite number"),
        ({"max_seconds": float("inf")}, "'max_seconds' must be a finite number"),
        ({"input_shapes": [1, 3, 32, 32]}, "'input_shapes' must be dict"),
        ({"input_shapes": {"input": "x"}}, "input_shapes['input'] must be a list of positive integers"),
        ({"input_shapes": {"input": [1, 3, -32, 32]}}, "input_shapes['input'] must be a list of positive integers"),
        ({"input_shapes": {"input": [1, 3, 32.5, 32]}}, "input_shapes['input'] must be a list of positive integers"),
        ({"input_shapes": {"input": [1, 3]}}, "has 2 dimensions; the model's input has 4"),
        ({"input_shapes": {"image": [1, 3, 32, 32]}}, "names 'image', which is not an input"),
        ({"input_shapes": {"input": [1, 3, 16, 16]}}, "inference fails on inputs of shape"),
        ({"input_shapes": {"input": [2**40, 2**40, 32, 32]}}, "cannot be allocated"),
    ],
)
def test_bad_measure_fields_are_bad_requests(agent_process, tiny_onnx, fields, needle):
    client = Client(agent_process)
    sha = _put(client, tiny_onnx.read_bytes())
    client.next_id += 1
    request = {"id": client.next_id, "op": "measure", "sha256": sha, "runs": 1, "min_seconds": 0, **fields}
    body = json.dumps(request).encode()  # json.dumps writes NaN and Infinity as a careless host would
    client.send_raw(struct.pack(">I", len(body)) + body)
    header, _ = read_frame(agent_process.stdout)
    assert not header["ok"] and header["error"]["type"] == "bad_request", header
    assert needle in header["error"]["message"]
    assert client.call("hello")[0]["ok"]


def test_oversize_header_gets_an_error_and_a_clean_close(agent_process):
    client = Client(agent_process)
    client.send_raw(struct.pack(">I", MAX_HEADER_BYTES + 1))
    header, _ = read_frame(agent_process.stdout)
    assert not header["ok"] and "exceeds" in header["error"]["message"]
    assert agent_process.wait(timeout=10) == 1


def test_oversize_payload_is_refused(agent_process):
    client = Client(agent_process)
    body = b'{"id":1,"op":"put_model","payload":999999999999}'
    client.send_raw(struct.pack(">I", len(body)) + body)
    header, _ = read_frame(agent_process.stdout)
    assert not header["ok"] and "exceeds" in header["error"]["message"]
    assert agent_process.wait(timeout=10) == 1


def test_a_model_the_runtime_cannot_load_is_an_error_not_a_crash(agent_process):
    client = Client(agent_process)
    sha = _put(client, b"this is not a model at all" * 10)
    header, _ = client.call("measure", sha256=sha, runs=1)
    assert not header["ok"] and "cannot load the model" in header["error"]["message"]
    assert client.call("hello")[0]["ok"]


def test_a_missing_runtime_or_provider_is_named(agent_process, tiny_onnx):
    client = Client(agent_process)
    sha = _put(client, tiny_onnx.read_bytes())
    header, _ = client.call("measure", sha256=sha, runs=1, providers=["TensorrtExecutionProvider"])
    assert not header["ok"] and "lacks provider(s) TensorrtExecutionProvider" in header["error"]["message"]
    header, _ = client.call("measure", sha256=sha, runs=1, runtime="coreml")
    assert not header["ok"] and "unknown runtime" in header["error"]["message"]


def test_bye_ends_the_agent_cleanly(agent_process):
    client = Client(agent_process)
    assert client.call("bye")[0]["ok"]
    assert agent_process.wait(timeout=10) == 0


def test_cache_is_bounded(tmp_path):
    from edgecompress_agent.cache import ModelCache

    cache = ModelCache(str(tmp_path), max_bytes=250)
    blobs = [bytes([i]) * 100 for i in range(3)]
    for blob in blobs:
        cache.write_chunk(hashlib.sha256(blob).hexdigest(), len(blob), 0, blob)
    held = [cache.status(hashlib.sha256(b).hexdigest())[0] for b in blobs]
    assert held == [False, True, True]


def test_agent_cli_info_and_bench(agent_env, tiny_onnx):
    info = subprocess.run(
        [sys.executable, "-m", "edgecompress_agent", "info"], env=agent_env, capture_output=True, text=True, check=True
    )
    assert '"agent_version"' in info.stdout
    bench = subprocess.run(
        [sys.executable, "-m", "edgecompress_agent", "bench", str(tiny_onnx), "--runs", "5", "--min-seconds", "0"],
        env=agent_env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "p99" in bench.stdout and "mean" in bench.stdout


def test_read_frame_distinguishes_clean_end_from_truncation():
    assert read_frame(io.BytesIO(b"")) is None
    from edgecompress_agent.protocol import ProtocolError

    with pytest.raises(ProtocolError):
        read_frame(io.BytesIO(struct.pack(">I", 10) + b"{}"))
