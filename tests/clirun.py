"""Run the edgecompress command line as a user would: a fresh process, its output and exit code."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from edgecompress.config import TuneConfig


def edgecompress(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgecompress", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


# Runs the CLI as `python -m edgecompress` does, then names on stderr's last line the heavy packages it imported.
HEAVY_PACKAGES = ("torch", "scipy", "onnx", "onnxruntime", "optuna")
_IMPORT_PROBE = f"""
import runpy, sys
try:
    runpy.run_module("edgecompress", run_name="__main__", alter_sys=True)
finally:
    print("imported:", *[name for name in {HEAVY_PACKAGES!r} if name in sys.modules], file=sys.stderr)
"""


def edgecompress_heavy_imports(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """The CLI's answer to ``args``, and which of HEAVY_PACKAGES it imported to give it."""
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, *args], capture_output=True, text=True, env=env, timeout=120
    )
    last = done.stderr.rstrip().splitlines()[-1].split()
    assert last[:1] == ["imported:"], done.stderr
    return done, set(last[1:])


def quick_tune_config(**changes: Any) -> TuneConfig:
    """An in-process tune run on the digits example small enough for a test (one round, fp32, no screening, short
    windows and warm-up, no drift wait, no final validation), with ``changes`` over it."""
    settings: dict[str, Any] = {
        "example": "digits",
        "rounds": 1,
        "quant": ["fp32"],
        "screen": False,
        "val_limit": 200,
        "runs": 20,
        "min_seconds": 0.02,
        "warmup_seconds": 0.05,
        "drift_wait_s": 0,
        "validate_final": False,
    }
    return TuneConfig(**{**settings, **changes})
