"""The invariant's charts: gap drift measured against the exact prediction, the layer ratios against the ratio the
gap implies, both side by side, and the matrix invariant of linear layers."""

from __future__ import annotations

import logging
import sys
import textwrap
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from balance.engine.laws import (
    METRICS,
    NO_PREDICTION,
    column,
    prediction_of,
)
from balance.engine.theory import predicted_ratio
from balance.views.badges import add_badge, law_badge
from balance.views.frames import indices, metric_columns, named, pair_label, present, rows
from balance.views.style import (
    FLOW_COLOUR,
    LEGEND_BELOW,
    MAX_POINTS,
    MUTED,
    NOTE_CHARS,
    axis,
    colour,
    empty_figure,
    figure,
    hover_text,
    layout,
    line,
    style,
    styled,
    whole_steps,
)

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass

log = logging.getLogger(__name__)

# --- the invariant: gaps and ratios ---------------------------------------------------------------------------


DRIFT = "gap_drift"
PREDICTED = prediction_of(DRIFT) or ""  # the registry's prediction of the gap drift
BALANCE_METRICS = (DRIFT, PREDICTED, "ratio", "gap", "sqnorm", "bias_sqnorm")


def _balance_columns(df: pd.DataFrame) -> list[str]:
    return present(df, *(column(m, h) for h in indices(df, DRIFT) for m in BALANCE_METRICS if m))


def _has_prediction(d: pd.DataFrame, h: int) -> bool:
    name = column(PREDICTED, h)
    return bool(PREDICTED) and name in d.columns and bool(d[name].notna().any())


def _gap_traces(d: pd.DataFrame, x: str, names: Sequence[str] | None, no_law: str = "") -> list[go.Scatter]:
    """Per pair: measured drift G_k - G_0 (solid), predicted drift (dashed); then gradient flow, 0 (dotted).

    With ``no_law`` (why the law does not apply) only the measured drift: there is nothing to predict.
    """
    xs = d[x].to_numpy()
    traces = []
    for h in indices(d, DRIFT):
        c, measured, predicted = colour(h), column(DRIFT, h), column(PREDICTED, h)
        traces.append(line(xs, d[measured].to_numpy(), named(DRIFT, h, names), c, hover=measured))
        if _has_prediction(d, h) and not no_law:
            traces.append(line(xs, d[predicted].to_numpy(), named(PREDICTED, h, names), c, "dash", hover=predicted))
    if traces and not no_law:
        traces.append(line(xs[[0, -1]], np.zeros(2), "gradient flow", FLOW_COLOUR, "dot"))
    return traces


def _ratio_prediction(d: pd.DataFrame, h: int) -> tuple[np.ndarray, str] | None:
    """theory.predicted_ratio with G_0 = gap - gap_drift (any row) and the predicted drift, or 0 without one."""
    sq_name, gap_name, drift_name, bias_name = (column(m, h) for m in ("sqnorm", "gap", DRIFT, "bias_sqnorm"))
    if present(d, sq_name, gap_name, drift_name) != [sq_name, gap_name, drift_name]:
        return None
    sq = d[sq_name].to_numpy()
    bias = d[bias_name].to_numpy() if bias_name in d.columns else np.zeros_like(sq)
    gap0 = float(d[gap_name].iloc[0] - d[drift_name].iloc[0])
    if _has_prediction(d, h):
        drift, label = d[column(PREDICTED, h)].to_numpy(), METRICS[PREDICTED].kind
    else:  # adam: no prediction; show what a conserved gap would imply
        drift, label = np.zeros_like(sq), "if gap conserved"
    with np.errstate(divide="ignore", invalid="ignore"):
        return predicted_ratio(sq, bias, gap0, drift), label


