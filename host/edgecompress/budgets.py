"""Budgets (``latency.p99<=20ms``, ``size<=2MB``, ``latency.mean<=0.5x``) and the metrics they constrain.

A metric is one entry in METRICS: its canonical unit, whether the host can check it without device time, and how
to compute it from the evidence of one candidate. Adding a metric is adding one ``register`` call.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgecompress.analysis import EnergyStats, LatencyStats, TailEstimate, energy_stats, latency_stats, pwcet
from edgecompress.device import Measurement
from edgecompress.errors import BudgetError, ConfigError

# Canonical unit of each quantity, and every accepted spelling with its factor to the canonical unit.
UNITS: dict[str, dict[str, float]] = {
    "ms": {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3},
    "bytes": {"b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2.0**10, "mib": 2.0**20, "gib": 2.0**30},
    "mJ": {"uj": 1e-3, "µj": 1e-3, "mj": 1.0, "j": 1e3},
    "W": {"mw": 1e-3, "w": 1.0},
    "count": {"": 1.0},
    # Percentage points of accuracy; "%" is not a spelling of it but the relative form (percent of the original's).
    "points": {"pt": 1.0, "pts": 1.0, "points": 1.0},
}

# The metric of an accuracy floor, and the key under which the original's host accuracy (a fraction) is recorded
# beside its measured values: the reference every candidate's drop is taken from.
ACCURACY_DROP = "accuracy.drop"
REFERENCE_ACCURACY = "accuracy"


@dataclass(frozen=True)
class Evidence:
    """Everything known about one candidate: its size, the device measurement when there is one, and its accuracy
    on the host with the original's (fractions in [0, 1]) when the host scored it."""

    size_bytes: int
    measurement: Measurement | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    accuracy: float | None = None
    reference_accuracy: float | None = None

    @property
    def latency(self) -> LatencyStats | None:
        if self.measurement is None:
            return None
        cached = self.extra.get("_latency")
        return cached if cached is not None else latency_stats(self.measurement)

    @property
    def tail(self) -> TailEstimate | None:
        if self.measurement is None:
            return None
        cached = self.extra.get("_tail")
        return cached if cached is not None else pwcet(self.measurement.latencies_ns)

    @property
    def energy(self) -> EnergyStats | None:
        """None when there is no measurement or the device has no power source (never zero)."""
        if self.measurement is None:
            return None
        if "_energy" in self.extra:
            return self.extra["_energy"]
        return energy_stats(self.measurement)


@dataclass(frozen=True)
class Metric:
    """A constrainable quantity. ``compute(evidence, parameter)`` returns the value in ``unit`` or None."""

    name: str
    unit: str
    on_host: bool
    compute: Callable[[Evidence, float | None], float | None]
    help: str
    parameter: str | None = None  # e.g. "exceedance probability" for latency.pwcet@1e-6
    default_parameter: float | None = None
    # "power": only measurable on a device with a power source; "accuracy": only by tune, which scores every
    # candidate and the original on the host's validation data (check and bench measure on the device only)
    requires: str | None = None


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    METRICS[metric.name] = metric
    return metric


def _latency(statistic: str) -> Callable[[Evidence, float | None], float | None]:
    def compute(evidence: Evidence, parameter: float | None) -> float | None:
        stats = evidence.latency
        return None if stats is None else stats.get(statistic)

    return compute


for _stat in ("mean", "min", "p50", "p90", "p95", "p99", "p999", "max"):
    register(Metric(f"latency.{_stat}", "ms", False, _latency(_stat), f"{_stat} of per-inference latency"))
register(Metric("size", "bytes", True, lambda e, p: float(e.size_bytes), "size of the deployed artifact"))


def accuracy_drop_points(reference: float, accuracy: float) -> float:
    """Accuracy below the original's in percentage points (fractions in), rounded to 1e-6 points so that float error
    does not move a model across a floor: 0.909 - 0.899 is 1.0000000000000009 points unrounded, and it is 1 point."""
    return round(100.0 * (reference - accuracy), 6)


def _accuracy_drop(evidence: Evidence, parameter: float | None) -> float | None:
    if evidence.accuracy is None or evidence.reference_accuracy is None:
        return None
    return accuracy_drop_points(evidence.reference_accuracy, evidence.accuracy)


register(
    Metric(
        ACCURACY_DROP,
        "points",
        True,
        _accuracy_drop,
        "host-measured accuracy below the original's, in percentage points (an accuracy floor: 'accuracy.drop<=1pt',"
        " or '<=1%' of the original's accuracy)",
        requires="accuracy",
    )
)


