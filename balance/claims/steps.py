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
from balance.claims.base import Finding, first, identity_error, last, loglog_slope, pivot, seed_fit, series
from balance.config import RunConfig
from balance.engine.theory import momentum_amplification, weight_decay_gap
from balance.runs.stats import mean_ci, ratio_ci

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


SEEDS = 8  # per step size: the seeds of one step size train as one batched job


def rate_configs(quick: bool) -> list[RunConfig]:
    """MF 20 x 10, rank 3, sigma = 0.1, GD to t = 5 at each step size, ``SEEDS`` seeds (init) each."""
    base = RunConfig.from_dict({"data": MF_SMALL, "model": {"name": "mf", "init_scale": 0.1}, "optim": {"name": "gd"}})
    return [c.replace(seed=s) for c in _fixed_time(base, rate_etas(quick), RATE_T) for s in range(SEEDS)]


def _table(runs: Sequence[Any], **extra: Any) -> pd.DataFrame:
    """One row per run: seed, eta (lr), K, final gap drift and its exact prediction, and ``extra`` readers."""
    return pd.DataFrame([
        {"seed": r.config.seed, "eta": r.config.optim.lr, "K": r.config.steps,
         "drift": last(r.metrics, "gap_drift", 1), "pred": last(r.metrics, "pred_gap_drift", 1),
         **{k: f(r) for k, f in extra.items()}}
        for r in runs
    ])  # fmt: skip


