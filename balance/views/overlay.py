"""One metric of several runs in one chart (the Runs page): a log axis only where every value drawn is positive."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from balance.engine.laws import (
    describe,
    parse,
    plain,
)
from balance.views.frames import prepare
from balance.views.gaps import DRIFT
from balance.views.style import HEIGHT, MAX_POINTS, colour, empty_figure, line, literal, styled

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass

log = logging.getLogger(__name__)

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
            d = prepare(df, [column], x, log_x, max_points)
            traces.append(line(d[x].to_numpy(), d[column].to_numpy(), literal(label), colour(i + 1)))
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
