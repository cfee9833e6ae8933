"""edgecompress validate and check --validate: the device's outputs against the host's, with real runtimes.

Devices here are agents run by other Python environments: this one (onnxruntime and LiteRT as the host has them),
.ci/run's older onnxruntime (1.15) and its Python 3.6 with onnxruntime 1.10 (the Jetson Nano's stack), and one whose
onnxruntime applies the session options stamped in the model (graph optimizations off) where the host's does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import onnx
import pytest
from clirun import edgecompress
from conftest import export_onnx, tiny_convnet

from edgecompress.artifact import load_artifact
from edgecompress.compress import CompressionPlan, build_artifact
from edgecompress.config import parse_profile
from edgecompress.device import open_session
from edgecompress.errors import WorkloadError
from edgecompress.validate import take_samples, validate_model
from edgecompress.validate._result import Tally
from edgecompress.workload import load_workload
from edgecompress_agent.protocol import MAX_PAYLOAD_BYTES

OLD_ORT_ENV = "EDGECOMPRESS_OLD_ORT_PYTHON"
PY36_ENV = "EDGECOMPRESS_PY36_PYTHON"


def _environment(variable: str, default: str | None, recipe: str) -> str:
    """An interpreter named by ``variable`` that imports numpy and onnxruntime: required under CI, else skipped."""
    path = os.environ.get(variable) or default
    problem = None
    if not path:
        problem = f"{variable} is not set"
    elif not Path(path).is_file():
        problem = f"{path} does not exist"
    else:
        probe = subprocess.run([path, "-c", "import numpy, onnxruntime"], capture_output=True, text=True)
        if probe.returncode != 0:
            problem = f"{path} cannot import numpy and onnxruntime: {probe.stderr.strip()[-300:]}"
    if problem:
        message = f"{problem}; .ci/run makes it ({recipe}) and sets {variable}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    assert path is not None
    return path


@pytest.fixture(scope="module")
def old_ort_python() -> str:
    return _environment(OLD_ORT_ENV, "/opt/edgecompress-old-ort/bin/python", "onnxruntime 1.15.1, numpy < 2")


@pytest.fixture(scope="module")
def py36_python() -> str:
    return _environment(PY36_ENV, None, "Python 3.6, pip 21.3.1, numpy 1.19.5, onnxruntime 1.10.0")


@pytest.fixture(scope="module")
def digits():
    return load_workload(example="digits", val_limit=300)


@pytest.fixture(scope="module")
def models(tmp_path_factory, digits) -> dict[str, Path]:
    """The digits CNN as fp32 ONNX, int8 ONNX at opset 15 (what onnxruntime 1.10 loads) and int8 TFLite."""
    folder = tmp_path_factory.mktemp("models")
    model = digits.build_model().eval()
    paths = {
        "fp32": build_artifact(model, CompressionPlan(), digits, opset=17).write(folder / "digits-fp32.onnx"),
        "int8": build_artifact(model, CompressionPlan(quant="int8"), digits, opset=15).write(
            folder / "digits-int8.onnx"
        ),
        "tflite": build_artifact(model, CompressionPlan(quant="int8"), digits, format="tflite").write(
            folder / "digits-int8.tflite"
        ),
    }
    return paths


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, COLUMNS="200", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    env.pop("ORT_LOAD_CONFIG_FROM_MODEL", None)  # the host's onnxruntime runs with its defaults
    return env


def _profile(tmp_path: Path, name: str, body: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\ntransport = "local"\ncache_dir = "{tmp_path / "agent-cache"}"\n{body}')
    return path


def _validate(tmp_path: Path, model: Path, device: str | Path, *args: str) -> subprocess.CompletedProcess[str]:
    return edgecompress("validate", str(model), "--device", str(device), *args, env=_env(tmp_path))


def _json(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


# -- parity --------------------------------------------------------------------------------------------------------


def test_onnxruntime_cpu_device_matches_the_host_exactly(tmp_path, models):
    page = tmp_path / "validate.html"
    result = _validate(tmp_path, models["fp32"], "local", "--example", "digits", "--json", "--html", str(page))
    assert result.returncode == 0, result.stderr
    report = _json(result)
    assert report["passed"] and report["samples"] == 300 and report["requests"] == 1
    assert report["agreement"] == 1.0 and report["max_abs_diff"] == 0.0 and report["mean_abs_diff"] == 0.0
    assert report["host_accuracy"] == report["device_accuracy"] > 0.95
    assert report["device_runtime"] == report["host_runtime"]
    text = page.read_text()
    assert "identical to the host" in text and "passed" in text


def test_the_same_inputs_every_run(tmp_path, digits):
    """The samples are the first N in the data's order, read under a fixed torch seed: the same bytes each run."""
    first, labels = take_samples(digits.val, 120)
    again, _ = take_samples(digits.val, 120)
    assert first.shape == (120, 1, 8, 8) and labels is not None and len(labels) == 120
    assert first.tobytes() == again.tobytes()
    with pytest.raises(WorkloadError, match="empty"):
        take_samples([], 10)


