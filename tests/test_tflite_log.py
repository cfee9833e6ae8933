"""The TFLite converter's own output (absl/TF lines from C++, torch's import notices) goes to the log, not the
console; the console keeps what the rest of the program prints meanwhile."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Not importorskip: importing litert-torch here would set TF_CPP_MIN_LOG_LEVEL in the environment the script inherits.
if importlib.util.find_spec("litert_torch") is None:
    pytest.skip("the TFLite extra is not installed", allow_module_level=True)

SCRIPT = """
import logging, sys, threading, time
sys.path.insert(0, {tests!r})
handler = logging.FileHandler({log!r})
logging.getLogger("edgecompress").addHandler(handler)  # as tune does with tune.log
logging.getLogger("edgecompress").setLevel(logging.INFO)
import torch
from conftest import tiny_convnet
from edgecompress.compress._tflite import export_tflite

done = threading.Event()

def heartbeat():  # another thread's console output (a progress bar) while the converter runs
    while not done.is_set():
        print("heartbeat", file=sys.stderr, flush=True)
        time.sleep(0.05)

thread = threading.Thread(target=heartbeat)
thread.start()
try:
    model = tiny_convnet()
    export_tflite(model, (1, 3, 32, 32), "fp32")
    export_tflite(model, (1, 3, 32, 32), "int8", [(torch.randn(8, 3, 32, 32), torch.zeros(8))])
finally:
    done.set()
    thread.join()
print("converted", file=sys.stderr)
"""
# absl's C++ log prefix (I0000 00:00:... file.cc:123]) and its notice before InitializeLog.
ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d|absl::InitializeLog", re.M)


def test_converter_lines_go_to_the_log_and_the_console_keeps_the_rest(tmp_path: Path):
    log = tmp_path / "tune.log"
    code = SCRIPT.format(tests=str(Path(__file__).parent), log=str(log))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr
    assert not ABSL_LINE.search(done.stderr), done.stderr
    assert "converted" in done.stderr and "heartbeat" in done.stderr
    text = log.read_text()
    # What the converter said went to the log (its C++ absl lines when it emits them: not in every environment, as
    # the full suite showed; its Python warnings always), and nothing of the other thread's console output.
    assert text.strip(), "nothing reached the log"
    # A line the other thread was writing at the very instant fd 2 was switched may land in the log (a write that
    # already holds the previous stream); the console keeps the rest.
    assert text.count("heartbeat") <= 2, text
    assert done.stderr.count("heartbeat") > text.count("heartbeat")
