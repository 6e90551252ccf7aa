"""Statistics the verdicts rest on: means with Student-t intervals, per-seed slopes summarised across seeds, Welch
differences between two arms, Wilson intervals for success fractions. Torch-free; numbers in, intervals out.

Every interval is two-sided at 95%. A slope is fitted per seed (log|y| against log x) and the seeds' slopes are
summarised by their mean and its t interval: pooling all seeds into one regression mixes the seeds' offsets into
the residuals and gives an interval that is neither the seeds' spread nor the fit's (issue 14).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided 95% interval [low, high] and the number of independent values behind it."""

    value: float
    low: float
    high: float
    n: int

    def text(self, digits: int = 4) -> str:
        return f"{self.value:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}]"

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def within(self, centre: float, band: float) -> bool:
        """The whole interval lies in [centre - band, centre + band] (an equivalence test, two one-sided tests)."""
        return centre - band <= self.low and self.high <= centre + band


def mean_ci(values: Sequence[float]) -> Interval:
    """Mean of ``values`` with its Student-t interval (n - 1 degrees of freedom); a single value has no interval."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("a mean needs at least one value")
    m = float(x.mean())
    if len(x) < 2:
        return Interval(m, -math.inf, math.inf, 1)
    half = float(stats.t.ppf(0.5 + LEVEL / 2, len(x) - 1)) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return Interval(m, m - half, m + half, len(x))


def slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log|y| against log x."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.abs(np.asarray(y, dtype=float)))
    if len(lx) < 2:
        raise ValueError(f"a slope needs at least 2 points, got {len(lx)}")
    return float(np.polyfit(lx, ly, 1)[0])


def seed_slopes(x: Sequence[float], ys: Sequence[Sequence[float]]) -> Interval:
    """Slope of log|y| against log x fitted per seed (``ys[s]`` is seed s's y at each x), then the seeds' mean
    slope with its t interval across seeds: the interval says how much the slope varies between seeds.

    A seed whose y changes sign (or is 0) between the x values is left out: |y| passes through 0 there, and the
    slope of its log says nothing about a power law. ``n`` counts the seeds kept."""
    kept = [y for y in ys if np.all(np.asarray(y) > 0) or np.all(np.asarray(y) < 0)]
    if len(kept) < 2:
        raise ValueError(f"a slope summarised across seeds needs at least 2 seeds of one sign, got {len(kept)}")
    return mean_ci([slope(x, y) for y in kept])


def difference(a: Sequence[float], b: Sequence[float]) -> Interval:
    """mean(b) - mean(a) with Welch's interval (unequal variances, Welch-Satterthwaite degrees of freedom)."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(xa) < 2 or len(xb) < 2:
        raise ValueError("a difference of means with an interval needs at least 2 values per arm")
    va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
    d = float(xb.mean() - xa.mean())
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(d, d, d, len(xa) + len(xb))
    dof = (va + vb) ** 2 / (va**2 / (len(xa) - 1) + vb**2 / (len(xb) - 1))
    half = float(stats.t.ppf(0.5 + LEVEL / 2, dof)) * se
    return Interval(d, d - half, d + half, len(xa) + len(xb))


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test of equal means (1.0 when both arms are constant and equal)."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.ptp(xa) == 0 and np.ptp(xb) == 0:
        return 1.0 if xa[0] == xb[0] else 0.0
    return float(stats.ttest_ind(xa, xb, equal_var=False).pvalue)


def wilson(successes: int, n: int) -> Interval:
    """The fraction successes / n with its Wilson score interval (good near 0 and 1, where the normal one fails)."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"a fraction needs 0 <= successes <= n and n > 0, got {successes} of {n}")
    z = float(stats.norm.ppf(0.5 + LEVEL / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n)


def ratio_ci(a: Sequence[float], b: Sequence[float]) -> Interval:
    """The typical ratio b_s / a_s of paired seeds: the geometric mean of |b_s / a_s| with its t interval on the
    log scale (ratios spread multiplicatively; an arithmetic mean of ratios is pulled by one large one)."""
    logs = mean_ci([math.log(abs(y / x)) for x, y in zip(a, b)])
    return Interval(math.exp(logs.value), math.exp(logs.low), math.exp(logs.high), logs.n)
