"""Runtime negotiation against a real older onnxruntime, the built-in device profiles, and the TFLite path.

The "older device" is an agent started by a second Python environment with the oldest onnxruntime PyPI has for this
Python (1.15.1, numpy < 2), which .ci/run creates and names in EDGECOMPRESS_OLD_ORT_PYTHON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hw_fixtures
import pytest

from edgecompress.compress import CompressionPlan, build_artifact, evaluate_artifact, export_onnx
from edgecompress.config import builtin_profiles, parse_profile
from edgecompress.device import check_runtime, max_opset_for, measure_request, open_session
from edgecompress.errors import ConfigError
from edgecompress.search._negotiate import choose_opset, export_target
from edgecompress.workload import load_workload

OLD_ORT_ENV = "EDGECOMPRESS_OLD_ORT_PYTHON"
QUICK = [
    "--runs",
    "20",
    "--min-seconds",
    "0.05",
    "--finetune-steps",
    "5",
    "--val-limit",
    "200",
    "--warmup-seconds",
    "0.05",
]


@pytest.fixture(scope="module")
def old_ort_python() -> str:
    """The interpreter of the older-onnxruntime environment: required under CI, skipped with the reason elsewhere."""
    path = os.environ.get(OLD_ORT_ENV) or "/opt/edgecompress-old-ort/bin/python"
    problem = None
    if not Path(path).is_file():
        problem = f"{path} does not exist"
    else:
        probe = subprocess.run(
            [path, "-c", "import numpy, onnxruntime; print(onnxruntime.__version__)"], capture_output=True, text=True
        )
        if probe.returncode != 0:
            problem = f"{path} cannot import numpy and onnxruntime: {probe.stderr.strip()[-300:]}"
    if problem:
        message = (
            f"older-onnxruntime environment missing ({problem}); .ci/run creates it: python3 -m venv "
            f"/opt/edgecompress-old-ort && /opt/edgecompress-old-ort/bin/pip install onnxruntime==1.15.1 "
            f"'numpy<2', then set {OLD_ORT_ENV}"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def digits():
    return load_workload(example="digits", val_limit=300)


def _profile(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\ntransport = "local"\ncache_dir = "{tmp_path / "agent-cache"}"\n{body}')
    return path


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200", XDG_CACHE_HOME=str(cwd / "xdg"))
    return subprocess.run(
        [sys.executable, "-m", "edgecompress", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def _cached_models(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "agent-cache").rglob("*") if p.is_file() and p.stat().st_size > 1000]


# -- the opset table against a real older onnxruntime -------------------------------------------------------------


def test_old_onnxruntime_gets_the_opset_it_loads_and_is_measured(tmp_path, old_ort_python, digits):
    profile_path = _profile(
        tmp_path,
        "old-ort",
        f'python = "{old_ort_python}"\n[runtime]\nname = "onnxruntime"\nproviders = ["CPUExecutionProvider"]\n',
    )
    profile = parse_profile(profile_path.read_text(), str(profile_path))
    with open_session(profile) as session:
        hello = session.hello()
    version = next(r["version"] for r in hello["runtimes"] if r["name"] == "onnxruntime")
    assert version.startswith("1.15."), hello["runtimes"]
    target = export_target(profile, hello, None, ["fp32", "int8"])
    assert target.format == "onnx" and target.opset == max_opset_for(version) == 18
    with pytest.raises(ConfigError, match="at most 18"):
        export_target(profile, hello, 19, ["fp32"])

    # int8 at the negotiated opset: the host's onnxruntime 1.31 quantizes it, 1.15 on the "device" measures it.
    model = digits.build_model().eval()
    int8 = build_artifact(model, CompressionPlan(quant="int8"), digits, opset=target.opset)
    assert evaluate_artifact(int8, digits, limit=300) > 0.9
    ok = tmp_path / "int8-opset18.onnx"
    int8.write(ok)
    result = _cli("bench", str(ok), "--device", str(profile_path), "--runs", "30", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["latency"]["count"] >= 30

    # One opset above: refused by the host before the upload (the agent's cache stays as it was).
    before = _cached_models(tmp_path)
    too_new = tmp_path / "int8-opset19.onnx"
    too_new.write_bytes(build_artifact(model, CompressionPlan(quant="int8"), digits, opset=19).data)
    result = _cli("bench", str(too_new), "--device", str(profile_path), "--runs", "30", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "opset 19, above what onnxruntime 1.15" in result.stderr and "Traceback" not in result.stderr
    assert _cached_models(tmp_path) == before


def test_tune_refuses_an_opset_the_device_cannot_load_before_measuring(tmp_path, old_ort_python):
    profile_path = _profile(tmp_path, "old-ort", f'python = "{old_ort_python}"\n')
    result = _cli(
        "tune",
        "--device",
        str(profile_path),
        "--example",
        "digits",
        "--budget",
        "latency.mean<=0.9x",
        "--opset",
        "19",
        "--rounds",
        "1",
        "--trials-per-round",
        "2",
        *QUICK,
        "--out",
        str(tmp_path / "run"),
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "opset 19 is above what onnxruntime 1.15.1 on the device loads (at most 18)" in result.stderr
    assert "measuring the original" not in result.stdout
    assert _cached_models(tmp_path) == []


def test_a_tflite_profile_on_a_device_without_tflite_is_refused(tmp_path, old_ort_python, digits):
    profile_path = _profile(tmp_path, "no-tflite", f'python = "{old_ort_python}"\n[runtime]\nname = "tflite"\n')
    result = _cli(
        "tune",
        "--device",
        str(profile_path),
        "--example",
        "digits",
        "--budget",
        "latency.mean<=0.9x",
        "--rounds",
        "1",
        "--trials-per-round",
        "2",
        *QUICK,
        "--out",
        str(tmp_path / "run"),
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "tflite is not importable by" in result.stderr and "ai-edge-litert" in result.stderr


def test_a_profile_expecting_cuda_on_a_cpu_only_device_is_refused_by_bench_and_check(tmp_path, digits):
    profile_path = _profile(
        tmp_path,
        "wants-cuda",
        '[runtime]\nname = "onnxruntime"\nproviders = ["CUDAExecutionProvider", "CPUExecutionProvider"]\n',
    )
    model = tmp_path / "digits.onnx"
    model.write_bytes(export_onnx(digits.build_model(), digits.input_shape, 17))
    for command in (["bench", str(model)], ["check", str(model), "--budget", "latency.p99<=1s"]):
        result = _cli(*command, "--device", str(profile_path), cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "expects CUDAExecutionProvider" in result.stderr, result.stderr
        assert "CPUExecutionProvider; install a build with those providers" in result.stderr
    assert _cached_models(tmp_path) == []


def test_fp16_is_searched_only_where_a_gpu_provider_runs_it():
    profiles = builtin_profiles()
    cuda = {
        "board": "jetson",
        "runtimes": [
            {
                "name": "onnxruntime",
                "version": "1.16.3",
                "providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
            }
        ],
    }
    orin = export_target(profiles["jetson-orin-nano"], cuda, None, ["fp32", "int8"])
    assert orin.quant_modes == ("fp32", "int8", "fp16") and orin.opset == 19
    assert orin.fp16_providers == ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    cpu = {
        "board": "pi",
        "runtimes": [{"name": "onnxruntime", "version": "1.20.1", "providers": ["CPUExecutionProvider"]}],
    }
    assert export_target(profiles["raspberry-pi-4"], cpu, None, ["fp32", "int8"]).quant_modes == ("fp32", "int8")
    # The Nano's wheels: 1.10 loads opset 15, 1.11 opset 16 (onnxruntime's compatibility table).
    for version, opset in (("1.10.0", 15), ("1.11.0", 16)):
        nano = {"runtimes": [{**cuda["runtimes"][0], "version": version}]}
        assert export_target(profiles["jetson-nano"], nano, None, ["fp32"]).opset == opset
    with pytest.raises(ConfigError, match="older than the profile's min_version 1.16"):
        check_runtime(profiles["jetson-orin-nano"], {"runtimes": [{**cuda["runtimes"][0], "version": "1.15.1"}]})
    assert choose_opset({"runtimes": [{"name": "onnxruntime", "version": "1.99.0"}]}, None) == 20  # the exporter's max


# -- built-in profiles --------------------------------------------------------------------------------------------


def test_builtin_profiles_name_the_documented_targets():
    profiles = builtin_profiles()
    assert {"local", "local-tflite", "jetson-nano", "jetson-orin-nano", "raspberry-pi-4", "raspberry-pi-5"} <= set(
        profiles
    )
    for name in ("jetson-nano", "jetson-orin-nano", "raspberry-pi-4", "raspberry-pi-5"):
        assert profiles[name].transport == "ssh" and profiles[name].ssh is not None and profiles[name].ssh.host
    assert profiles["jetson-nano"].python == "/usr/bin/python3"
    assert profiles["jetson-nano"].power.source == "ina3221x"
    assert profiles["jetson-orin-nano"].power.source == "ina3221"
    assert profiles["raspberry-pi-5"].power.source == "pi5-pmic"
    assert profiles["local-tflite"].runtime.name == "tflite"
    docs = (Path(__file__).parents[1] / "docs/devices.md").read_text()
    for name in profiles:
        assert f"`{name}`" in docs, f"docs/devices.md does not describe {name}"


@pytest.mark.parametrize(
    "name,tree,rail",
    [("jetson-nano", hw_fixtures.nano_jp4, "POM_5V_IN"), ("jetson-orin-nano", hw_fixtures.orin_nano_jp6, "VDD_IN")],
)
def test_jetson_profiles_read_their_power_rail_from_the_documented_layout(tmp_path, name, tree, rail):
    """The built-in profile's power settings, run by a local agent over a sysfs tree of the board's documented
    layout: the source it names is found and its whole-board rail is the total."""
    builtin = builtin_profiles()[name]
    profile = builtin.model_copy(
        update={"transport": "local", "ssh": None, "python": None, "sysfs_root": str(tree(tmp_path / "sys-root"))}
    )
    with open_session(profile) as session:
        hello = session.hello()
    source = next(s for s in hello["power_sources"] if s["name"] == builtin.power.source)
    assert source["total_rail"] == rail and not source["partial"]


# -- TFLite ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_tflite(digits):
    """(fp32, int8) .tflite artifacts of the digits CNN: litert-torch takes seconds per conversion, so once."""
    model = digits.build_model().eval()
    return tuple(build_artifact(model, CompressionPlan(quant=q), digits, format="tflite") for q in ("fp32", "int8"))


def test_tflite_export_is_scored_on_the_host_with_the_same_bytes(digits, digits_tflite):
    model = digits.build_model().eval()
    fp32, int8 = digits_tflite
    assert fp32.format == int8.format == "tflite" and fp32.data[4:8] == int8.data[4:8] == b"TFL3"
    assert int8.size_bytes * 2.5 < fp32.size_bytes  # int8 weights, not float ones
    onnx_accuracy = evaluate_artifact(build_artifact(model, CompressionPlan(), digits), digits, limit=300)
    assert evaluate_artifact(fp32, digits, limit=300) == pytest.approx(onnx_accuracy, abs=0.01)
    assert evaluate_artifact(int8, digits, limit=300) >= onnx_accuracy - 0.03
    with pytest.raises(Exception, match="fp32 and int8"):
        build_artifact(model, CompressionPlan(quant="fp16"), digits, format="tflite")


def test_agent_tflite_runner_uses_xnnpack_with_num_threads(tmp_path, digits_tflite):
    """The agent's runner, in its own process: LiteRT applies the XNNPACK delegate by default and says so on stderr."""
    model = tmp_path / "digits.tflite"
    digits_tflite[1].write(model)
    agent = Path(__file__).parents[1] / "device_agent"
    code = (
        "from edgecompress_agent import runtimes; import sys\n"
        "r = runtimes.load(sys.argv[1], 'tflite', threads=2)\n"
        "out = r.run(runtimes.random_inputs(r))\n"
        "print(r.inputs[0]['dtype'], out[0].shape)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(model)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(agent)),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["int8", "(1,", "10)"]
    assert "XNNPACK delegate" in result.stderr


def test_tune_on_local_tflite_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = _cli(
        "tune",
        "--device",
        "local-tflite",
        "--example",
        "digits",
        "--budget",
        "latency.mean<=1.5x",
        "--rounds",
        "1",
        "--trials-per-round",
        "3",
        "--seed",
        "3",
        "--no-screen",
        *QUICK,
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert "exporting TFLite" in result.stdout
    results = json.loads((out / "results.json").read_text())
    trials = results["trials"]
    assert len(trials) == 3 and all(t["state"] == "COMPLETE" for t in trials), [t["fail_reason"] for t in trials]
    assert {t["candidate"]["format"] for t in trials} == {"tflite"}
    assert all(t["plan"]["quant"] in ("fp32", "int8") for t in trials)
    assert all(t["latency"]["count"] >= 20 for t in trials), [t["latency"] for t in trials]
    # The identity plan goes first: the original's fp32 flatbuffer, scored on the host by the LiteRT interpreter.
    assert trials[0]["plan"] == {**trials[0]["plan"], "ratios": {}, "quant": "fp32"}
    assert trials[0]["accuracy"] == results["base"]["candidate"]["accuracy"] > 0.9
    assert (out / "original.tflite").read_bytes()[4:8] == b"TFL3"
    assert (out / "round-0" / "model.tflite").is_file()
    if result.returncode == 0:
        assert (out / "model.tflite").read_bytes()[4:8] == b"TFL3"


def test_batch_on_a_tflite_device_is_refused_before_any_measurement(tmp_path):
    out = tmp_path / "run"
    args = ["--example", "digits", "--budget", "latency.mean<=1.5x", "--batch", "4", "--out", str(out)]
    result = _cli("tune", "--device", "local-tflite", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "batch 4 needs an ONNX runtime" in result.stderr and "Traceback" not in result.stderr
    assert not (out / "original.tflite").exists()


def test_both_runtimes_run_and_record_the_same_default_thread_count(digits, digits_tflite):
    """Without [runtime] threads, LiteRT ran one thread where onnxruntime used every core: one default for both,
    and every measurement says how many threads it ran."""
    onnx = build_artifact(digits.build_model().eval(), CompressionPlan(), digits)
    used = {}
    for name, artifact in (("local", onnx), ("local-tflite", digits_tflite[0])):
        profile = builtin_profiles()[name]
        assert profile.runtime.threads is None
        with open_session(profile) as session:
            sha = session.put_model(artifact.data)
            for threads in (None, 1):
                spec = measure_request(profile, runs=5, min_seconds=0, warmup_runs=1, threads=threads)
                used[name, threads] = session.measure(sha, spec).raw["threads"]
    cores = len(os.sched_getaffinity(0))
    assert used["local", None] == used["local-tflite", None] and 1 <= used["local", None] <= cores, used
    assert used["local", 1] == used["local-tflite", 1] == 1


def test_the_default_thread_count_is_one_per_physical_core(tmp_path):
    """As onnxruntime counts: hyperthreads share a core; ARM boards list no core ids (one thread per core)."""
    from edgecompress_agent.runtimes import default_threads

    x86 = tmp_path / "x86"
    x86.write_text("".join(f"processor\t: {i}\nphysical id\t: 0\ncore id\t\t: {i % 4}\n\n" for i in range(8)))
    assert default_threads(range(8), str(x86)) == 4 and default_threads([0, 4], str(x86)) == 1
    arm = tmp_path / "arm"
    arm.write_text("".join(f"processor\t: {i}\nBogoMIPS\t: 108.00\n\n" for i in range(4)))
    assert default_threads(range(4), str(arm)) == 4 and default_threads([2], str(arm)) == 1
