"""The lecture's figures: metrics (or rescaling curves, or neuron tables) in, one ``go.Figure`` out.

Built from ``balance.views.figures`` (its look, colours and measured-solid / theory-dashed convention) at a projector's
size: one figure per step, two panels side by side at most (2 x 2 for the four ways to break the law), larger type.
Pure functions: no Streamlit, no data fetching, inputs never mutated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from balance.views import figures as plots

HEIGHT = 350  # fits under the text and formula of a step at 1024 x 768
FONT = 15
GREY = plots.FLOW_COLOUR


def present(fig: go.Figure, height: int = HEIGHT, top: int = 40, bottom: int = 55) -> go.Figure:
    """Projector type sizes on top of ``plots.style`` (modifies and returns ``fig``)."""
    fig.update_layout(
        height=height,
        font={"size": FONT},
        legend={"font": {"size": FONT - 2}},
        margin={"l": 70, "r": 10, "t": top, "b": bottom},
    )
    fig.update_annotations(font_size=FONT)  # subplot titles
    return fig


def _two_panels(titles: tuple[str, str], spacing: float = 0.12) -> go.Figure:
    return plots.figure(rows=1, cols=2, subplot_titles=titles, horizontal_spacing=spacing)


def _line(x: np.ndarray, y: np.ndarray, name: str, color: str, dash: str = "solid", **kw: object) -> go.Scatter:
    measured = dash == "solid"
    return go.Scatter(
        x=x,
        y=y,
        name=name,
        mode="lines",
        line={"color": color, "dash": dash, "width": 3 if measured else 2},
        opacity=0.65 if measured else 1.0,
        **kw,
    )


def _frame(df: pd.DataFrame, columns: Sequence[str], x: str = "step", log_x: bool = False) -> pd.DataFrame:
    """The rows to draw (decimated, extremes kept); on a log x axis without step 0."""
    d = df[[x, *[c for c in columns if c in df.columns]]]
    return plots.decimate(d[d[x] > 0] if log_x else d, 600, x=x)


# --- step 1: the rescaling symmetry -----------------------------------------------------------------------------


def _nearest(cs: np.ndarray, c: float) -> int:
    return int(np.argmin(np.abs(np.log(cs) - np.log(c))))


def _change_title(curves: Mapping[str, Mapping[str, np.ndarray]], c: float) -> str:
    """'outputs f(x) · change at c = 2: ReLU 2.2e-16, tanh 1.3e-01': the largest |f_c(x_i) - f_1(x_i)| per network."""
    changes = []
    for name, cv in curves.items():
        i, one = _nearest(cv["c"], c), _nearest(cv["c"], 1.0)
        changes.append(f"{name} {float(np.max(np.abs(cv['outputs'][i] - cv['outputs'][one]))):.1e}")
    return f"outputs f(x) · change at c = {c:g}: {', '.join(changes)}"


def _markers(curves: Mapping[str, Mapping[str, np.ndarray]], c: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """x and y of the marker traces at ``c``: one per network (left panel), then the two norms (right panel)."""
    xs, ys = [], []
    for cv in curves.values():
        i = _nearest(cv["c"], c)
        xs.append(np.full(cv["outputs"].shape[1], cv["c"][i]))
        ys.append(cv["outputs"][i])
    first = next(iter(curves.values()))
    i = _nearest(first["c"], c)
    xs.append(np.array([first["c"][i]] * 2))
    ys.append(np.array([first["sqnorm_h"][i], first["sqnorm_next"][i]]))
    return xs, ys


def rescale_figure(curves: Mapping[str, Mapping[str, np.ndarray]], c: float, slider: Sequence[float] = ()) -> go.Figure:
    """Left: outputs f(x_i) against c (log axis) for each network of ``curves`` (ReLU solid, the rest dashed).
    Right: the two rescaled layers' squared norms c^2 ||W_h||^2 and ||W_{h+1}||^2 / c^2. Circles mark ``c``.

    ``curves`` as returned by ``balance.lecture.steps.rescale_curves`` (name -> ``rescaled_outputs``). With ``slider``
    values, a Plotly slider below the chart moves the circles (for a page with no server, such as the handout).
    """
    first = next(iter(curves.values()))
    fig = _two_panels((_change_title(curves, c), "squared norms of the two layers"))
    for k, (name, cv) in enumerate(curves.items()):
        dash = "solid" if k == 0 else "dash"
        for j in range(cv["outputs"].shape[1]):
            fig.add_trace(
                _line(
                    cv["c"], cv["outputs"][:, j], name, plots.colour(j + 1), dash, legendgroup=name, showlegend=j == 0
                ),
                row=1,
                col=1,
            )
    fig.add_trace(_line(first["c"], first["sqnorm_h"], "c² ‖W₁‖²", plots.colour(1)), row=1, col=2)
    fig.add_trace(_line(first["c"], first["sqnorm_next"], "‖W₂‖² / c²", plots.colour(2)), row=1, col=2)
    # c: a circle on every curve (a shape on a log axis would need log10 coordinates)
    marker = {"size": 11, "color": "rgba(0,0,0,0)", "line": {"width": 2.5, "color": "#333"}}
    xs, ys = _markers(curves, c)
    for k, (x, y) in enumerate(zip(xs, ys)):
        last = k == len(xs) - 1
        trace = go.Scatter(
            x=x, y=y, mode="markers", marker=marker, name="c", legendgroup="c", showlegend=last, hoverinfo="skip"
        )
        fig.add_trace(trace, row=1, col=2 if last else 1)
    plots.style(fig, "", "c", "", log_x=True, hovermode="closest")
    fig.update_yaxes(type="log", row=1, col=2)
    if not slider:
        return present(fig)
    markers = list(range(len(fig.data) - len(xs), len(fig.data)))
    steps = []
    for value in slider:
        xs, ys = _markers(curves, value)
        title = {"annotations[0].text": _change_title(curves, value)}
        steps.append({"label": f"{value:g}", "method": "update", "args": [{"x": xs, "y": ys}, title, markers]})
    active = _nearest(np.asarray(slider, dtype=float), c)
    fig.update_layout(
        sliders=[{"active": active, "steps": steps, "currentvalue": {"prefix": "c = "}, "pad": {"t": 60}, "len": 1.0}]
    )
    return present(fig, height=HEIGHT + 110, bottom=130)


# --- step 2: per-neuron balance -----------------------------------------------------------------------------------


def neuron_scatter(first: pd.DataFrame, last: pd.DataFrame) -> go.Figure:
    """``plots.neuron_figure``: every unit's in / out squared norms now, its start and its line of constant
    difference. Linear axes: the lines in - out = constant are then parallel to the diagonal, and a unit that
    keeps its difference visibly slides along one."""
    fig = plots.neuron_figure(last, initial=first, log_axes=False)
    fig.update_layout(title={"text": ""})
    return present(fig)


# --- step 3: gaps and ratios -------------------------------------------------------------------------------------


def balance_panels(df: pd.DataFrame) -> go.Figure:
    """``plots.balance_figure`` (gap drift measured vs predicted | ratio vs the ratio the gap implies), log x."""
    return present(plots.balance_figure(df, log_x=True, max_points=600))


# --- step 4: drift at three step sizes ---------------------------------------------------------------------------


def step_size_figure(frames: Mapping[str, pd.DataFrame], h: int = 1) -> go.Figure:
    """Left: gap drift G_k - G_0 of pair ``h``, measured (solid) and predicted (dashed) per run (step size).
    Right: |measured - predicted| per run, log y: rounding error, not a modelling error."""
    fig = _two_panels(("gap drift G_k − G_0: measured vs η² prediction", "largest |measured − predicted| so far"))
    measured, predicted = f"gap_drift_{h}", f"pred_gap_drift_{h}"
    for k, (label, df) in enumerate(frames.items()):
        d, c = _frame(df, [measured, predicted]), plots.colour(k + 1)
        x = d["step"].to_numpy()
        fig.add_trace(_line(x, d[measured].to_numpy(), f"{label} measured", c, legendgroup=label), row=1, col=1)
        fig.add_trace(
            _line(x, d[predicted].to_numpy(), f"{label} predicted", c, "dash", legendgroup=label), row=1, col=1
        )
        error = np.maximum.accumulate(np.abs(d[measured].to_numpy() - d[predicted].to_numpy()))[1:]
        error = np.maximum(error, 1e-18)  # exact zeros cannot sit on a log axis
        fig.add_trace(_line(x[1:], error, label, c, legendgroup=label, showlegend=False), row=1, col=2)
    plots.style(fig, "", "step", "")
    fig.update_yaxes(type="log", exponentformat="power", row=1, col=2)
    return present(fig)


# --- step 5: Figure 1 ---------------------------------------------------------------------------------------------


def figure1(frames: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Left: ||U|| / ||V|| (``ratio_1`` of mf: layer 2 is U, layer 1 is V) per run, 1 dotted. Right: the loss."""
    fig = _two_panels(("‖U‖ / ‖V‖ (Frobenius norms)", "loss ½‖UVᵀ − M*‖²"))
    for k, (label, df) in enumerate(frames.items()):
        d, c = _frame(df, ["ratio_1", "loss"], log_x=True), plots.colour(k + 1)
        x = d["step"].to_numpy()
        fig.add_trace(_line(x, d["ratio_1"].to_numpy(), label, c, legendgroup=label), row=1, col=1)
        fig.add_trace(_line(x, d["loss"].to_numpy(), label, c, legendgroup=label, showlegend=False), row=1, col=2)
    fig.add_hline(y=1, line={"color": GREY, "width": 1.5, "dash": "dot"}, row=1, col=1)
    plots.style(fig, "", "step", "", log_x=True)  # the balancing happens in the first 100 steps
    fig.update_yaxes(type="log", exponentformat="power")
    return present(fig)


