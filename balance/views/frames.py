"""Reading a metrics DataFrame for a chart: which indices a metric has, the rows to draw (decimated), trace names and
hover text, all from the registry (``balance.engine.laws``): no column name is spelt or parsed here."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from balance.engine.laws import (
    METRICS,
    column,
    of_metric,
)
from balance.views.style import decimate, empty_figure

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass

log = logging.getLogger(__name__)

# --- column helpers --------------------------------------------------------------------------------------------


def indices(df: pd.DataFrame, metric: str) -> list[int]:
    """The layers or pairs h that ``df`` has a column of ``metric`` for, sorted (the registry reads the names)."""
    return of_metric(df.columns, metric)


def metric_columns(metric: str, hs: Sequence[int]) -> list[str]:
    return [column(metric, h) for h in hs]


def present(df: pd.DataFrame, *names: str) -> list[str]:
    return [c for c in names if c in df.columns]


def prepare(df: pd.DataFrame, columns: Sequence[str], x: str, log_x: bool, max_points: int) -> pd.DataFrame:
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


def rows(
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
    """A chart's rows (``prepare``), or the empty figure titled ``title`` that says why there are none.

    ``needed``: the chart's layers or columns (none: nothing to draw); ``names`` are checked against the metrics.
    """
    why = _missing(df, x, needed, what)
    if why:
        return empty_figure(why, title)
    _check_names(df, names)
    return prepare(df, columns, x, log_x, max_points)


def pair_label(h: int, names: Sequence[str] | None) -> str:
    return METRICS["gap_drift"].place(h, names)  # the pair as the registry names it


def named(kind_of: str, h: int, names: Sequence[str] | None) -> str:
    """A legend entry: the pair and the metric's kind, 'layers 1-2 measured', 'V-U predicted'."""
    return f"{pair_label(h, names)} {METRICS[kind_of].kind}"


def _check_names(df: pd.DataFrame, names: Sequence[str] | None) -> None:
    layers = indices(df, "sqnorm") or indices(df, "grad_norm")  # layer metrics: one column per layer
    if names is not None and layers and len(names) != max(layers):
        raise ValueError(f"layer_names has {len(names)} names, the metrics have {max(layers)} layers")
