"""Charts: a tidy metrics DataFrame in, a ``plotly.graph_objects.Figure`` out. No Streamlit, no data fetching.

Columns are those of ``balance.engine.laws.columns``: layer h = 1 is the input side (for mf: 1 = V, 2 = U) and
pair h is (h, h+1). Every chart shares one look (``style``): measured series solid (a wide, translucent band),
theory dashed on top in the same colour, gradient flow dotted grey, one colour per layer or pair from ``PALETTE``,
and a constant ``uirevision`` so a front end that updates in place keeps the user's zoom. Every time-series chart
decimates first (``decimate`` keeps each bucket's extremes, so spikes survive) and builds its traces from NumPy
arrays, which serialise about 15x faster than lists. Charts use SVG ``Scatter``, not WebGL: browsers allow about
8 WebGL contexts a page. Inputs are never mutated.

Column names, labels (plain text on the charts, which draw no TeX; TeX in the captions), signs and whether there is
a prediction come from the registry (``balance.engine.laws``): no column name is spelt or parsed here.
``metric_figure`` draws any registered metric. ``FIGURES`` maps names to (function, caption) for the charts that take
the metrics DataFrame; ``CAPTIONS`` has a one-line caption (with its formula) for every chart, read from
``assets/captions.toml`` with the registry's TeX labels filled in.
"""

from __future__ import annotations

import html
import logging
import math
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from balance.engine.laws import (
    METRICS,
    NEURON_INDEX,
    NO_PREDICTION,
    column,
    describe,
    expand,
    of_metric,
    parse,
    plain,
    prediction_of,
)
from balance.engine.theory import predicted_ratio

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

PALETTE: tuple[str, ...] = tuple(qualitative.Plotly)
FLOW_COLOUR = "#7f7f7f"
INK, MUTED = "rgb(49, 51, 63)", "#808495"
# plotly_white's layout without its per-trace-type defaults, set when a figure is made (``figure``): a template set
# later is merged into the default one, and the whole of plotly_white costs ~20 ms a figure to copy and validate,
# where a live page builds about six figures a tick. These charts only use its axes, colours and fonts.
TEMPLATE = {
    "layout": {
        key: value
        for key, value in pio.templates["plotly_white"].layout.to_plotly_json().items()
        if key in ("autotypenumbers", "colorway", "hoverlabel", "paper_bgcolor", "plot_bgcolor", "xaxis", "yaxis",
                   "title", "shapedefaults", "annotationdefaults", "colorscale", "coloraxis")
    }
}  # fmt: skip
# Streamlit's type and greys, so the dashboard's live charts (drawn by plotly.js itself, not themed by Streamlit)
# look like its other charts; the fonts fall back to sans-serif in a handout.
TEMPLATE["layout"]["font"] = {"family": '"Source Sans", "Source Sans Pro", sans-serif', "size": 12, "color": INK}
for _axis in ("xaxis", "yaxis"):
    TEMPLATE["layout"][_axis] = {
        **TEMPLATE["layout"][_axis],
        "tickfont": {"color": MUTED},
        "title": {"standoff": 12, "font": {"color": MUTED}},
    }
HEIGHT = 320
NARROW, WIDE = 300, 620  # px of a chart beside another, and of one across the page, at 1024 x 768
LEGEND_ROW = 29  # px a row of the legend takes under a chart
STEP_AXES = frozenset({"step"})  # axis titles that count steps: whole numbers, thousands separated
WHOLE_STEPS = 20  # a step axis spanning at most this many steps gets its ticks at whole steps
# The legend in rows under the chart (``fit_legend`` makes room): at the side it took two thirds of a 300 px wide
# chart at 1024 x 768. Placed in the container's coordinates, it sits under the axis title whatever the height.
NOTE_CHARS = 48  # a note in a chart (why there is no prediction) wraps at this many characters: a 300 px panel
LEGEND_BELOW = {"orientation": "h", "x": 0, "xanchor": "left", "y": 0, "yanchor": "bottom", "yref": "container"}
UIREVISION = "balance"
MAX_POINTS = 2000
MAX_LINES = 200  # constant-difference lines drawn in the neuron chart, at most
MF_LAYER_NAMES = ("V", "U")
CAPTIONS_PATH = Path(__file__).resolve().parent.parent / "assets" / "captions.toml"

Table = Mapping[str, Any] | pd.DataFrame


# --- decimation ------------------------------------------------------------------------------------------------


