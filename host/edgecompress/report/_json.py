"""The JSON result: everything the check measured and decided, raw latency sample included (a later --baseline)."""

from __future__ import annotations

import json
from pathlib import Path

from edgecompress.gate import CheckResult
from edgecompress.report._files import write_text


def result_json(result: CheckResult) -> str:
    return json.dumps(result.to_json(), indent=1) + "\n"


def write_result_json(result: CheckResult, path: str | Path) -> Path:
    return write_text(path, result_json(result))
