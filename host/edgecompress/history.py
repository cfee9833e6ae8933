"""The check history: an append-only JSON-lines file, one check result per line, oldest first.

Each line is a complete check result (device, runtime versions, model hash, figures, verdicts and the raw latency
sample), so the last passing line for a model, device and runtime is directly the next run's baseline. Lines are
appended under an exclusive lock with a single write, so two jobs sharing a history never interleave; a line that
does not parse (a job killed mid-write on a filesystem without atomic appends) is reported and skipped, never fatal,
and the next result starts on a line of its own.

The model is identified by its name (default: the file name), not its hash: a nightly build produces new bytes
every night, and those are exactly what must be compared with the previous night.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecompress.budgets import format_value, unit_of
from edgecompress.errors import ConfigError
from edgecompress.gate import SCHEMA, Baseline, CheckResult

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: appends are not locked)
    fcntl = None  # type: ignore[assignment]


@dataclass(frozen=True)
class History:
    """The parsed lines of a history file, and the lines that could not be read."""

    path: Path
    entries: tuple[CheckResult, ...]
    problems: tuple[str, ...] = ()
    line_numbers: tuple[int, ...] = ()  # of each entry in the file, for messages

    def select(
        self, model: str | None = None, device: str | None = None, runtime: str | None = None
    ) -> list[CheckResult]:
        """Entries for a model, device and runtime (None matches anything), oldest first."""
        return [
            e
            for e in self.entries
            if (model is None or e.model == model)
            and (device is None or e.device == device)
            and (runtime is None or e.runtime == runtime)
        ]

    def baseline(self, model: str, device: str, runtime: str, runs: int = 5) -> Baseline | None:
        """The last passing entry for this model, device and runtime, with the values of up to ``runs`` passing
        entries (its own included) for the run-to-run noise."""
        passing = [
            i
            for i, e in enumerate(self.entries)
            if e.passed and (e.model, e.device, e.runtime) == (model, device, runtime)
        ]
        if not passing:
            return None
        last = passing[-1]
        earlier = tuple(dict(self.entries[i].values) for i in passing[-max(runs, 1) : -1])
        return Baseline.from_result_json(
            self.entries[last].to_json(), f"{self.path} line {self.line_numbers[last]}", earlier
        )

    def series(self) -> list[tuple[str, str, str]]:
        """The distinct (model, device, runtime) triples, in order of first appearance."""
        return list(dict.fromkeys((e.model, e.device, e.runtime) for e in self.entries))


def read_history(path: str | Path, must_exist: bool = False) -> History:
    """Parse a history file; a missing file is an empty history unless ``must_exist``."""
    path = Path(path)
    if not path.exists():
        if must_exist:
            raise ConfigError(f"history {path} does not exist")
        return History(path, ())
    if not path.is_file():
        raise ConfigError(f"history {path} is not a file")
    entries: list[CheckResult] = []
    numbers: list[int] = []
    problems: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict) or data.get("schema") != SCHEMA:
                    raise ValueError(
                        f"not a check result (schema {data.get('schema')!r})"
                        if isinstance(data, dict)
                        else "not a JSON object"
                    )
                entries.append(CheckResult.from_json(data))
                numbers.append(number)
            except (ValueError, KeyError, TypeError, ConfigError) as exc:
                problems.append(f"{path} line {number} skipped: {type(exc).__name__}: {str(exc)[:120]}")
    return History(path, tuple(entries), tuple(problems), tuple(numbers))


def append_result(path: str | Path, result: CheckResult) -> None:
    """Append one result as one line, under an exclusive lock, flushed to disk before returning; after a cut last
    line, on a line of its own."""
    path = Path(path)
    if path.parent and not path.parent.is_dir():
        raise ConfigError(f"history {path}: folder {path.parent} does not exist")
    line = (json.dumps(result.to_json(), separators=(",", ":")) + "\n").encode("utf-8")
    with path.open("a+b") as stream:
        if fcntl is not None:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX)
        try:
            # A line cut by a killed job has no newline: appended to it, this result would be lost with it.
            size = stream.seek(0, os.SEEK_END)
            if size:
                stream.seek(size - 1)
                if stream.read(1) != b"\n":
                    line = b"\n" + line
            stream.write(line)  # "a" mode: at the end, wherever the read left the position
            stream.flush()
            os.fsync(stream.fileno())
        finally:
            if fcntl is not None:
                fcntl.flock(stream.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class TrendRow:
    """One run in a trend: when, which bytes, on which runtime version, the chosen metrics, the verdict."""

    started_utc: str
    sha256: str
    runtime_version: str | None
    values: dict[str, float | None]
    ratio: float | None  # of the first regression metric vs its baseline
    passed: bool
    failed: tuple[str, ...]  # names of the failing checks

    def to_json(self) -> dict[str, Any]:
        return {
            "started_utc": self.started_utc,
            "sha256": self.sha256,
            "runtime_version": self.runtime_version,
            "values": self.values,
            "ratio": self.ratio,
            "passed": self.passed,
            "failed": list(self.failed),
        }


def trend(entries: Iterable[CheckResult], metrics: Sequence[str]) -> list[TrendRow]:
    """The chosen metrics over time, with the ratio the regression test reported."""
    rows = []
    for entry in entries:
        ratio = next((r.result.ratio for r in entry.regressions if r.result is not None), None)
        rows.append(
            TrendRow(
                entry.started_utc,
                entry.sha256,
                entry.runtime_version,
                {m: entry.values.get(m) for m in metrics},
                ratio,
                entry.passed,
                tuple(entry.failed_checks()),
            )
        )
    return rows


def format_metric(metric: str, value: float | None) -> str:
    unit = unit_of(metric)
    return format_value(value, unit) if unit else ("n/a" if value is None else f"{value:g}")


def plot_trend(rows: Sequence[TrendRow], metrics: Sequence[str], path: str | Path, title: str) -> Path:
    """A PNG of the metrics over the runs; failing runs marked with a red cross."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a CI runner
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"plot {path}: give a .png file name")
    figure, axis = plt.subplots(figsize=(8, 4), dpi=100)
    try:
        x = list(range(len(rows)))
        for metric in metrics:
            values = [float("nan") if r.values.get(metric) is None else float(r.values[metric] or 0) for r in rows]
            axis.plot(x, values, marker="o", label=metric)
            failed = [i for i, r in enumerate(rows) if not r.passed]
            if failed:
                axis.scatter(failed, [values[i] for i in failed], marker="x", s=80, color="red", zorder=3)
        units = {unit_of(m) for m in metrics} - {""}
        axis.set_ylabel(", ".join(sorted(units)) or "value")
        axis.set_xticks(x, [r.started_utc[:10] for r in rows], rotation=45, ha="right", fontsize=8)
        axis.set_title(title + "  (x = failed check)")
        axis.grid(alpha=0.3)
        axis.legend()
        figure.tight_layout()
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path
