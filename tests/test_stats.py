"""The claims' statistics against known answers: t intervals cover at the stated rate, per-seed slopes recover a
power law and say how much seeds disagree, Welch and Wilson intervals match scipy / textbook values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from balance.runs import stats


def test_mean_interval_is_students_t() -> None:
    x = [1.0, 2.0, 3.0, 4.0]
    iv = stats.mean_ci(x)
    half = scipy_stats.t.ppf(0.975, 3) * np.std(x, ddof=1) / 2
    assert iv.value == 2.5 and iv.low == pytest.approx(2.5 - half) and iv.high == pytest.approx(2.5 + half)
    assert iv.n == 4 and iv.contains(2.5) and not iv.within(2.5, 0.1)
    assert stats.mean_ci([3.0]).low == -np.inf  # one value: no interval
    with pytest.raises(ValueError):
        stats.mean_ci([])


def test_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    hits = sum(stats.mean_ci(rng.normal(1.0, 2.0, 8)).contains(1.0) for _ in range(2000))
    assert 0.93 <= hits / 2000 <= 0.97


def test_seed_slopes_recover_a_power_law_and_skip_sign_changes() -> None:
    x = np.geomspace(1e-3, 1e-1, 7)
    rng = np.random.default_rng(0)
    ys = [c * x ** (1 + e) for c, e in zip(rng.uniform(0.5, 2, 8), rng.normal(0, 0.01, 8))]
    iv = stats.seed_slopes(x, ys)
    assert iv.n == 8 and abs(iv.value - 1) < 0.02 and 0 < iv.high - iv.low < 0.03
    # the seeds' offsets (c) do not widen the interval: a pooled fit would mix them into its residuals
    flipped = [*ys, np.array([1e-3, -1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3])]
    assert stats.seed_slopes(x, flipped).n == 8  # the seed whose drift changes sign is left out
    with pytest.raises(ValueError, match="2 seeds"):
        stats.seed_slopes(x, ys[:1])


def test_welch_difference_and_p_value() -> None:
    a, b = [1.0, 1.1, 0.9, 1.05], [2.0, 2.2, 1.9, 2.1, 2.05]
    d = stats.difference(a, b)
    ref = scipy_stats.ttest_ind(b, a, equal_var=False)
    assert d.value == pytest.approx(np.mean(b) - np.mean(a))
    ci = ref.confidence_interval(0.95)
    assert d.low == pytest.approx(ci.low) and d.high == pytest.approx(ci.high)
    assert stats.welch_p(a, b) == pytest.approx(ref.pvalue)
    assert stats.welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0


def test_wilson_interval() -> None:
    iv = stats.wilson(8, 10)  # the textbook value: 0.8 [0.490, 0.943]
    assert iv.value == 0.8 and iv.low == pytest.approx(0.4902, abs=1e-4) and iv.high == pytest.approx(0.9433, abs=1e-4)
    assert stats.wilson(0, 20).low == 0 and 0 < stats.wilson(0, 20).high < 0.2
    assert stats.wilson(20, 20).high == 1 and stats.wilson(20, 20).low > 0.8
    with pytest.raises(ValueError):
        stats.wilson(3, 2)


def test_ratio_is_a_geometric_mean_of_paired_seeds() -> None:
    iv = stats.ratio_ci([1.0, 2.0, 4.0], [10.0, -20.0, 40.0])  # |b / a| = 10 for every seed
    assert iv.value == pytest.approx(10.0) and iv.low == pytest.approx(10.0) and iv.n == 3