def test_int8_model_agrees_with_an_older_onnxruntime(tmp_path, models, old_ort_python):
    device = _profile(tmp_path, "old-ort", f'python = "{old_ort_python}"\n')
    result = _validate(tmp_path, models["int8"], device, "--example", "digits", "--json")
    assert result.returncode == 0, result.stderr
    report = _json(result)
    assert report["device_runtime"].startswith("onnxruntime 1.15.")
    assert report["host_runtime"] != report["device_runtime"]
    assert report["agreement"] >= 0.99 and report["device_accuracy"] > 0.9


def test_tflite_model_on_the_litert_device(tmp_path, models):
    """An int8 .tflite (batch 1, int8 input and output): quantized on the host, fed alike to both interpreters."""
    result = _validate(tmp_path, models["tflite"], "local-tflite", "--example", "digits", "--json")
    assert result.returncode == 0, result.stderr
    report = _json(result)
    assert report["format"] == "tflite" and report["batch"] == 1 and report["samples"] == 300
    assert report["requests"] == 1  # 300 samples in one request, run one at a time by the agent
    assert report["agreement"] == 1.0 and report["max_abs_diff"] == 0.0
    assert report["device_accuracy"] > 0.9
    assert "xnnpack" in report["providers"]


def test_a_batch_larger_than_one_frame_travels_in_bounded_requests(tmp_path):
    """120 images of 3x224x224 (72 MB of float32, over the 64 MiB a frame carries) through a model of batch 1,
    read from a --data entry point."""
    model = tmp_path / "tiny224.onnx"
    model.write_bytes(export_onnx(tiny_convnet(), (1, 3, 224, 224)))
    (tmp_path / "big_images.py").write_text(
        "import torch\n"
        "def data():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    val = [(torch.randn(40, 3, 224, 224, generator=g), torch.randint(0, 10, (40,), generator=g))"
        " for _ in range(3)]\n"
        "    return {'train': val, 'val': val}\n"
    )
    assert 120 * 3 * 224 * 224 * 4 > MAX_PAYLOAD_BYTES
    env = _env(tmp_path)
    env["PYTHONPATH"] = str(tmp_path)
    result = edgecompress(
        "validate", str(model), "--device", "local", "--data", "big_images:data", "--samples", "500", "--json", env=env
    )
    assert result.returncode == 0, result.stderr
    report = _json(result)
    assert report["samples"] == 120 and report["batch"] == 1
    assert report["requests"] >= 9  # at most 8 MiB of inputs each
    assert report["agreement"] == 1.0 and report["max_abs_diff"] == 0.0


# -- refusals and disagreements ------------------------------------------------------------------------------------


