"""int8 calibration in onnxruntime: memory bounded whatever the workload's batch size, the same ranges either way."""

from __future__ import annotations

import json
import subprocess
import sys

MEASURE = """
import json, resource, sys
import torch
from torch import nn
from edgecompress.compress import export_onnx
from edgecompress.compress._quantize import quantize_int8

torch.manual_seed(0)
# Wide activations (32 x 64 x 64 floats, 0.5 MB per tensor and sample): calibration keeps every intermediate tensor.
model = nn.Sequential(*[m for _ in range(3) for m in (nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())]).eval()
fp32 = export_onnx(model, (1, 32, 64, 64), 17)  # a dynamic batch axis, as every export
samples = torch.randn(256, 32, 64, 64, generator=torch.Generator().manual_seed(1))
batch = int(sys.argv[1])
calib = [(samples[i : i + batch], torch.zeros(len(samples[i : i + batch]))) for i in range(0, len(samples), batch)]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data = quantize_int8(fp32, calib)
grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
import hashlib
print(json.dumps({{"grown_mb": grown_mb, "sha256": hashlib.sha256(data).hexdigest()}}))
"""


def _calibrate(batch: int) -> dict:
    code = MEASURE.format()
    done = subprocess.run([sys.executable, "-c", code, str(batch)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_calibration_memory_does_not_grow_with_the_batch_size():
    small, large = _calibrate(16), _calibrate(256)
    # Before: one batch of 256 kept 256 samples' activations at once (~1.5 GB here); now at most a chunk's.
    assert large["grown_mb"] < small["grown_mb"] + 150, (small, large)
    assert large["grown_mb"] < 400, large
    assert large["sha256"] == small["sha256"]  # MinMax ranges merged chunk by chunk: the same model


def test_calibration_takes_chunks_of_at_most_16_and_512_samples_in_all():
    import torch

    from edgecompress.compress._quantize import CALIB_CHUNK, CALIB_MAX_SAMPLES, _Chunks

    reader = _Chunks("input", [(torch.zeros(100, 3), torch.zeros(100)) for _ in range(10)])
    sizes = list(iter(reader.get_next, None))
    assert max(len(s["input"]) for s in sizes) == CALIB_CHUNK == 16
    assert sum(len(s["input"]) for s in sizes) == CALIB_MAX_SAMPLES == 512
