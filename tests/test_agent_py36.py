"""The agent must run on Python 3.6 (JetPack 4.6) with the standard library only."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

AGENT = Path(__file__).resolve().parent.parent / "device_agent" / "edgecompress_agent"
OPTIONAL = {"numpy", "onnxruntime", "tflite_runtime", "ai_edge_litert"}


def _vermin(target: Path) -> subprocess.CompletedProcess[str]:
    vermin = shutil.which("vermin", path=str(Path(sys.executable).parent)) or shutil.which("vermin")
    assert vermin, "vermin is not installed (pip install -e '.[dev]')"
    return subprocess.run([vermin, "-t=3.6-", "--violations", "--no-tips", str(target)], capture_output=True, text=True)


def test_vermin_finds_nothing_above_python_3_6():
    result = _vermin(AGENT)
    assert result.returncode == 0 and "Target versions not met" not in result.stdout, result.stdout + result.stderr


def test_vermin_would_catch_a_python_3_7_construct(tmp_path):
    sample = tmp_path / "later.py"
    sample.write_text("import time\nstamp = time.perf_counter_ns()\n")
    assert _vermin(sample).returncode != 0


def test_agent_imports_only_the_standard_library():
    stdlib = set(sys.stdlib_module_names)
    for path in AGENT.glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in stdlib, f"{path.name} imports {name}, which is not in the standard library"


def test_optional_modules_are_imported_by_name_only():
    """numpy and the runtimes are loaded with importlib where present, never imported at module level."""
    for path in AGENT.glob("*.py"):
        text = path.read_text()
        for name in OPTIONAL:
            assert f"import {name}" not in text and f"from {name}" not in text, f"{path.name} imports {name}"
