"""The lecture's figures: metrics (or rescaling curves, or neuron tables) in, one ``go.Figure`` out, for a projector.

Projector grade, whatever draws them (the page's own chart, the handout, the slides' SVG and PNG): tick labels 18 px,
titles, axis titles and legends 20 px, every line at least 3 px at full opacity, the Okabe-Ito colours (safe for
colour-blind eyes) and, for a grey projector, measured lines solid, predictions dashed and one marker symbol per run.
Axes are titled in words with their maths (Plotly's <i>, <sub>, <sup>). Every trace carries ``meta``
(``{"role": ..., "run": ...}``) so a test can read the numbers a step's text names off its figure.

The height is a default (``HEIGHT``); the page's chart grows it to fill the screen. Pure functions: no Streamlit, no
data fetching, inputs never mutated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from balance.engine.laws import column
from balance.views import style

HEIGHT = 400  # the default; the page's chart takes the height left on the screen
TICK, TITLE = 18, 20  # px: tick labels; titles, axis titles, legends, notes
FONT = '"Source Sans", "Source Sans Pro", "Helvetica Neue", Arial, sans-serif'
INK = "#1f2933"
# Okabe & Ito (2008): distinguishable with every common colour-vision deficiency
BLUE, VERMILLION, GREEN, PURPLE, ORANGE, SKY, YELLOW = (
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442"
)  # fmt: skip
PALETTE = (BLUE, VERMILLION, GREEN, PURPLE, ORANGE, SKY)
GREY = "#6b6b6b"
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star")
MEASURED_WIDTH, THEORY_WIDTH = 5, 3
MARKERS = 7  # marker symbols drawn along a line (they tell runs apart on a grey projector)


# --- the look ------------------------------------------------------------------------------------------------------


def colour(k: int) -> str:
    """Colour k (0-based) of the palette."""
    return PALETTE[k % len(PALETTE)]


def line(
    x: np.ndarray,
    y: np.ndarray,
    name: str,
    color: str,
    *,
    role: str,
    run: str = "",
    dash: str = "solid",
    symbol: str | None = None,
    **kw: Any,
) -> go.Scatter:
    """A projector line: measured solid 5 px, theory (dashed / dotted) 3 px on top, full opacity; ``symbol`` adds a
    few markers along it. ``role`` and ``run`` go to ``meta`` for the tests."""
    width = MEASURED_WIDTH if dash == "solid" else THEORY_WIDTH
    spec: dict[str, Any] = {"mode": "lines"}
    if symbol is not None:
        spec = {"mode": "lines+markers", "marker": {"symbol": symbol, "size": 13, "maxdisplayed": MARKERS,
                                                     "line": {"width": 2, "color": color}}}  # fmt: skip
    return go.Scatter(
        x=np.asarray(x),
        y=np.asarray(y),
        name=name,
        line={"color": color, "dash": dash, "width": width},
        opacity=1.0,
        meta={"role": role, "run": run},
        **spec,
        **kw,
    )


def axis(title: str, log: bool = False, **kw: Any) -> dict[str, Any]:
    """An axis titled ``title`` (words and maths), 18 px ticks, no small minor-tick labels on a log axis."""
    spec: dict[str, Any] = {
        "title": {"text": title, "font": {"size": TITLE, "color": INK}, "standoff": 8},
        "tickfont": {"size": TICK, "color": INK},
        "type": "log" if log else "linear",
        "showline": True,
        "linecolor": "#9aa5b1",
        "gridcolor": "#e4e7eb",
        "zeroline": False,
        "automargin": True,
    }
    if log:
        spec.update(minorloglabels="none", exponentformat="power", dtick=1)
    else:
        spec.update(exponentformat="power", nticks=6)
    return spec | kw


def grid(rows: int, cols: int, titles: Sequence[str], **kw: Any) -> go.Figure:
    """Panels with 20 px titles (the titles are the first annotations, in panel order)."""
    fig = style.figure(rows=rows, cols=cols, subplot_titles=list(titles), **kw)  # the charts' template
    fig.update_annotations(font={"size": TITLE, "color": INK})
    return fig


def present(fig: go.Figure, height: int = HEIGHT, legend: bool = True) -> go.Figure:
    """The projector layout: fonts, white background, the legend in a row under the panels (modifies ``fig``)."""
    fig.update_layout(
        height=height,
        font={"family": FONT, "size": TICK, "color": INK},
        paper_bgcolor="white",
        plot_bgcolor="white",
        margin={"l": 10, "r": 20, "t": 40, "b": 10},
        showlegend=legend,
        # under the panels, in the container's coordinates: it pushes the bottom margin itself, whatever the height
        legend={"font": {"size": TITLE}, "orientation": "h", "x": 0, "xanchor": "left", "y": 0, "yref": "container",
                "yanchor": "bottom"},
        hovermode="closest",
        hoverlabel={"font": {"size": TICK}},
    )  # fmt: skip
    return fig


def hline(fig: go.Figure, y: float, row: int = 1, col: int = 1, text: str = "") -> None:
    """A dotted reference line (balanced: 1; gradient flow: 0), 3 px."""
    fig.add_hline(y=y, line={"color": GREY, "width": THEORY_WIDTH, "dash": "dot"}, row=row, col=col)


def note(fig: go.Figure, text: str, xref: str = "x domain", yref: str = "y domain", x: float = 0.98,
         y: float = 0.95, xanchor: str = "right") -> None:  # fmt: skip
    """A 20 px note inside a panel."""
    fig.add_annotation(
        text=text, x=x, y=y, xref=xref, yref=yref, xanchor=xanchor, yanchor="top", showarrow=False, align=xanchor,
        font={"size": TITLE, "color": INK}, bgcolor="rgba(255,255,255,0.85)",
    )  # fmt: skip


def _rows(df: pd.DataFrame, columns: Sequence[str], x: str = "step", log_x: bool = False) -> pd.DataFrame:
    """The rows to draw (decimated, extremes kept); on a log x axis without step 0."""
    d = df[[x, *[c for c in columns if c in df.columns and c != x]]]
    return style.decimate(d[d[x] > 0] if log_x else d, 600, x=x)


def fmt(v: float) -> str:
    """A number as a slide shows it: 3 significant digits, ×10ⁿ for the very small or large."""
    if v == 0 or 1e-3 <= abs(v) < 1e5:
        return f"{v:.3g}"
    mantissa, exponent = f"{v:.1e}".split("e")
    return f"{mantissa}×10<sup>{int(exponent)}</sup>"


# words and maths for the axes (Plotly renders the tags)
STEP = "step <i>k</i>"
TIME = "training time <i>t</i> = <i>ηk</i>"
G_CHANGE = "change of gap <i>G</i> − <i>G</i><sub>0</sub>"


# --- step 1: the rescaling symmetry -----------------------------------------------------------------------------


def _nearest(cs: np.ndarray, c: float) -> int:
    return int(np.argmin(np.abs(np.log(cs) - np.log(c))))


def change_text(curves: Mapping[str, Mapping[str, np.ndarray]], c: float) -> str:
    """'change of f at c = 2: ReLU 0, tanh 0.126': the largest |f_c(x_i) - f_1(x_i)| per network."""
    changes = []
    for name, cv in curves.items():
        i, one = _nearest(cv["c"], c), _nearest(cv["c"], 1.0)
        changes.append(f"{name} {fmt(float(np.max(np.abs(cv['outputs'][i] - cv['outputs'][one]))))}")
    return f"change of <i>f</i> at <i>c</i> = {c:g}: {', '.join(changes)}"


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
    """Left: outputs f(x_i) against c (log axis), ReLU solid, tanh dashed.
    Right: the two rescaled layers' squared norms c^2 ||W_h||^2 and ||W_{h+1}||^2 / c^2. Open circles mark ``c``; the
    left panel's title says how much each network's outputs changed there.

    ``curves`` as returned by ``balance.lecture.steps.rescale_curves`` (name -> ``rescaled_outputs``). With ``slider``
    values, a Plotly slider below the chart moves the circles (for a page with no server, such as the handout).
    """
    first = next(iter(curves.values()))
    fig = grid(1, 2, (change_text(curves, c), "squared norms of the two layers"), horizontal_spacing=0.14)
    for k, (name, cv) in enumerate(curves.items()):
        dash = "solid" if k == 0 else "dash"
        for j in range(cv["outputs"].shape[1]):
            trace = line(cv["c"], cv["outputs"][:, j], name, colour(k), role="output", run=name, dash=dash,
                         legendgroup=name, showlegend=j == 0)  # fmt: skip
            if dash != "solid":
                trace.line.width = MEASURED_WIDTH - 1
            fig.add_trace(trace, row=1, col=1)
    fig.add_trace(line(first["c"], first["sqnorm_h"], "<i>c</i>² ‖<i>W</i><sub>1</sub>‖²", GREEN, role="norm h",
                       symbol="square"), row=1, col=2)  # fmt: skip
    fig.add_trace(line(first["c"], first["sqnorm_next"], "‖<i>W</i><sub>2</sub>‖² / <i>c</i>²", PURPLE,
                       role="norm next", dash="dash", symbol="diamond"), row=1, col=2)  # fmt: skip
    marker = {"size": 16, "color": "rgba(0,0,0,0)", "line": {"width": 3, "color": INK}}
    xs, ys = _markers(curves, c)
    for k, (x, y) in enumerate(zip(xs, ys)):
        last = k == len(xs) - 1
        trace = go.Scatter(x=x, y=y, mode="markers", marker=marker, name="<i>c</i> now", legendgroup="c",
                           showlegend=last, hoverinfo="skip", meta={"role": "c", "run": ""})  # fmt: skip
        fig.add_trace(trace, row=1, col=2 if last else 1)
    fig.update_xaxes(axis("rescaling factor <i>c</i>", log=True))
    fig.update_yaxes(axis("output <i>f</i>(<i>x</i>), 4 inputs"), row=1, col=1)
    fig.update_yaxes(axis("squared norm", log=True), row=1, col=2)
    if not slider:
        return present(fig)
    markers = list(range(len(fig.data) - len(xs), len(fig.data)))
    changed = 0  # the left panel's title
    steps = []
    for value in slider:
        xs, ys = _markers(curves, value)
        text = {f"annotations[{changed}].text": change_text(curves, value)}
        steps.append({"label": f"{value:g}", "method": "update", "args": [{"x": xs, "y": ys}, text, markers]})
    active = _nearest(np.asarray(slider, dtype=float), c)
    fig.update_layout(
        sliders=[{"active": active, "steps": steps, "currentvalue": {"prefix": "c = ", "font": {"size": TITLE}},
                  "font": {"size": TICK}, "pad": {"t": 90}, "len": 1.0}]
    )  # fmt: skip
    return present(fig, height=HEIGHT + 150).update_layout(margin={"b": 150})


# --- step 2: per-neuron balance -----------------------------------------------------------------------------------


def moving_units(first: pd.DataFrame, last: pd.DataFrame, count: int = 6) -> pd.DataFrame:
    """The ``count`` hidden units whose squared norms (in + out) grew most, with their start and end:
    columns neuron, in0, out0, in1, out1 (one row a unit)."""
    key = ["layer", "neuron"]
    both = first[[*key, "in_sqnorm", "out_sqnorm"]].merge(last[[*key, "in_sqnorm", "out_sqnorm"]], on=key,
                                                           suffixes=("0", "1"))  # fmt: skip
    both = both.rename(columns={"in_sqnorm0": "in0", "out_sqnorm0": "out0", "in_sqnorm1": "in1", "out_sqnorm1": "out1"})
    growth = (both["in1"] + both["out1"]) / (both["in0"] + both["out0"]).clip(lower=1e-300)
    return both.assign(growth=growth).nlargest(count, "growth").sort_values("neuron").reset_index(drop=True)


def neuron_scatter(first: pd.DataFrame, last: pd.DataFrame, count: int = 6) -> go.Figure:
    """The ``count`` units that grew most: each an open circle at its start, a filled one at its end and its curve
    in - out = constant (dashed) through both, one colour and symbol a unit. Log-log axes keep the starts apart (they
    are all small); there the curves of constant difference bend towards the diagonal in = out as the norms grow."""
    units = moving_units(first, last, count)
    ins, outs = units[["in0", "in1"]].to_numpy(), units[["out0", "out1"]].to_numpy()
    x_lo, y_lo = float(ins[ins > 0].min()) / 1.6, float(outs[outs > 0].min()) / 1.6
    lo, hi = min(x_lo, y_lo), float(max(ins.max(), outs.max())) * 1.6
    fig = style.figure()
    fig.add_trace(line(np.array([lo, hi]), np.array([lo, hi]), "in = out", GREY, role="diagonal", dash="dot"))
    for k, u in units.iterrows():
        c, symbol, run = colour(k), SYMBOLS[k % len(SYMBOLS)], f"unit {int(u['neuron'])}"
        d = u["in0"] - u["out0"]  # the curve out = in - d, sampled along its smaller coordinate (it bends there)
        if d > 0:
            ys = np.geomspace(lo, hi - d, 80)
            xs = ys + d
        else:
            xs = np.geomspace(lo, hi + d, 80)
            ys = xs - d
        fig.add_trace(line(xs, ys, "in − out = constant", c, role="constant", run=run, dash="dash",
                           legendgroup="constant", showlegend=k == 0))  # fmt: skip
        for when, filled in (("start", False), ("end", True)):
            x, y = u["in1" if filled else "in0"], u["out1" if filled else "out0"]
            marker = {"symbol": symbol + ("" if filled else "-open"), "size": 20 if filled else 22, "color": c,
                      "line": {"width": 3, "color": c}}  # fmt: skip
            fig.add_trace(go.Scatter(
                x=[x], y=[y], mode="markers", marker=marker, name="at the end" if filled else "at the start",
                legendgroup=when, showlegend=k == 0, meta={"role": when, "run": run},
                hovertemplate=f"{run} {when}<br>in %{{x:.4g}}<br>out %{{y:.4g}}<extra></extra>",
            ))  # fmt: skip
    fig.update_xaxes(axis("incoming ‖<i>w</i><sub>in</sub>‖²", log=True, range=np.log10([x_lo, hi]).tolist()))
    fig.update_yaxes(axis("outgoing ‖<i>w</i><sub>out</sub>‖²", log=True, range=np.log10([y_lo, hi]).tolist()))
    fig.update_layout(title={"text": f"the {len(units)} units that grew most (of {len(first)})",
                             "font": {"size": TITLE}, "x": 0, "xanchor": "left"})  # fmt: skip
    return present(fig)


# --- step 3: gaps and ratios -------------------------------------------------------------------------------------


def balance_panels(df: pd.DataFrame, h: int = 1) -> go.Figure:
    """Left: ||W_h||^2 and ||W_{h+1}||^2 against |G_h| (log y, log x): the norms grow thousands-fold, the gap stays
    tiny. Right: the ratio ||W_{h+1}|| / ||W_h|| going to 1 (dotted)."""
    sq, sq_next, gap, ratio = (column(m, i) for m, i in (("sqnorm", h), ("sqnorm", h + 1), ("gap", h), ("ratio", h)))
    d = _rows(df, [sq, sq_next, gap, ratio], log_x=True)
    x = d["step"].to_numpy()
    fig = grid(1, 2, ("squared norms grow, the gap stays tiny", "ratio of the norms"), horizontal_spacing=0.14)
    fig.add_trace(line(x, d[sq].to_numpy(), f"‖<i>W</i><sub>{h}</sub>‖²", BLUE, role="sqnorm h", symbol="circle"),
                  row=1, col=1)  # fmt: skip
    fig.add_trace(line(x, d[sq_next].to_numpy(), f"‖<i>W</i><sub>{h + 1}</sub>‖²", GREEN, role="sqnorm next",
                       symbol="square"), row=1, col=1)  # fmt: skip
    fig.add_trace(line(x, np.abs(d[gap].to_numpy()), "|gap <i>G</i>|", VERMILLION, role="gap", dash="dash"),
                  row=1, col=1)  # fmt: skip
    name = f"‖<i>W</i><sub>{h + 1}</sub>‖ / ‖<i>W</i><sub>{h}</sub>‖"
    fig.add_trace(line(x, d[ratio].to_numpy(), name, PURPLE, role="ratio", symbol="diamond"), row=1, col=2)
    hline(fig, 1.0, col=2)
    fig.update_xaxes(axis(STEP, log=True))
    fig.update_yaxes(axis("squared norm", log=True), row=1, col=1)
    fig.update_yaxes(axis("ratio (1 = balanced)"), row=1, col=2)
    return present(fig)


# --- step 4: drift at three step sizes, at the same training time ---------------------------------------------------


def step_size_figure(frames: Mapping[str, pd.DataFrame], h: int = 1) -> go.Figure:
    """Runs at several step sizes eta trained for the same time t = eta k (``frames``: label -> metrics, each with
    its ``lr``). Left: the gap's change G(t) - G(0) of pair ``h``, measured (solid, one symbol a run) and by the exact
    eta^2-per-step law (black dashes on top). Right: the change divided by eta: one curve, the first-order law
    G(t) - G(0) = eta * int_0^t Delta||g||^2 dtau + O(eta^2) at fixed t."""
    drift, predicted = column("gap_drift", h), column("pred_gap_drift", h)
    worst = max(float(np.nanmax(np.abs(df[drift].to_numpy() - df[predicted].to_numpy()))) for df in frames.values())
    fig = grid(1, 2, (f"measured = law, to {fmt(worst)}", "divided by <i>η</i>: one curve"), horizontal_spacing=0.16)
    for k, (label, df) in enumerate(frames.items()):
        d, c, symbol = _rows(df, ["t", "lr", drift, predicted]), colour(k), SYMBOLS[k]
        t, g, p, eta = d["t"].to_numpy(), d[drift].to_numpy(), d[predicted].to_numpy(), float(df["lr"].iloc[0])
        fig.add_trace(line(t, g, label, c, role="measured", run=label, symbol=symbol, legendgroup=label), row=1, col=1)
        fig.add_trace(line(t, p, "exact law: <i>η</i>² a step", INK, role="predicted", run=label, dash="dash",
                           legendgroup="law", showlegend=k == 0, legendrank=2000), row=1, col=1)  # fmt: skip
        fig.add_trace(line(t, g / eta, label, c, role="per eta", run=label, symbol=symbol, legendgroup=label,
                           showlegend=False), row=1, col=2)  # fmt: skip
    fig.update_xaxes(axis(TIME))
    fig.update_yaxes(axis(G_CHANGE), row=1, col=1)
    fig.update_yaxes(axis("(<i>G</i> − <i>G</i><sub>0</sub>) / <i>η</i>"), row=1, col=2)
    return present(fig)


# --- step 5: an analogue of Figure 1 -----------------------------------------------------------------------------


def figure1(frames: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Left: ||U|| / ||V|| (``ratio_1`` of mf: layer 2 is U, layer 1 is V) per run, 1 dotted. Right: the loss."""
    ratio = column("ratio", 1)
    fig = grid(1, 2, ("‖<i>U</i>‖ / ‖<i>V</i>‖", "loss ½‖<i>UV</i><sup>T</sup> − <i>M</i>*‖²"),
               horizontal_spacing=0.14)  # fmt: skip
    for k, (label, df) in enumerate(frames.items()):
        d, c, symbol = _rows(df, [ratio, "loss"], log_x=True), colour(k), SYMBOLS[k]
        x = d["step"].to_numpy()
        fig.add_trace(line(x, d[ratio].to_numpy(), label, c, role="ratio", run=label, symbol=symbol,
                           legendgroup=label), row=1, col=1)  # fmt: skip
        fig.add_trace(line(x, d["loss"].to_numpy(), label, c, role="loss", run=label, symbol=symbol,
                           legendgroup=label, showlegend=False), row=1, col=2)  # fmt: skip
    hline(fig, 1.0)
    fig.update_xaxes(axis(STEP, log=True))  # the balancing happens in the first 100 steps
    fig.update_yaxes(axis("ratio (1 = balanced)", log=True), row=1, col=1)
    fig.update_yaxes(axis("loss", log=True), row=1, col=2)
    return present(fig)


