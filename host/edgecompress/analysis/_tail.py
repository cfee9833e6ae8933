"""WCET-style tail latency: probabilistic WCET (pWCET) by extreme value theory, after an i.i.d. check.

pWCET at exceedance probability p is the latency x with P(one run > x) = p. Two estimators:

- MBPTA-CV (Abella et al., ACM TODAES 2017): for each tail size k, the exceedances over the (k+1)-th largest value u
  are exponential exactly when their coefficient of variation is 1; the k whose CV is closest to 1 inside the band
  1 +- 1.96/sqrt(k) is chosen, and P(X > x) = (k/N) e^{-(x-u)/sigma} with sigma the mean exceedance.
  A tail lighter than exponential (CV below the band everywhere) keeps the exponential: it is then an upper bound.
- Block maxima: the maxima of blocks of B runs fitted by a Gumbel, or by a GEV when a likelihood-ratio test
  says the shape is not 0; P(block max > x) = 1 - (1-p)^B converts to a per-run probability.

EVT needs i.i.d. runs: Ljung-Box on the series and a two-sample KS test between its halves. When they reject, the
estimate must not fall because the data got worse: it is the largest of every projection the sample gives and its
observed maximum ("conservative"), named as such. A sample too small for EVT gives its observed maximum.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# scipy.stats is imported in the functions that use it: it takes over a second, and every CLI command imports this
# module at start-up.

PROBABILITIES = (1e-3, 1e-6, 1e-9)
CONSERVATIVE = "conservative"
MIN_SAMPLES = 500  # below this the tail holds too few points for an EVT fit
ALPHA = 0.05


@dataclass(frozen=True)
class IidCheck:
    """Whether a series looks independent (Ljung-Box) and identically distributed (KS between its halves)."""

    passed: bool
    ljung_box_p: float
    ks_p: float
    lags: int
    alpha: float = ALPHA

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "ljung_box_p": self.ljung_box_p,
            "ks_p": self.ks_p,
            "lags": self.lags,
            "alpha": self.alpha,
        }

    def verdict(self) -> str:
        """One line for people, e.g. 'i.i.d. rejected (Ljung-Box p=0.001, KS p=0.40)'."""
        word = "i.i.d. ok" if self.passed else "i.i.d. rejected"
        return f"{word} (Ljung-Box p={self.ljung_box_p:.3g}, KS halves p={self.ks_p:.3g})"


def ljung_box_p(x: np.ndarray, lags: int) -> float:
    """Ljung-Box p-value, Q = n(n+2) sum_k r_k^2/(n-k), as statsmodels' acorr_ljungbox computes it.

    With the autocorrelations by FFT: acorr_ljungbox's direct ones take minutes on 10^5 runs.
    """
    from scipy import stats
    from statsmodels.tsa.stattools import acf

    n = x.size
    r = acf(x, nlags=lags, fft=True)[1:]
    q = n * (n + 2) * float(np.sum(r**2 / (n - np.arange(1, lags + 1))))
    return float(stats.chi2.sf(q, lags))


def iid_check(values: Sequence[float] | np.ndarray, alpha: float = ALPHA, lags: int | None = None) -> IidCheck:
    """Ljung-Box (no autocorrelation up to ``lags``) and two-sample KS (first half vs second half)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if x.size < 20:
        raise ValueError(f"an i.i.d. check needs at least 20 values, got {x.size}")
    lags = lags or max(1, min(20, x.size // 10))
    if np.ptp(x) == 0:
        return IidCheck(True, 1.0, 1.0, lags, alpha)  # a constant series: nothing depends on anything
    lb_p = ljung_box_p(x, lags)
    half = x.size // 2
    ks_p = float(stats.ks_2samp(x[:half], x[half:]).pvalue)
    return IidCheck(bool(lb_p >= alpha and ks_p >= alpha), lb_p, ks_p, lags, alpha)


@dataclass(frozen=True)
class ExponentialTail:
    """MBPTA-CV's model: P(X > x) = (k/n) exp(-(x - u)/sigma) for x >= u."""

    n: int
    k: int
    u: float
    sigma: float
    cv: float
    light: bool  # no tail inside the CV band and all below it: the exponential is an upper bound

    def quantile(self, p: float, sample: np.ndarray | None = None) -> float:
        if p >= self.k / self.n and sample is not None:
            return float(np.quantile(sample, 1.0 - p))
        return self.u + self.sigma * math.log(self.k / (self.n * p))

    def interval(self, p: float, level: float = 0.95) -> tuple[float, float]:
        """CI of the quantile from sigma's: 2k sigma_hat / sigma is chi-square with 2k degrees of freedom."""
        from scipy import stats

        tail = (1 - level) / 2
        lo = 2 * self.k * self.sigma / stats.chi2.ppf(1 - tail, 2 * self.k)
        hi = 2 * self.k * self.sigma / stats.chi2.ppf(tail, 2 * self.k)
        spread = math.log(self.k / (self.n * p))
        return self.u + lo * spread, self.u + hi * spread


def mbpta_cv(values: Sequence[float] | np.ndarray, min_tail: int | None = None) -> ExponentialTail | None:
    """Fit the exponential tail by MBPTA-CV; None when the tail is heavier than exponential."""
    xs = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    n = xs.size
    min_tail = min_tail or max(20, min(50, n // 20))
    k = np.arange(min_tail, n // 2 + 1)
    if k.size == 0:
        return None
    # Exceedances over u_k = xs[k] are xs[:k] - u_k; their moments from running sums, for every k at once.
    s1 = np.cumsum(xs)[k - 1]
    s2 = np.cumsum(xs * xs)[k - 1]
    u = xs[k]
    mean = s1 / k - u
    var = (s2 - 2 * u * s1 + k * u * u) / k - mean**2
    var = np.maximum(var, 0.0) * k / (k - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cv = np.where(mean > 0, np.sqrt(var) / mean, np.nan)
    band = 1.96 / np.sqrt(k)
    distance = np.abs(cv - 1)
    inside = np.isfinite(cv) & (distance <= band)
    if inside.any():
        i = int(np.nanargmin(np.where(inside, distance, np.nan)))
        light = False
    elif np.nanmax(cv - 1 + band) < 0:
        # Every tail lighter than exponential: the smallest tail gives the tightest exponential upper bound.
        i = 0
        light = True
    else:
        return None
    return ExponentialTail(n=n, k=int(k[i]), u=float(u[i]), sigma=float(mean[i]), cv=float(cv[i]), light=light)


@dataclass(frozen=True)
class BlockMaxima:
    """Maxima of blocks of ``block`` runs, fitted by a Gumbel (shape 0) or a GEV (scipy's shape c = -xi)."""

    block: int
    blocks: int
    kind: str  # "gumbel" or "gev"
    loc: float
    scale: float
    c: float = 0.0
    lr_p: float = 1.0  # likelihood-ratio p-value of GEV against Gumbel
    heavy: bool = False  # a heavy-tailed GEV fitted better; the Gumbel is kept (see block_maxima)

    def quantile(self, p: float) -> float:
        from scipy import stats

        q = -math.expm1(self.block * math.log1p(-p))  # P(max of B runs > x) = 1 - (1 - p)^B
        if self.kind == "gumbel":
            return float(stats.gumbel_r.isf(q, self.loc, self.scale))
        return float(stats.genextreme.isf(q, self.c, self.loc, self.scale))


def block_maxima(values: Sequence[float] | np.ndarray, block: int | None = None) -> BlockMaxima:
    """Gumbel fit of the block maxima, replaced by a GEV when the GEV fits significantly better (LR test, 5%)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    block = block or int(min(200, max(10, x.size // 50)))
    m = x.size // block
    if m < 10:
        raise ValueError(f"{x.size} values make {m} blocks of {block}; a fit needs at least 10")
    maxima = x[: m * block].reshape(m, block).max(axis=1)
    loc, scale = stats.gumbel_r.fit(maxima)
    ll_gumbel = float(np.sum(stats.gumbel_r.logpdf(maxima, loc, scale)))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        c, gloc, gscale = stats.genextreme.fit(maxima, 0.0, loc=loc, scale=scale)
    ll_gev = float(np.sum(stats.genextreme.logpdf(maxima, c, gloc, gscale)))
    lr_p = float(stats.chi2.sf(max(2 * (ll_gev - ll_gumbel), 0.0), 1)) if math.isfinite(ll_gev) else 1.0
    # Only a bounded (Weibull, c > 0) GEV replaces the Gumbel. Execution times cannot have a heavy (Frechet, c < 0)
    # tail; block maxima that fit one come from a sample mixing regimes (interference, frequency changes), and its
    # projection explodes (1e-9 turns into hours). The Gumbel stays, and the heavy fit is reported as a warning.
    if lr_p < ALPHA and c > 0:
        return BlockMaxima(block, m, "gev", float(gloc), float(gscale), float(c), lr_p)
    return BlockMaxima(block, m, "gumbel", float(loc), float(scale), 0.0, lr_p, heavy=bool(lr_p < ALPHA and c < 0))


@dataclass(frozen=True)
class TailEstimate:
    """pWCET of one latency sample, in ms, with how it was obtained and whether it can be trusted."""

    count: int
    method: str  # "mbpta-cv", "gumbel", "gev", "conservative" (runs not i.i.d.), or "observed-max" (too few runs)
    pwcet_ms: dict[float, float]
    observed_max_ms: float
    iid: IidCheck | None
    warnings: tuple[str, ...] = ()
    exponential: ExponentialTail | None = None
    maxima: BlockMaxima | None = None
    _sample: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def fallback(self) -> bool:
        return self.method == "observed-max"

    def quantile_ms(self, p: float) -> float:
        """pWCET at any exceedance probability per run (the observed maximum when the estimate fell back)."""
        if p in self.pwcet_ms:
            return self.pwcet_ms[p]
        return _quantile(self.method, self.exponential, self.maxima, p, self._sample, self.observed_max_ms)

    def interval_ms(self, p: float, level: float = 0.95) -> tuple[float, float] | None:
        """A confidence interval where the method gives one (the exponential tail), else None."""
        if self.method == "mbpta-cv" and self.exponential is not None and p < self.exponential.k / self.count:
            return self.exponential.interval(p, level)
        return None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "count": self.count,
            "method": self.method,
            "fallback": self.fallback,
            "pwcet_ms": {f"{p:g}": v for p, v in self.pwcet_ms.items()},
            "observed_max_ms": self.observed_max_ms,
            "iid": self.iid.to_json() if self.iid else None,
            "warnings": list(self.warnings),
        }
        if self.exponential is not None:
            e = self.exponential
            data["mbpta_cv"] = {
                "k": e.k,
                "u_ms": e.u,
                "sigma_ms": e.sigma,
                "cv": e.cv,
                "light_tail": e.light,
                "pwcet_ms": {f"{p:g}": e.quantile(p, self._sample) for p in self.pwcet_ms},
            }
        if self.maxima is not None:
            b = self.maxima
            data["block_maxima"] = {
                "kind": b.kind,
                "block": b.block,
                "blocks": b.blocks,
                "loc_ms": b.loc,
                "scale_ms": b.scale,
                "shape_c": b.c,
                "lr_p": b.lr_p,
                "pwcet_ms": {f"{p:g}": b.quantile(p) for p in self.pwcet_ms},
            }
        return data


def _quantile(
    method: str,
    exponential: ExponentialTail | None,
    maxima: BlockMaxima | None,
    p: float,
    sample: np.ndarray | None,
    observed_max: float,
) -> float:
    if method == "mbpta-cv" and exponential is not None:
        return exponential.quantile(p, sample)
    if method in ("gumbel", "gev") and maxima is not None:
        return maxima.quantile(p)
    if method == CONSERVATIVE:
        # Runs that are not i.i.d.: no single projection can be trusted, and the observed maximum alone would make
        # a noisier sample look better. The largest of them all never falls when the data gets worse.
        candidates = [observed_max]
        if exponential is not None:
            candidates.append(exponential.quantile(p, sample))
        if maxima is not None:
            candidates.append(maxima.quantile(p))
        return max(candidates)
    return observed_max


def pwcet(
    latencies_ns: Sequence[int] | np.ndarray,
    probabilities: Sequence[float] = PROBABILITIES,
    min_samples: int = MIN_SAMPLES,
    alpha: float = ALPHA,
) -> TailEstimate:
    """pWCET (ms) at each exceedance probability per run, or the observed maximum with a warning."""
    x = np.asarray(latencies_ns, dtype=np.float64) / 1e6
    if x.size == 0:
        raise ValueError("no latencies")
    observed = float(x.max())
    notes: list[str] = []
    iid = iid_check(x, alpha) if x.size >= 20 else None
    exponential: ExponentialTail | None = None
    maxima: BlockMaxima | None = None
    if x.size >= min_samples:
        exponential = mbpta_cv(x)
        try:
            maxima = block_maxima(x)
        except ValueError as exc:
            notes.append(str(exc))
    if exponential is not None:
        method = "mbpta-cv"
        if exponential.light:
            notes.append("tail lighter than exponential: the exponential pWCET is an upper bound")
    elif maxima is not None:
        method = maxima.kind
        notes.append("tail heavier than exponential (no MBPTA-CV tail in the CV band): block maxima used")
        if maxima.heavy:
            notes.append(
                "the block maxima fit a heavy (Frechet) tail, which execution times cannot have: the runs mix "
                "regimes (interference?); Gumbel projection used, treat the pWCET with care"
            )
    else:
        method = "observed-max"
    if x.size < min_samples:
        method = "observed-max"
        notes.insert(0, f"only {x.size} runs (EVT needs {min_samples}): pWCET is the observed maximum")
    elif iid is not None and not iid.passed:
        method = CONSERVATIVE
        notes.insert(
            0,
            f"{iid.verdict()}: pWCET is the largest of the EVT projections and the observed maximum (conservative)",
        )
    values = {p: _quantile(method, exponential, maxima, p, x, observed) for p in probabilities}
    return TailEstimate(
        count=int(x.size),
        method=method,
        pwcet_ms=values,
        observed_max_ms=observed,
        iid=iid,
        warnings=tuple(notes),
        exponential=exponential,
        maxima=maxima,
        _sample=x,
    )
