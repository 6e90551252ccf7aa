"""Figures of a sweep: heat maps over step size x init scale, and the drift against the step size on log-log.

Pure functions: a tidy DataFrame (``balance.runs.sweep.summary``: one row per member) in, a ``go.Figure`` out; they
never fetch data or change their input. Every cell and every point carries its run id in ``customdata``, so a
page can open the run behind a click.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from balance.engine import laws

X, Y = "optim.lr", "model.init_scale"
LABELS = {X: "step size η", Y: "init scale σ", "seed": "seed"}
DRIFT = "gap_drift"
PREDICTED = laws.prediction_of(DRIFT) or ""


def _final(metric: str, note: str = "") -> str:
    """'final gap drift G_h(k) − G_h(0)': a summary column's title, from the registry (the pair: the sweep
    summary's, the one with the largest drift)."""
    m = laws.METRICS[metric]
    return f"{m.title} {m.plain()}{note}"


ABS_DRIFT = "abs_gap_drift"  # |gap_drift|: its median is the drift's typical size (signed medians cancel)
# heat-map choice -> (title, colour scale, log10 of |value|, how seeds combine); the signed drift shows its sign
METRICS = {
    ABS_DRIFT: (_final(DRIFT, ": median of |drift| (colour: log10)"), "Viridis", True, "median"),
    DRIFT: (_final(DRIFT, ": signed median (sign shown; red +, blue −)"), "RdBu_r", False, "median"),
    "ratio": (_final("ratio"), "RdBu_r", False, "median"),
    "loss": (_final("loss"), "Magma", True, "median"),
    "diverged": ("diverged (fraction of seeds)", "Reds", False, "mean"),
}
CAPTIONS = {
    "heatmap": "Each cell is one step size and init scale; with several seeds it shows the median over seeds: of "
    "|drift| (its typical size) or of the signed drift (seeds of opposite signs cancel there, so its sign is "
    "printed); divergence: the fraction of seeds that diverged. Grey: no finished member. A click opens the member "
    "closest to the cell's median in Explore.",
    "drift": "Measured |gap drift| (dots, one per run; solid line: the fit) and the exact prediction of the step "
    "recursion (rings) against the step size, log-log. The slope p of |drift| ∝ η^p is fitted per seed, per init "
    "scale; the legend gives the seeds' mean slope and its 95% confidence interval across seeds.",
}


def _tick(v: float) -> str:
    return f"{v:g}"


def _short(column: str) -> str:
    """A summary column in a colour bar or hover text: the metric's title ('gap drift'), else its own name."""
    m = laws.METRICS.get(column)
    return m.title if m is not None and m.title else column


def _values(df: pd.DataFrame, column: str) -> pd.Series:
    if column == ABS_DRIFT:
        return df[DRIFT].astype(float).abs()
    return df[column].astype(float)


def cell_table(df: pd.DataFrame, column: str, how: str = "median") -> pd.DataFrame:
    """One row per (step size, init scale): the ``how`` of ``column`` over the cell's members (finite values;
    diverged members are left out except for the ``diverged`` column), and the cell's representative run: the
    member whose value is closest to the cell's median (the lowest seed when none has a finite value)."""
    value = _values(df, column)
    if column != "diverged":
        value = value.where((df["state"] != "diverged") & np.isfinite(value))
    frame = df.assign(_v=value).sort_values([Y, X, "seed"] if "seed" in df else [Y, X])
    rows = []
    for (y, x), g in frame.groupby([Y, X], sort=True):
        v = g["_v"].dropna()
        centre = v.median() if len(v) else math.nan
        run = g.loc[(v - centre).abs().idxmin(), "run"] if len(v) else g["run"].iloc[0]
        rows.append({Y: y, X: x, "value": v.agg(how) if len(v) else math.nan, "run": run, "n": len(g)})
    return pd.DataFrame(rows, columns=[Y, X, "value", "run", "n"])