# --- step 6: what breaks it ----------------------------------------------------------------------------------------

BREAKS_PAIR = 2  # every panel shows the same pair of layers, 2 and 3 (the panels say so)


def breaks_figure(frames: Mapping[str, pd.DataFrame], h: int = BREAKS_PAIR) -> go.Figure:
    """The first frame is the baseline (plain GD, ReLU); one panel for each other frame, 2 per row, all of pair ``h``.

    A panel plots the change of the gap G_k - G_0, measured (solid), the baseline's (grey) and the run's own exact law
    where it has one (dashed); where the law makes the gap itself shrink (weight decay) the panel plots G_k, which
    falls geometrically to 0, against its law."""
    (base_label, base), *others = frames.items()
    gap, drift, predicted = column("gap", h), column("gap_drift", h), column("pred_gap_drift", h)
    rows = -(-len(others) // 2)
    shrinks = [_shrinks(df, h) for _, df in others]
    titles = [f"{label} · layers {h}–{h + 1}" for label, _ in others]
    fig = grid(rows, 2, titles, horizontal_spacing=0.14, vertical_spacing=0.16, shared_xaxes=True)
    for k, ((label, df), shrink) in enumerate(zip(others, shrinks)):
        row, col, c = k // 2 + 1, k % 2 + 1, colour(k + 1)
        d, b = _rows(df, [gap, drift, predicted]), _rows(base, [gap, drift])
        y = d[gap] if shrink else d[drift]
        fig.add_trace(line(b["step"].to_numpy(), (b[gap] if shrink else b[drift]).to_numpy(),
                           f"{base_label}: the law holds", GREY, role="baseline", run=label, symbol="circle",
                           legendgroup="base", showlegend=k == 0), row=row, col=col)  # fmt: skip
        fig.add_trace(line(d["step"].to_numpy(), y.to_numpy(), label, c, role="measured", run=label,
                           symbol=SYMBOLS[(k + 1) % len(SYMBOLS)], showlegend=False), row=row, col=col)  # fmt: skip
        if d[predicted].notna().all():
            law = d[gap] - d[drift] + d[predicted] if shrink else d[predicted]
            fig.add_trace(line(d["step"].to_numpy(), law.to_numpy(), "its exact law", INK, role="predicted",
                               run=label, dash="dash", legendgroup="law", showlegend=True, legendrank=2000),
                      row=row, col=col)  # fmt: skip
        if shrink:
            hline(fig, 0.0, row=row, col=col)
        fig.update_yaxes(axis("gap <i>G</i>" if shrink else "change of <i>G</i>"), row=row, col=col)
    fig.update_xaxes(axis(""))
    fig.update_xaxes(axis(STEP), row=rows)
    if rows > 1:
        fig.update_xaxes(showticklabels=False, row=1)
    return present(fig, height=max(HEIGHT, 230 * rows)).update_layout(margin={"t": 36})


def _shrinks(df: pd.DataFrame, h: int) -> bool:
    """Whether the run's exact law pulls the gap of pair ``h`` to 0 (weight decay): its predicted gap ends below a
    tenth of where it started."""
    g0 = float(df[column("gap", h)].iloc[0] - df[column("gap_drift", h)].iloc[0])
    end = df[column("pred_gap_drift", h)].iloc[-1]
    return bool(pd.notna(end) and g0 != 0 and abs(g0 + float(end)) < 0.1 * abs(g0))


# --- step 7: difference against ratio ------------------------------------------------------------------------------


def difference_figure(frames: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Left: ||U||^2 and ||V||^2 of the first run (log y) with its gap G = ||U||^2 - ||V||^2 (dashed, constant).
    Right: ||U|| / ||V|| of every run (first in colour, the others grey), 1 dotted. A linear step axis: step 0, where
    the ratio starts, is on it."""
    (label, df), *others = frames.items()
    sq_v, sq_u, gap, ratio = column("sqnorm", 1), column("sqnorm", 2), column("gap", 1), column("ratio", 1)
    d = _rows(df, [sq_v, sq_u, gap, ratio])
    x = d["step"].to_numpy()
    g0, r0, r1 = float(df[gap].iloc[0]), float(df[ratio].iloc[0]), float(df[ratio].iloc[-1])
    fig = grid(1, 2, (f"gap <i>G</i> stays at {fmt(g0)}", f"ratio: {r0:.0f} at step 0 → {r1:.2f}"),
               horizontal_spacing=0.14)  # fmt: skip
    fig.add_trace(line(x, d[sq_u].to_numpy(), "‖<i>U</i>‖²", BLUE, role="sqnorm U", symbol="circle"), row=1, col=1)
    fig.add_trace(line(x, d[sq_v].to_numpy(), "‖<i>V</i>‖²", GREEN, role="sqnorm V", symbol="square"), row=1, col=1)
    fig.add_trace(line(x, d[gap].to_numpy(), "<i>G</i> = ‖<i>U</i>‖² − ‖<i>V</i>‖²", VERMILLION, role="gap",
                       dash="dash"), row=1, col=1)  # fmt: skip
    fig.add_trace(line(x, d[ratio].to_numpy(), label, PURPLE, role="ratio", run=label, symbol="diamond"), row=1, col=2)
    for other, odf in others:
        o = _rows(odf, [ratio])
        fig.add_trace(line(o["step"].to_numpy(), o[ratio].to_numpy(), other, GREY, role="ratio", run=other,
                           dash="dash"), row=1, col=2)  # fmt: skip
    hline(fig, 1.0, col=2)
    fig.update_xaxes(axis(STEP))
    fig.update_yaxes(axis("squared norm", log=True), row=1, col=1)
    fig.update_yaxes(axis("‖<i>U</i>‖ / ‖<i>V</i>‖", log=True), row=1, col=2)
    return present(fig)


def traces(fig: go.Figure, role: str, run: str | None = None) -> list[go.Scatter]:
    """The traces of ``fig`` with ``meta.role == role`` (and ``meta.run == run``): for tests and exports."""
    return [t for t in fig.data if (t.meta or {}).get("role") == role and (run is None or t.meta.get("run") == run)]
