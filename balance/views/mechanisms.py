"""What actually balances (issue 16), drawn: the sharpness chart against 2/eta and the comparison of the mechanisms
from one unbalanced start, with their residual badges (``balance.views.badges``). pandas + plotly only: every number
is read from a run's columns (``balance.engine.laws``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from balance.engine.laws import METRICS, column
from balance.views import style
from balance.views.badges import (
    EXACT,
    EXACT_TOL,
    FIRST_ORDER,
    FIRST_ORDER_TOL,
    NOT_PREDICTED,
    RESPECTED,
    add_badge,
    bound_badge,
    bound_ratio,
    law_residual,
)
from balance.views.lecture import SYMBOLS, axis, colour, grid, hline, line, note, present

SHARPNESS_CAPTION = (
    "The sharpness $\\lambda_{\\max}$ (largest eigenvalue of the loss's Hessian, by Lanczos on Hessian-vector "
    "products, warm-started between logged steps) against $2/\\eta$: gradient descent can only settle where "
    "$\\lambda_{\\max} \\le 2/\\eta$, and for homogeneous models the flat minima are the balanced ones."
)


def sharpness_figure(df: pd.DataFrame, *, log_x: bool = False, max_points: int = style.MAX_POINTS) -> go.Figure:
    """The sharpness lambda_max (solid) against the stability bound 2/eta (dashed), with the bound's badge."""
    d = df.dropna(subset=["sharpness"])
    if d.empty:
        return style.empty_figure("no sharpness logged: set sharpness_every (it costs Hessian-vector products)")
    d = style.decimate(d, max_points)
    fig = style.figure()
    fig.add_trace(style.line(d["step"].to_numpy(), d["sharpness"].to_numpy(), METRICS["sharpness"].plain(),
                             style.colour(1), hover="sharpness"))  # fmt: skip
    bound = style.decimate(df, max_points)
    fig.add_trace(
        style.line(
            bound["step"].to_numpy(),
            bound["stability_bound"].to_numpy(),
            METRICS["stability_bound"].plain(),
            style.INK,
            dash="dash",
            hover="stability_bound",
        )
    )
    style.style(fig, "sharpness against the stability bound", "step", "curvature", log_x)
    return add_badge(fig.update_layout(legend=style.LEGEND_BELOW), bound_badge(df))


def mechanisms_figure(frames: Mapping[str, pd.DataFrame], h: int = 1) -> go.Figure:
    """One run per mechanism from the same start, projector-grade: the gap relative to its start G_h(k)/G_h(0)
    (balance: 0), the ratio ||W_{h+1}|| / ||W_h|| (balance: 1), and the sharpness in units of its bound,
    lambda_max eta/2 (stable: at most 1). The first panel's badge is the worst law residual of the runs, the third's
    how many runs respect the bound."""
    fig = grid(1, 3, ["gap G / G₀", "ratio ‖W₂‖ / ‖W₁‖", "sharpness · η/2"], horizontal_spacing=0.08)
    residuals, bounds = [], []
    for k, (label, df) in enumerate(frames.items()):
        c, symbol = colour(k), SYMBOLS[k % len(SYMBOLS)]
        d = style.decimate(df, 600)
        steps = d["step"].to_numpy()
        gap = d[column("gap", h)] / float(df[column("gap", h)].iloc[0])
        fig.add_trace(line(steps, gap.to_numpy(), label, c, role="measured", run=label, symbol=symbol), row=1, col=1)
        ratio = d[column("ratio", h)].to_numpy()
        fig.add_trace(line(steps, ratio, label, c, role="measured", run=label, symbol=symbol, showlegend=False),
                      row=1, col=2)  # fmt: skip
        s = d.dropna(subset=["sharpness"]) if "sharpness" in d.columns else d.iloc[:0]
        if not s.empty:
            scaled = (s["sharpness"] / s["stability_bound"]).to_numpy()
            fig.add_trace(line(s["step"].to_numpy(), scaled, label, c, role="measured", run=label, symbol=symbol,
                               showlegend=False), row=1, col=3)  # fmt: skip
            bounds.append(bound_ratio(df) <= 1 + 1e-9)
        residuals.append(law_residual(df))
    for col, y in ((1, 0.0), (2, 1.0), (3, 1.0)):
        hline(fig, y, col=col)
        fig.update_yaxes(axis(""), row=1, col=col)
    fig.update_xaxes(axis("step"))
    known = [r for r in residuals if not np.isnan(r)]
    if known:
        worst = max(known)
        kind = EXACT if worst <= EXACT_TOL else FIRST_ORDER if worst <= FIRST_ORDER_TOL else NOT_PREDICTED
        note(fig, kind.replace(" to ", " to<br>", 1), xref="x domain", yref="y domain", y=0.8)  # the runs' worst
    if bounds:
        note(fig, f"{sum(bounds)} of {len(bounds)}:<br>{RESPECTED}", xref="x3 domain", yref="y3 domain")
    return present(fig).update_layout(margin={"t": 36})
