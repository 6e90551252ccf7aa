"""Claims about what the invariant says and where the runs start: 1 (a difference is not balance) and 2 (Gaussian
initialisation is not needed). Claim 6 (Figure 1b against Theorem 3.1) is ``balance.claims.figure1``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from balance.claims import figures, verdicts
from balance.claims.base import Finding, first, flow_ratio, identity_error, last, max_sqnorm, relative_drift, series
from balance.config import RunConfig
from balance.runs.stats import mean_ci

TEACHER = {"name": "teacher", "samples": 128, "input_dim": 5}
SEEDS = 8  # per arm: seeds of one shape train as one batched job, so they cost little


# --- 1. a constant difference is not balance ----------------------------------------------------------------------


def difference_configs(quick: bool) -> list[RunConfig]:
    """a: 2-layer ReLU MLP, squared loss, W_1 at 1e-3 of W_2; b: the same net, logistic loss on separable XOR;
    ``SEEDS`` seeds each (one batched job per setting)."""
    steps = 600 if quick else 1000
    unbalanced = RunConfig.from_dict({
        "data": TEACHER,
        "model": {"name": "mlp", "depth": 2, "width": 16, "init_scale": 0.7, "layer_scales": [1e-3, 1.0]},
        "optim": {"name": "gd", "lr": 0.05}, "steps": steps,
    })  # fmt: skip
    growing = RunConfig.from_dict({
        "data": {"name": "xor", "samples": 128, "noise": 0.0},
        "model": {"name": "mlp", "depth": 2, "width": 16, "init_scale": 0.3, "layer_scales": [0.3, 1.0]},
        "optim": {"name": "gd", "lr": 0.5}, "steps": 800 if quick else 1500,
    })  # fmt: skip
    return [c.replace(seed=s) for c in (unbalanced, growing) for s in range(SEEDS)]


def _flow_error(df: pd.DataFrame) -> float:
    predicted = flow_ratio(df)
    return float(np.nanmax(np.abs(predicted / series(df, "ratio", 1).to_numpy() - 1)))


def difference_analyse(runs: Sequence[Any]) -> Finding:
    n = len(runs) // 2
    A, B = [r.metrics for r in runs[:n]], [r.metrics for r in runs[n:]]
    a, b = A[0], B[0]
    ratio_a = mean_ci([last(m, "ratio", 1) for m in A])
    ratio_b = mean_ci([last(m, "ratio", 1) for m in B])
    growth = mean_ci([max_sqnorm(m.tail(1)) / max_sqnorm(m.head(1)) for m in B])
    ratio_b0 = float(np.mean([first(m, "ratio", 1) for m in B]))
    flow_err = max(_flow_error(m) for m in A + B)
    drift = max(relative_drift(m) for m in A + B)
    numbers = {
        "a: gap G at start / end (seed 0)": f"{first(a, 'gap', 1):.4g} / {last(a, 'gap', 1):.4g}",
        f"a: final ratio, mean [95% CI] over {n} seeds": ratio_a.text(),
        "a: max |gap drift| / largest ||W||² (worst seed)": max(relative_drift(m) for m in A),
        "b: gap G at start / end (seed 0)": f"{first(b, 'gap', 1):.4g} / {last(b, 'gap', 1):.4g}",
        "b: largest squared norm, growth, mean [95% CI]": growth.text(),
        "b: ratio at start (mean) / end, mean [95% CI]": f"{ratio_b0:.4g} / {ratio_b.text()}",
        "b: max |gap drift| / largest ||W||² (worst seed)": max(relative_drift(m) for m in B),
        "max relative error of sqrt(1 − Φ₀/||W₁||²)": flow_err,
        "drift against Σ η² Δ||g||² (relative, worst)": max(identity_error(m) for m in A + B),
    }
    verdict = verdicts.difference_not_balance(drift, ratio_a, growth, ratio_b0, ratio_b, flow_err)
    names = {"a: unbalanced, squared loss": a, "b: logistic, separable": b}
    flows = {"a: unbalanced, squared loss": flow_ratio(a), "b: logistic, separable": flow_ratio(b)}
    return Finding(numbers, verdict, figures.difference_figure(names, flows), main=0)


# --- 2. Gaussian initialisation is not needed -----------------------------------------------------------------------


def init_configs(quick: bool) -> list[RunConfig]:
    """MF (40 x 10, rank 3, sigma = 0.01) and a 3-layer ReLU MLP, Gaussian and uniform, 4 x ``SEEDS`` seeds each."""
    mf = RunConfig.from_dict({
        "data": {"name": "lowrank", "d1": 40, "d2": 10, "rank": 3},
        "model": {"name": "mf", "init_scale": 0.01}, "optim": {"name": "gd", "lr": 0.05},
        "steps": 400 if quick else 800,
    })  # fmt: skip
    mlp = RunConfig.from_dict({
        "data": TEACHER, "model": {"name": "mlp", "depth": 3, "width": 16, "init_scale": 0.25},
        "optim": {"name": "gd", "lr": 0.1}, "steps": 300 if quick else 400,
    })  # fmt: skip
    seeds = 4 * SEEDS  # batched: 32 seeds per arm cost about what 8 do
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
