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

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from balance.engine.laws import (
    METRICS,
    column,
    expand,
    of_metric,
)
from balance.views.frames import indices, present, rows
from balance.views.gaps import (
    BALANCE_METRICS,
    DRIFT,
    PREDICTED,
    balance_figure,
    gaps_figure,
    matrix_figure,
    ratios_figure,
)
from balance.views.neurons import IN, OUT, neuron_figure
from balance.views.overlay import overlay_figure
from balance.views.style import MAX_POINTS, colour, line, styled

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

CAPTIONS_PATH = Path(__file__).resolve().parent.parent / "assets" / "captions.toml"

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
    hs: list[int | None] = [None] if m.scope == "scalar" else list(indices(df, metric))
    names = [column(metric, h) for h in hs]
    needed = present(df, *names) if m.scope == "scalar" else hs
    d = rows(df, needed, metric.replace("_", " "), title, names, layer_names, x, log_x, max_points)
    if isinstance(d, go.Figure):
        return d
    xs = d[x].to_numpy()
    traces = [
        line(xs, d[name].to_numpy(), m.place(h, layer_names), colour(h or 1), hover=name) for h, name in zip(hs, names)
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