def rate_analyse(runs: Sequence[Any]) -> Finding:
    table = _table(runs)
    etas, per_seed = pivot(table, "eta", "drift")
    fit = seed_fit(etas, per_seed)
    pooled = loglog_slope(table["eta"], table["drift"])
    rel = float(((table["drift"] - table["pred"]).abs() / table["pred"].abs()).max())
    mean = table.groupby("eta")["drift"].mean()
    numbers: dict[str, Any] = {f"mean drift at t = {RATE_T:g}, η = {e:.3g} (K = {round(RATE_T / e)})": float(mean[e])
                               for e in sorted(etas, reverse=True)}  # fmt: skip
    numbers[f"slope of |drift| vs η per seed, mean [95% CI] over {fit.n} seeds"] = fit.text()
    numbers["(pooled regression of all seeds, for comparison)"] = pooled.text()
    numbers["per step (drift / K): slope, 95% CI"] = f"{fit.slope + 1:.3f} [{fit.low + 1:.3f}, {fit.high + 1:.3f}]"
    numbers["drift / η at the smallest η (→ ∫ Δ||g||² dt), seed 0"] = per_seed[0][0] / etas[0]
    numbers["max |measured − Σ η² Δ||g||²| / |prediction|"] = rel
    verdict = verdicts.step_size_rate(fit, rel, float(np.abs(per_seed[0][0])), len(etas))
    seed0 = table[table["seed"] == table["seed"].min()].sort_values("eta", ascending=False)
    main = int(seed0.index[len(seed0) // 2])
    fig = figures.rate_figure(seed0["eta"].tolist(), seed0["drift"].tolist(), seed0["pred"].tolist(), fit, RATE_T)
    return Finding(numbers, verdict, fig, main=main)


# --- 4. SGD, momentum, Adam -----------------------------------------------------------------------------------------

BETA = 0.9
MOMENTUM_T = 2.0
OPTIMISERS = ("gd", "sgd", "momentum", "nesterov", "sgd+momentum", "adam")


def momentum_configs(quick: bool) -> list[RunConfig]:
    """3-layer ReLU MLP; each optimiser at effective step sizes eta_eff (momentum: lr = eta_eff (1 - beta); Adam:
    lr = eta_eff / 10), the same K = t / eta_eff steps, t = 2; SGD and SGD with heavy-ball momentum on batches of
    32; ``SEEDS`` seeds (init and mini-batch order) each. SGD is heavy ball with beta = 0 (the same update, exactly),
    so its seeds train as one batched job like the others'."""
    base = RunConfig.from_dict({"data": TEACHER, "model": {"name": "mlp", "depth": 3, "width": 16, "init_scale": 0.25}})
    etas = [0.02, 0.01, 0.005] if quick else [0.02, 0.01, 0.005, 0.0025]
    out = []
    for name in OPTIMISERS:
        for e in etas:
            k = round(MOMENTUM_T / e)
            rule = "momentum" if name in ("sgd", "sgd+momentum") else name
            beta = 0.0 if name == "sgd" else BETA
            lr = {"momentum": e * (1 - beta), "nesterov": e * (1 - beta), "adam": e / 10}.get(rule, e)
            extra: dict[str, Any] = {"optim.momentum": beta} if rule in ("momentum", "nesterov", "adam") else {}
            if name in ("sgd", "sgd+momentum"):
                extra["optim.batch_size"] = 32
            c = base.replace(**{"optim.name": rule, "optim.lr": lr, "steps": k, **extra})
            out += [c.replace(seed=s) for s in range(SEEDS)]
    return out


def _optimiser(r: Any) -> str:
    o = r.config.optim
    if o.name == "momentum" and o.batch_size:
        return "sgd+momentum" if o.momentum else "sgd"
    return o.name


def momentum_analyse(runs: Sequence[Any]) -> Finding:
    table = _table(runs, optimiser=_optimiser, identity=lambda r: identity_error(r.metrics))
    table["eta_eff"] = MOMENTUM_T / table["K"]
    fits = {n: seed_fit(*pivot(d, "eta_eff", "drift")) for n, d in table.groupby("optimiser", sort=False)}
    smallest = table["eta_eff"].min()
    at = table[table["eta_eff"] == smallest].pivot_table(index="seed", columns="optimiser", values="drift").abs()
    amplification = {
        n: (ratio_ci(at["gd"], at[n]), momentum_amplification(BETA, nesterov=n == "nesterov"))
        for n in ("momentum", "nesterov", "sgd+momentum")
    }
    identity = float(table.loc[table["optimiser"] != "adam", "identity"].max())
    numbers: dict[str, Any] = {f"{n}: slope of |drift| vs η_eff per seed, mean [95% CI]": f.text()
                               for n, f in fits.items()}  # fmt: skip
    for n, (m, f) in amplification.items():
        numbers[f"{n}: drift / GD drift at η_eff = {smallest:g}, mean [CI] (formula)"] = f"{m.text(3)} ({f:.3g})"
    numbers["adam: drift at the smallest step (mean)"] = float(at["adam"].mean())
    numbers["identity error / ||W||² (all but Adam)"] = identity
    verdict = verdicts.momentum_holds(fits, amplification, identity)
    main = int(np.flatnonzero((table["optimiser"] == "momentum").to_numpy())[0])
    seed0 = table[table["seed"] == table["seed"].min()]
    return Finding(numbers, verdict, figures.optimiser_figure(seed0), main=main)


# --- 9. weight decay ------------------------------------------------------------------------------------------------


def decay_configs(quick: bool) -> list[RunConfig]:
    """MF 20 x 10, V at 0.1 of U (a large gap), GD eta = 0.05 with coupled weight decay lambda = 0.05; ``SEEDS``
    seeds (one batched job)."""
    c = RunConfig.from_dict({
        "data": MF_SMALL, "model": {"name": "mf", "init_scale": 0.3, "layer_scales": [0.1, 1.0]},
        "optim": {"name": "gd", "lr": 0.05, "weight_decay": 0.05}, "steps": 600 if quick else 1000,
    })  # fmt: skip
    return [c.replace(seed=s) for s in range(SEEDS)]


def _decay(df: pd.DataFrame, lr: float, wd: float) -> tuple[float, float, float, np.ndarray, np.ndarray]:
    """(formula error / |G_0|, exact recursion error / |G_0|, G_K / G_0, the formula, the exact recursion)."""
    g0 = first(df, "gap", 1)
    formula = weight_decay_gap(g0, lr, wd, df["step"].to_numpy())
    exact = g0 + series(df, "pred_gap_drift", 1).to_numpy()
    gap = series(df, "gap", 1).to_numpy()
    return (float(np.max(np.abs(gap - formula)) / abs(g0)), float(np.max(np.abs(gap - exact)) / abs(g0)),
            last(df, "gap", 1) / g0, formula, exact)  # fmt: skip


def decay_analyse(runs: Sequence[Any]) -> Finding:
    o = runs[0].config.optim
    read = [_decay(r.metrics, o.lr, o.weight_decay) for r in runs]
    formula_err, identity, final = (max(x[i] for x in read) for i in range(3))
    df = runs[0].metrics
    numbers = {
        "G_0 (seed 0)": first(df, "gap", 1),
        "G_K / G_0 measured, mean [95% CI]": mean_ci([x[2] for x in read]).text(),
        "(1 − ηλ)^(2K) predicted": (1 - o.lr * o.weight_decay) ** (2 * runs[0].config.steps),
        "max |G_k − G_0 (1 − ηλ)^(2k)| / |G_0| (worst seed)": formula_err,
        "max |G_k − exact recursion| / |G_0| (worst seed)": identity,
    }
    rate = (1 - o.lr * o.weight_decay) ** 2
    verdict = verdicts.weight_decay_formula(formula_err, identity, final, rate, f"{len(runs)} seeds, one step size")
    return Finding(numbers, verdict, figures.decay_figure(df, read[0][3], read[0][4]), main=0)


# --- 10. large step sizes balance (Wang, Chen, Zhao, Tao 2022) ------------------------------------------------------

MU = 1.0


def large_lr_configs(quick: bool) -> list[RunConfig]:
    """Rank-1 MF 10 x 10, M = mu a b^T with mu = 1; ||u_0||^2 ~ 4, ||v_0||^2 ~ 0.01; GD at step sizes to 1.1,
    ``SEEDS`` seeds each (every step size and seed in one batched job)."""
    base = RunConfig.from_dict({
        "data": {"name": "lowrank", "d1": 10, "d2": 10, "rank": 1, "singular_values": [MU]},
        "model": {"name": "mf", "init_scale": 0.6325, "layer_scales": [0.05, 1.0]},
        "optim": {"name": "gd"}, "steps": 600 if quick else 800,
    })  # fmt: skip
    etas = [0.05, 0.2, 0.5, 0.7, 0.9, 1.1] if quick else [0.05, 0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.05, 1.1]
    return [base.replace(**{"optim.lr": e, "seed": s}) for e in etas for s in range(SEEDS)]


def _large_row(r: Any) -> dict[str, Any]:
    m = r.metrics
    u, v = np.sqrt(last(m, "sqnorm", 2)), np.sqrt(last(m, "sqnorm", 1))
    converged = r.status.state == "finished" and last(m, "loss") <= 1e-8 * first(m, "loss")
    eta = r.config.optim.lr
    return {"eta": eta, "seed": r.config.seed, "ratio": last(m, "ratio", 1), "converged": converged,
            "gap": (u - v) ** 2, "slack": 2 / eta - 2 * MU - (u - v) ** 2, "state": r.status.state}  # fmt: skip


def large_lr_analyse(runs: Sequence[Any]) -> Finding:
    table = pd.DataFrame([_large_row(r) for r in runs])
    groups = list(table.groupby("eta", sort=True))
    numbers: dict[str, Any] = {}
    for eta, d in groups:
        ok = d[d["converged"]]
        imbalance = np.maximum(ok["ratio"], 1 / ok["ratio"])
        numbers[f"η = {eta:g}"] = (
            f"{len(ok)}/{len(d)} converged; imbalance max(r, 1/r) {mean_ci(imbalance).text(3)}; "
            f"(||u|| − ||v||)² ≤ 2/η − 2μ = {2 / eta - 2 * MU:.3g} for {int((ok['slack'] >= -1e-9).sum())}"
            if len(ok) else f"0/{len(d)} converged ({', '.join(sorted(set(d['state'])))})"
        )  # fmt: skip
    verdict = verdicts.large_steps_balance(
        [e for e, _ in groups], [d["ratio"].tolist() for _, d in groups], [d["converged"].tolist() for _, d in groups],
        [d["slack"].tolist() for _, d in groups],
    )  # fmt: skip
    seed0 = table[table["seed"] == table["seed"].min()].reset_index()
    best = seed0[seed0["converged"]]
    main = int(best.loc[best["eta"].idxmax(), "index"]) if len(best) else 0
    return Finding(numbers, verdict, figures.large_lr_figure(seed0, MU), main=main)