# --- step 6: what breaks it ----------------------------------------------------------------------------------------


def _worst_pair(df: pd.DataFrame) -> int:
    """The layer pair whose gap moved furthest from its prediction (or from 0 where there is none)."""
    pairs = plots._indices(df, "gap_drift")
    last = df.iloc[-1]

    def miss(h: int) -> float:
        predicted = last.get(f"pred_gap_drift_{h}", np.nan)
        return abs(last[f"gap_drift_{h}"] - (0.0 if pd.isna(predicted) else predicted))

    return max(pairs, key=miss)


def breaks_figure(frames: Mapping[str, pd.DataFrame]) -> go.Figure:
    """The first frame is the baseline (plain GD, ReLU); one panel for each other frame, 2 per row.

    Each panel: the gap drift of the pair that strays most, measured (solid, colour) and its finite-step
    prediction (dashed; none for Adam), with the baseline's drift of the same pair (grey).
    """
    (base_label, base), *others = frames.items()
    rows = -(-len(others) // 2)
    titles = []
    for label, df in others:
        h = _worst_pair(df)
        titles.append(f"{label} · layers {h}–{h + 1}")
    fig = plots.figure(rows=rows, cols=2, subplot_titles=titles, horizontal_spacing=0.1, vertical_spacing=0.2)
    for k, (_, df) in enumerate(others):
        row, col, h = k // 2 + 1, k % 2 + 1, _worst_pair(df)
        columns = [f"gap_drift_{h}", f"pred_gap_drift_{h}"]
        d, b, c = _frame(df, columns), _frame(base, columns), plots.colour(k + 2)
        first = k == 0
        fig.add_trace(
            _line(b["step"].to_numpy(), b[columns[0]].to_numpy(), base_label, GREY, legendgroup="base",
                  showlegend=first),
            row=row,
            col=col,
        )  # fmt: skip
        x = d["step"].to_numpy()
        fig.add_trace(_line(x, d[columns[0]].to_numpy(), "measured", c, showlegend=False), row=row, col=col)
        if d[columns[1]].notna().any():
            fig.add_trace(
                _line(x, d[columns[1]].to_numpy(), "predicted (η² law)", c, "dash", showlegend=False),
                row=row,
                col=col,
            )
    plots.style(fig, "", "step", "")
    fig.update_xaxes(title_text="")
    fig.update_yaxes(title_text="G_k − G_0", col=1)
    fig.update_layout(showlegend=False)  # grey is the baseline: the text says so
    return present(fig, height=max(HEIGHT, 200 * rows), top=30, bottom=30)


# --- step 7: difference against ratio ------------------------------------------------------------------------------


def difference_figure(frames: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Left: ||U||^2 and ||V||^2 of the first run (log y) with its gap G = ||U||^2 - ||V||^2 (dashed, constant).
    Right: ||U|| / ||V|| of every run (first in colour, the others grey), 1 dotted."""
    (label, df), *others = frames.items()
    d = _frame(df, ["sqnorm_1", "sqnorm_2", "gap_1", "ratio_1"], log_x=True)
    x = d["step"].to_numpy()
    gap = float(df["gap_1"].iloc[-1])
    fig = _two_panels((f"{label}: squared norms, gap G ≈ {gap:.3g}", "ratio ‖U‖ / ‖V‖"))
    fig.add_trace(_line(x, d["sqnorm_2"].to_numpy(), "‖U‖²", plots.colour(1)), row=1, col=1)
    fig.add_trace(_line(x, d["sqnorm_1"].to_numpy(), "‖V‖²", plots.colour(2)), row=1, col=1)
    fig.add_trace(_line(x, d["gap_1"].to_numpy(), "G = ‖U‖² − ‖V‖²", plots.colour(3), "dash"), row=1, col=1)
    fig.add_trace(_line(x, d["ratio_1"].to_numpy(), label, plots.colour(4)), row=1, col=2)
    for other, odf in others:
        o = _frame(odf, ["ratio_1"], log_x=True)
        fig.add_trace(_line(o["step"].to_numpy(), o["ratio_1"].to_numpy(), other, GREY), row=1, col=2)
    fig.add_hline(y=1, line={"color": GREY, "width": 1.5, "dash": "dot"}, row=1, col=2)
    plots.style(fig, "", "step", "", log_x=True)
    fig.update_yaxes(type="log", exponentformat="power")
    return present(fig)