def _ratio_traces(
    d: pd.DataFrame, x: str, names: Sequence[str] | None, shown: set[str], no_law: str = ""
) -> list[go.Scatter]:
    """Per pair: ||W_{h+1}|| / ||W_h|| (solid) and the ratio the invariant implies (dashed; none with ``no_law``).

    Traces named in ``shown`` are already in the legend (the gap traces of ``balance_figure``): they join that
    legend entry instead of repeating it, so one click toggles both panels.
    """
    xs = d[x].to_numpy()
    traces = []
    for h in indices(d, "ratio"):
        pair, c, ratio = pair_label(h, names), colour(h), column("ratio", h)
        name = named("ratio", h, names)
        traces.append(line(xs, d[ratio].to_numpy(), name, c, showlegend=name not in shown, hover=ratio))
        prediction = None if no_law else _ratio_prediction(d, h)
        if prediction is not None:
            name = f"{pair} {prediction[1]}"
            traces.append(line(xs, prediction[0], name, c, "dash", showlegend=name not in shown))
    return traces


def _no_prediction_note(fig: go.Figure, d: pd.DataFrame, no_law: str = "") -> None:
    """Say in the (left) panel why no prediction is drawn: ``no_law``, or no predicted column in the metrics."""
    if no_law or not any(_has_prediction(d, h) for h in indices(d, DRIFT)):
        why = no_law or NO_PREDICTION
        fig.add_annotation(
            text="<br>".join(textwrap.wrap(why, NOTE_CHARS)),
            x=0.02,
            y=0.98,
            xref="x domain",
            yref="y domain",
            xanchor="left",
            yanchor="top",
            align="left",
            showarrow=False,
            bgcolor="rgba(255, 255, 255, 0.8)",
            font={"color": MUTED, "size": 11},
        )


def gaps_figure(
    df: pd.DataFrame,
    layer_names: Sequence[str] | None = None,
    *,
    x: str = "step",
    log_x: bool = False,
    max_points: int = MAX_POINTS,
    no_law: str = "",
) -> go.Figure:
    """Drift of the gap G_h = ||W_{h+1}||^2 - ||W_h||^2 - ||b_h||^2 since step 0: measured (solid) against the
    exact prediction sum_j eta_j^2 (||g_{h+1}||^2 - ||g_h||^2) (dashed) and gradient flow's 0 (dotted).

    The drift, not G itself, is drawn (linear y): it is often many orders of magnitude smaller than G_0, so on a
    plot of G it would be invisible.
    """
    hs, columns = indices(df, DRIFT), _balance_columns(df)
    d = rows(df, hs, "gap", "gap drift", columns, layer_names, x, log_x, max_points)
    if isinstance(d, go.Figure):
        return d
    fig = figure(_gap_traces(d, x, layer_names, no_law))
    _no_prediction_note(fig, d, no_law)
    title = f"{METRICS[DRIFT].title}: measured vs predicted"
    fig = style(fig, title, x, METRICS[DRIFT].plain(), log_x).update_layout(legend=LEGEND_BELOW)
    return add_badge(fig, "" if no_law else law_badge(df))  # the residual over every row, not the decimated ones


def ratios_figure(
    df: pd.DataFrame,
    layer_names: Sequence[str] | None = None,
    *,
    x: str = "step",
    log_x: bool = False,
    max_points: int = MAX_POINTS,
    no_law: str = "",
) -> go.Figure:
    """||W_{h+1}|| / ||W_h|| (solid, log y) against theory.predicted_ratio (dashed) and the balanced value 1."""
    hs = indices(df, "ratio")
    columns = _balance_columns(df) or present(df, *metric_columns("ratio", hs))
    d = rows(df, hs, "ratio", "layer ratio", columns, layer_names, x, log_x, max_points)
    if isinstance(d, go.Figure):
        return d
    fig = figure(_ratio_traces(d, x, layer_names, set(), no_law))
    fig.add_hline(y=1, line={"color": FLOW_COLOUR, "width": 1, "dash": "dot"})
    fig = style(fig, "layer ratio: measured vs implied by the gap", x, METRICS["ratio"].plain(), log_x, log_y=True)
    return fig.update_layout(legend=LEGEND_BELOW)


