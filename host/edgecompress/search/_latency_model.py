"""An online model of a device metric (latency, energy) fitted on this run's own measurements, and the pure rule
that screens a candidate with it: device time goes only to candidates whose measurement can change the answer.

One model per device budget, refitted after every measurement: a Bayesian linear regression on the logarithm of the
value (latencies and energies are positive and vary by a factor) over features of the candidate the host knows
before any device time (MACs, parameters, size, channels kept per group, numeric format). Its predictive interval
is a Student t that widens with few points, away from the data and along features it has never seen vary. Each
measurement is predicted before it is added, so the run knows the model's error on values it had not seen; the
model is ``ready`` to screen only with enough points and while that error stays small.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as scistats

from edgecompress.budgets import format_value, unit_of
from edgecompress.compress import SearchSpace
from edgecompress.compress._space import QUANT_MODES

# Ready to screen: at least MIN_POINTS measurements, and over the last RECENT of those it predicted before seeing
# them (at least MIN_UNSEEN), a mean relative error of at most MAX_ERROR with at most MAX_MISSES outside the
# COVERAGE_LEVEL interval. A model that was right before may drift wrong (a device that warms up): readiness is
# re-checked after every measurement.
MIN_POINTS = 5
MIN_UNSEEN = 3
RECENT = 5
MAX_ERROR = 0.25
MAX_MISSES = 1
COVERAGE_LEVEL = 0.90
# Screening's one-sided confidence: a false "infeasible" loses a candidate that counts, so the bound is a wide one.
SCREEN_CONFIDENCE = 0.99

# The prior. Coefficients of standardized features ~ N(0, sigma^2 / RIDGE): ridge regularisation that keeps the fit
# well-conditioned with more features than points. Noise variance ~ InvGamma(PRIOR_DOF, PRIOR_DOF * PRIOR_NOISE^2):
# as much weight as two measurements that vary by 5% (in log units), so a handful of residuals decide it. A feature
# constant in every measurement so far (a format never measured) adds UNSEEN_EFFECT (log units per unit of the
# feature) of prior uncertainty instead: the data say nothing about its effect.
RIDGE = 1.0
PRIOR_DOF = 1.0
PRIOR_NOISE = 0.05
UNSEEN_EFFECT = 1.0


def features(
    candidate: Mapping[str, Any], groups: Sequence[str] = (), base_kept: Mapping[str, float] | None = None
) -> np.ndarray:
    """A candidate record (``Candidate.to_json()``) as the model's features: log MACs, log parameters, log size in
    bytes, the fraction of channels kept per group in ``groups`` (sorted by name; a group the plan does not name
    keeps all its channels, so the identity and quant-only plans work), and the format one-hot (fp32 the base).
    The model fits its own intercept.

    ``groups``: the search dimensions (the names plans give ratios). A plan's ratios are relative to its round's
    base; ``base_kept`` (``kept_by_base``) makes the kept fractions relative to the original, so one model serves
    every round of a run."""
    plan = candidate.get("plan") or {}
    ratios = plan.get("ratios") or {}
    quant = plan.get("quant", "fp32")
    if quant not in QUANT_MODES:
        raise ValueError(f"unknown numeric format {quant!r}; known: {', '.join(QUANT_MODES)}")
    scale = [math.log(max(float(candidate[name]), 1.0)) for name in ("macs", "params", "size_bytes")]
    base = base_kept or {}
    kept = [base.get(name, 1.0) * (1.0 - float(ratios.get(name, 0.0))) for name in sorted(groups)]
    formats = [1.0 if quant == mode else 0.0 for mode in QUANT_MODES[1:]]
    return np.asarray(scale + kept + formats, dtype=np.float64)


def kept_by_base(base: SearchSpace, original: SearchSpace) -> dict[str, float]:
    """Per search dimension of ``base`` (a round's base), the fraction of the original's channels it keeps: a
    stage's is its groups' total. Groups keep their names through pruning; one unknown to ``original`` counts 1."""
    channels = {g.name: g.channels for g in original.groups}
    members = dict(base.stages) if base.coarse else {g.name: (g.name,) for g in base.groups}
    result = {}
    for dimension, names in members.items():
        before = sum(channels.get(name, base.group(name).channels) for name in names)
        after = sum(base.group(name).channels for name in names)
        result[dimension] = after / before if before else 1.0
    return result


@dataclass(frozen=True)
class Prediction:
    """The model's predictive distribution of a value: log(value) ~ Student t(``dof``) at ``log_mean`` with scale
    ``log_scale``. ``ready``: whether the model was ready to screen when it predicted this."""

    key: str
    log_mean: float
    log_scale: float
    dof: float
    ready: bool

    @property
    def value(self) -> float:
        """The predicted typical value (the median of the predictive distribution)."""
        return math.exp(self.log_mean)

    def lower(self, confidence: float) -> float:
        """A one-sided lower bound: the value is above it with probability ``confidence``."""
        return math.exp(self.log_mean - float(scistats.t.ppf(confidence, self.dof)) * self.log_scale)

    def upper(self, confidence: float) -> float:
        """A one-sided upper bound: the value is below it with probability ``confidence``."""
        return math.exp(self.log_mean + float(scistats.t.ppf(confidence, self.dof)) * self.log_scale)

    def interval(self, level: float) -> tuple[float, float]:
        """The central interval holding the value with probability ``level``."""
        tail = (1.0 + level) / 2.0
        return self.lower(tail), self.upper(tail)

    def to_json(self) -> dict[str, Any]:
        low, high = self.interval(COVERAGE_LEVEL)
        return {"key": self.key, "value": self.value, "interval": [low, high], "level": COVERAGE_LEVEL,
                "ready": self.ready}  # fmt: skip


@dataclass(frozen=True)
class Unseen:
    """A measurement as the model predicted it before adding it: the "error on values it had not seen"."""

    predicted: float
    lower: float  # the COVERAGE_LEVEL central interval
    upper: float
    measured: float
    ready: bool

    @property
    def relative_error(self) -> float:
        return abs(self.predicted - self.measured) / self.measured

    @property
    def covered(self) -> bool:
        return self.lower <= self.measured <= self.upper


class LatencyModel:
    """The online model of one device budget (``key``): ``observe`` a measurement, ``predict`` a candidate.

    Thread-safe: trials in flight observe and predict from several threads."""

    def __init__(self, key: str):
        self.key = key
        self._x: list[np.ndarray] = []
        self._y: list[float] = []
        self._unseen: list[Unseen] = []
        self._fit: _Fit | None = None
        self._lock = threading.Lock()

    @property
    def n(self) -> int:
        return len(self._y)

    @property
    def unseen(self) -> list[Unseen]:
        with self._lock:
            return list(self._unseen)

    @property
    def errors(self) -> list[tuple[float, float]]:
        """(predicted, measured) for each measurement predicted before it was added."""
        return [(u.predicted, u.measured) for u in self.unseen]

    @property
    def ready(self) -> bool:
        """Enough measurements, and small recent errors on measurements it had not seen."""
        with self._lock:
            return self._ready()

    def _ready(self) -> bool:
        recent = self._unseen[-RECENT:]
        if self.n < MIN_POINTS or len(recent) < MIN_UNSEEN:
            return False
        error = sum(u.relative_error for u in recent) / len(recent)
        misses = sum(not u.covered for u in recent)
        return error <= MAX_ERROR and misses <= MAX_MISSES

    def observe(self, x: np.ndarray, y: float | None) -> bool:
        """Add a measured value for features ``x`` and refit; the prediction made for it first is kept. A value
        that is missing, not finite or not positive cannot be fitted on a log scale and is skipped (False)."""
        if y is None or not math.isfinite(y) or y <= 0:
            return False
        x = np.asarray(x, dtype=np.float64)
        with self._lock:
            if self._x and x.shape != self._x[0].shape:
                raise ValueError(f"{self.key}: {x.shape[0]} features, the model was fitted on {self._x[0].shape[0]}")
            if self._fit is not None and self.n >= 2:
                before = self._fit.predict(self.key, x, self._ready())
                low, high = before.interval(COVERAGE_LEVEL)
                self._unseen.append(Unseen(before.value, low, high, float(y), before.ready))
            self._x.append(x)
            self._y.append(math.log(y))
            self._fit = _Fit.of(np.stack(self._x), np.asarray(self._y))
        return True

    def predict(self, x: np.ndarray) -> Prediction:
        """The predictive distribution of the value for features ``x`` (ValueError before the first measurement)."""
        x = np.asarray(x, dtype=np.float64)
        with self._lock:
            if self._fit is None:
                raise ValueError(f"{self.key}: no measurement to predict from yet")
            if x.shape != self._x[0].shape:
                raise ValueError(f"{self.key}: {x.shape[0]} features, the model was fitted on {self._x[0].shape[0]}")
            return self._fit.predict(self.key, x, self._ready())

    def to_json(self) -> dict[str, Any]:
        """What a run records: measurements fitted, and the error and interval coverage on values not yet seen
        (all of them, and those predicted while the model was ready to screen)."""
        unseen = self.unseen

        def summary(records: list[Unseen]) -> dict[str, Any]:
            if not records:
                return {"count": 0, "mean_abs_rel_error": None, "coverage": None}
            return {
                "count": len(records),
                "mean_abs_rel_error": sum(u.relative_error for u in records) / len(records),
                "coverage": sum(u.covered for u in records) / len(records),
            }

        return {
            "key": self.key,
            "n": self.n,
            "ready": self.ready,
            "level": COVERAGE_LEVEL,
            "unseen": summary(unseen),
            "unseen_when_ready": summary([u for u in unseen if u.ready]),
        }


@dataclass(frozen=True)
class _Fit:
    """The posterior of a conjugate Bayesian ridge regression (normal-inverse-gamma) on standardized features."""

    x_mean: np.ndarray
    x_scale: np.ndarray
    varies: np.ndarray  # the features that varied among the measurements
    y_mean: float
    weights: np.ndarray
    covariance: np.ndarray  # (Z'Z + RIDGE I)^-1: the weights' covariance in units of the noise variance
    noise: float  # the noise variance's posterior mean b_n / a_n (log units)
    dof: float  # 2 a_n: the predictive Student t's degrees of freedom
    n: int

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> _Fit:
        n = len(y)
        x_mean = x.mean(axis=0)
        spread = x.std(axis=0)
        varies = spread > 1e-9
        x_scale = np.where(varies, spread, 1.0)
        z = np.where(varies, (x - x_mean) / x_scale, 0.0)
        y_mean = float(y.mean())
        centred = y - y_mean
        precision = z.T @ z + RIDGE * np.eye(z.shape[1])
        covariance = np.linalg.inv(precision)
        weights = covariance @ z.T @ centred
        # b_n = b_0 + (y'y - w' A w) / 2 = b_0 + (residuals^2 + RIDGE |w|^2) / 2; the intercept takes one dof.
        fitted = float(centred @ centred - weights @ precision @ weights)
        a_n = PRIOR_DOF + (n - 1) / 2.0
        b_n = PRIOR_DOF * PRIOR_NOISE**2 + max(fitted, 0.0) / 2.0
        return cls(x_mean, x_scale, varies, y_mean, weights, covariance, b_n / a_n, 2.0 * a_n, n)

    def predict(self, key: str, x: np.ndarray, ready: bool) -> Prediction:
        z = np.where(self.varies, (x - self.x_mean) / self.x_scale, 0.0)
        unseen = float(np.sum(np.where(self.varies, 0.0, x - self.x_mean) ** 2)) * UNSEEN_EFFECT**2
        variance = self.noise * (1.0 + 1.0 / self.n + float(z @ self.covariance @ z)) + unseen
        return Prediction(key, self.y_mean + float(z @ self.weights), math.sqrt(variance), self.dof, ready)


def screen(
    predictions: Mapping[str, Prediction],
    thresholds: Mapping[str, float],
    accuracy: float,
    best_accuracy: float | None,
    confidence: float = SCREEN_CONFIDENCE,
    paired: frozenset[str] = frozenset(),
) -> str | None:
    """Whether a candidate may go without its device measurement: None (measure it) or the reason it need not be.

    ``thresholds``: the round's thresholds as the verdict judges them (relative budgets as ratios to the original,
    matching what the models were fitted on); ``accuracy``: the candidate's host accuracy; ``best_accuracy``: the
    round's best feasible accuracy so far (None before the first feasible trial); ``paired``: the keys judged as a
    ratio to the original (for the reason's wording).

    1. It cannot beat the round's best: its accuracy is below the best feasible one (a tie is measured: the round's
       choice breaks ties on the load on the budgets). Needs no model.
    2. It is predicted infeasible: for some budget with a ready model, the one-sided lower bound at ``confidence``
       is over the threshold. A model that is not ready never screens.
    """
    if best_accuracy is not None and accuracy < best_accuracy:
        return f"cannot beat the round's best: accuracy {accuracy:.4g} < {best_accuracy:.4g}"
    for key in sorted(predictions):
        prediction = predictions[key]
        threshold = thresholds.get(key)
        if threshold is None or not prediction.ready:
            continue
        lower = prediction.lower(confidence)
        if lower > threshold:
            what = f"{key} / original" if key in paired else key
            shown = [_shown(key, v, key in paired) for v in (lower, threshold)]
            return f"predicted infeasible: {what} {confidence:.0%} lower bound {shown[0]} > {shown[1]}"
    return None


def _shown(key: str, value: float, paired: bool) -> str:
    return f"{value:.3g}x" if paired else format_value(value, unit_of(key))


class LatencyModels:
    """A run's models, one per device budget (``keys``), fed and asked together."""

    def __init__(self, keys: Sequence[str]):
        self.models = {key: LatencyModel(key) for key in keys}

    def observe(self, x: np.ndarray, values: Mapping[str, float | None]) -> None:
        """One candidate's measured values (a key absent or without a value is skipped)."""
        for key, model in self.models.items():
            model.observe(x, values.get(key))

    def predict(self, x: np.ndarray) -> dict[str, Prediction]:
        """A prediction from every model that has a measurement to predict from."""
        return {key: model.predict(x) for key, model in self.models.items() if model.n}

    def to_json(self) -> dict[str, Any]:
        return {key: model.to_json() for key, model in self.models.items()}
