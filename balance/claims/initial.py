"""Claims about what the invariant says and where the runs start: 1 (a difference is not balance), 2 (Gaussian
initialisation is not needed) and 6 (Figure 1b against Theorem 3.1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from balance.claims import figures, verdicts
from balance.claims.base import Finding, first, flow_ratio, identity_error, last, max_sqnorm, relative_drift, series
from balance.config import RunConfig
from balance.config.presets import preset
from balance.engine.theory import mf_balanced_ratio

TEACHER = {"name": "teacher", "samples": 128, "input_dim": 5}


# --- 1. a constant difference is not balance ----------------------------------------------------------------------


def difference_configs(quick: bool) -> list[RunConfig]:
    """a: 2-layer ReLU MLP, squared loss, W_1 at 1e-3 of W_2; b: the same net, logistic loss on separable XOR."""
    steps = 600 if quick else 1500
    unbalanced = RunConfig.from_dict({
        "data": TEACHER,
        "model": {"name": "mlp", "depth": 2, "width": 16, "init_scale": 0.7, "layer_scales": [1e-3, 1.0]},
        "optim": {"name": "gd", "lr": 0.05}, "steps": steps,
    })  # fmt: skip
    growing = RunConfig.from_dict({
        "data": {"name": "xor", "samples": 128, "noise": 0.0},
        "model": {"name": "mlp", "depth": 2, "width": 16, "init_scale": 0.3, "layer_scales": [0.3, 1.0]},
        "optim": {"name": "gd", "lr": 0.5}, "steps": 800 if quick else 2000,
    })  # fmt: skip
    return [unbalanced, growing]


def _flow_error(df: pd.DataFrame) -> float:
    predicted = flow_ratio(df)
    return float(np.nanmax(np.abs(predicted / series(df, "ratio", 1).to_numpy() - 1)))


def difference_analyse(runs: Sequence[Any]) -> Finding:
    a, b = runs[0].metrics, runs[1].metrics
    growth = max_sqnorm(b.tail(1)) / max_sqnorm(b.head(1))
    flow_err = max(_flow_error(a), _flow_error(b))
    numbers = {
        "a: gap G at start / end": f"{first(a, 'gap', 1):.4g} / {last(a, 'gap', 1):.4g}",
        "a: ratio at start / end": f"{first(a, 'ratio', 1):.4g} / {last(a, 'ratio', 1):.4g}",
        "a: max |gap drift| / largest ||W||²": relative_drift(a),
        "b: gap G at start / end": f"{first(b, 'gap', 1):.4g} / {last(b, 'gap', 1):.4g}",
        "b: largest squared norm, growth": growth,
        "b: ratio at start / end": f"{first(b, 'ratio', 1):.4g} / {last(b, 'ratio', 1):.4g}",
        "b: max |gap drift| / largest ||W||²": relative_drift(b),
        "max relative error of sqrt(1 − Φ₀/||W₁||²)": flow_err,
        "drift against Σ η² Δ||g||² (relative)": max(identity_error(a), identity_error(b)),
    }
    verdict = verdicts.difference_not_balance(
        relative_drift(a), last(a, "ratio", 1), relative_drift(b), growth, first(b, "ratio", 1), last(b, "ratio", 1),
        flow_err,
    )  # fmt: skip
    names = {"a: unbalanced, squared loss": a, "b: logistic, separable": b}
    flows = {"a: unbalanced, squared loss": flow_ratio(a), "b: logistic, separable": flow_ratio(b)}
    return Finding(numbers, verdict, figures.difference_figure(names, flows), main=0)


# --- 2. Gaussian initialisation is not needed -----------------------------------------------------------------------

SEEDS = 3


def init_configs(quick: bool) -> list[RunConfig]:
    """MF (40 x 10, rank 3, sigma = 0.01) and a 3-layer ReLU MLP, Gaussian and uniform, ``SEEDS`` seeds each."""
    mf = RunConfig.from_dict({
        "data": {"name": "lowrank", "d1": 40, "d2": 10, "rank": 3},
        "model": {"name": "mf", "init_scale": 0.01}, "optim": {"name": "gd", "lr": 0.05},
        "steps": 400 if quick else 800,
    })  # fmt: skip
    mlp = RunConfig.from_dict({
        "data": TEACHER, "model": {"name": "mlp", "depth": 3, "width": 16, "init_scale": 0.25},
        "optim": {"name": "gd", "lr": 0.1}, "steps": 300 if quick else 400,
    })  # fmt: skip
    seeds = 2 if quick else SEEDS
    return [c.replace(**{"model.init": init, "seed": s}) for c in (mf, mlp) for init in ("gaussian", "uniform")
            for s in range(seeds)]  # fmt: skip


def init_analyse(runs: Sequence[Any]) -> Finding:
    rows = []
    for r in runs:
        m = r.metrics
        rows.append({
            "model": "MF" if r.config.model.name == "mf" else "ReLU MLP", "init": r.config.model.init,
            "seed": r.config.seed, "ratio": last(m, "ratio", 1), "loss_drop": last(m, "loss") / first(m, "loss"),
            "identity": identity_error(m),
        })  # fmt: skip
    table = pd.DataFrame(rows)
    grouped: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    for row in rows:
        grouped.setdefault(row["model"], {}).setdefault(row["init"], []).append(
            (row["ratio"], row["loss_drop"], row["identity"])
        )
    numbers: dict[str, Any] = {}
    for (model, init), d in table.groupby(["model", "init"], sort=False):
        numbers[f"{model}, {init}: final ratio (mean ± sd)"] = f"{d['ratio'].mean():.5g} ± {d['ratio'].std():.2g}"
        numbers[f"{model}, {init}: final / initial loss (worst)"] = float(d["loss_drop"].max())
    numbers["identity error / ||W||² (worst)"] = float(table["identity"].max())
    return Finding(numbers, verdicts.init_not_needed(grouped), figures.init_figure(table), main=0)


# --- 6. Figure 1b against Theorem 3.1 -------------------------------------------------------------------------------

FIG1 = ("fig1-small", "fig1-large", "fig1-small-reg", "fig1-large-reg")


def figure1_configs(quick: bool) -> list[RunConfig]:
    """The Figure 1 analogue presets (d1 = 100, d2 = 25, r = 5, GD eta = 0.01); fewer steps when quick."""
    return [preset(name).replace(steps=1000) if quick else preset(name) for name in FIG1]


def _ends(df: pd.DataFrame, metric: str, index: int | None = None) -> str:
    return f"{first(df, metric, index):.4g} / {last(df, metric, index):.3g}"


def figure1_analyse(runs: Sequence[Any]) -> Finding:
    small, large, small_reg, large_reg = (r.metrics for r in runs)
    cfg = runs[0].config
    s = cfg.data.singular_values or tuple(float(k) for k in range(cfg.data.rank, 0, -1))
    trace_d = first(small, "gap", 1)  # tr(U^T U - V^T V) = ||U||^2 - ||V||^2
    predicted = mf_balanced_ratio(s, trace_d, cfg.data.rank)
    invariant_rel = float(series(small, "matrix_inv", 1).max()) / last(small, "sqnorm", 2)
    flow_err = float(np.nanmax(np.abs(flow_ratio(small) / series(small, "ratio", 1).to_numpy() - 1)))
    below = small.index[series(small, "ratio", 1) <= 1.1]
    numbers = {
        "small init (7): max ||UᵀU − VᵀV||_F": float(series(small, "matrix_inv", 1).max()),
        "small init (7): final ||U||_F²": last(small, "sqnorm", 2),
        "small init (7): ratio at step 0": first(small, "ratio", 1),
        "small init (7): first step with ratio ≤ 1.1": int(small.loc[below[0], "step"]) if len(below) else "never",
        "small init (7): final ratio / predicted": f"{last(small, 'ratio', 1):.7g} / {predicted:.7g}",
        "large init (7): ||UᵀU − VᵀV||_F start / end": _ends(large, "matrix_inv", 1),
        "large init (7): final ratio": last(large, "ratio", 1),
        "small init (9): ||UᵀU − VᵀV||_F start / end": _ends(small_reg, "matrix_inv", 1),
        "large init (9): ||UᵀU − VᵀV||_F start / end": _ends(large_reg, "matrix_inv", 1),
        "large init (9): final ratio": last(large_reg, "ratio", 1),
    }  # fmt: skip
    verdict = verdicts.figure1_consistent(
        invariant_rel, first(small, "ratio", 1), flow_err, last(small, "ratio", 1), predicted
    )
    named = dict(
        zip(("small σ, (7)", "large σ, (7)", "small σ, (9)", "large σ, (9)"), (small, large, small_reg, large_reg))
    )
    # the implied ratio only for objective (7): under (9) the regulariser changes U^T U - V^T V at first order
    flows = {"small σ, (7)": flow_ratio(small), "large σ, (7)": flow_ratio(large)}
    return Finding(numbers, verdict, figures.figure1_figure(named, flows), main=0)
