"""Model files as users hand them over: one file, or an ONNX graph with its weights in external data beside it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import onnx
import pytest
from clirun import edgecompress
from conftest import export_onnx, tiny_convnet

from edgecompress import artifact
from edgecompress.errors import ConfigError


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_CONFIG_HOME=str(tmp_path / "config"))


@pytest.fixture()
def external_model(tmp_path: Path) -> Path:
    """tiny.onnx with every weight in tiny.onnx.data beside it, as onnx.save_model writes large models."""
    folder = tmp_path / "model"
    folder.mkdir()
    model = onnx.load_model_from_string(export_onnx(tiny_convnet(), (1, 3, 32, 32)))
    path = folder / "tiny.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="tiny.onnx.data", size_threshold=0)
    assert (folder / "tiny.onnx.data").stat().st_size > path.stat().st_size
    return path


def test_an_onnx_model_with_external_data_beside_it_is_benched(external_model: Path, env: dict[str, str]):
    result = edgecompress("bench", str(external_model), "--runs", "10", "--min-seconds", "0", "--json", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["latency"]["count"] == 10
    # The device ran the graph with its weights inlined: the bytes sent are one self-contained model.
    sent = artifact.load_artifact(external_model)
    assert data["sha256"] == sent.sha256 == hashlib.sha256(sent.data).hexdigest()
    inlined = onnx.load_model_from_string(sent.data)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in inlined.graph.initializer)


def test_missing_external_data_is_refused_before_any_device_time(
    external_model: Path, env: dict[str, str], tmp_path: Path
):
    (external_model.parent / "tiny.onnx.data").unlink()
    result = edgecompress("bench", str(external_model), "--runs", "10", env=env)
    assert result.returncode == 2, result.stderr
    assert "tiny.onnx.data" in result.stderr and str(external_model) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "cache" / "edgecompress").exists()  # no agent was started


def test_external_data_outside_the_models_folder_is_refused(external_model: Path):
    model = onnx.load_model(external_model, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../elsewhere/tiny.onnx.data"
    external_model.write_bytes(model.SerializeToString())
    with pytest.raises(ConfigError, match="outside"):
        artifact.load_artifact(external_model)


def test_a_model_over_the_protobuf_limit_once_inlined_is_refused(external_model: Path, monkeypatch):
    monkeypatch.setattr(artifact, "PROTOBUF_LIMIT_BYTES", 2000)
    with pytest.raises(ConfigError, match="2 GB"):
        artifact.load_artifact(external_model)
