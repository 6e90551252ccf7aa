"""Claim 14: does balancing imply (local) smoothness? Reviewer 1: a polynomial is smooth; what the paper computes is
a smoothness modulus. So the experiment measures that modulus: lambda_max of the loss's Hessian along runs from
starts of different imbalance, with the stable-step line 2 / eta.

Rank-1 MF f(u, v) = 1/2 ||u v^T - M||^2 with M = s a b^T. At a global minimum (u v^T = M) with imbalance
G = ||u||^2 - ||v||^2 (conserved by the flow, nearly by GD), ||u||^2 ||v||^2 = s^2, so the largest Hessian eigenvalue
||u||^2 + ||v||^2 = sqrt(G^2 + 4 s^2): the balanced minimum (G = 0) is the flattest, 2 s, and every unbalanced one is
sharper. The weights are not stored, so lambda_max is read by replaying each stored run's config (the engine is
deterministic: the replay is the run) and running ``balance.engine.sharpness``'s Lanczos at log-spaced steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from scipy.stats import spearmanr

from balance.claims import figures, theory_verdicts
from balance.claims.base import Finding, first, last
from balance.config import RunConfig
from balance.runs.stats import mean_ci
from balance.views import style

S = 1.0  # the target's singular value
ETA = 0.05
U_SCALES = (1.0, 2.0, 4.0, 6.0)  # u's init multiplier: from balanced to far from it
SEEDS = 8
CHECKPOINTS = 9


def configs(quick: bool) -> list[RunConfig]:
    """Rank-1 MF 10 x 10 (s = 1), sigma = 0.1 with u's layer at each of ``U_SCALES``, GD eta = 0.05, ``SEEDS``
    seeds each (one batched job)."""
    base = RunConfig.from_dict({
        "data": {"name": "lowrank", "d1": 10, "d2": 10, "rank": 1, "singular_values": [S]},
        "model": {"name": "mf", "init_scale": 0.1}, "optim": {"name": "gd", "lr": ETA},
        "steps": 1500 if quick else 2500,
    })  # fmt: skip
    return [base.replace(**{"model.layer_scales": (1.0, b), "seed": k}) for b in U_SCALES for k in range(SEEDS)]


def sharpness_along(configs: Sequence[RunConfig], steps: Sequence[int]) -> list[list[float]]:
    """lambda_max of the full-batch loss of each config at each of ``steps`` (increasing), replaying the configs
    together on one engine (they share a shape): ``[member][checkpoint]``."""
    import torch

    from balance.engine.engine import Engine
    from balance.engine.models import build_model
    from balance.engine.networks import objective
    from balance.engine.sharpness import extreme_eigenvalues, hessian_operator

    engine = Engine(configs)
    # the Hessian on a separate copy of each member's weights: the engine updates its own in place
    probes = [build_model(c, t, torch.Generator().manual_seed(c.seed), torch.float64)
              for c, t in zip(configs, engine.tasks)]  # fmt: skip
    out: list[list[float]] = [[] for _ in configs]
    for k in steps:
        while engine.step_index < k:
            engine.step()
        for i, (probe, task) in enumerate(zip(probes, engine.tasks)):
            with torch.no_grad():
                for mine, theirs in zip(probe.params, engine.weights(i)):
                    mine.copy_(theirs.reshape(mine.shape))
            with torch.enable_grad():
                hvp, n = hessian_operator(objective(probe, task), probe.params)
                out[i].append(extreme_eigenvalues(hvp, n)[1])
    return out


def analyse(runs: Sequence[Any]) -> Finding:
    rows, curves = [], {}
    k_end = runs[0].config.steps
    steps = sorted({0, *np.unique(np.geomspace(1, k_end, CHECKPOINTS - 1).astype(int)).tolist()})
    along = sharpness_along([r.config for r in runs], steps)
    for r, lam in zip(runs, along):
        m = r.metrics
        gap = last(m, "sqnorm", 2) - last(m, "sqnorm", 1)  # ||u||^2 - ||v||^2 (layer 2 is U)
        b = r.config.model.layer_scales[1]
        rows.append({"u_scale": b, "seed": r.config.seed, "gap": gap, "final": lam[-1], "peak": max(lam),
                     "predicted": math.sqrt(gap**2 + 4 * S**2),
                     "loss": last(m, "loss") / first(m, "loss")})  # fmt: skip
        if r.config.seed == 0:
            curves[f"u at {b:g}σ, G = {gap:.3g}"] = (steps, lam)
    table = pd.DataFrame(rows)
    table["error"] = (table["final"] / table["predicted"] - 1).abs()
    flattest = float(table.loc[table["gap"].abs().idxmin(), "final"]) / (2 * S)
    rho = spearmanr(table["gap"].abs(), table["final"])
    numbers: dict[str, Any] = {}
    for b, g in table.groupby("u_scale", sort=True):
        numbers[f"u at {b:g}σ: final G = ||u||² − ||v||², mean [CI]"] = mean_ci(g["gap"]).text(3)
        numbers[f"u at {b:g}σ: final λ_max measured / sqrt(G² + 4s²) (means)"] = (
            f"{g['final'].mean():.5g} / {g['predicted'].mean():.5g}"
        )
        numbers[f"u at {b:g}σ: largest λ_max along the run (worst seed)"] = float(g["peak"].max())
    numbers["stable-step line 2/η"] = 2 / ETA
    numbers["largest |λ_max / sqrt(G² + 4s²) − 1| at the minimum"] = float(table["error"].max())
    numbers["Spearman ρ of λ_max against |G| over every run (p)"] = f"{rho.statistic:.4f} ({rho.pvalue:.2g})"
    verdict = theory_verdicts.balance_is_flat(
        float(table["error"].max()), float(rho.statistic), float(rho.pvalue), flattest,
        float(table["peak"].max()) < 2 / ETA, SEEDS, len(U_SCALES), float(table["loss"].max()),
    )  # fmt: skip
    return Finding(numbers, verdict, figure(curves, table), main=0)


def figure(curves: dict[str, tuple[list[int], list[float]]], table: pd.DataFrame) -> go.Figure:
    """lambda_max along the runs (seed 0 per imbalance) with 2 / eta; final lambda_max against G with sqrt(G^2+4s^2)."""
    fig = figures._panels(["λ_max along the run (dotted: 2/η)", "λ_max at the minimum against G = ||u||² − ||v||²"])
    for i, (name, (steps, lam)) in enumerate(curves.items()):
        fig.add_trace(go.Scatter(x=np.maximum(steps, 1), y=lam, name=name, mode="lines+markers",
                                 line={"color": style.colour(i + 1)}), row=1, col=1)  # fmt: skip
    fig.add_hline(y=2 / ETA, line={"color": style.FLOW_COLOUR, "width": 1, "dash": "dot"}, row=1, col=1)
    g = np.linspace(min(0.0, table["gap"].min()), table["gap"].max(), 50)
    fig.add_trace(go.Scatter(x=table["gap"], y=table["final"], mode="markers", name="measured (every seed)",
                             marker={"color": style.colour(1), "size": 8}), row=1, col=2)  # fmt: skip
    fig.add_trace(go.Scatter(x=g, y=np.sqrt(g**2 + 4 * S**2), mode="lines", name="sqrt(G² + 4s²)",
                             line={"color": "black", "dash": "dash", "width": 1.5}), row=1, col=2)  # fmt: skip
    fig.update_xaxes(type="log", title_text="step", row=1, col=1)
    fig.update_yaxes(type="log", exponentformat="power", row=1, col=1)
    fig.update_xaxes(title_text="G at the end", row=1, col=2)
    return fig
