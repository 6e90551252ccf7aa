"""Residual badges: how well a run's columns follow their law, in words, computed from the columns alone (pandas
only; ``balance.engine.laws`` names the columns). Every chart of a law carries one.

"exact to round-off": the law's prediction matches the measurement to 1e-9 of the drift; "first order": within
10 % (a law exact only to first order, or float32 round-off); "not predicted": further off; "bound respected" /
"bound exceeded": the last logged sharpness against 2/eta.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from balance.engine.laws import column, of_metric
from balance.views import style

EXACT, FIRST_ORDER, NOT_PREDICTED = "exact to round-off", "first order", "not predicted"
RESPECTED, EXCEEDED = "bound respected", "bound exceeded"
EXACT_TOL, FIRST_ORDER_TOL = 1e-9, 0.1


def law_residual(df: pd.DataFrame) -> float:
    """max over pairs and rows of |G_h(k) - G_h(0) - predicted| relative to the largest |drift|; NaN where nothing is
    predicted, 0 where nothing drifted."""
    worst, scale, any_prediction = 0.0, 0.0, False
    for h in of_metric(df.columns, "gap_drift"):
        drift, pred = df[column("gap_drift", h)], df.get(column("pred_gap_drift", h))
        if pred is None or pred.isna().all():
            continue
        any_prediction = True
        worst = max(worst, float((drift - pred).abs().max()))
        scale = max(scale, float(drift.abs().max()))
    if not any_prediction:
        return float("nan")
    return worst / scale if scale > 0 else 0.0


def bound_ratio(df: pd.DataFrame) -> float:
    """The last logged sharpness over its bound 2/eta (at most 1: the bound holds); NaN without a sharpness."""
    if "sharpness" not in df.columns:
        return float("nan")
    d = df.dropna(subset=["sharpness"])
    if d.empty:
        return float("nan")
    return float(d["sharpness"].iloc[-1] / d["stability_bound"].iloc[-1])


def law_badge(df: pd.DataFrame) -> str:
    """The gap law's badge with its residual ('exact to round-off · 3e-15'), '' where nothing is predicted."""
    r = law_residual(df)
    if np.isnan(r):
        return ""
    kind = EXACT if r <= EXACT_TOL else FIRST_ORDER if r <= FIRST_ORDER_TOL else NOT_PREDICTED
    return f"{kind} · residual {r:.1e}"


def bound_badge(df: pd.DataFrame) -> str:
    """'bound respected · λ_max η/2 = 0.67' (or exceeded), '' without a sharpness."""
    r = bound_ratio(df)
    if np.isnan(r):
        return ""
    return f"{RESPECTED if r <= 1 + 1e-9 else EXCEEDED} · λ_max η/2 = {r:.2f}"


def add_badge(fig: go.Figure, text: str, y: float = 0.98) -> go.Figure:
    """The badge boxed inside the chart's top-right corner (modifies ``fig``); nothing for ''."""
    if text:
        fig.add_annotation(text=style.literal(text), x=0.99, y=y, xref="x domain", yref="y domain", xanchor="right",
                           yanchor="top", showarrow=False, font={"size": 11, "color": style.INK},
                           bgcolor="rgba(255, 255, 255, 0.85)", bordercolor=style.INK, borderwidth=1)  # fmt: skip
    return fig
