"""The output folder of a run: config, state (atomically rewritten), study storage, log, results."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgecompress.errors import ConfigError

STATE_FILE = "state.json"


def new_run_dir(out: Path | None, runs_root: Path = Path("runs")) -> Path:
    """A fresh output folder: ``out`` if it is new or empty, else a timestamped one under ``runs/``."""
    if out is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        out = runs_root / f"tune-{stamp}"
        suffix = 1
        while out.exists():
            suffix += 1
            out = runs_root / f"tune-{stamp}-{suffix}"
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output folder {out} is not empty; use --resume {out} to continue it, or another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a run killed at any point leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=False, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not an edgecompress tune folder (no {STATE_FILE})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