def heatmap_figure(df: pd.DataFrame, column: str) -> go.Figure:
    """Heat map of ``column`` (a key of ``METRICS``) over step size (x) and init scale (y), categorical axes."""
    title, scale, log, how = METRICS[column]
    cells = cell_table(df, column, how)
    xs, ys = sorted(df[X].unique()), sorted(df[Y].unique())
    z = np.full((len(ys), len(xs)), np.nan)
    runs = np.full((len(ys), len(xs)), "", dtype=object)
    shown = np.full((len(ys), len(xs)), "", dtype=object)
    for c in cells.itertuples():
        i, j = ys.index(c[1]), xs.index(c[2])
        v = c.value
        runs[i, j] = c.run
        if math.isfinite(v):
            z[i, j] = math.log10(abs(v)) if log and v != 0 else (np.nan if log else v)
            shown[i, j] = f"{v:+.3g}" if column == DRIFT else f"{v:.3g}"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[_tick(v) for v in xs],
            y=[_tick(v) for v in ys],
            colorscale=scale,
            text=shown,
            texttemplate="%{text}",
            customdata=runs,
            hoverinfo="skip",  # the markers below answer hover and click
            colorbar={"title": {"text": f"log10 |{_short(column)}|" if log else _short(column), "side": "right"}},
            **({"zmin": 0.0, "zmax": 1.0} if column == "diverged" else {"zmid": 0.0} if column == DRIFT else {}),
        )
    )
    # Invisible markers on the cells: Streamlit reports clicks on points (not on heat-map cells), and these carry
    # the run ids. hoverinfo must not be "skip", which would also swallow the clicks.
    jj, ii = np.meshgrid(range(len(xs)), range(len(ys)))
    fig.add_trace(
        go.Scatter(
            x=[_tick(xs[j]) for j in jj.ravel()],
            y=[_tick(ys[i]) for i in ii.ravel()],
            mode="markers",
            marker={"symbol": "square", "size": 28, "color": "rgba(0,0,0,0)"},
            customdata=runs.ravel(),
            text=shown.ravel(),
            hovertemplate="η=%{x}, σ=%{y}<br>" + _short(column) + " %{text}<br>run %{customdata}<extra></extra>",
            showlegend=False,
        )
    )
    fig.update_layout(
        title={"text": title, "font": {"size": 14}},
        xaxis={"title": LABELS[X], "type": "category"},
        yaxis={"title": LABELS[Y], "type": "category"},
        margin={"l": 60, "r": 10, "t": 40, "b": 50},
        height=320,
        clickmode="event+select",
        plot_bgcolor="#e5e5e5",
    )
    return fig


def drift_figure(df: pd.DataFrame, fits: pd.DataFrame) -> go.Figure:
    """|final gap drift| against step size, log-log, per init scale: members (markers), the predicted drift
    (dashed) and the fitted power law with its slope and confidence interval in the legend."""
    fig = go.Figure()
    ok = df[(df["state"] == "finished") & np.isfinite(df[DRIFT]) & (df[DRIFT] != 0)]
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2"]
    for n, (sigma, group) in enumerate(ok.groupby(Y, sort=True)):
        colour = colours[n % len(colours)]
        fit = fits[fits[Y] == sigma]
        name = f"σ={_tick(sigma)}"
        if len(fit) and math.isfinite(fit["slope"].iloc[0]):
            f = fit.iloc[0]
            name += f": slope {f['slope']:.3f} [{f['low']:.3f}, {f['high']:.3f}], {int(f['seeds'])} seeds"
        fig.add_trace(
            go.Scatter(
                x=group[X],
                y=group[DRIFT].abs(),
                mode="markers",
                name=name,
                legendgroup=name,
                marker={"color": colour, "size": 8},
                customdata=group["run"],
                hovertemplate="η=%{x:.3g}<br>|drift| %{y:.3g}<br>run %{customdata}<extra></extra>",
            )
        )
        pred = group[PREDICTED].abs()
        if pred.notna().any():  # the exact recursion: open rings that each member's marker should fill
            fig.add_trace(
                go.Scatter(x=group[X], y=pred, mode="markers", legendgroup=name, showlegend=False,
                           marker={"color": colour, "size": 13, "symbol": "circle-open"}, name=f"{name} predicted",
                           customdata=group["run"],
                           hovertemplate="η=%{x:.3g}<br>predicted %{y:.3g}<br>run %{customdata}<extra></extra>")
            )  # fmt: skip
        if len(fit) and math.isfinite(fit["slope"].iloc[0]):
            f = fit.iloc[0]
            lr = np.geomspace(group[X].min(), group[X].max(), 20)
            # the mean slope through the points' geometric centre
            intercept = float(np.mean(np.log(group[DRIFT].abs())) - f["slope"] * np.mean(np.log(group[X])))
            fig.add_trace(
                go.Scatter(x=lr, y=np.exp(intercept) * lr ** f["slope"], mode="lines", legendgroup=name,
                           line={"color": colour, "width": 1.5}, showlegend=False, hoverinfo="skip")
            )  # fmt: skip
    fig.update_layout(
        title={"text": f"|{laws.METRICS[DRIFT].title}| against the step size", "font": {"size": 14}},
        xaxis={"title": LABELS[X], "type": "log"},
        yaxis={"title": f"|{laws.METRICS[DRIFT].plain()}|", "type": "log", "exponentformat": "power"},
        margin={"l": 60, "r": 10, "t": 40, "b": 50},
        height=420,
        legend={"font": {"size": 11}},
    )
    return fig