def decimate(df: pd.DataFrame, max_points: int = MAX_POINTS, x: str = "step") -> pd.DataFrame:
    """A new frame, sorted by ``x``, of at most about 2 * max_points rows that keeps every spike.

    The rows are cut into equal-count buckets; for every numeric column the rows holding each bucket's minimum
    and maximum are kept (NaN ignored), plus the first and last row. So every column keeps its global min and max.
    Smooth columns share their extreme rows (a bucket's ends), so the count is usually about 2 per bucket; where
    noisy columns add more, the buckets are widened until at most 2 * max_points + 2 rows remain (or one bucket,
    which keeps at most 2 rows per column + 2). Frames already that small come back as a sorted copy.
    """
    if max_points < 1:
        raise ValueError(f"max_points = {max_points}: must be at least 1")
    if x in df.columns and not df[x].is_monotonic_increasing:
        df = df.sort_values(x, kind="stable")
    n, limit = len(df), 2 * max_points + 2
    if n <= limit:
        return df.copy()
    values = df.select_dtypes("number").to_numpy(dtype=float)  # [n, C]
    buckets = max_points
    keep = _extreme_rows(values, buckets)
    while len(keep) > limit and buckets > 1:
        buckets = max(1, min(buckets - 1, int(buckets * (limit - 2) / len(keep))))
        keep = _extreme_rows(values, buckets)
    return df.iloc[keep]


