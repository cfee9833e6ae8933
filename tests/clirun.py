"""Run the edgecompress command line as a user would: a fresh process, its output and exit code."""

from __future__ import annotations

import subprocess
import sys


def edgecompress(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgecompress", *args], capture_output=True, text=True, env=env, timeout=timeout
    )
