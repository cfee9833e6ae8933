"""The ``[check]`` and ``[budgets]`` tables of edgecompress.toml, and the flags that override them.

``[budgets]`` is shared with ``tune``: ``budget_texts`` reads either spelling,

    budgets = ["latency.p99<=20ms", "size<=2MB"]          # a list of budget strings, or

    [budgets]
    "latency.p99" = "20ms"                                # metric = limit ("<=" implied; "<20ms" also accepted)
    size = "2MB"
    "latency.mean" = "0.9x"                               # relative to the baseline (check) or base model (tune)
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgecompress.analysis import RegressionPolicy, sample_statistic
from edgecompress.analysis._regression import METHODS
from edgecompress.budgets import METRICS, UNITS, Budget, metric_of, parse_budgets
from edgecompress.config import read_config_text
from edgecompress.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_REGRESSION_METRICS = ("latency.p50",)
_PERCENT = re.compile(r"^\s*(?P<value>[0-9]*\.?[0-9]+)\s*(?P<percent>%?)\s*$")


def parse_tolerance(value: object, origin: str) -> float:
    """A tolerance as a fraction: ``0.05``, ``"5%"`` or ``"0.05"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{origin}: tolerance {value!r} is not a number")
    if isinstance(value, int | float):
        fraction = float(value)
    elif isinstance(value, str) and (match := _PERCENT.match(value)):
        fraction = float(match["value"]) / (100.0 if match["percent"] else 1.0)
    else:
        raise ConfigError(f"{origin}: tolerance {value!r} is not a fraction (0.05) or a percentage ('5%')")
    if not 0 <= fraction < 10 or not math.isfinite(fraction):
        raise ConfigError(f"{origin}: tolerance {value!r} must lie between 0% and 1000%")
    return fraction


def unit_spelling(metric: str) -> str:
    """The spelling of a metric's canonical unit in budget strings (factor 1), for bare numbers in TOML."""
    factors = UNITS[METRICS[metric].unit]
    return next((spelling for spelling, factor in factors.items() if factor == 1.0), "")