def _pwcet(evidence: Evidence, parameter: float | None) -> float | None:
    tail = evidence.tail
    return None if tail is None else tail.quantile_ms(parameter if parameter is not None else 1e-9)


def _energy(attribute: str) -> Callable[[Evidence, float | None], float | None]:
    def compute(evidence: Evidence, parameter: float | None) -> float | None:
        energy = evidence.energy
        return None if energy is None else getattr(energy, attribute)

    return compute


register(
    Metric(
        "latency.pwcet",
        "ms",
        False,
        _pwcet,
        "probabilistic WCET: latency exceeded with the given probability per run (EVT; observed max "
        "when the runs are not i.i.d.)",
        parameter="exceedance probability",
        default_parameter=1e-9,
    )
)
register(
    Metric("energy", "mJ", False, _energy("energy_mj"), "energy per inference over the timed window", requires="power")
)
register(
    Metric(
        "energy.active",
        "mJ",
        False,
        _energy("active_energy_mj"),
        "energy per inference above the idle power measured before warm-up",
        requires="power",
    )
)
register(
    Metric("power.mean", "W", False, _energy("mean_power_w"), "mean power over the timed window", requires="power")
)


def check_budgets_measurable(
    budgets: Iterable[Budget],
    hello_info: Mapping[str, Any],
    power_source: str = "auto",
    power_command: str | None = None,
) -> None:
    """A BudgetError, before any search, for a budget the device cannot measure (energy without a power source).

    ``hello_info`` is what the agent's hello reported; ``power_source``/``power_command`` are the profile's.
    """
    needing = [b.text for b in budgets if b.spec.requires == "power"]
    if not needing:
        return
    found = [s.get("name") for s in hello_info.get("power_sources") or []]
    if power_source == "none":
        reason = "the device profile sets power.source = 'none'"
    elif power_source == "command" or power_source == "auto" and power_command:
        if power_command:
            return
        reason = "power.source = 'command' needs power.command"
    elif power_source == "auto":
        if found:
            return
        reason = (
            "the device reports no power source (no INA3221 rails, Pi 5 PMIC, readable RAPL) and the "
            "profile has no power.command"
        )
    elif power_source in found:
        return
    else:
        reason = f"power source {power_source!r} is not on the device (found: {', '.join(found) or 'none'})"
    raise BudgetError(f"cannot check {', '.join(needing)} on {hello_info.get('board') or 'this device'}: {reason}")


def check_budgets_on_device(budgets: Iterable[Budget], command: str = "check") -> None:
    """A BudgetError for an accuracy floor given to a command that only measures on the device (check, bench)."""
    floors = [b.text for b in budgets if b.spec.requires == "accuracy"]
    if floors:
        raise BudgetError(
            f"{command} cannot judge {', '.join(floors)}: an accuracy floor is judged by tune, which scores the model "
            f"and the original on the host's validation data; {command} only measures on the device"
        )


_BUDGET = re.compile(
    r"^\s*(?P<metric>[a-z0-9_.]+)(?:@(?P<param>[0-9.eE+-]+))?\s*(?P<op><=|<)\s*"
    r"(?P<value>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?P<unit>[A-Za-zµ]*|%)\s*$"
)


@dataclass(frozen=True)
class Budget:
    """``metric <= limit``: an absolute limit in the metric's canonical unit, or ``relative`` x the base value (for
    an accuracy floor given in %, the base value is the original's accuracy in points)."""

    metric: str
    limit: float | None
    relative: float | None
    text: str
    parameter: float | None = None

    @property
    def spec(self) -> Metric:
        return METRICS[self.metric]

    @property
    def key(self) -> str:
        """The metric with its parameter, e.g. ``latency.pwcet@1e-06``: the name of the measured value."""
        return self.metric if self.parameter is None else f"{self.metric}@{self.parameter:g}"

    @property
    def unit(self) -> str:
        return self.spec.unit

    def target(self, base_value: float | None) -> float:
        """The absolute budget C; relative budgets need the base model's measured value."""
        if self.limit is not None:
            return self.limit
        if base_value is None or not math.isfinite(base_value):
            raise ConfigError(f"budget {self.text!r} is relative, but the base model's {self.key} is unknown")
        assert self.relative is not None
        return self.relative * base_value

    def value(self, evidence: Evidence) -> float | None:
        return self.spec.compute(evidence, self.parameter)

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "parameter": self.parameter,
            "limit": self.limit,
            "relative": self.relative,
            "unit": self.unit,
            "text": self.text,
        }