def _extreme_rows(values: np.ndarray, buckets: int) -> np.ndarray:
    """Sorted unique row indices: argmin and argmax of every column [n, C] in each of ``buckets`` row ranges."""
    n = len(values)
    size = -(-n // buckets)
    nb = -(-n // size)
    starts = np.arange(nb) * size
    rows = [np.array([0, n - 1])]
    for series in values.T:
        nan = np.isnan(series)
        for fill, pick in ((np.inf, np.argmin), (-np.inf, np.argmax)):
            padded = np.full(nb * size, fill)  # the padding sits at the end, so ties resolve to real rows
            padded[:n] = np.where(nan, fill, series)
            rows.append(pick(padded.reshape(nb, size), axis=1) + starts)
    return np.unique(np.minimum(np.concatenate(rows), n - 1))


# --- shared look -----------------------------------------------------------------------------------------------


def figure(data: Any = None, **subplots: Any) -> go.Figure:
    """A new figure with the charts' template; with ``subplots`` (rows=, cols=, ...) a ``make_subplots`` grid."""
    if not subplots:
        return go.Figure(data, layout={"template": TEMPLATE})
    fig = make_subplots(figure=go.Figure(layout={"template": TEMPLATE}), **subplots)
    return fig if data is None else fig.add_traces(data)


def layout(
    title: str = "",
    x_title: str = "step",
    y_title: str = "",
    log_x: bool = False,
    log_y: bool = False,
    height: int = HEIGHT,
    hovermode: str = "x unified",
) -> dict[str, Any]:
    """The one layout every chart uses, as a dict (the template and one x and one y axis included)."""
    return {
        "template": TEMPLATE,
        "height": height,
        "title": {"text": title, "x": 0, "xanchor": "left", "font": {"size": 14, "weight": "bold"}},
        "margin": {"l": 60, "r": 10, "t": 45, "b": 45},
        "legend": {"font": {"size": 11}, "groupclick": "togglegroup"},
        "hovermode": hovermode,
        "uirevision": UIREVISION,
        "xaxis": axis(x_title, log_x),
        "yaxis": axis(y_title, log_y),
    }


def axis(title: str, log: bool = False) -> dict[str, Any]:
    """An axis whose every tick label states its value.

    A step axis counts: 1,000 and 2,000 (never 0.5×10⁴), and whole steps only for a short run (``whole_steps``).
    A log axis labels each tick it labels in full: 0.2, 2, 20 or 2e−7, never a bare minor digit "2" that means
    0.2 at the bottom of an axis and 2 at its top. Other axes write powers of ten as ×10ⁿ.
    """
    spec: dict[str, Any] = {"title": {"text": title}, "type": "log" if log else "-"}  # "-": plotly picks, text too
    if title in STEP_AXES:
        spec["tickformat"] = ",~f"
    if log:
        spec.update(minorloglabels="complete", exponentformat="e")
    else:
        spec["exponentformat"] = "power"
    return spec


def styled(data: Any, *args: Any, **kwargs: Any) -> go.Figure:
    """A one-panel figure of ``data`` (traces) with ``layout(*args, **kwargs)`` and the legend under it, built in
    one go: about 2x cheaper than styling a figure after the fact, which a live page does for ~6 charts twice a
    second."""
    spec = layout(*args, **kwargs)
    spec["legend"] = {**spec["legend"], **LEGEND_BELOW}
    return whole_steps(go.Figure(data, layout=spec))


def style(fig: go.Figure, *args: Any, **kwargs: Any) -> go.Figure:
    """Give an existing (e.g. multi-panel, from ``figure``) figure the charts' layout; every axis gets its type."""
    spec = layout(*args, **kwargs)
    x_axis, y_axis = spec.pop("xaxis"), spec.pop("yaxis")
    spec.pop("template")
    fig.update_layout(spec)
    fig.update_xaxes(x_axis)
    fig.update_yaxes(y_axis)
    return whole_steps(fig)


def whole_steps(fig: go.Figure, most: int = 6) -> go.Figure:
    """Ticks at whole steps where a step axis spans at most ``WHOLE_STEPS`` steps (plotly would put them at 0.5,
    1.5 for a two-step run); at most ``most`` of them. Modifies and returns ``fig``."""
    for name in [k for k in fig.layout.to_plotly_json() if re.fullmatch(r"xaxis\d*", k)]:
        ax = fig.layout[name]
        if ax.title.text not in STEP_AXES:
            continue
        ref = "x" + name[5:]
        try:
            xs = [np.asarray(t.x, dtype=float) for t in fig.data if (t.xaxis or "x") == ref and t.x is not None]
        except (TypeError, ValueError):  # not numbers (categories): plotly's own ticks
            continue
        xs = [x[np.isfinite(x) & ((x > 0) if ax.type == "log" else True)] for x in xs]
        xs = [x for x in xs if len(x)]
        if not xs:
            continue
        lo, hi = math.ceil(min(x.min() for x in xs)), math.floor(max(x.max() for x in xs))
        if hi - lo <= WHOLE_STEPS:
            stride = max(1, math.ceil((hi - lo) / (most - 1)))
            ax.update(tickmode="array", tickvals=list(range(lo, hi + 1, stride)))
    return fig


def mark_steps(fig: go.Figure, marks: Sequence[tuple[float, str]]) -> go.Figure:
    """A dotted vertical line with a short label on every step axis of ``fig`` at each ``(step, label)``: where a
    run's step size was changed, say. Steps that a log axis cannot show (<= 0) are left out. Modifies ``fig``."""
    axes = [k for k in fig.layout.to_plotly_json() if re.fullmatch(r"xaxis\d*", k)]
    line = {"color": MUTED, "width": 1, "dash": "dot"}
    for name in axes:
        ax = fig.layout[name]
        if ax.title.text not in STEP_AXES:
            continue
        x, y = "x" + name[5:], "y" + name[5:]
        for step, label in marks:
            if ax.type == "log" and step <= 0:
                continue
            fig.add_shape(type="line", x0=step, x1=step, y0=0, y1=1, xref=x, yref=f"{y} domain", line=line)
            fig.add_annotation(
                x=step, y=1, xref=x, yref=f"{y} domain", text=label, showarrow=False, xanchor="left", yanchor="top",
                font={"size": 10, "color": MUTED}, bgcolor="rgba(255, 255, 255, 0.7)",
            )  # fmt: skip
    return fig


def fit_legend(fig: go.Figure, width: int = NARROW) -> go.Figure:
    """Make a chart whose legend is under it (``LEGEND_BELOW``) taller by the legend's rows at ``width`` px, so
    its plot area keeps its height however many layers it shows. For a page that knows its column's width.

    Plotly lays the legend out in the browser: the rows are estimated from the names (about 6 px a character at
    11 px type, and 40 px of symbol and gap per entry). Modifies and returns ``fig``.
    """
    if fig.layout.legend.yref != "container":
        return fig
    names = [t.legendgroup or t.name for t in fig.data if t.showlegend is not False and t.name]
    entries = [40 + 6 * len(str(n)) for n in dict.fromkeys(names)]
    rows, used = (1, 0) if entries else (0, 0)
    for w in entries:
        if used and used + w > width - 70:  # the legend starts at the plot area's left edge
            rows, used = rows + 1, 0
        used += w
    fig.layout.height = (fig.layout.height or HEIGHT) + LEGEND_ROW * rows  # the legend pushes the margin itself
    return fig


def empty_figure(message: str, title: str = "") -> go.Figure:
    """A styled figure with no traces and ``message`` in the middle (absent columns, no rows yet)."""
    spec = layout(title)
    spec["xaxis"]["visible"] = spec["yaxis"]["visible"] = False
    note = {"size": 14, "color": "grey"}
    spec["annotations"] = [
        {"text": message, "x": 0.5, "y": 0.5, "xref": "paper", "yref": "paper", "showarrow": False, "font": note}
    ]
    return go.Figure(layout=spec)


def colour(h: int) -> str:
    """The colour of layer (or pair) h, 1-based."""
    return PALETTE[(h - 1) % len(PALETTE)]


def _line(
    x: np.ndarray,
    y: np.ndarray,
    name: str,
    color: str,
    dash: str = "solid",
    showlegend: bool = True,
    hover: str | None = None,
) -> go.Scatter:
    """Measured: a wide translucent solid band; theory (dashed / dotted): a thin line drawn over it. ``hover``: the
    column drawn, named in the hover text by its registry label."""
    measured = dash == "solid"
    return go.Scatter(
        x=x,
        y=y,
        name=name,
        mode="lines" if len(x) > 1 else "markers",
        line={"color": color, "dash": dash, "width": 3 if measured else 1.5},
        opacity=0.6 if measured else 1.0,
        legendgroup=name,
        showlegend=showlegend,
        hovertemplate=None if hover is None else _hover(hover, name),
    )


# --- column helpers --------------------------------------------------------------------------------------------


def _indices(df: pd.DataFrame, metric: str) -> list[int]:
    """The layers or pairs h that ``df`` has a column of ``metric`` for, sorted (the registry reads the names)."""
    return of_metric(df.columns, metric)


def _columns(metric: str, hs: Sequence[int]) -> list[str]:
    return [column(metric, h) for h in hs]


def _present(df: pd.DataFrame, *names: str) -> list[str]:
    return [c for c in names if c in df.columns]


def _prepare(df: pd.DataFrame, columns: Sequence[str], x: str, log_x: bool, max_points: int) -> pd.DataFrame:
    """The rows to draw: only ``x`` and ``columns``, x > 0 on a log axis, decimated keeping their extremes."""
    sub = df[list(dict.fromkeys([x, *columns]))]
    if log_x:
        sub = sub[sub[x] > 0]
    return decimate(sub, max_points, x=x)


def _missing(df: pd.DataFrame, x: str, needed: Sequence[str], what: str) -> str:
    """Why a chart cannot be drawn ('' when it can)."""
    if x not in df.columns:
        return f"no column {x!r}"
    if not needed:
        return f"no {what} columns"
    if df.empty:
        return "no rows yet"
    return ""


def _rows(
    df: pd.DataFrame,
    needed: Sequence[object],
    what: str,
    title: str,
    columns: Sequence[str],
    names: Sequence[str] | None,
    x: str,
    log_x: bool,
    max_points: int,
) -> pd.DataFrame | go.Figure:
    """A chart's rows (``_prepare``), or the empty figure titled ``title`` that says why there are none.

    ``needed``: the chart's layers or columns (none: nothing to draw); ``names`` are checked against the metrics.
    """
    why = _missing(df, x, needed, what)
    if why:
        return empty_figure(why, title)
    _check_names(df, names)
    return _prepare(df, columns, x, log_x, max_points)


def _pair_label(h: int, names: Sequence[str] | None) -> str:
    return METRICS[DRIFT].place(h, names)


def _named(kind_of: str, h: int, names: Sequence[str] | None) -> str:
    """A legend entry: the pair and the metric's kind, 'layers 1-2 measured', 'V-U predicted'."""
    return f"{_pair_label(h, names)} {METRICS[kind_of].kind}"


def _hover(column_name: str, trace: str) -> str:
    """A hover line naming the trace and its column by the registry's label: 'V-U measured: G₁(k) − G₁(0) = 0.0123'."""
    return f"{_literal(trace)}: {_literal(plain(column_name))} = %{{y:.4g}}<extra></extra>"


def _check_names(df: pd.DataFrame, names: Sequence[str] | None) -> None:
    layers = _indices(df, "sqnorm") or _indices(df, "grad_norm")  # layer metrics: one column per layer
    if names is not None and layers and len(names) != max(layers):
        raise ValueError(f"layer_names has {len(names)} names, the metrics have {max(layers)} layers")


# --- time series ---------------------------------------------------------------------------------------------


def loss_figure(
    df: pd.DataFrame,
    log_x: bool = False,
    *,
    layer_names: Sequence[str] | None = None,
    x: str = "step",
    max_points: int = MAX_POINTS,
) -> go.Figure:
    """Training loss against ``x``, log y; on a log x axis rows with x <= 0 (step 0) are left out.

    ``layer_names`` is unused: it keeps the signature the same as the other charts of ``FIGURES``.
    """
    return metric_figure(df, "loss", x=x, log_x=log_x, max_points=max_points)


def metric_figure(
    df: pd.DataFrame,
    metric: str,
    layer_names: Sequence[str] | None = None,
    *,
    title: str = "",
    x: str = "step",
    log_x: bool = False,
    max_points: int = MAX_POINTS,
) -> go.Figure:
    """Any registered scalar, layer or pair metric against ``x``: one trace per column (named by its layer or pair,
    or the metric's title for a scalar), the y axis titled with the registry's label; log y unless the metric is
    signed. ``title``: the chart's, else the metric's title."""
    m = METRICS[metric]
    title = title or m.title or metric.replace("_", " ")
    hs: list[int | None] = [None] if m.scope == "scalar" else list(_indices(df, metric))
    names = [column(metric, h) for h in hs]
    needed = _present(df, *names) if m.scope == "scalar" else hs
    d = _rows(df, needed, metric.replace("_", " "), title, names, layer_names, x, log_x, max_points)
    if isinstance(d, go.Figure):
        return d
    xs = d[x].to_numpy()
    traces = [
        _line(xs, d[name].to_numpy(), m.place(h, layer_names), colour(h or 1), hover=name) for h, name in zip(hs, names)
    ]
    return styled(traces, title, x, m.plain(), log_x, log_y=not m.signed)


def norms_figure(
    df: pd.DataFrame,
    layer_names: Sequence[str] | None = None,
    *,
    x: str = "step",
    log_x: bool = False,
    max_points: int = MAX_POINTS,
) -> go.Figure:
    """||W_h||_F^2 per layer, log y; traces 'layer h', or ``layer_names[h-1]`` (mf: ``MF_LAYER_NAMES``)."""
    return metric_figure(df, "sqnorm", layer_names, title="squared norms", x=x, log_x=log_x, max_points=max_points)


def grad_norms_figure(
    df: pd.DataFrame,
    layer_names: Sequence[str] | None = None,
    *,
    x: str = "step",
    log_x: bool = False,
    max_points: int = MAX_POINTS,
) -> go.Figure:
    """||dL/dW_h||_F per layer (the gradient the optimiser used), log y."""
    return metric_figure(df, "grad_norm", layer_names, title="gradient norms", x=x, log_x=log_x, max_points=max_points)


# --- the invariant: gaps and ratios ---------------------------------------------------------------------------


DRIFT = "gap_drift"
PREDICTED = prediction_of(DRIFT) or ""  # the registry's prediction of the gap drift
BALANCE_METRICS = (DRIFT, PREDICTED, "ratio", "gap", "sqnorm", "bias_sqnorm")


def _balance_columns(df: pd.DataFrame) -> list[str]:
    return _present(df, *(column(m, h) for h in _indices(df, DRIFT) for m in BALANCE_METRICS if m))


def _has_prediction(d: pd.DataFrame, h: int) -> bool:
    name = column(PREDICTED, h)
    return bool(PREDICTED) and name in d.columns and bool(d[name].notna().any())


def _gap_traces(d: pd.DataFrame, x: str, names: Sequence[str] | None, no_law: str = "") -> list[go.Scatter]:
    """Per pair: measured drift G_k - G_0 (solid), predicted drift (dashed); then gradient flow, 0 (dotted).

    With ``no_law`` (why the law does not apply) only the measured drift: there is nothing to predict.
    """
    xs = d[x].to_numpy()
    traces = []
    for h in _indices(d, DRIFT):
        c, measured, predicted = colour(h), column(DRIFT, h), column(PREDICTED, h)
        traces.append(_line(xs, d[measured].to_numpy(), _named(DRIFT, h, names), c, hover=measured))
        if _has_prediction(d, h) and not no_law:
            traces.append(_line(xs, d[predicted].to_numpy(), _named(PREDICTED, h, names), c, "dash", hover=predicted))
    if traces and not no_law:
        traces.append(_line(xs[[0, -1]], np.zeros(2), "gradient flow", FLOW_COLOUR, "dot"))
    return traces


def _ratio_prediction(d: pd.DataFrame, h: int) -> tuple[np.ndarray, str] | None:
    """theory.predicted_ratio with G_0 = gap - gap_drift (any row) and the predicted drift, or 0 without one."""
    sq_name, gap_name, drift_name, bias_name = (column(m, h) for m in ("sqnorm", "gap", DRIFT, "bias_sqnorm"))
    if _present(d, sq_name, gap_name, drift_name) != [sq_name, gap_name, drift_name]:
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
    for h in _indices(d, "ratio"):
        pair, c, ratio = _pair_label(h, names), colour(h), column("ratio", h)
        name = _named("ratio", h, names)
        traces.append(_line(xs, d[ratio].to_numpy(), name, c, showlegend=name not in shown, hover=ratio))
        prediction = None if no_law else _ratio_prediction(d, h)
        if prediction is not None:
            name = f"{pair} {prediction[1]}"
            traces.append(_line(xs, prediction[0], name, c, "dash", showlegend=name not in shown))
    return traces


def _no_prediction_note(fig: go.Figure, d: pd.DataFrame, no_law: str = "") -> None:
    """Say in the (left) panel why no prediction is drawn: ``no_law``, or no predicted column in the metrics."""
    if no_law or not any(_has_prediction(d, h) for h in _indices(d, DRIFT)):
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
    hs, columns = _indices(df, DRIFT), _balance_columns(df)
    d = _rows(df, hs, "gap", "gap drift", columns, layer_names, x, log_x, max_points)
    if isinstance(d, go.Figure):
        return d
    fig = figure(_gap_traces(d, x, layer_names, no_law))
    _no_prediction_note(fig, d, no_law)
    title = f"{METRICS[DRIFT].title}: measured vs predicted"
    return style(fig, title, x, METRICS[DRIFT].plain(), log_x).update_layout(legend=LEGEND_BELOW)


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
    hs = _indices(df, "ratio")
    columns = _balance_columns(df) or _present(df, *_columns("ratio", hs))
    d = _rows(df, hs, "ratio", "layer ratio", columns, layer_names, x, log_x, max_points)
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
    hs, columns = _indices(df, DRIFT), _balance_columns(df)
    d = _rows(df, hs, "gap", "balance", columns, layer_names, x, log_x, max_points)
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
    return whole_steps(fig)


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
    hs = _indices(df, "matrix_drift")
    if not hs:
        return empty_figure("no linear layers", inv.title)
    columns = _present(df, *(column(m, h) for h in hs for m in ("matrix_drift", "matrix_inv")))
    d = _rows(df, hs, "matrix", inv.title, columns, layer_names, x, log_x, max_points)
    if isinstance(d, go.Figure):
        return d
    xs, traces = d[x].to_numpy(), []
    for h in hs:
        pair, c = _pair_label(h, layer_names), colour(h)
        moved, size = column("matrix_drift", h), column("matrix_inv", h)
        traces.append(_line(xs, d[moved].to_numpy(), f"{pair} drift", c, hover=moved))
        if size in d.columns:  # thin: in the legend with its pair's drift (one click toggles both)
            y, name, thin = d[size].to_numpy(), f"{pair} ||D||", {"color": c, "width": 1}
            traces.append(
                go.Scatter(x=xs, y=y, name=name, mode="lines", line=thin, opacity=0.5, legendgroup=f"{pair} drift",
                           showlegend=False, hovertemplate=_hover(size, name))
            )  # fmt: skip
    return styled(traces, inv.title, x, drift.plain(), log_x, log_y=True)  # the thin ||D_h||: caption and hover


OVERLAY_LEGEND_LINE, OVERLAY_LEGEND_LINES = 22, 8  # px a legend line, lines the figure grows for at most


def overlay_figure(
    frames: Mapping[str, pd.DataFrame],
    column: str,
    log_y: bool = True,
    *,
    x: str = "step",
    log_x: bool = False,
    max_points: int = MAX_POINTS,
) -> go.Figure:
    """``column`` from several runs, one trace per run named by its key (e.g. one config at four step sizes).

    Use ``x="t"`` (t = sum of step sizes) to compare step sizes at equal training time. Runs without the column
    are left out (keeping the others' colours); with none, an empty figure says so. The run names are shown as
    text (``<`` and ``&`` escaped: Plotly reads a few HTML tags in names). A log y axis is drawn only when
    ``overlay_log_ok``: a signed metric (a gap drift) on a log axis would lose every value <= 0, so it is drawn on a
    linear axis and the figure says why.
    """
    traces = []
    for i, (label, df) in enumerate(frames.items()):
        if column in df.columns and x in df.columns and not df.empty:
            d = _prepare(df, [column], x, log_x, max_points)
            traces.append(_line(d[x].to_numpy(), d[column].to_numpy(), _literal(label), colour(i + 1)))
    if not traces:
        return empty_figure(f"no run has the column {column!r}", column)
    refused = log_y and not overlay_log_ok(frames, column, x=x, log_x=log_x)
    # the legend below the plot, a line a run (a run's label is long): the plot keeps the width at 1024 x 768
    height = HEIGHT + OVERLAY_LEGEND_LINE * min(len(traces), OVERLAY_LEGEND_LINES)
    fig = styled(traces, describe(column), x, plain(column), log_x, log_y and not refused, height=height)
    fig.layout.legend.update(orientation="h", yanchor="top", y=-0.18, x=0, xanchor="left")
    if refused:
        fig.layout.title.subtitle.text = "linear y: it has values <= 0, which a log axis would hide"
    return fig


def overlay_columns(frames: Iterable[pd.DataFrame]) -> list[str]:
    """The columns the overlay offers: every column of the runs but the x axes, the loss first, then the gap drift,
    then the rest by name (the registry reads the names)."""
    names = dict.fromkeys(str(c) for df in frames for c in df.columns if c not in ("step", "t"))

    def order(name: str) -> tuple[bool, bool, str]:
        try:
            metric = parse(name)[0]
        except ValueError:
            metric = ""
        return name != "loss", metric != DRIFT, name

    return sorted(names, key=order)


def overlay_option(name: str) -> str:
    """A column as the overlay lists it: its name and, for a registered metric, its plain label (the drift of pair
    1 as 'G₁(k) − G₁(0)')."""
    label = plain(name)
    return name if label == name else f"{name} · {label}"


def overlay_log_ok(frames: Mapping[str, pd.DataFrame], column: str, *, x: str = "step", log_x: bool = False) -> bool:
    """Whether ``column`` can go on a log y axis without losing data: every finite value drawn is > 0.

    Plotly has no symmetric-log axis. An asinh transform would need hand-made tick labels and hover text, and
    its linear zone near 0 depends on a scale that changes the picture; a linear axis shows a signed quantity
    (gap drift, its prediction) as the numbers are. So log is offered only where it hides nothing.
    """
    for df in frames.values():
        if column in df.columns and x in df.columns:
            values = df.loc[df[x] > 0, column] if log_x else df[column]
            values = values.to_numpy(dtype=float)
            if (values[np.isfinite(values)] <= 0).any():
                return False
    return True


def _literal(text: object) -> str:
    """``text`` shown as itself in a Plotly name or label (which reads <b>, <a href=...>, <br> and entities)."""
    return html.escape(str(text), quote=False)


# --- per-neuron balance -----------------------------------------------------------------------------------------

IN, OUT = "in_sqnorm", "out_sqnorm"  # the neuron table's metrics (``balance.engine.laws.METRICS``, scope neuron)
NEURON_COLUMNS = (*NEURON_INDEX, IN, OUT)


def _neuron_frame(table: Table, max_points: int) -> pd.DataFrame | None:
    """The table as a new frame (None if a column is missing), thinned evenly to at most ``max_points`` rows."""
    frame = pd.DataFrame({c: np.asarray(table[c]) for c in NEURON_COLUMNS if c in table})
    if list(frame.columns) != list(NEURON_COLUMNS):
        return None
    frame = frame.astype(dict.fromkeys(NEURON_INDEX, "int64"))  # a store may hand them back as floats
    if len(frame) > max_points:
        frame = frame.iloc[np.linspace(0, len(frame) - 1, max_points).astype(int)]
    return frame


def _span(values: np.ndarray, log: bool) -> tuple[float, float]:
    """Axis range shared by x and y, so the diagonal runs corner to corner."""
    values = values[np.isfinite(values)]
    if log:
        values = values[values > 0]
        if not len(values):
            return 1e-3, 1.0
        return float(values.min()) / 1.5, float(values.max()) * 1.5
    top = float(values.max()) if len(values) else 0.0
    return 0.0, top * 1.05 if top > 0 else 1.0


def _difference_lines(x0: np.ndarray, y0: np.ndarray, lo: float, hi: float, log: bool) -> tuple[np.ndarray, ...]:
    """Lines out - in = y0 - x0 through each starting point, joined into one trace with NaN breaks."""
    d = (y0 - x0)[:, None]
    if log:  # a curve on log-log axes: sample it, dropping where out <= 0
        xs = np.broadcast_to(np.geomspace(lo, hi, 24), (len(d), 24))
        ys = xs + d
        ys = np.where(ys > 0, ys, np.nan)
    else:  # from where it enters the positive quadrant to the right edge
        xs = np.concatenate([np.maximum(lo, lo - d), np.full_like(d, hi)], axis=1)
        ys = xs + d
    gap = np.full((len(d), 1), np.nan)
    return np.concatenate([xs, gap], axis=1).ravel(), np.concatenate([ys, gap], axis=1).ravel()


def neuron_figure(
    table: Table, initial: Table | None = None, log_axes: bool = False, *, max_points: int = MAX_POINTS
) -> go.Figure:
    """Incoming ||w_in,i||^2 (+ b_i^2) against outgoing ||w_out,i||^2 for every hidden unit, coloured by layer.

    ``table`` (and ``initial``) as returned by ``Trainer.neuron_table()``: columns layer, neuron, in_sqnorm,
    out_sqnorm. With ``initial``, the starting points are drawn faintly with the lines of constant difference
    in - out through them (dashed): Theorem 2.1 keeps each unit on its line. The diagonal in = out is dotted.
    """
    now = _neuron_frame(table, max_points)
    if now is None or now.empty:
        return empty_figure("no hidden units" if now is not None else "no neuron table", "per-neuron balance")
    start = None if initial is None else _neuron_frame(initial, max_points)
    frames = [f for f in (now, start) if f is not None]
    lo, hi = _span(np.concatenate([f[c].to_numpy(float) for f in frames for c in NEURON_COLUMNS[2:]]), log_axes)
    ends, line = np.array([lo, hi]), {"color": FLOW_COLOUR, "width": 1, "dash": "dot"}
    traces = [go.Scatter(x=ends, y=ends, name="in = out", mode="lines", line=line, hoverinfo="skip")]
    if start is not None and not start.empty:
        step = max(1, -(-len(start) // MAX_LINES))
        for h in np.unique(start["layer"].to_numpy()):
            s, c = start[start["layer"] == h], colour(int(h))
            x0, y0 = s[IN].to_numpy(float)[::step], s[OUT].to_numpy(float)[::step]
            lx, ly = _difference_lines(x0, y0, lo, hi, log_axes)
            line = {"color": c, "width": 0.75, "dash": "dash"}
            name, group = f"hidden {h} in - out constant", {"legendgroup": f"hidden {h}", "showlegend": False}
            traces.append(
                go.Scatter(x=lx, y=ly, name=name, mode="lines", line=line, opacity=0.35, hoverinfo="skip", **group)
            )
            traces.append(_points(s, f"hidden {h} at start", c, faint=True).update(**group))
    for h in np.unique(now["layer"].to_numpy()):
        traces.append(_points(now[now["layer"] == h], f"hidden {h}", colour(int(h))).update(legendgroup=f"hidden {h}"))
    titles = ("per-neuron balance", *(f"{METRICS[m].title} {METRICS[m].plain()}" for m in (IN, OUT)))
    spec = layout(*titles, log_axes, log_axes, hovermode="closest")
    spec["legend"] |= LEGEND_BELOW
    spec["xaxis"]["range"] = spec["yaxis"]["range"] = [np.log10(lo), np.log10(hi)] if log_axes else [lo, hi]
    return go.Figure(traces, layout=spec)


def _points(frame: pd.DataFrame, name: str, color: str, faint: bool = False) -> go.Scatter:
    return go.Scatter(
        x=frame[IN].to_numpy(float),
        y=frame[OUT].to_numpy(float),
        customdata=frame["neuron"].to_numpy(),
        name=name,
        mode="markers",
        marker={"color": color, "size": 6, "symbol": "circle-open" if faint else "circle"},
        opacity=0.35 if faint else 0.85,
        hovertemplate="unit %{customdata}<br>in %{x:.4g}<br>out %{y:.4g}",
    )


# --- registry ---------------------------------------------------------------------------------------------------

Chart = Callable[..., go.Figure]

# The registry's metrics each chart draws: a metric no chart draws gets one of its own (``more_metrics``).
CHART_METRICS: dict[str, tuple[str, ...]] = {
    "loss": ("loss",),
    "norms": ("sqnorm",),
    "gaps": (DRIFT, PREDICTED),
    "ratios": ("ratio",),
    "balance": BALANCE_METRICS,
    "grad_norms": ("grad_norm",),
    "matrix": ("matrix_drift", "matrix_inv"),
    "neurons": (IN, OUT),
}


def more_metrics(names: Sequence[object]) -> list[str]:
    """The registered metrics among the columns ``names`` that no chart of ``FIGURES`` draws and that ask for a
    chart of their own (``Metric.chart``), in registry order: a new metric is drawn (``metric_figure``) by itself."""
    drawn = {m for ms in CHART_METRICS.values() for m in ms}
    present = {str(n) for n in names}
    return [
        name
        for name, m in METRICS.items()
        if m.chart and m.kind != "coordinate" and m.scope != "neuron" and name not in drawn
        and (name in present if m.scope == "scalar" else of_metric(present, name))
    ]  # fmt: skip


def metric_caption(metric: str) -> str:
    """A caption from the registry alone, for ``metric_figure``: its title, TeX label, unit and formula."""
    m = METRICS[metric]
    per = {"layer": " per layer", "pair": " per pair of layers"}.get(m.scope, "")
    title = (m.title or metric.replace("_", " ")).capitalize()
    return f"{title} ${m.label()}${per} ({m.unit}), {m.kind}."


_CHARTS: dict[str, Chart] = {
    "loss": loss_figure,
    "norms": norms_figure,
    "gaps": gaps_figure,
    "ratios": ratios_figure,
    "balance": balance_figure,
    "grad_norms": grad_norms_figure,
    "matrix": matrix_figure,
}
_OTHER_CHARTS: dict[str, Chart] = {"neurons": neuron_figure, "overlay": overlay_figure}


def load_captions(path: Path = CAPTIONS_PATH) -> dict[str, str]:
    """Captions by chart name from a TOML file of ``name = "one line"``; {} (logged) if the file is absent."""
    try:
        return {str(k): str(v) for k, v in tomllib.loads(path.read_text(encoding="utf-8")).items()}
    except FileNotFoundError:
        log.warning("captions file %s not found; using the charts' docstrings", path)
        return {}


def _captions() -> dict[str, str]:
    """Each chart's caption with the registry's labels in place of its ``{{metric}}`` references (``expand``)."""
    found = load_captions()
    charts = {**_CHARTS, **_OTHER_CHARTS}
    return {
        name: expand(found.get(name) or (fn.__doc__ or name).strip().splitlines()[0]) for name, fn in charts.items()
    }


CAPTIONS: dict[str, str] = _captions()

FIGURES: dict[str, tuple[Chart, str]] = {name: (fn, CAPTIONS[name]) for name, fn in _CHARTS.items()}
"""Charts of the metrics DataFrame: ``for name, (figure, caption) in FIGURES.items(): figure(df)``. Every one also
takes the keywords ``layer_names``, ``x``, ``log_x`` and ``max_points``. The neuron scatter and the run overlay
take other inputs; their captions are ``CAPTIONS["neurons"]`` and ``CAPTIONS["overlay"]``."""
