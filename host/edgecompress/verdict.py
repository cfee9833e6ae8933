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
from typing import Any

import numpy as np

from edgecompress.budgets import accuracy_drop_points, format_value, unit_of

# scipy.stats is imported in the functions that use it: it takes over a second, and every CLI command imports this
# module at start-up.

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


# -- verdicts with a stated confidence, from repeated windows --------------------------------------------------------

MET, VIOLATED, INCONCLUSIVE = "met", "violated", "inconclusive"
CONFIDENCE = 0.95


@dataclass(frozen=True)
class WindowPlan:
    """How many measurement windows a verdict may take: at least ``min_windows``; more only while a budget is
    undecided, up to ``max_windows`` or ``max_seconds`` of device time."""

    confidence: float = CONFIDENCE
    min_windows: int = 2
    max_windows: int = 6
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if not 0.5 < self.confidence < 1:
            raise ValueError(f"confidence must lie in (0.5, 1), got {self.confidence}")
        if not 1 <= self.min_windows <= self.max_windows:
            raise ValueError(f"windows: need 1 <= min ({self.min_windows}) <= max ({self.max_windows})")

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Decision:
    """One budget judged on repeated windows: the typical window's value with one-sided bounds at ``confidence``.

    met: the upper bound is under the threshold; violated: the lower bound is over it; inconclusive: neither, after
    every window allowed (never reported as met). ``paired``: judged on the ratio to the original measured in
    alternate windows of the same session, and ``value``/bounds/threshold are that ratio.
    """

    key: str
    threshold: float
    outcome: str
    value: float | None
    lower: float | None
    upper: float | None
    windows: int
    confidence: float
    paired: bool = False
    method: str = "log-t"  # how the bounds were obtained: "log-t" (central metrics) or "order" (tail metrics)

    @property
    def met(self) -> bool:
        return self.outcome == MET

    @property
    def violation(self) -> float:
        """What a constrained sampler is told: the upper bound minus the threshold (positive: not shown to meet it).
        A budget with no value is over by the whole threshold."""
        bound = self.upper if self.upper is not None else self.value
        if bound is None:
            return abs(self.threshold) if self.threshold else 1.0
        return bound - self.threshold

    def describe(self, unit: str = "") -> str:
        """One line for people, e.g. 'latency.p99 = 8.31 ms (95% upper bound 9.02 ms, 3 windows) <= 15.6 ms: met'."""

        def shown(x: float | None) -> str:
            if x is None:
                return "n/a"
            return f"{x:.3f}x" if self.paired else format_value(x, unit)

        what = f"{self.key} / original" if self.paired else self.key
        level = f"{self.confidence:.0%}"
        if self.value is None:
            return f"{what}: no value ({self.windows} windows): {self.outcome}"
        sign = {MET: "<=", VIOLATED: ">", INCONCLUSIVE: "~"}[self.outcome]
        bound = self.upper if self.outcome != VIOLATED else self.lower
        side = "upper" if self.outcome != VIOLATED else "lower"
        return (
            f"{what} = {shown(self.value)} ({level} {side} bound {shown(bound)}, {self.windows} windows) "
            f"{sign} {shown(self.threshold)}: {self.outcome}"
        )

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Decision:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def window_bounds(values: Sequence[float], confidence: float) -> tuple[float, float | None, float | None]:
    """The typical window's value (geometric mean of the windows') and its one-sided lower and upper bounds at
    ``confidence`` (Student's t on the logarithms: latencies and energies are positive and skewed, and windows on a
    loaded device vary by a factor rather than by a constant). No bounds from a single window."""
    from scipy import stats as scistats

    x = np.log(np.asarray(values, dtype=np.float64))
    center = float(np.exp(x.mean()))
    if x.size < 2:
        return center, None, None
    t = float(scistats.t.ppf(confidence, x.size - 1))
    half = t * float(x.std(ddof=1)) / math.sqrt(x.size)
    return center, float(np.exp(x.mean() - half)), float(np.exp(x.mean() + half))


# Tail metrics: a window's value is decided by a handful of its slowest runs, so across windows it jumps between
# regimes (on a board under a CPU quota, p99 read 0.1-0.3 ms in some windows and 4.2 ms in others, with nothing in
# between: docs/benchmarks.md). A t bound on two windows that happened to agree called such a model "met" and a
# later check found it violated 4 times in 10; tail metrics are judged by order statistics instead.
TAIL_METRICS = frozenset({"latency.p90", "latency.p95", "latency.p99", "latency.p999", "latency.max", "latency.pwcet"})


