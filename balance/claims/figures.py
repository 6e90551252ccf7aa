"""The claims' charts: metrics DataFrames (or arrays of measured numbers) in, a ``go.Figure`` out.

They follow ``balance.views.figures``: its ``style`` and colours, measured series solid and wide, theory dashed on top,
gradient flow dotted grey, time series decimated keeping their extremes. No data fetching, no Streamlit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from balance.claims.base import Fit, series
from balance.engine.laws import METRICS, of_metric
from balance.views import style

POINTS = 400  # buckets per series: every claim figure holds several runs


def _panels(titles: Sequence[str], height: int = style.HEIGHT + 60) -> go.Figure:
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=list(titles), horizontal_spacing=0.08)
    style.style(fig, "", "", "", height=height)
    # the legend under the plots, clear of the x-axis titles
    fig.update_layout(
        legend={"orientation": "h", "y": -0.3, "yanchor": "top", "x": 0, "font": {"size": 11}}, margin={"b": 110}
    )
    fig.update_annotations(font={"size": 13})
    return fig


def _series(
    fig: go.Figure,
    df: pd.DataFrame,
    y: str | np.ndarray,
    name: str,
    color: str,
    col: int,
    dash: str = "solid",
    x: str = "step",
    legend: bool = True,
) -> None:
    """One time series: ``y`` a column of ``df`` or an array aligned with its rows; decimated before drawing."""
    frame = pd.DataFrame({"x": df[x].to_numpy(), "y": df[y].to_numpy() if isinstance(y, str) else np.asarray(y)})
    d = style.decimate(frame, POINTS, x="x")
    measured = dash == "solid"
    fig.add_trace(
        go.Scatter(
            x=d["x"].to_numpy(),
            y=d["y"].to_numpy(),
            name=name,
            mode="lines",
            line={"color": color, "dash": dash, "width": 3 if measured else 1.5},
            opacity=0.6 if measured else 1.0,
            legendgroup=name,
            showlegend=legend,
        ),
        row=1,
        col=col,
    )


def _points(
    fig: go.Figure,
    x: Sequence,
    y: Sequence,
    name: str,
    color: str,
    col: int,
    dash: str = "solid",
    symbol: str = "circle",
) -> None:
    fig.add_trace(
        go.Scatter(
            x=list(x), y=list(y), name=name, mode="lines+markers" if dash != "none" else "markers",
            line={"color": color, "dash": dash if dash != "none" else "solid", "width": 1.5},
            marker={"color": color, "size": 8, "symbol": symbol}, legendgroup=name,
        ),
        row=1, col=col,
    )  # fmt: skip


def _fit_line(
    fig: go.Figure, x: Sequence[float], y: Sequence[float], fit: Fit, name: str, color: str, col: int
) -> None:
    """The fitted power law through the geometric centre of the points, dotted."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.abs(np.asarray(y, dtype=float)))
    xs = np.exp(np.array([lx.min(), lx.max()]))
    ys = np.exp(ly.mean() + fit.slope * (np.log(xs) - lx.mean()))
    fig.add_trace(
        go.Scatter(x=xs, y=ys, name=name, mode="lines", line={"color": color, "dash": "dot", "width": 1.5}),
        row=1,
        col=col,
    )


# --- per claim ------------------------------------------------------------------------------------------------------


def difference_figure(runs: Mapping[str, pd.DataFrame], flow: Mapping[str, np.ndarray]) -> go.Figure:
    """Claim 1, per run: squared norms (log y), the gap G = ||W_2||^2 - ||W_1||^2, and the ratio against
    sqrt(1 - Phi_0 / ||W_1||^2)."""
    sq, ratio = METRICS["sqnorm"], METRICS["ratio"]
    fig = _panels([f"squared norms {sq.plain()}", "difference G = ||W₂||² − ||W₁||²", f"ratio {ratio.plain(1)}"])
    for i, (name, df) in enumerate(runs.items()):
        c = style.colour(i + 1)
        _series(fig, df, series(df, "sqnorm", 1), f"{name}: {sq.plain(1)}", c, 1, dash="solid")
        _series(fig, df, series(df, "sqnorm", 2), f"{name}: {sq.plain(2)}", c, 1, dash="dash")
        _series(fig, df, series(df, "gap", 1), f"{name}: G", c, 2, legend=False)
        _series(fig, df, series(df, "ratio", 1), f"{name}: ratio", c, 3, legend=False)
        _series(fig, df, flow[name], f"{name}: sqrt(1 − Φ₀/||W₁||²)", c, 3, dash="dot")
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=3)
    fig.add_hline(y=1, line={"color": style.FLOW_COLOUR, "width": 1, "dash": "dot"}, row=1, col=3)
    fig.update_xaxes(title_text="step")
    return fig


