"""What a check found: one outcome per budget, one per regression metric, and the figures behind them.

A CheckResult is written as JSON (``--json``), appended to the history, and read back as the next run's baseline, so
it keeps the raw latency sample: a regression test compares samples, not summaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from edgecompress.analysis import RegressionResult
from edgecompress.errors import ConfigError

SCHEMA = "edgecompress.check/1"
Status = Literal["pass", "fail", "error", "skipped", "inconclusive"]
# A budget the measurement windows could not decide either way: never a pass, and not a failure of the model.
INCONCLUSIVE_EXIT = 5


@dataclass(frozen=True)
class BudgetOutcome:
    """One budget applied to the measurement. ``error`` means the metric could not be measured on this device."""

    budget: str
    key: str
    unit: str
    target: float | None
    value: float | None
    status: Status
    message: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RegressionOutcome:
    """One metric compared with the baseline; ``skipped`` when there is no baseline to compare with."""

    metric: str
    status: Status
    message: str
    result: RegressionResult | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "status": self.status,
            "message": self.message,
            "result": None if self.result is None else self.result.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RegressionOutcome:
        result = data.get("result")
        return cls(
            data["metric"],
            data["status"],
            data["message"],
            None if result is None else RegressionResult.from_json(result),
        )


@dataclass(frozen=True)
class Baseline:
    """The run a check compares with: a previous result's figures and raw latency sample, and where it came from."""

    source: str
    model: str
    device: str
    runtime: str
    runtime_version: str | None
    sha256: str
    started_utc: str
    values: dict[str, float | None]
    latencies_ns: tuple[int, ...]
    size_bytes: int
    # The values of the last few passing runs, oldest first, this one last: their spread is the run-to-run noise.
    run_values: tuple[dict[str, float | None], ...] = ()

    @classmethod
    def from_result_json(
        cls, data: dict[str, Any], source: str, earlier: tuple[dict[str, float | None], ...] = ()
    ) -> Baseline:
        """A baseline from a check result (a ``--json`` file or a history line)."""
        if data.get("schema") != SCHEMA:
            raise ConfigError(
                f"{source}: not an edgecompress check result (schema {data.get('schema')!r}, "
                f"expected {SCHEMA!r}); write one with `edgecompress check ... --json FILE`"
            )
        try:
            return cls(
                source=source,
                model=data["model"],
                device=data["device"],
                runtime=data["runtime"],
                runtime_version=data.get("runtime_version"),
                sha256=data["sha256"],
                started_utc=data["started_utc"],
                values=dict(data["values"]),
                latencies_ns=tuple(int(x) for x in data["latencies_ns"]),
                size_bytes=int(data["size_bytes"]),
                run_values=(*earlier, dict(data["values"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: incomplete check result ({type(exc).__name__}: {exc})") from exc

    def describe(self) -> str:
        return f"{self.source}: {self.model} ({self.sha256[:12]}) on {self.device}, {self.started_utc}"


@dataclass(frozen=True)
class CheckResult:
    """Everything one ``edgecompress check`` measured and decided."""

    model: str
    model_path: str
    sha256: str
    size_bytes: int
    device: str
    board: str | None
    runtime: str
    runtime_version: str | None
    providers: tuple[str, ...]
    agent_version: str | None
    started_utc: str
    settings: dict[str, Any]
    values: dict[str, float | None]
    latency: dict[str, float]
    latencies_ns: tuple[int, ...]
    budgets: tuple[BudgetOutcome, ...]
    regressions: tuple[RegressionOutcome, ...]
    baseline: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def outcomes(self) -> tuple[BudgetOutcome | RegressionOutcome, ...]:
        return (*self.budgets, *self.regressions)

    @property
    def passed(self) -> bool:
        return all(o.status in ("pass", "skipped") for o in self.outcomes)

    @property
    def exit_code(self) -> int:
        """0 pass; 1 a budget or the regression test failed; 2 a budget could not be checked (configuration);
        5 a budget's verdict stayed inconclusive after every window allowed."""
        if any(o.status == "fail" for o in self.outcomes):
            return 1
        if any(o.status == "error" for o in self.outcomes):
            return 2
        if any(o.status == "inconclusive" for o in self.outcomes):
            return INCONCLUSIVE_EXIT
        return 0

    def failed_checks(self) -> list[str]:
        """The names of the failing checks: budget texts and ``regression METRIC``."""
        return [
            o.budget if isinstance(o, BudgetOutcome) else f"regression {o.metric}"
            for o in self.outcomes
            if o.status in ("fail", "error", "inconclusive")
        ]

    def problems(self) -> list[str]:
        """One line per failing or unmeasurable budget and per regression."""
        return [
            f"{o.status.upper()} {o.budget if isinstance(o, BudgetOutcome) else 'regression ' + o.metric}: {o.message}"
            for o in self.outcomes
            if o.status in ("fail", "error", "inconclusive")
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "model": self.model,
            "model_path": self.model_path,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "device": self.device,
            "board": self.board,
            "runtime": self.runtime,
            "runtime_version": self.runtime_version,
            "providers": list(self.providers),
            "agent_version": self.agent_version,
            "started_utc": self.started_utc,
            "settings": self.settings,
            "values": self.values,
            "latency": self.latency,
            "budgets": [b.to_json() for b in self.budgets],
            "regressions": [r.to_json() for r in self.regressions],
            "baseline": self.baseline,
            "notes": list(self.notes),
            "extra": self.extra,
            "latencies_ns": list(self.latencies_ns),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckResult:
        if data.get("schema") != SCHEMA:
            raise ConfigError(f"not an edgecompress check result (schema {data.get('schema')!r})")
        return cls(
            model=data["model"],
            model_path=data["model_path"],
            sha256=data["sha256"],
            size_bytes=data["size_bytes"],
            device=data["device"],
            board=data.get("board"),
            runtime=data["runtime"],
            runtime_version=data.get("runtime_version"),
            providers=tuple(data.get("providers") or ()),
            agent_version=data.get("agent_version"),
            started_utc=data["started_utc"],
            settings=dict(data.get("settings") or {}),
            values=dict(data["values"]),
            latency=dict(data["latency"]),
            latencies_ns=tuple(int(x) for x in data["latencies_ns"]),
            budgets=tuple(BudgetOutcome(**b) for b in data["budgets"]),
            regressions=tuple(RegressionOutcome.from_json(r) for r in data["regressions"]),
            baseline=data.get("baseline"),
            notes=tuple(data.get("notes") or ()),
            extra=dict(data.get("extra") or {}),
        )
