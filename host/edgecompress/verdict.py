"""The verdict: one decision per budget, for a trial's feasibility, a round's base, tune's final answer, ``check``
and ``bench --budget``. Running the device is elsewhere (``observe``); this module only decides from what came back
(MLPerf loadgen keeps the system under test apart from VALID/INVALID in the same way).

One rule for a missing value, everywhere: a value whose key is absent was never asked of the device (a candidate
the host already knew was over a size budget) and is no evidence either way; a value the device was asked for and
did not report (``None``, NaN) fails its budget, with that as the reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scistats

from edgecompress.budgets import Budget, Evidence, format_value, unit_of

NO_VALUE = "could not be measured on this device (no value)"


@dataclass(frozen=True)
class BudgetVerdict:
    """One budget judged on one value: met or not, and why, in words a person reads."""

    key: str
    value: float | None
    threshold: float
    met: bool
    reason: str

    @property
    def missing(self) -> bool:
        return self.value is None

    @property
    def violation(self) -> float:
        """``value - threshold`` (positive: over); a missing value is over by the whole threshold."""
        if self.value is None:
            return abs(self.threshold) if self.threshold else 1.0
        return self.value - self.threshold


def _present(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def judge(key: str, value: float | None, threshold: float) -> BudgetVerdict:
    """``value <= threshold``; a missing value (None, NaN) is not met."""
    value = _present(value)
    unit = unit_of(key)
    if value is None:
        return BudgetVerdict(key, None, threshold, False, f"{key} {NO_VALUE}")
    shown = f"{key} = {format_value(value, unit)}"
    if value <= threshold:
        return BudgetVerdict(key, value, threshold, True, f"{shown} <= {format_value(threshold, unit)}")
    return BudgetVerdict(key, value, threshold, False, f"{shown} > {format_value(threshold, unit)}")


def judge_all(values: Mapping[str, float | None], thresholds: Mapping[str, float]) -> dict[str, BudgetVerdict]:
    """Every threshold judged on ``values``; a key absent from ``values`` counts as missing here."""
    return {key: judge(key, values.get(key), threshold) for key, threshold in thresholds.items()}


def meets(values: Mapping[str, float | None], thresholds: Mapping[str, float]) -> bool:
    """Every budget met: each value present and under its threshold (the final answer's rule)."""
    return all(v.met for v in judge_all(values, thresholds).values())


def missing(values: Mapping[str, float | None], thresholds: Mapping[str, float]) -> list[str]:
    """The keys the device was asked for and did not report (present in ``values`` as None or NaN)."""
    return [key for key in thresholds if key in values and _present(values[key]) is None]


def violations(values: Mapping[str, float | None], thresholds: Mapping[str, float]) -> dict[str, float]:
    """``measured - threshold`` per budget (positive: violated), what a constrained sampler is told.

    A key absent from ``values`` was never measured and is no evidence (0); a measured key without a value is a
    violation (callers fail such a trial first, see ``missing``).
    """
    return {key: judge(key, values[key], t).violation if key in values else 0.0 for key, t in thresholds.items()}


def feasible(values: Mapping[str, float | None], thresholds: Mapping[str, float]) -> bool:
    return all(v <= 0 for v in violations(values, thresholds).values())


def relative_violation(values: Mapping[str, float | None], thresholds: Mapping[str, float]) -> float:
    """How far over its thresholds a candidate is, as a sum of fractions of each threshold (0 when it meets them)."""
    over = violations(values, thresholds)
    return sum(max(0.0, v) / thresholds[k] for k, v in over.items() if thresholds[k] > 0)


def load(values: Mapping[str, float | None], thresholds: Mapping[str, float]) -> float:
    """The sum of value / threshold over the budgets: which of two feasible candidates uses less of its budgets."""
    return sum(float(values.get(k) or 0.0) / t for k, t in thresholds.items() if t > 0)


def ratios(
    values: Mapping[str, float | None], reference: Mapping[str, float | None], keys: Iterable[str]
) -> dict[str, float | None]:
    """Per key, value / reference: "is this slower than a reference" (None where either side has no value)."""
    result: dict[str, float | None] = {}
    for key in keys:
        value, base = _present(values.get(key)), _present(reference.get(key))
        result[key] = value / base if value is not None and base else None
    return result


def slower_on_every(ratio: Mapping[str, float | None], margin: float) -> bool:
    """True when every ratio is known and more than ``margin`` above 1 (slower on every budget)."""
    return bool(ratio) and all(r is not None and r > 1 + margin for r in ratio.values())


def confidence_interval(evidence: Evidence, budget: Budget, level: float) -> tuple[float, float] | None:
    """A ``level`` confidence interval of a budget's value, where one can be given."""
    metric = budget.metric
    if metric.startswith("latency.") and metric != "latency.pwcet":
        x = np.sort(np.asarray(evidence.extra["_latencies"], dtype=np.float64)) / 1e6
        n = x.size
        z = float(scistats.norm.ppf(0.5 + level / 2))
        statistic = metric.split(".", 1)[1]
        if statistic == "mean" and n > 1:
            half = z * float(x.std(ddof=1)) / math.sqrt(n)
            return float(x.mean()) - half, float(x.mean()) + half
        if statistic.startswith("p"):
            # Distribution-free: the ranks between which the q-quantile lies with the given confidence.
            q = float(statistic[1:]) / (10 ** len(statistic[1:]))
            spread = z * math.sqrt(n * q * (1 - q))
            low, high = int(math.floor(n * q - spread)), int(math.ceil(n * q + spread))
            return float(x[max(low, 0)]), float(x[min(high, n - 1)])
        return None
    if metric == "latency.pwcet":
        tail = evidence.tail
        return None if tail is None else tail.interval_ms(budget.parameter or 1e-9, level)
    if budget.spec.requires == "power":
        energy = evidence.energy
        return None if energy is None else energy.interval(metric, level)
    return None


def straddling(
    evidence: Evidence, budgets: Sequence[Budget], thresholds: Mapping[str, float] | None, level: float
) -> list[str]:
    """The budgets whose ``level`` interval still contains their threshold: the evidence cannot decide them yet,
    and another measurement window is worth taking."""
    if not thresholds:
        return []
    unclear = []
    for budget in budgets:
        threshold = thresholds.get(budget.key, thresholds.get(budget.metric))
        interval = confidence_interval(evidence, budget, level) if threshold is not None else None
        if threshold is not None and interval is not None and interval[0] < threshold < interval[1]:
            unclear.append(budget.key)
    return unclear