def balance_figure(
    df: pd.DataFrame,
    layer_names: Sequence[str] | None = None,
    *,
    x: str = "step",
    log_x: bool = False,
    max_points: int = MAX_POINTS,
    no_law: str = "",
) -> go.Figure:
    """``gaps_figure`` (left) and ``ratios_figure`` (right) as two panels of one figure, sharing the legend.

    ``no_law``: why the layer-gap law does not apply to this run (``balance.engine.laws.why_no_law``): no prediction, no
    gradient-flow line and no implied ratio are drawn, and the left panel says why in those words.
    """
    hs, columns = indices(df, DRIFT), _balance_columns(df)
    d = rows(df, hs, "gap", "balance", columns, layer_names, x, log_x, max_points)
    if isinstance(d, go.Figure):
        return d
    gaps = _gap_traces(d, x, layer_names, no_law)
    ratios = _ratio_traces(d, x, layer_names, {t.name for t in gaps}, no_law)
    for trace in ratios:
        trace.update(xaxis="x2", yaxis="y2")
    # Two panels laid out by hand, as make_subplots would, in one constructor call (3x cheaper: a live chart).
    spec = layout("", x, "", log_x)
    spec["legend"] |= LEGEND_BELOW
    spec["xaxis"] |= {"domain": [0.0, 0.45], "anchor": "y"}
    spec["xaxis2"] = {**spec["xaxis"], "domain": [0.55, 1.0], "anchor": "y2"}
    spec["yaxis"] |= {"anchor": "x"}
    spec["yaxis2"] = {**axis("", log=True), "anchor": "x2"}
    titles = [(f"{METRICS[m].title} {METRICS[m].plain()}", at) for m, at in ((DRIFT, 0.225), ("ratio", 0.775))]
    spec["annotations"] = [
        {"text": text, "x": at, "y": 1.0, "xref": "paper", "yref": "paper", "xanchor": "center",
         "yanchor": "bottom", "showarrow": False, "font": {"size": 13, "weight": "bold"}}
        for text, at in titles
    ]  # fmt: skip
    one = {"color": FLOW_COLOUR, "width": 1, "dash": "dot"}
    spec["shapes"] = [
        {"type": "line", "xref": "x2 domain", "x0": 0, "x1": 1, "yref": "y2", "y0": 1, "y1": 1, "line": one}
    ]
    fig = go.Figure([*gaps, *ratios], layout=spec)
    _no_prediction_note(fig, d, no_law)
    return add_badge(whole_steps(fig), "" if no_law else law_badge(df))  # in the left panel; from every row


def matrix_figure(
    df: pd.DataFrame,
    layer_names: Sequence[str] | None = None,
    *,
    x: str = "step",
    log_x: bool = False,
    max_points: int = MAX_POINTS,
) -> go.Figure:
    """Linear pairs: ||D_h(t) - D_h(0)||_F, D_h = W_{h+1}^T W_{h+1} - [W_h b_h][W_h b_h]^T (solid), beside
    ||D_h||_F itself (thin, for scale); log y. Gradient flow keeps D_h fixed (Theorem 2.2)."""
    drift, inv = METRICS["matrix_drift"], METRICS["matrix_inv"]
    hs = indices(df, "matrix_drift")
    if not hs:
        return empty_figure("no linear layers", inv.title)
    columns = present(df, *(column(m, h) for h in hs for m in ("matrix_drift", "matrix_inv")))
    d = rows(df, hs, "matrix", inv.title, columns, layer_names, x, log_x, max_points)
    if isinstance(d, go.Figure):
        return d
    xs, traces = d[x].to_numpy(), []
    for h in hs:
        pair, c = pair_label(h, layer_names), colour(h)
        moved, size = column("matrix_drift", h), column("matrix_inv", h)
        traces.append(line(xs, d[moved].to_numpy(), f"{pair} drift", c, hover=moved))
        if size in d.columns:  # thin: in the legend with its pair's drift (one click toggles both)
            y, name, thin = d[size].to_numpy(), f"{pair} ||D||", {"color": c, "width": 1}
            traces.append(
                go.Scatter(x=xs, y=y, name=name, mode="lines", line=thin, opacity=0.5, legendgroup=f"{pair} drift",
                           showlegend=False, hovertemplate=hover_text(size, name))
            )  # fmt: skip
    return styled(traces, inv.title, x, drift.plain(), log_x, log_y=True)  # the thin ||D_h||: caption and hover
