"""edgecompress compress: the artifact, the plan and the report on disk; one clear line for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import onnx
import pytest

from edgecompress.artifact import load_artifact
from edgecompress.cli import main


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    # One intra-op thread: the machine is shared, and small models gain nothing from two.
    env = dict(os.environ, COLUMNS="120", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "edgecompress", "compress", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=cwd,
    )


def test_without_a_plan_writes_the_unchanged_model_and_a_template(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    result = run_cli("--example", "digits", "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["macs_before"] == report["macs_after"] and report["metric"] > 0.9
    assert report["onnx_vs_torch_max_abs_diff"] < 1e-4
    artifact = load_artifact(out / "model.onnx")
    assert artifact.sha256 == report["sha256"] == json.loads((out / "report.json").read_text())["sha256"]
    template = json.loads((out / "plan-template.json").read_text())
    assert set(template["ratios"]) == {"conv1", "conv2", "conv3"} and template["groups"]["conv2"]["channels"] == 32
    # A second run into the same folder is refused rather than overwriting silently.
    monkeypatch.setattr(sys, "argv", ["edgecompress", "compress", "--example", "digits", "-o", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "already holds model.onnx" in err and "--force" in err
    assert load_artifact(out / "model.onnx").sha256 == report["sha256"]


def test_a_plan_prunes_quantizes_and_reports(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"ratios": {"stage1": 0.5, "conv3": 0.5}, "quant": "int8", "round_to": 2}))
    out = tmp_path / "out"
    result = run_cli(
        "--example", "digits", "--plan", str(plan), "-o", str(out), "--opset", "13", "--finetune-steps", "20"
    )
    assert result.returncode == 0, result.stderr
    assert "MACs" in result.stdout and "fewer" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["macs_after"] < 0.4 * report["macs_before"] and report["quant"] == "int8"
    assert report["opset"] == 13 and report["finetune_steps"] == 20
    proto = onnx.load(str(out / "model.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    assert json.loads((out / "plan.json").read_text())["ratios"] == {"stage1": 0.5, "conv3": 0.5}
    assert not (out / "plan-template.json").exists()


@pytest.mark.parametrize(
    ("plan", "args", "message"),
    [
        ({"ratios": {"conv7": 0.5}}, [], "unknown group(s) 'conv7'"),
        ({"ratios": {"conv1": 1.0}}, [], "ratios are fractions removed, in [0, 1)"),
        ({"ratios": {}, "quant": "int4"}, [], "plan quant is 'int4'"),
        ("{not json", [], "is not valid JSON"),
        (None, ["--model", "no_such_pkg.models:build", "--data", "no_such_pkg.data:loaders"], "cannot import"),
        (None, ["--model", "json:loads"], "both --model and --data"),
        (None, ["--example", "digits", "--opset", "11"], "opset 11 is not supported"),
        (None, ["--example", "fashion-mnist", "--data-dir", "/nonexistent"], "does not exist"),
    ],
)
def test_bad_input_is_one_line(tmp_path, monkeypatch, capsys, plan, args, message):
    extra = list(args)
    if plan is not None:
        path = tmp_path / "plan.json"
        path.write_text(plan if isinstance(plan, str) else json.dumps(plan))
        extra += ["--plan", str(path)]
    if not any(a in ("--model", "--example") for a in extra):
        extra += ["--example", "digits"]
    # In-process through the console entry point (the same error boundary as the installed command), because a
    # fresh interpreter per case costs more than the cases themselves.
    monkeypatch.setattr(sys, "argv", ["edgecompress", "compress", *extra, "-o", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    assert exit_info.value.code == 2, captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], captured.err
    assert not (tmp_path / "out").exists()  # nothing half-written


USER_CODE = """
import sys

import torch
from torch import nn


def model():
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), (1, 1, 4, 4)


def exits():
    sys.exit(0)


def data():
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 1, 4, 4, generator=g), torch.arange(8) % 3) for _ in range(2)]
    return {"train": batches, "val": batches}


def data_labels_from_one():
    return {"train": data()["train"], "val": [(x, y + 1) for x, y in data()["val"]]}
"""


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        ("exits", "data", "model entry point 'usercode:exits' called sys.exit(0)"),
        ("model", "data_labels_from_one", "labels range over 1..3, but the model has 3 outputs (classes 0..2)"),
    ],
)
def test_mistakes_in_user_code_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys, model, data, message):
    (tmp_path / "usercode.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    argv = ["edgecompress", "compress", "--model", f"usercode:{model}", "--data", f"usercode:{data}", "-o", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    assert exit_info.value.code == 2, captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], captured.err
    assert not out.exists()
