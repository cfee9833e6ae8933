"""Shared fixtures: small real ONNX models and a live agent process."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from edgecompress.device._transport import agent_source_root


def export_onnx(model: nn.Module, shape: tuple[int, ...], opset: int = 17) -> bytes:
    """A real ONNX file of a torch model (TorchScript exporter: it honours low opsets)."""
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model.eval(),
            (torch.randn(*shape),),
            buffer,
            opset_version=opset,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
        )
    return buffer.getvalue()


def tiny_convnet(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 10),
    ).eval()


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    path.write_bytes(export_onnx(tiny_convnet(), (1, 3, 32, 32)))
    return path


@pytest.fixture()
def agent_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(agent_source_root())
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    return env


@pytest.fixture()
def agent_process(agent_env: dict[str, str]):
    """A live agent speaking the protocol on pipes."""
    process = subprocess.Popen(
        [sys.executable, "-m", "edgecompress_agent", "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=agent_env,
    )
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()