def test_another_models_bytes_under_the_same_name_are_refused_by_hash(tmp_path, models, digits):
    device = _profile(tmp_path, "cpu")
    profile = parse_profile(device.read_text(), str(device))
    model = load_artifact(models["int8"])

    def validate_in_process() -> float:
        with open_session(profile) as session:
            return validate_model(session, model, digits, 20).agreement

    assert validate_in_process() == 1.0
    cached = tmp_path / "agent-cache" / "models" / f"{model.sha256}.model"
    cached.write_bytes(models["fp32"].read_bytes())  # another model's bytes under the int8 model's name

    result = _validate(tmp_path, models["int8"], device, "--example", "digits", "--samples", "20")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "holds other bytes" in result.stderr and "Traceback" not in result.stderr
    assert not cached.exists()  # removed: the next run sends the model again
    assert validate_in_process() == 1.0

    # A model file that is not the one expected is refused before any device time (this device cannot start).
    other = load_artifact(models["fp32"]).sha256
    unreachable = _profile(tmp_path, "unreachable", 'python = "/nonexistent/python3"\n')
    result = _validate(tmp_path, models["int8"], unreachable, "--example", "digits", "--sha256", other)
    assert result.returncode == 2 and "another model under the same name" in result.stderr


@pytest.fixture()
def unoptimizing_device(tmp_path, models) -> tuple[Path, Path]:
    """(device profile, model): the int8 model stamped with graph optimizations off, honoured only by the device's
    onnxruntime (ORT_LOAD_CONFIG_FROM_MODEL=1 there); the host runs it fully optimized (QDQ fused to integer
    kernels), the device as dequantize -> float kernels -> quantize."""
    proto = onnx.load(str(models["int8"]))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "ort_config", json.dumps({"session_options": {"graph_optimization_level": 0}})
    model = tmp_path / "digits-int8-unoptimized.onnx"
    onnx.save(proto, str(model))
    wrapper = tmp_path / "python-unoptimized"
    wrapper.write_text(f'#!/bin/sh\nORT_LOAD_CONFIG_FROM_MODEL=1 exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    return _profile(tmp_path, "unoptimized", f'python = "{wrapper}"\n'), model


def test_a_real_disagreement_fails_with_exit_1(tmp_path, unoptimizing_device):
    device, model = unoptimizing_device
    page = tmp_path / "disagree.html"
    result = _validate(tmp_path, model, device, "--example", "digits", "--json", "--html", str(page))
    assert result.returncode == 1, result.stderr
    report = _json(result)
    assert not report["passed"] and report["agreement"] < 0.99
    assert report["max_abs_diff"] > 1.0 and report["host_accuracy"] != report["device_accuracy"]
    assert len(report["disagreements"]) == report["samples"] - report["agreeing"] > 0
    first = report["disagreements"][0]
    assert first["host_class"] != first["device_class"]
    assert "FAIL validate: top-1 agreement" in result.stderr
    assert "FAILED" in page.read_text() and "Disagreeing samples" in page.read_text()


def test_check_validate_is_a_junit_case_of_its_own(tmp_path, models, unoptimizing_device):
    device, model = unoptimizing_device
    quick = ["--runs", "20", "--min-seconds", "0.05", "--budget", "latency.p50<=1000ms"]
    junit, summary = tmp_path / "check.xml", tmp_path / "check.json"
    args = ["--validate", "--example", "digits", "--junit", str(junit), "--json", str(summary)]
    passing = edgecompress(
        "check", str(models["int8"]), "--device", str(_profile(tmp_path, "cpu")), *quick, *args, env=_env(tmp_path)
    )
    assert passing.returncode == 0, passing.stdout + passing.stderr
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    case = cases["validate: device outputs match the host's"]
    assert case.find("failure") is None and "top-1 agreement 100.00%" in case.findtext("system-out", "")
    assert "budget latency.p50<=1000ms" in cases
    assert json.loads(summary.read_text())["extra"]["validation"]["agreement"] == 1.0

    failing = edgecompress("check", str(model), "--device", str(device), *quick, *args, env=_env(tmp_path))
    assert failing.returncode == 1, failing.stdout + failing.stderr
    root = ET.parse(junit).getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert cases["budget latency.p50<=1000ms"].find("failure") is None  # the model is fast enough...
    failure = cases["validate: device outputs match the host's"].find("failure")
    assert failure is not None and "top-1 agreement" in failure.get("message", "")  # ...but computes otherwise
    assert root.get("failures") == "1" and root.get("tests") == str(len(cases))
    assert "FAIL validate" in failing.stderr


def test_check_validate_needs_its_samples(tmp_path, models):
    result = edgecompress("check", str(models["int8"]), "--device", "local", "--validate", env=_env(tmp_path))
    assert result.returncode == 2 and "--validate" in result.stderr and "--example" in result.stderr


# -- the Jetson Nano's stack: Python 3.6, onnxruntime 1.10 ----------------------------------------------------------


def test_python36_device_measures_and_validates_an_opset15_model(tmp_path, models, py36_python):
    device = _profile(tmp_path, "py36", f'python = "{py36_python}"\n')
    bench = edgecompress(
        "bench", str(models["int8"]), "--device", str(device), "--runs", "30", "--json", env=_env(tmp_path)
    )
    assert bench.returncode == 0, bench.stderr
    assert json.loads(bench.stdout)["latency"]["count"] >= 30
    result = _validate(tmp_path, models["int8"], device, "--example", "digits", "--json")
    assert result.returncode == 0, result.stderr
    report = _json(result)
    assert report["device_runtime"] == "onnxruntime 1.10.0" and report["agreement"] >= 0.99


def test_python36_device_disagrees_on_the_fashion_mnist_int8_resnet(tmp_path, py36_python):
    """A real finding: on the same bytes, onnxruntime 1.10's int8 kernels disagree with the host's onnxruntime on
    about 6% of Fashion-MNIST samples and lose several points of the int8 ResNet's accuracy. validate catches it."""
    fashion = load_workload(example="fashion-mnist", val_limit=1000)
    model = build_artifact(fashion.build_model().eval(), CompressionPlan(quant="int8"), fashion, opset=15)
    path = model.write(tmp_path / "fashion-int8.onnx")
    device = _profile(tmp_path, "py36", f'python = "{py36_python}"\n')
    result = _validate(tmp_path, path, device, "--example", "fashion-mnist", "--samples", "1000", "--json")
    assert result.returncode == 1, result.stderr
    report = _json(result)
    assert report["agreement"] < 0.99 and report["max_abs_diff"] > 1.0
    assert report["device_accuracy"] < report["host_accuracy"]


# -- the arithmetic ------------------------------------------------------------------------------------------------


def test_tally_counts_disagreements_and_outputs_finite_on_one_side_only():
    tally = Tally()
    host = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    device = host.copy()
    device[1] = [0.0, 3.5, 0.0]  # still class 1 (diff 1.5)
    device[2] = [4.0, 0.0, 3.0]  # class 0 instead of 2 (diff 4)
    tally.add([host], [device])
    tally.add([host[:1]], [np.array([[np.nan, 0.0, 0.0]])])
    figures = tally.figures(np.array([0, 1, 2, 0]), lambda scores, labels: float(np.mean(scores.argmax(1) == labels)))
    assert figures["agreement"] == 0.75 and figures["agreeing"] == 3
    assert figures["max_abs_diff"] == np.inf and figures["nonfinite_mismatches"] == 1
    assert figures["sample_max_abs_diff"][:3] == (0.0, 1.5, 4.0)
    assert figures["mean_abs_diff"] == pytest.approx((1.5 + 4.0) / 11)
    assert [(d.index, d.label, d.host_class, d.device_class) for d in figures["disagreements"]] == [(2, 2, 2, 0)]
    assert figures["host_accuracy"] == 1.0 and figures["device_accuracy"] == 0.75
