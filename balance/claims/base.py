"""The records every claim is made of, and the small numerical helpers the experiments share.

A ``Claim`` pairs what a reviewer doubted with the runs that settle it: ``configs(quick)`` lists the runs (a
smaller budget when ``quick``), ``analyse(runs)`` turns their metrics into a ``Finding``: the numbers, a
``Verdict`` computed from them by a function of ``balance.claims.verdicts``, one figure, and which run is the
main one (opened in Explore). Nothing here trains, stores or draws on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from scipy import stats

from balance.config import RunConfig
from balance.engine.laws import column, of_metric, prediction_of
from balance.runs import stats as stats_

OUTCOMES = ("supported", "refuted", "partly", "undecided")  # undecided: not distinguishable at this sample size
KINDS = ("reviewer", "paper", "control")  # whose statement a claim tests; controls are counted apart
SIDES = ("reviewer", "paper", "both", "undecided")  # who a verdict supports (controls: "control")
DRIFT = "gap_drift"
PREDICTED = prediction_of(DRIFT) or ""  # the registry's prediction of the gap drift


@dataclass(frozen=True)
class Verdict:
    """``outcome`` in OUTCOMES; ``reason``: one sentence built from the numbers; ``tolerances``: rule -> bound;
    ``evidence``: how much data (seeds, step sizes, runs); ``interval``: the deciding estimate with its 95% CI."""

    outcome: str
    reason: str
    tolerances: dict[str, str] = field(default_factory=dict)
    evidence: str = ""
    interval: str = ""

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"verdict outcome {self.outcome!r}: not one of {', '.join(OUTCOMES)}")


@dataclass(frozen=True)
class Finding:
    """What a claim's runs showed: named numbers (in display order), the verdict, the figure, the main run."""

    numbers: dict[str, Any]
    verdict: Verdict
    figure: go.Figure
    main: int = 0  # index into the claim's runs of the run to open in Explore


@dataclass(frozen=True)
class Claim:
    number: int
    title: str  # a few words, for lists and the report's headings
    statement: str  # the claim tested, in one sentence
    source: str  # who said it (which reviewer, or which paper)
    quote: str  # the reviewer's own words (or the paraphrase)
    experiment: str  # what is run, in one or two sentences
    configs: Callable[[bool], list[RunConfig]]  # quick -> the runs
    analyse: Callable[[Sequence[Any]], Finding]  # the runs (balance.runs.reuse.CachedRun) -> finding
    question: str = ""  # the question with two sides, as a reader would ask it
    kind: str = "reviewer"  # whose statement ``statement`` is: a KINDS entry
    reviewer: str = ""  # the reviewer's side, completing "the reviewer is right that ..."
    paper: str = ""  # the paper's side, completing "the paper is right that ..."
    favours: dict[str, str] = field(default_factory=dict)  # outcome -> side, where the kind's default is wrong

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"claim {self.number}: kind {self.kind!r} is not one of {', '.join(KINDS)}")


def side(claim: Claim, outcome: str) -> str:
    """Who a verdict with ``outcome`` on ``claim`` supports: a SIDES entry, or "control" for a control.

    A reviewer's statement supported means the reviewer is right, refuted the paper; a paper's the other way round;
    partly is both; undecided (not distinguishable at this sample size) is neither. ``claim.favours`` overrides."""
    if claim.kind == "control":
        return "control"
    if outcome in claim.favours:
        return claim.favours[outcome]
    other = "paper" if claim.kind == "reviewer" else "reviewer"
    return {"supported": claim.kind, "refuted": other, "partly": "both"}.get(outcome, "undecided")


def who(claim: Claim, outcome: str) -> str:
    """The verdict in words: "The reviewer is right that ...; the paper is right that ..." (or a control's)."""
    s = side(claim, outcome)
    if s == "control":
        return "As expected of this control." if outcome == "supported" else "Not what this control should show."
    if s == "undecided":
        return "Not distinguishable at this sample size: the data settle neither side."
    parts = []
    if s in ("reviewer", "both"):
        parts.append(f"the reviewer is right that {claim.reviewer}")
    if s in ("paper", "both"):
        parts.append(f"the paper is right that {claim.paper}")
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


# --- helpers ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    """A log-log slope with a two-sided 95% confidence interval; ``n``: the seeds it summarises (1: one fit)."""

    slope: float
    low: float
    high: float
    n: int = 1

    def text(self) -> str:
        return f"{self.slope:.3f} [{self.low:.3f}, {self.high:.3f}]"