def parse_budget(text: str) -> Budget:
    """Parse one budget string; a ConfigError says exactly what is wrong."""
    match = _BUDGET.match(text)
    if not match:
        raise ConfigError(f"budget {text!r} is not of the form METRIC<=VALUE[UNIT], e.g. 'latency.p99<=20ms'")
    name = match["metric"]
    if name not in METRICS:
        raise ConfigError(f"budget {text!r}: unknown metric {name!r}; known: {', '.join(sorted(METRICS))}")
    metric = METRICS[name]
    parameter: float | None = None
    if match["param"] is not None:
        if metric.parameter is None:
            raise ConfigError(f"budget {text!r}: {name} takes no @parameter")
        try:
            parameter = float(match["param"])
        except ValueError:
            raise ConfigError(f"budget {text!r}: {match['param']!r} is not a number") from None
        if not math.isfinite(parameter):
            raise ConfigError(f"budget {text!r}: the {metric.parameter} must be a finite number")
        if not 0 < parameter < 1:
            raise ConfigError(f"budget {text!r}: the {metric.parameter} must lie in (0, 1)")
    elif metric.parameter is not None:
        parameter = metric.default_parameter
    value = float(match["value"])
    unit = match["unit"]
    if not math.isfinite(value):  # 1e400 parses as infinity: a limit nothing can break
        raise ConfigError(f"budget {text!r}: the limit must be a finite number")
    if metric.unit == "points":
        return _accuracy_floor(text, name, value, unit)
    if unit == "%":
        raise ConfigError(f"budget {text!r}: % is only for an accuracy floor ({ACCURACY_DROP}<=1%); use x")
    if unit == "x":
        if value <= 0:
            raise ConfigError(f"budget {text!r}: a relative budget must be positive")
        return Budget(name, None, value, text.strip(), parameter)
    factors = UNITS[metric.unit]
    factor = factors.get(unit.lower()) if unit else (1.0 if "" in factors else None)
    if factor is None:
        spellings = ", ".join(sorted(u for u in factors if u)) or "none"
        raise ConfigError(
            f"budget {text!r}: unit {unit or '(none)'!r} does not fit {name}; use one of {spellings}, or x"
        )
    if value <= 0:
        raise ConfigError(f"budget {text!r}: the limit must be positive")
    if not math.isfinite(value * factor):
        raise ConfigError(f"budget {text!r}: the limit must be a finite number")
    return Budget(name, value * factor, None, text.strip(), parameter)


def _accuracy_floor(text: str, name: str, value: float, unit: str) -> Budget:
    """``accuracy.drop<=1pt`` (percentage points below the original's accuracy) or ``<=1%`` (percent of it). A drop
    of 0 is a floor too: no accuracy lost at all."""
    if unit == "%":
        if value > 100:
            raise ConfigError(f"budget {text!r}: a drop of more than 100% of the original's accuracy is no floor")
        return Budget(name, None, value / 100.0, text.strip())
    if unit.lower() not in UNITS["points"]:
        raise ConfigError(
            f"budget {text!r}: say whether the drop is in percentage points (e.g. '{name}<=1pt') or in percent "
            f"of the original's accuracy (e.g. '{name}<=1%')"
        )
    if value > 100:
        raise ConfigError(f"budget {text!r}: accuracy cannot drop by more than 100 points")
    return Budget(name, value, None, text.strip())


def accuracy_floor(budgets: Iterable[Budget]) -> Budget | None:
    """The run's accuracy floor (an ``accuracy.drop`` budget), if one was stated."""
    return next((b for b in budgets if b.metric == ACCURACY_DROP), None)


def parse_budgets(texts: Iterable[str]) -> list[Budget]:
    budgets = [parse_budget(t) for t in texts]
    keys = [b.key for b in budgets]
    duplicate = next((k for k in keys if keys.count(k) > 1), None)
    if duplicate:
        raise ConfigError(f"two budgets constrain {duplicate}; keep one")
    return budgets


def format_value(value: float | None, unit: str) -> str:
    """A value in its canonical unit, printed for people."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if unit == "bytes":
        if value >= 1e9:
            return f"{value / 1e9:.2f} GB"
        return f"{value / 1e6:.2f} MB" if value >= 1e5 else f"{value / 1e3:.1f} kB"
    if unit == "points":
        return f"{value:.2f} pt"
    return f"{value:.3f} {unit}" if unit != "count" else f"{value:g}"


def metric_of(key: str) -> Metric | None:
    """The metric a value's key names (``latency.pwcet@1e-06`` -> latency.pwcet), or None for an unknown key."""
    return METRICS.get(key.split("@", 1)[0])


def unit_of(key: str) -> str:
    """The canonical unit of a value's key ("" for an unknown key)."""
    metric = metric_of(key)
    return metric.unit if metric else ""
