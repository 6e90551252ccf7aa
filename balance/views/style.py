"""The one look of every chart: palette, template, axes, legends, step marks, and decimation that keeps every spike.

Measured series solid (a wide, translucent band), theory dashed on top in the same colour, gradient flow dotted grey,
one colour per layer or pair from ``PALETTE``, and a constant ``uirevision`` so a front end that updates in place
keeps the user's zoom. Charts use SVG ``Scatter``, not WebGL: browsers allow about 8 WebGL contexts a page.
"""

from __future__ import annotations

import html
import logging
import math
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from balance.engine.laws import plain

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass

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
MF_LAYER_NAMES = ("V", "U")


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


def line(
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
        hovertemplate=None if hover is None else hover_text(hover, name),
    )


def literal(text: object) -> str:
    """``text`` shown as itself in a Plotly name or label (which reads <b>, <a href=...>, <br> and entities)."""
    return html.escape(str(text), quote=False)


def hover_text(column_name: str, trace: str) -> str:
    """A hover line naming the trace and its column by the registry's label: 'V-U measured: G₁(k) − G₁(0) = 0.0123'."""
    return f"{literal(trace)}: {literal(plain(column_name))} = %{{y:.4g}}<extra></extra>"