def init_figure(summary: pd.DataFrame) -> go.Figure:
    """Claim 2: final ratio and final / initial loss per seed, Gaussian against uniform, per model."""
    fig = _panels(["final ratio ||W₂|| / ||W₁||", "final loss / initial loss"])
    for i, init in enumerate(("gaussian", "uniform")):
        d = summary[summary["init"] == init]
        c, symbol = style.colour(i + 1), ("circle", "square")[i]
        _points(fig, d["model"], d["ratio"], init, c, 1, dash="none", symbol=symbol)
        _points(fig, d["model"], d["loss_drop"], init, c, 2, dash="none", symbol=symbol)
    fig.data[1].showlegend = fig.data[3].showlegend = False
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_xaxes(type="category")  # style.style sets linear axes
    fig.update_layout(scattermode="group")
    return fig


def rate_figure(
    etas: Sequence[float], drifts: Sequence[float], preds: Sequence[float], fit: Fit, t: float
) -> go.Figure:
    """Claim 3: |drift at time t| against eta, log-log: measured, the exact prediction, the fitted slope."""
    fig = _panels([f"|G(t) − G(0)| at t = {t:g}", "per step: |G(t) − G(0)| / K"])
    steps = [t / e for e in etas]
    _points(fig, etas, np.abs(drifts), "measured", style.colour(1), 1, dash="none")
    _points(fig, etas, np.abs(preds), "Σ η² (||g₂||² − ||g₁||²)", style.colour(2), 1, dash="dash", symbol="circle-open")
    _fit_line(fig, etas, drifts, fit, f"fit: slope {fit.slope:.3f}", style.FLOW_COLOUR, 1)
    per_step = np.abs(drifts) / np.asarray(steps)
    _points(fig, etas, per_step, "measured per step", style.colour(3), 2, dash="none")
    _fit_line(fig, etas, per_step, Fit(fit.slope + 1, fit.low + 1, fit.high + 1), "fit per step", style.FLOW_COLOUR, 2)
    fig.update_xaxes(type="log", title_text="step size η", exponentformat="power")
    fig.update_yaxes(type="log", exponentformat="power")
    return fig


def optimiser_figure(table: pd.DataFrame) -> go.Figure:
    """Claim 4: |drift at fixed time| against the effective step size, one line per optimiser; predictions dashed."""
    fig = _panels(["|G(t) − G(0)| against the effective step size"], height=style.HEIGHT + 100)
    for i, (name, d) in enumerate(table.groupby("optimiser", sort=False)):
        c = style.colour(i + 1)
        _points(fig, d["eta_eff"], d["drift"].abs(), name, c, 1)
        if d["pred"].notna().all():
            _points(fig, d["eta_eff"], d["pred"].abs(), f"{name} predicted", c, 1, dash="dash", symbol="circle-open")
    fig.update_xaxes(type="log", title_text="effective step size η / (1 − β)", exponentformat="power")
    fig.update_yaxes(type="log", exponentformat="power")
    return fig