def _flatten(table: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Unquoted dotted keys (``latency.p99 = "20ms"``) are nested tables in TOML; read them as the metric name."""
    items: list[tuple[str, Any]] = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            items += _flatten(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def budget_texts(value: object, origin: str = "budgets") -> list[str]:
    """Budget strings from a TOML ``budgets`` value: a list of strings, or a table of metric = limit."""
    if isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{origin}: a budgets list holds strings such as 'latency.p99<=20ms'")
        return list(value)
    if isinstance(value, Mapping):
        texts = []
        for key, limit in _flatten(value):
            if isinstance(limit, bool) or not isinstance(limit, str | int | float):
                raise ConfigError(f'{origin}: {key} = {limit!r}; give a limit such as "20ms" or "0.9x"')
            if isinstance(limit, str):
                text = limit.strip()
                texts.append(f"{key}{text}" if text.startswith("<") else f"{key}<={text}")
            else:  # a bare number is in the metric's canonical unit
                metric = metric_of(key)
                unit = unit_spelling(metric.name) if metric else ""
                texts.append(f"{key}<={limit}{unit}")
        return texts
    raise ConfigError(f"{origin}: budgets must be a list of strings or a table, not {type(value).__name__}")


def read_budgets(data: Mapping[str, Any], origin: str) -> list[Budget]:
    """The parsed budgets of a TOML document (its top-level ``budgets``), for check and tune alike."""
    if "budgets" not in data:
        return []
    texts = budget_texts(data["budgets"], f"{origin}: budgets")
    try:
        return parse_budgets(texts)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from exc


def merge_budgets(configured: Iterable[Budget], flags: Iterable[Budget]) -> list[Budget]:
    """Configured budgets with the command line's: a flag replaces a configured budget on the same metric."""
    merged = {b.key: b for b in configured}
    merged.update({b.key: b for b in flags})
    return list(merged.values())


def _as_value_error(function: Any, *args: Any) -> Any:
    """Run a checker inside a pydantic validator, which reports ValueErrors (with their location) but not ours."""
    try:
        return function(*args)
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc


class RegressionSettings(BaseModel):
    """``[check.regression]``: which metrics are tested against the baseline, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tolerance: float = Field(default=0.05, description="default tolerated slowdown, as a fraction")
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    method: str = "bootstrap"
    resamples: int = Field(default=2000, ge=100, le=100_000)
    baseline_runs: int = Field(
        default=5, ge=1, le=100, description="passing runs of the history whose spread is the run-to-run noise"
    )
    confirm: int = Field(
        default=1, ge=0, le=5, description="re-measurements in a fresh agent before a flagged slowdown counts"
    )
    # metric -> its tolerance; None takes the default tolerance
    metrics: dict[str, float | None] = Field(default_factory=lambda: dict.fromkeys(DEFAULT_REGRESSION_METRICS))

    @field_validator("tolerance", mode="before")
    @classmethod
    def _tolerance(cls, value: object) -> float:
        return _as_value_error(parse_tolerance, value, "value")

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"{value!r} is not one of {', '.join(METHODS)}")
        return value

    @field_validator("metrics", mode="before")
    @classmethod
    def _metrics(cls, value: object) -> dict[str, float | None]:
        if isinstance(value, list):  # metrics = ["latency.p50", "latency.p99"]: all at the default tolerance
            value = dict.fromkeys(value)
        if not isinstance(value, Mapping):
            raise ValueError("metrics is a list of metric names or a table of metric = tolerance")
        metrics = {}
        for name, tolerance in value.items():
            _as_value_error(check_regression_metric, name)
            metrics[name] = None if tolerance is None else _as_value_error(parse_tolerance, tolerance, "value")
        return metrics

    def policy(self, metric: str) -> RegressionPolicy:
        tolerance = self.metrics.get(metric)
        return RegressionPolicy(
            tolerance=self.tolerance if tolerance is None else tolerance,
            confidence=self.confidence,
            method=self.method,  # type: ignore[arg-type]
            resamples=self.resamples,
        )

    def with_tolerances(self, flags: Iterable[str]) -> RegressionSettings:
        """Apply ``--tolerance`` flags: ``5%`` sets the default, ``latency.p99=10%`` tests that metric too."""
        default, metrics = self.tolerance, dict(self.metrics)
        for flag in flags:
            name, sep, value = flag.partition("=")
            if sep:
                check_regression_metric(name.strip())
                metrics[name.strip()] = parse_tolerance(value, f"--tolerance {flag}")
            else:
                default = parse_tolerance(flag, f"--tolerance {flag}")
        return self.model_copy(update={"tolerance": default, "metrics": metrics})


def check_regression_metric(name: str) -> None:
    """A ConfigError unless ``name`` can be regression-tested: a statistic of the latency sample, or the size."""
    if name == "size" or sample_statistic(name) is not None:
        return
    raise ConfigError(
        f"regression metric {name!r}: only latency.mean, latency.pNN (e.g. latency.p50, latency.p99) "
        "and size can be compared with a baseline; constrain other metrics with a budget"
    )


class CheckConfig(BaseModel):
    """``[check]``: defaults for ``edgecompress check``; every key can also be given as a flag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str | None = None
    name: str | None = Field(default=None, description="the model's name in the history (default: its file name)")
    history: str | None = None
    baseline: str | None = None
    runs: int | None = Field(default=None, ge=1)
    min_seconds: float | None = Field(default=None, ge=0)
    warmup_seconds: float | None = Field(default=None, ge=0, description="warm-up before each window (profile's)")
    batch: int = Field(default=1, ge=1, le=4096, description="inputs per call (ONNX models with a batch axis)")
    reference: str | None = Field(
        default=None,
        description="the original model: budgets relative to it (0.7x) are judged on windows alternating with it",
    )
    threads: int | None = Field(default=None, ge=1, description="the runtime's intra-op threads (default: profile)")
    # The verdict: a budget passes when its one-sided bound at this confidence is under it, from repeated windows.
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    min_windows: int = Field(default=2, ge=1, le=100)
    max_windows: int = Field(default=6, ge=1, le=200)
    regression: RegressionSettings = Field(default_factory=RegressionSettings)
    budget_texts: tuple[str, ...] = Field(default=(), description="from the top-level budgets, already validated")

    def budgets(self) -> list[Budget]:
        return parse_budgets(self.budget_texts)


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = str(first.get("ctx", {}).get("error") or first["msg"])
    return f"{where}: {message}" if where else message


def parse_check_config(text: str, origin: str) -> CheckConfig:
    """The check settings and budgets of an edgecompress.toml; other tables (``[tune]``...) are left to others."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from exc
    section = data.get("check", {})
    if not isinstance(section, Mapping):
        raise ConfigError(f"{origin}: check must be a table, not {type(section).__name__}")
    if "budgets" in section or "budget_texts" in section:
        # One place for budgets, shared with tune: the top level of the file.
        raise ConfigError(
            f"{origin}: budgets go at the top level of the file (a budgets list before any table, or "
            "a budgets table), not in the check table"
        )
    texts = tuple(budget.text for budget in read_budgets(data, origin))
    try:
        return CheckConfig.model_validate({**section, "budget_texts": texts})
    except ValidationError as exc:
        raise ConfigError(f"{origin}: check.{_describe(exc)}") from exc


def load_check_config(path: str | Path | None) -> CheckConfig:
    """Read ``--config``; no file means all defaults."""
    if path is None:
        return CheckConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    return parse_check_config(read_config_text(path), str(path))