def median_bounds(values: Sequence[float], confidence: float) -> tuple[float, float | None, float | None]:
    """The median window value and distribution-free one-sided bounds on it at ``confidence`` (the sign test's
    order statistics): the upper bound is the u-th smallest window, u the least with P(Binomial(n, 1/2) < u) >=
    confidence. None where n windows cannot give one (at 95%, fewer than 5)."""
    from scipy import stats as scistats

    x = sorted(values)
    n = len(x)
    center = float(np.median(x))
    cumulative = scistats.binom.cdf(np.arange(n), n, 0.5)  # P(B <= k - 1) for u = k
    usable = np.nonzero(cumulative >= confidence)[0]
    if usable.size == 0:
        return center, None, None
    u = int(usable[0])  # 0-based index of x_(u+1)
    return center, float(x[n - 1 - u]), float(x[u])


def decide(
    key: str,
    window_values: Sequence[float | None],
    threshold: float,
    confidence: float = CONFIDENCE,
    paired: bool = False,
) -> Decision:
    """Judge one budget on its per-window values. A window the device reported no value for fails the budget (the
    one missing-value rule); values at or below zero cannot be judged on a log scale and are taken as they are
    (met only when every window is under). Tail metrics (TAIL_METRICS) are bounded by order statistics on the
    median window, the others by Student's t on the logarithms."""
    present = [_present(v) for v in window_values]
    n = len(present)
    if n == 0 or any(v is None for v in present):
        return Decision(key, threshold, VIOLATED if n else INCONCLUSIVE, None, None, None, n, confidence, paired)
    values = [float(v) for v in present if v is not None]
    if min(values) <= 0:
        top = max(values)
        outcome = MET if top <= threshold else VIOLATED if min(values) > threshold else INCONCLUSIVE
        return Decision(key, threshold, outcome, top, min(values), top, n, confidence, paired)
    tail = key.split("@", 1)[0] in TAIL_METRICS
    center, lower, upper = median_bounds(values, confidence) if tail else window_bounds(values, confidence)
    if upper is not None and upper <= threshold:
        outcome = MET
    elif lower is not None and lower > threshold:
        outcome = VIOLATED
    else:
        outcome = INCONCLUSIVE
    method = "order" if tail else "log-t"
    return Decision(key, threshold, outcome, center, lower, upper, n, confidence, paired, method)


def overall(host: Mapping[str, BudgetVerdict], decisions: Mapping[str, Decision], device_keys: Iterable[str]) -> str:
    """One answer for a model over all its budgets: met when every host budget and every device budget is met;
    inconclusive when nothing is violated but a device budget is undecided; else not met."""
    device = [decisions.get(key) for key in device_keys]
    if not all(v.met for v in host.values()) or any(d is None or d.outcome == VIOLATED for d in device):
        return "not met"
    return "met" if all(d is not None and d.met for d in device) else INCONCLUSIVE


# Without an accuracy floor, a final model more than this many percentage points below the original's accuracy is
# called collapsed: tune still answers on the budgets it was given (and exits as it did), but says so plainly. Ten
# points is far beyond the loss any compression is normally accepted at (tolerable-loss criteria are 1% or so) and
# far above the noise of the host's scoring, so a collapsed model is never a borderline call.
COLLAPSE_DROP_POINTS = 10.0


def accuracy_collapsed(original_accuracy: float, accuracy: float, floor_stated: bool) -> bool:
    """True when no accuracy floor was stated and ``accuracy`` is more than COLLAPSE_DROP_POINTS below the
    original's (accuracies as fractions). With a floor, the floor decides, in the verdict."""
    return not floor_stated and accuracy_drop_points(original_accuracy, accuracy) > COLLAPSE_DROP_POINTS


def collapse_message(original_accuracy: float, accuracy: float) -> str:
    """The console's, the log's and the report's line for a collapsed final model."""
    return (
        f"accuracy collapsed: {accuracy:.1%} against the original's {original_accuracy:.1%}; state a floor with "
        "--budget 'accuracy.drop<=1pt'"
    )


def all_decided(decisions: Mapping[str, Decision]) -> bool:
    return all(d.outcome != INCONCLUSIVE for d in decisions.values())


def constraints(
    values: Mapping[str, float | None], thresholds: Mapping[str, float], decisions: Mapping[str, Decision]
) -> dict[str, float]:
    """What a constrained sampler is told per budget (positive: not shown to be met): a device budget judged on
    windows gives its bound minus its threshold (the robust value, not one window's), a host budget its value
    minus its threshold, and a budget never measured 0 (no evidence)."""
    result = violations(values, thresholds)
    for key, decision in decisions.items():
        if key in result:
            result[key] = decision.violation
    return result