def batchnorm_figure(runs: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Claim 5: ||W_1||^2 against ||W_1(0)||^2 + sum eta^2 ||g_1||^2; cross-layer gap drift and BN's neuron drift."""
    fig = _panels(["||W₁||² (feeds BatchNorm)", "|drift| over time t"])
    for i, (name, df) in enumerate(runs.items()):
        c = style.colour(i + 1)
        eta = df["lr"].to_numpy()
        growth = np.concatenate([[0.0], np.cumsum((eta**2 * series(df, "grad_norm", 1).to_numpy() ** 2)[:-1])])
        _series(fig, df, series(df, "sqnorm", 1), f"{name}: measured", c, 1, x="t")
        _series(
            fig, df, series(df, "sqnorm", 1).iloc[0] + growth, f"{name}: ||W₁(0)||² + Σ η²||g₁||²", c, 1, "dash", x="t"
        )
        _series(fig, df, series(df, "gap_drift", 1).abs(), f"{name}: cross-layer gap", c, 2, x="t")
        _series(fig, df, df["neuron_drift_max"], f"{name}: (γ, β) vs W₂ per neuron", c, 2, "dot", x="t")
    fig.update_yaxes(type="log", row=1, col=2, exponentformat="power")
    fig.update_xaxes(title_text="t = Σ η")
    return fig


def figure1_figure(runs: Mapping[str, pd.DataFrame], flow: Mapping[str, np.ndarray]) -> go.Figure:
    """Claim 6: ||U|| / ||V|| (with the invariant's implied ratio, objective (7)) and ||U^T U - V^T V||_F."""
    fig = _panels(["ratio ||U||_F / ||V||_F", "||UᵀU − VᵀV||_F (what Theorem 3.1 controls)"])
    for i, (name, df) in enumerate(runs.items()):
        c = style.colour(i + 1)
        _series(fig, df, series(df, "ratio", 1), name, c, 1)
        if name in flow:
            _series(fig, df, flow[name], f"{name}: implied by the invariant", c, 1, dash="dash")
        _series(fig, df, series(df, "matrix_inv", 1), name, c, 2, legend=False)
    fig.update_yaxes(type="log", exponentformat="power")
    fig.add_hline(y=1, line={"color": style.FLOW_COLOUR, "width": 1, "dash": "dot"}, row=1, col=1)
    fig.update_xaxes(title_text="iteration")
    return fig


def deep_figure(example: pd.DataFrame, example_name: str, drifts: Mapping[str, float], tolerance: float) -> go.Figure:
    """Claim 7: one network's change of ||W_h||^2 since step 0 per layer (equation 6: the same curve for every
    layer, however different the norms), and every run's relative gap drift against the tolerance."""
    fig = _panels([f"{example_name}: ||W_h||² − ||W_h(0)||²", "max |gap drift| / largest ||W||²"])
    sq = METRICS["sqnorm"]
    for h in of_metric(example.columns, "sqnorm"):
        norms = series(example, "sqnorm", h)
        change, start = norms - norms.iloc[0], norms.iloc[0]
        _series(fig, example, change, f"{sq.place(h)} ({sq.plain(h)} at step 0 = {start:.3g})", style.colour(h), 1)
    fig.add_trace(
        go.Bar(x=list(drifts), y=list(drifts.values()), marker={"color": style.colour(1)}, showlegend=False),
        row=1,
        col=2,
    )
    fig.add_hline(y=tolerance, line={"color": "firebrick", "width": 1, "dash": "dash"}, row=1, col=2)
    fig.update_xaxes(type="category", row=1, col=2)  # style.style sets linear axes
    fig.update_yaxes(type="log", exponentformat="power", row=1, col=2)
    fig.update_xaxes(title_text="step", row=1, col=1)
    fig.update_layout(height=style.HEIGHT + 120, legend={"y": -0.42}, margin={"b": 150})  # room for the bar names
    return fig


def tanh_figure(etas: Sequence[float], drifts: Mapping[str, Sequence[float]], fits: Mapping[str, Fit]) -> go.Figure:
    """Claim 8: |drift at fixed time| against eta for tanh and its ReLU twin, log-log, with fitted slopes."""
    fig = _panels(["|G(t) − G(0)| at fixed t, first pair"])
    for i, (name, d) in enumerate(drifts.items()):
        _points(fig, etas, np.abs(d), f"{name} (slope {fits[name].slope:.2f})", style.colour(i + 1), 1)
    fig.update_xaxes(type="log", title_text="step size η", exponentformat="power")
    fig.update_yaxes(type="log", exponentformat="power")
    return fig


def decay_figure(df: pd.DataFrame, formula: np.ndarray, exact: np.ndarray) -> go.Figure:
    """Claim 9: the gap G_k against G_0 (1 - eta lambda)^(2k) and against the exact recursion, log y."""
    fig = _panels(["gap G_k = ||W₂||² − ||W₁||²"])
    _series(fig, df, series(df, "gap", 1).abs(), "measured |G_k|", style.colour(1), 1)
    _series(fig, df, np.abs(formula), "|G₀| (1 − ηλ)^(2k)", style.colour(2), 1, dash="dash")
    _series(fig, df, np.abs(exact), "exact recursion (with η² terms)", style.colour(3), 1, dash="dot")
    fig.update_yaxes(type="log", exponentformat="power")
    fig.update_xaxes(title_text="step k")
    return fig


def large_lr_figure(table: pd.DataFrame, mu: float) -> go.Figure:
    """Claim 10: final ratio against eta; (||u|| - ||v||)^2 against the stability bound 2/eta - 2 mu."""
    fig = _panels(["final ratio ||U|| / ||V||", "(||u|| − ||v||)² at the limit"])
    ok, bad = table[table["converged"]], table[~table["converged"]]
    _points(fig, ok["eta"], ok["ratio"], "converged", style.colour(1), 1)
    _points(fig, bad["eta"], bad["ratio"].clip(upper=10), "not converged", "firebrick", 1, dash="none", symbol="x")
    _points(fig, ok["eta"], ok["gap"], "(||u|| − ||v||)²", style.colour(1), 2, dash="none")
    etas = np.linspace(table["eta"].min(), table["eta"].max(), 100)
    bound = 2 / etas - 2 * mu
    fig.add_trace(
        go.Scatter(x=etas, y=np.where(bound > 0, bound, np.nan), name="2/η − 2μ (stability bound)", mode="lines",
                   line={"color": style.colour(2), "dash": "dash"}),
        row=1, col=2,
    )  # fmt: skip
    fig.update_yaxes(type="log", exponentformat="power", row=1, col=2)
    fig.add_hline(y=1, line={"color": style.FLOW_COLOUR, "width": 1, "dash": "dot"}, row=1, col=1)
    fig.update_xaxes(title_text="step size η")
    return fig
