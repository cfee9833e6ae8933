"""The output folder of a run: its state (atomically rewritten), round checkpoints, study storage, log, results."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress import __version__
from edgecompress.config import check_out_folder
from edgecompress.errors import ConfigError
from edgecompress.report._files import write_text

STATE_FILE = "state.json"
RESULTS_FILE = "results.json"
STATE_VERSION = 1


def new_run_dir(out: Path | None, runs_root: Path = Path("runs")) -> Path:
    """A fresh output folder: ``out`` if it is new or empty, else a timestamped one under ``runs/``."""
    if out is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        out = runs_root / f"tune-{stamp}"
        suffix = 1
        while out.exists():
            suffix += 1
            out = runs_root / f"tune-{stamp}-{suffix}"
    check_out_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a run killed at any point leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(data, indent=2, default=str))


@dataclass
class RunState:
    """What a run has decided so far, in ``state.json``: enough to resume it at any point.

    ``original`` is the original model's record (its measurement, the absolute targets and the thresholds of every
    round; stored as ``base`` for the reports that read it); ``rounds`` holds one entry per finished round.
    """

    run_dir: Path
    config: dict[str, Any]
    command: str = ""
    created_unix: float = field(default_factory=time.time)
    edgecompress: str = __version__
    device: dict[str, Any] | None = None
    original: dict[str, Any] | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    drift: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None
    screening: dict[str, Any] | None = None  # trials the latency model left unmeasured, and its error
    # The studies' name prefix, fixed when the run starts (runs from before it was stored used tune-<example>|model).
    study_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "version": STATE_VERSION,
            "edgecompress": self.edgecompress,
            "command": self.command,
            "config": self.config,
            "created_unix": self.created_unix,
            "rounds": self.rounds,
        }
        optional = {"device": self.device, "base": self.original, "final": self.final, "study_name": self.study_name}
        data.update({k: v for k, v in optional.items() if v is not None})
        if self.drift:
            data["drift"] = self.drift
        return data

    def save(self) -> None:
        save_json(self.run_dir / STATE_FILE, self.to_json())

    @classmethod
    def load(cls, run_dir: Path) -> RunState:
        path = run_dir / STATE_FILE
        if not path.is_file():
            raise ConfigError(f"{run_dir} is not an edgecompress tune folder (no {STATE_FILE})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise ConfigError(f"{path} is not a tune run's state (no config); start a new run with another --out")
        return cls(
            run_dir=run_dir,
            config=data["config"],
            command=data.get("command", ""),
            created_unix=data.get("created_unix", time.time()),
            edgecompress=data.get("edgecompress", __version__),
            device=data.get("device"),
            original=data.get("base"),
            rounds=list(data.get("rounds") or []),
            drift=list(data.get("drift") or []),
            final=data.get("final"),
            study_name=data.get("study_name")
            or data["config"].get("name")
            or f"tune-{data['config'].get('example') or 'model'}",
        )

    def finished_round(self, t: int) -> bool:
        return any(r.get("round") == t and "next_base" in r for r in self.rounds)

    def record_round(self, entry: dict[str, Any]) -> None:
        self.rounds = [r for r in self.rounds if r["round"] != entry["round"]] + [entry]
        self.save()

    def thresholds(self, t: int) -> dict[str, float]:
        """Round t's threshold of every budget."""
        assert self.original is not None
        return {key: values[t] for key, values in self.original["thresholds"].items()}

    @property
    def targets(self) -> dict[str, float]:
        """The absolute budget C of every budget (relative budgets resolved on the original's measurement)."""
        assert self.original is not None
        return self.original["targets"]


def checkpoint_path(run_dir: Path, t: int) -> Path:
    return run_dir / f"round-{t}" / "base.pt"


def save_checkpoint(run_dir: Path, t: int, model: nn.Module, artifact_bytes: bytes, format: str) -> None:
    path = checkpoint_path(run_dir, t)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, path)
    (path.parent / f"model.{format}").write_bytes(artifact_bytes)


def load_checkpoint(run_dir: Path, t: int) -> nn.Module:
    # Our own file, written by this run: the pruned architecture differs from the factory's, so the whole
    # module is saved, not just a state dict.
    return torch.load(checkpoint_path(run_dir, t), weights_only=False).eval()