def fit_text(fit: Fit) -> str:
    """'0.993 [0.975, 1.01]': a slope and its interval as the verdicts quote them."""
    return f"{fmt(fit.slope)} [{fmt(fit.low)}, {fmt(fit.high)}]"


def seed_fit(x: Sequence[float], ys: Sequence[Sequence[float]]) -> Fit:
    """The slope of log|y| against log x fitted per seed (``ys[s]``), summarised across seeds: mean and t CI."""
    iv = stats_.seed_slopes(x, ys)
    return Fit(iv.value, iv.low, iv.high, iv.n)


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> Fit:
    """Slope of log|y| against log x (scipy.stats.linregress) and its 95% CI from Student's t with n - 2 dof."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.abs(np.asarray(y, dtype=float)))
    if len(lx) < 3:
        raise ValueError(f"a slope with a confidence interval needs at least 3 points, got {len(lx)}")
    fit = stats.linregress(lx, ly)
    half = float(stats.t.ppf(0.975, len(lx) - 2)) * float(fit.stderr)
    return Fit(float(fit.slope), float(fit.slope) - half, float(fit.slope) + half)


def series(df: pd.DataFrame, metric: str, index: int | None = None) -> pd.Series:
    """The column of ``metric`` at layer or pair ``index`` (None for a scalar): the registry names it."""
    return df[column(metric, index)]


def last(df: pd.DataFrame, metric: str, index: int | None = None) -> float:
    """The final value of ``metric`` (at layer or pair ``index``)."""
    return float(series(df, metric, index).iloc[-1])


def first(df: pd.DataFrame, metric: str, index: int | None = None) -> float:
    """The value of ``metric`` (at layer or pair ``index``) at the first logged step."""
    return float(series(df, metric, index).iloc[0])


def pairs(df: pd.DataFrame) -> list[int]:
    """The pairs h with a gap-drift column."""
    return of_metric(df.columns, DRIFT)


def max_sqnorm(df: pd.DataFrame) -> float:
    """The largest squared norm of any layer at any logged step: the scale drifts are measured against."""
    return float(df[[column("sqnorm", h) for h in of_metric(df.columns, "sqnorm")]].to_numpy().max())


def relative_drift(df: pd.DataFrame) -> float:
    """max_{h,k} |G_h(k) - G_h(0)| / max_{h,k} ||W_h(k)||^2: how far the gaps moved, against the norms' size."""
    return max(float(series(df, DRIFT, h).abs().max()) for h in pairs(df)) / max_sqnorm(df)


def identity_error(df: pd.DataFrame) -> float:
    """max_{h,k} |measured drift - exact prediction sum eta^2 Delta||g||^2| / max_{h,k} ||W_h||^2 (NaN: none)."""
    errors = [float((series(df, DRIFT, h) - series(df, PREDICTED, h)).abs().max()) for h in pairs(df)]
    return max(errors) / max_sqnorm(df) if errors else math.nan


def flow_ratio(df: pd.DataFrame, h: int = 1) -> np.ndarray:
    """Gradient flow's reading of the invariant: ||W_{h+1}|| / ||W_h|| = sqrt(1 - Phi_0 / ||W_h||^2) per row,
    Phi_0 = ||W_h(0)||^2 + ||b_h(0)||^2 - ||W_{h+1}(0)||^2 = -G_h(0) (no biases in these experiments)."""
    gap0 = first(df, "gap", h)
    sq = series(df, "sqnorm", h).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(np.clip(1 + gap0 / sq, 0, None))


def at_most(value: float, bound: float) -> bool:
    return bool(np.isfinite(value) and value <= bound)


def fmt(value: float, digits: int = 3) -> str:
    """A number as the verdicts and the report print it: 3 significant digits, powers of ten as 1.2e-05."""
    if isinstance(value, (int, np.integer)):
        return str(value)
    if not np.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def pivot(table: pd.DataFrame, x: str, y: str) -> tuple[list[float], list[list[float]]]:
    """From a table with columns seed, ``x``, ``y``: the sorted x values and, per seed, y at each of them."""
    wide = table.pivot_table(index="seed", columns=x, values=y, aggfunc="first").sort_index(axis=1)
    return [float(v) for v in wide.columns], [list(map(float, row)) for row in wide.to_numpy()]


def outcome_of(passed: Sequence[bool], any_passed_is_partly: bool = True) -> str:
    """All checks passed: supported; none: refuted; some: partly (or refuted when ``any_passed_is_partly`` is off)."""
    if all(passed):
        return "supported"
    if any(passed) and any_passed_is_partly:
        return "partly"
    return "refuted"
