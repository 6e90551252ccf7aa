"""Claims about finite steps and optimisers: 3 (the rate at which GD approaches gradient flow), 4 (SGD,
momentum and Adam), 9 (weight decay) and 10 (large step sizes balance; Wang et al. 2022).

Step-size studies compare runs at the same training time t = K eta, so each run has K = t / eta steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from balance.claims import figures, verdicts
from balance.claims.base import Finding, first, identity_error, last, loglog_slope, series
from balance.config import RunConfig
from balance.engine.theory import momentum_amplification, weight_decay_gap

MF_SMALL = {"name": "lowrank", "d1": 20, "d2": 10, "rank": 3}
TEACHER = {"name": "teacher", "samples": 128, "input_dim": 5}


def _fixed_time(config: RunConfig, etas: Sequence[float], t: float) -> list[RunConfig]:
    """``config`` at each step size for K = t / eta steps (eta chosen so that K is whole: eta = t / K)."""
    return [config.replace(**{"optim.lr": t / round(t / e), "steps": round(t / e)}) for e in etas]


# --- 3. how fast GD approaches gradient flow ----------------------------------------------------------------------

RATE_T = 5.0


def rate_etas(quick: bool) -> list[float]:
    """7 log-spaced step sizes over 2 decades (quick: 5 over 1.4 decades)."""
    return [float(e) for e in (np.geomspace(0.1, 0.004, 5) if quick else np.geomspace(0.1, 0.001, 7))]


def rate_configs(quick: bool) -> list[RunConfig]:
    """MF 20 x 10, rank 3, sigma = 0.1, GD to t = 10 at each step size."""
    base = RunConfig.from_dict({"data": MF_SMALL, "model": {"name": "mf", "init_scale": 0.1}, "optim": {"name": "gd"}})
    return _fixed_time(base, rate_etas(quick), RATE_T)


def rate_analyse(runs: Sequence[Any]) -> Finding:
    etas = [r.config.optim.lr for r in runs]
    drifts = [last(r.metrics, "gap_drift", 1) for r in runs]
    preds = [last(r.metrics, "pred_gap_drift", 1) for r in runs]
    fit = loglog_slope(etas, drifts)
    rel = max(abs(d - p) / abs(p) for d, p in zip(drifts, preds))
    numbers: dict[str, Any] = {f"drift at t = {RATE_T:g}, η = {e:.3g} (K = {r.config.steps})": d
                               for e, d, r in zip(etas, drifts, runs)}  # fmt: skip
    numbers["fitted slope of |drift| vs η, 95% CI"] = fit.text()
    numbers["per step (drift / K): slope, 95% CI"] = f"{fit.slope + 1:.3f} [{fit.low + 1:.3f}, {fit.high + 1:.3f}]"
    numbers["drift / η at the smallest η (→ ∫ Δ||g||² dt)"] = drifts[-1] / etas[-1]
    numbers["max |measured − Σ η² Δ||g||²| / |prediction|"] = rel
    verdict = verdicts.step_size_rate(fit, rel, abs(drifts[-1]))
    main = len(runs) // 2
    return Finding(numbers, verdict, figures.rate_figure(etas, drifts, preds, fit, RATE_T), main=main)


# --- 4. SGD, momentum, Adam -----------------------------------------------------------------------------------------

BETA = 0.9
MOMENTUM_T = 2.0
OPTIMISERS = ("gd", "sgd", "momentum", "nesterov", "adam")


def momentum_configs(quick: bool) -> list[RunConfig]:
    """3-layer ReLU MLP; each optimiser at effective step sizes eta_eff (momentum: lr = eta_eff (1 - beta); Adam:
    lr = eta_eff / 10), the same K = t / eta_eff steps, t = 2; SGD with batches of 32."""
    base = RunConfig.from_dict({"data": TEACHER, "model": {"name": "mlp", "depth": 3, "width": 16, "init_scale": 0.25}})
    etas = [0.02, 0.01, 0.005] if quick else [0.02, 0.01, 0.005, 0.0025]
    out = []
    for name in OPTIMISERS:
        for e in etas:
            k = round(MOMENTUM_T / e)
            lr = {"momentum": e * (1 - BETA), "nesterov": e * (1 - BETA), "adam": e / 10}.get(name, e)
            extra: dict[str, Any] = {"optim.momentum": BETA} if name in ("momentum", "nesterov", "adam") else {}
            if name == "sgd":
                extra["optim.batch_size"] = 32
            out.append(base.replace(**{"optim.name": name, "optim.lr": lr, "steps": k, **extra}))
    return out


def momentum_analyse(runs: Sequence[Any]) -> Finding:
    rows = []
    for r in runs:
        o, k = r.config.optim, r.config.steps
        rows.append({"optimiser": o.name, "eta_eff": MOMENTUM_T / k, "lr": o.lr,
                     "drift": last(r.metrics, "gap_drift", 1),
                     "pred": last(r.metrics, "pred_gap_drift", 1), "identity": identity_error(r.metrics)})  # fmt: skip
    table = pd.DataFrame(rows)
    fits = {n: loglog_slope(d["eta_eff"], d["drift"]) for n, d in table.groupby("optimiser", sort=False)}
    smallest = table["eta_eff"].min()
    at = table[table["eta_eff"] == smallest].set_index("optimiser")["drift"].abs()
    amplification = {
        n: (float(at[n] / at["gd"]), momentum_amplification(BETA, nesterov=n == "nesterov"))
        for n in ("momentum", "nesterov")
    }
    identity = float(table.loc[table["optimiser"] != "adam", "identity"].max())
    numbers: dict[str, Any] = {f"{n}: slope of |drift| vs η_eff, 95% CI": f.text() for n, f in fits.items()}
    for n, (m, f) in amplification.items():
        numbers[f"{n}: drift / GD drift at η_eff = {smallest:g} (formula)"] = f"{m:.3g} ({f:.3g})"
    numbers["adam: drift at the smallest step"] = float(at["adam"])
    numbers["identity error / ||W||² (all but Adam)"] = identity
    verdict = verdicts.momentum_holds(fits, amplification, identity)
    main = int(np.flatnonzero((table["optimiser"] == "momentum").to_numpy())[0])
    return Finding(numbers, verdict, figures.optimiser_figure(table), main=main)


# --- 9. weight decay ------------------------------------------------------------------------------------------------


def decay_configs(quick: bool) -> list[RunConfig]:
    """MF 20 x 10, V at 0.1 of U (a large gap), GD eta = 0.05 with coupled weight decay lambda = 0.05."""
    return [RunConfig.from_dict({
        "data": MF_SMALL, "model": {"name": "mf", "init_scale": 0.3, "layer_scales": [0.1, 1.0]},
        "optim": {"name": "gd", "lr": 0.05, "weight_decay": 0.05}, "steps": 600 if quick else 1000,
    })]  # fmt: skip


def decay_analyse(runs: Sequence[Any]) -> Finding:
    df, o = runs[0].metrics, runs[0].config.optim
    g0 = first(df, "gap", 1)
    formula = weight_decay_gap(g0, o.lr, o.weight_decay, df["step"].to_numpy())
    exact = g0 + series(df, "pred_gap_drift", 1).to_numpy()
    formula_err = float(np.max(np.abs(series(df, "gap", 1).to_numpy() - formula)) / abs(g0))
    identity = float(np.max(np.abs(series(df, "gap", 1).to_numpy() - exact)) / abs(g0))
    rate = (1 - o.lr * o.weight_decay) ** 2
    numbers = {
        "G_0": g0,
        "G_K / G_0 measured": last(df, "gap", 1) / g0,
        "(1 − ηλ)^(2K) predicted": (1 - o.lr * o.weight_decay) ** (2 * runs[0].config.steps),
        "max |G_k − G_0 (1 − ηλ)^(2k)| / |G_0|": formula_err,
        "max |G_k − exact recursion| / |G_0|": identity,
    }
    verdict = verdicts.weight_decay_formula(formula_err, identity, last(df, "gap", 1) / g0, rate)
    return Finding(numbers, verdict, figures.decay_figure(df, formula, exact), main=0)


# --- 10. large step sizes balance (Wang, Chen, Zhao, Tao 2022) ------------------------------------------------------

MU = 1.0


def large_lr_configs(quick: bool) -> list[RunConfig]:
    """Rank-1 MF 10 x 10, M = mu a b^T with mu = 1; ||u_0||^2 ~ 4, ||v_0||^2 ~ 0.01; GD at step sizes to 1.1."""
    base = RunConfig.from_dict({
        "data": {"name": "lowrank", "d1": 10, "d2": 10, "rank": 1, "singular_values": [MU]},
        "model": {"name": "mf", "init_scale": 0.6325, "layer_scales": [0.05, 1.0]},
        "optim": {"name": "gd"}, "steps": 600 if quick else 800,
    })  # fmt: skip
    etas = [0.05, 0.2, 0.5, 0.7, 0.9, 1.1] if quick else [0.05, 0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.05, 1.1]
    return [base.replace(**{"optim.lr": e}) for e in etas]


def large_lr_analyse(runs: Sequence[Any]) -> Finding:
    rows = []
    for r in runs:
        m = r.metrics
        u, v = np.sqrt(last(m, "sqnorm", 2)), np.sqrt(last(m, "sqnorm", 1))
        converged = r.status.state == "finished" and last(m, "loss") <= 1e-8 * first(m, "loss")
        eta = r.config.optim.lr
        rows.append({"eta": eta, "ratio": last(m, "ratio", 1), "converged": converged, "gap": (u - v) ** 2,
                     "slack": 2 / eta - 2 * MU - (u - v) ** 2, "state": r.status.state})  # fmt: skip
    table = pd.DataFrame(rows)
    numbers: dict[str, Any] = {
        f"η = {row.eta:g}": f"ratio {row.ratio:.4g}, " + (
            f"(||u|| − ||v||)² = {row.gap:.3g} ≤ 2/η − 2μ = {2 / row.eta - 2 * MU:.3g}" if row.converged
            else "not converged" if row.state == "finished" else row.state
        )
        for row in table.itertuples()
    }  # fmt: skip
    verdict = verdicts.large_steps_balance(table["eta"], table["ratio"], table["converged"], table["slack"])
    best = table[table["converged"]]
    main = int(best["eta"].idxmax()) if len(best) else 0
    return Finding(numbers, verdict, figures.large_lr_figure(table, MU), main=main)
