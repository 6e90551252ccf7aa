"""The per-neuron balance scatter: ||w_in||^2 against ||w_out||^2 of every hidden unit, with the lines of constant
difference each unit stays on under gradient flow (Theorem 2.1)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from balance.engine.laws import (
    METRICS,
    NEURON_INDEX,
)
from balance.views.style import FLOW_COLOUR, LEGEND_BELOW, MAX_POINTS, colour, empty_figure, layout

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass

log = logging.getLogger(__name__)

Table = Mapping[str, Any] | pd.DataFrame

MAX_LINES = 200  # constant-difference lines drawn in the neuron chart, at most

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
