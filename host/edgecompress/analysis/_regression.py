"""Two-sample regression tests: is a new latency sample slower than a baseline's, beyond noise and beyond a tolerance?

One number against a threshold is not a regression test: two runs of the same model never give the same median. The
test here compares the two raw samples. The ratio of a statistic (median by default) of the new sample to the
baseline's gets a percentile-bootstrap confidence interval (both samples resampled independently), and Mann-Whitney
U gives a one-sided p-value for "the new latencies are stochastically larger". A slowdown is a regression only when
it is significant AND its ratio exceeds ``1 + tolerance``: a significant 1% slowdown is noise from the machine's point
of view (frequency scaling, other processes), a 20% slowdown seen in a handful of runs may be an accident.

The bootstrap only knows the noise inside one measurement. Between two measurements (another agent process, another
night) a device drifts more than that: on a loaded machine medians of the same model moved by 30% from one run to
the next (docs/ci.md). So when earlier passing runs are known (the history), the reference becomes their geometric
mean and the interval a prediction interval from their run-to-run spread (Student t with K-1 degrees of freedom):
"is this run outside what the baseline runs themselves vary by?". With fewer than ``min_runs`` earlier runs, the
two-sample bootstrap is all there is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Method = Literal["bootstrap", "mann-whitney", "both"]
METHODS: tuple[str, ...] = ("bootstrap", "mann-whitney", "both")

# Statistics of one latency sample a regression can be tested on, by metric name (the names budgets use).
_PERCENTILE = re.compile(r"^latency\.p(?P<digits>\d+)$")


def sample_statistic(metric: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """The statistic behind a latency metric, vectorised over the last axis; None when it has no sample behind it.

    ``latency.min`` and ``latency.max`` are refused: the bootstrap distribution of an extreme is degenerate (it can
    never exceed the observed extreme), so its interval would be wrong, not merely wide.
    """
    if metric == "latency.mean":
        return lambda a: np.mean(a, axis=-1)
    if metric == "latency.p50":
        return lambda a: np.median(a, axis=-1)
    match = _PERCENTILE.match(metric)
    if match:
        digits = match["digits"]
        q = float(digits) if len(digits) <= 2 else float(digits[:2] + "." + digits[2:])  # p999 -> 99.9
        return lambda a: np.percentile(a, q, axis=-1)
    return None


@dataclass(frozen=True)
class RegressionPolicy:
    """How a regression is decided: tolerance on the ratio, confidence, and which test makes it significant."""

    tolerance: float = 0.05
    confidence: float = 0.95
    method: Method = "bootstrap"
    resamples: int = 2000
    seed: int = 0  # a fixed seed: the same two samples always give the same verdict
    min_runs: int = 3  # earlier runs needed before their spread is used (a spread of two is no estimate)

    def __post_init__(self) -> None:
        if not 0 <= self.tolerance < 10:
            raise ValueError(f"tolerance {self.tolerance} must lie in [0, 10)")
        if not 0.5 < self.confidence < 1:
            raise ValueError(f"confidence {self.confidence} must lie in (0.5, 1)")
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.resamples < 100:
            raise ValueError("at least 100 bootstrap resamples")
        if self.min_runs < 2:
            raise ValueError("a run-to-run spread needs at least 2 runs")


@dataclass(frozen=True)
class RegressionResult:
    """The comparison of one metric between a baseline and a current run; ``ratio`` > 1 means slower."""

    metric: str
    baseline_value: float
    current_value: float
    ratio: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float | None
    tolerance: float
    method: str
    significant: bool
    regressed: bool
    baseline_n: int
    current_n: int
    baseline_runs: int = 0  # earlier runs whose spread made the interval (0: the two-sample bootstrap alone)
    run_spread: float | None = None  # their standard deviation of log(statistic)

    def describe(self) -> str:
        """One line for people: the ratio, its interval, the p-value and the verdict."""
        if self.method == "exact":
            figures = f"ratio {self.ratio:.3f} (exact, no noise)"
        elif self.method == "paired":
            figures = (
                f"ratio {self.ratio:.3f} ({self.confidence:.0%} CI {self.ci_low:.3f}-{self.ci_high:.3f} over "
                f"{self.baseline_runs} alternating rounds, paired t p={self.p_value:.2g})"
            )
        else:
            over = f" over {self.baseline_runs} runs" if self.baseline_runs else ""
            figures = f"ratio {self.ratio:.3f} ({self.confidence:.0%} CI{over} {self.ci_low:.3f}-{self.ci_high:.3f}"
            figures += f", Mann-Whitney p={self.p_value:.2g})" if self.p_value is not None else ")"
        verdict = "regression" if self.regressed else ("within tolerance" if self.ratio > 1 else "not slower")
        from edgecompress.budgets import format_value, unit_of  # budgets imports this package

        unit = unit_of(self.metric)
        values = (
            f"{format_value(self.baseline_value, unit)} -> {format_value(self.current_value, unit)}"
            if unit
            else f"{self.baseline_value:.4g} -> {self.current_value:.4g}"
        )
        return (
            f"{self.metric} {values}, {figures}, "
            f"tolerance {self.tolerance:.0%}, n={self.baseline_n}/{self.current_n}: {verdict}"
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RegressionResult:
        return cls(**data)


def bootstrap_ratio(
    baseline: np.ndarray,
    current: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    confidence: float,
    resamples: int,
    seed: int,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of statistic(current) / statistic(baseline), samples resampled independently."""
    rng = np.random.default_rng(seed)
    ratios = np.empty(resamples)
    # Resample in blocks: a (resamples x n) matrix of a 10^5-run measurement would not fit in memory at once.
    block = max(1, 4_000_000 // max(baseline.size, current.size))
    for start in range(0, resamples, block):
        count = min(block, resamples - start)
        base = statistic(baseline[rng.integers(0, baseline.size, (count, baseline.size))])
        curr = statistic(current[rng.integers(0, current.size, (count, current.size))])
        ratios[start : start + count] = curr / base
    alpha = 1.0 - confidence
    low, high = np.quantile(ratios, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def mann_whitney_greater(baseline: np.ndarray, current: np.ndarray) -> float:
    """One-sided Mann-Whitney U p-value for "current latencies are stochastically larger than the baseline's"."""
    from scipy.stats import mannwhitneyu

    # The asymptotic method with tie correction: exact p-values cost O(n^2) memory for samples of thousands.
    return float(mannwhitneyu(current, baseline, alternative="greater", method="asymptotic").pvalue)


def run_interval(runs: Sequence[float], current_value: float, confidence: float) -> tuple[float, float, float]:
    """Ratio of ``current_value`` to the geometric mean of earlier runs' values, and its prediction interval.

    Returns (ratio, half, spread): the interval is ratio * exp(+-half); spread is the standard deviation of
    log(value) across the runs.
    """
    from scipy.stats import t as student

    logs = np.log(np.asarray(runs, dtype=np.float64))
    k = logs.size
    spread = float(np.std(logs, ddof=1))
    ratio = current_value / math.exp(float(logs.mean()))
    # A new run's log-value under "nothing changed": mean +- t * s * sqrt(1 + 1/k).
    half = float(student.ppf(0.5 + confidence / 2, k - 1)) * spread * math.sqrt(1 + 1 / k)
    return ratio, half, spread


def compare_samples(
    metric: str,
    baseline: Sequence[float],
    current: Sequence[float],
    policy: RegressionPolicy = RegressionPolicy(),
    baseline_runs: Sequence[float | None] = (),
) -> RegressionResult:
    """Compare two latency samples (any unit, the same for both) on ``metric``, e.g. ``latency.p50``.

    ``baseline_runs`` are the metric's values in earlier passing runs (the baseline's included); from ``min_runs``
    of them on, the ratio is to their geometric mean and the interval includes their run-to-run spread.
    """
    statistic = sample_statistic(metric)
    if statistic is None:
        raise ValueError(f"{metric} is not a statistic of the latency sample; a regression test needs one")
    base = np.asarray(baseline, dtype=np.float64)
    curr = np.asarray(current, dtype=np.float64)
    if base.size < 2 or curr.size < 2:
        raise ValueError(f"a regression test needs at least 2 values per sample, got {base.size} and {curr.size}")
    base_value, curr_value = float(statistic(base)), float(statistic(curr))
    if not base_value > 0:
        raise ValueError(f"the baseline's {metric} is {base_value}; a ratio needs a positive baseline")
    ratio = curr_value / base_value
    low, high = bootstrap_ratio(base, curr, statistic, policy.confidence, policy.resamples, policy.seed)
    runs = [float(v) for v in baseline_runs if v is not None and math.isfinite(v) and v > 0]
    spread = None
    if len(runs) >= policy.min_runs:
        last_ratio = ratio
        ratio, half, spread = run_interval(runs, curr_value, policy.confidence)
        base_value = curr_value / ratio
        # The wider of the two intervals (as log half-widths around the new ratio): a quiet history must not make
        # one noisy measurement look precise, nor the reverse.
        low = ratio * math.exp(-max(half, math.log(last_ratio / low)))
        high = ratio * math.exp(max(half, math.log(high / last_ratio)))
    else:
        runs = []
    p_value = mann_whitney_greater(base, curr)
    alpha = 1.0 - policy.confidence
    by_bootstrap = low > 1.0  # the whole interval above 1: slower at (1 - alpha/2) one-sided confidence
    by_rank = p_value < alpha
    significant = {"bootstrap": by_bootstrap, "mann-whitney": by_rank, "both": by_bootstrap and by_rank}[policy.method]
    return RegressionResult(
        metric=metric,
        baseline_value=base_value,
        current_value=curr_value,
        ratio=ratio,
        ci_low=low,
        ci_high=high,
        confidence=policy.confidence,
        p_value=p_value,
        tolerance=policy.tolerance,
        method=policy.method,
        significant=significant,
        regressed=significant and ratio > 1.0 + policy.tolerance,
        baseline_n=int(base.size),
        current_n=int(curr.size),
        baseline_runs=len(runs),
        run_spread=spread,
    )


def compare_paired(
    metric: str,
    rounds: Sequence[tuple[Sequence[float], Sequence[float]]],
    policy: RegressionPolicy = RegressionPolicy(),
) -> RegressionResult:
    """Compare two models measured alternately, round by round: ``rounds`` holds (baseline, current) samples.

    Each round gives one ratio of the statistic; the test is a one-sample t on their logs. Load that comes and goes
    on the device hits a round or two, which then shows as spread between rounds instead of as a slowdown: the
    round-to-round variation is the noise, as with paired measurements in any benchmark.
    """
    from scipy.stats import t as student
    from scipy.stats import ttest_1samp

    statistic = sample_statistic(metric)
    if statistic is None:
        raise ValueError(f"{metric} is not a statistic of the latency sample; a regression test needs one")
    if len(rounds) < 3:
        raise ValueError(f"a paired comparison needs at least 3 rounds, got {len(rounds)}")
    base_values, curr_values = [], []
    for base, curr in rounds:
        b, c = np.asarray(base, dtype=np.float64), np.asarray(curr, dtype=np.float64)
        if b.size < 2 or c.size < 2:
            raise ValueError("every round needs at least 2 values per model")
        base_values.append(float(statistic(b)))
        curr_values.append(float(statistic(c)))
    logs = np.log(np.asarray(curr_values) / np.asarray(base_values))
    k = logs.size
    mean, spread = float(logs.mean()), float(logs.std(ddof=1))
    half = float(student.ppf(0.5 + policy.confidence / 2, k - 1)) * spread / math.sqrt(k)
    ratio, low, high = math.exp(mean), math.exp(mean - half), math.exp(mean + half)
    p_value = float(ttest_1samp(logs, 0.0, alternative="greater").pvalue) if spread > 0 else (0.0 if mean > 0 else 1.0)
    significant = low > 1.0
    return RegressionResult(
        metric=metric,
        baseline_value=float(np.exp(np.log(base_values).mean())),
        current_value=float(np.exp(np.log(curr_values).mean())),
        ratio=ratio,
        ci_low=low,
        ci_high=high,
        confidence=policy.confidence,
        p_value=p_value,
        tolerance=policy.tolerance,
        method="paired",
        significant=significant,
        regressed=significant and ratio > 1.0 + policy.tolerance,
        baseline_n=sum(len(b) for b, _ in rounds),
        current_n=sum(len(c) for _, c in rounds),
        baseline_runs=k,
        run_spread=spread,
    )


def compare_values(metric: str, baseline: float, current: float, tolerance: float) -> RegressionResult:
    """Compare a metric that has no noise (the artifact's size): any growth is real, the tolerance decides."""
    if not (math.isfinite(baseline) and baseline > 0 and math.isfinite(current)):
        raise ValueError(f"cannot compare {metric}: baseline {baseline}, current {current}")
    ratio = current / baseline
    return RegressionResult(
        metric=metric,
        baseline_value=baseline,
        current_value=current,
        ratio=ratio,
        ci_low=ratio,
        ci_high=ratio,
        confidence=1.0,
        p_value=None,
        tolerance=tolerance,
        method="exact",
        significant=ratio != 1.0,
        regressed=ratio > 1.0 + tolerance,
        baseline_n=1,
        current_n=1,
    )
