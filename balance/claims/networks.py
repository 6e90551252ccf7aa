"""Claims about architectures: 5 (batch normalisation), 7 (deep ReLU networks and a CNN) and 8 (the tanh control)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from balance.claims import figures, verdicts
from balance.claims.base import Finding, first, identity_error, last, pivot, relative_drift, seed_fit, series
from balance.config import RunConfig
from balance.engine.laws import of_metric, why_no_law
from balance.runs.stats import ratio_ci

TEACHER = {"name": "teacher", "samples": 128, "input_dim": 5}


# --- 5. batch normalisation -----------------------------------------------------------------------------------------

BN_T = 10.0
BN_ETAS = (0.05, 0.025, 0.0125)  # halving: three points per seed for the slope
SEEDS = 8


def batchnorm_configs(quick: bool) -> list[RunConfig]:
    """x -> W_1 -> BatchNorm -> ReLU -> W_2 (width 16), GD to t = 10 (quick: 5) at each step size, ``SEEDS`` seeds."""
    base = RunConfig.from_dict({
        "data": TEACHER, "model": {"name": "mlp", "depth": 2, "width": 16, "init_scale": 0.25, "batch_norm": True},
        "optim": {"name": "gd"},
    })  # fmt: skip
    t = BN_T / 2 if quick else BN_T
    return [base.replace(**{"optim.lr": e, "steps": round(t / e), "seed": s}) for e in BN_ETAS for s in range(SEEDS)]


def _growth(df: Any) -> tuple[float, float]:
    """(relative error of the total growth of ||W_1||^2 against sum eta^2 ||g_1||^2, largest one-step decrease)."""
    sq = series(df, "sqnorm", 1).to_numpy()
    predicted = float(np.sum((df["lr"].to_numpy() ** 2 * series(df, "grad_norm", 1).to_numpy() ** 2)[:-1]))
    return abs((sq[-1] - sq[0]) / predicted - 1), float(np.max(-np.diff(sq)))


def batchnorm_analyse(runs: Sequence[Any]) -> Finding:
    table = pd.DataFrame([{"seed": r.config.seed, "eta": r.config.optim.lr, "gap": last(r.metrics, "gap_drift", 1),
                           "neuron": last(r.metrics, "neuron_drift_max"),
                           **dict(zip(("err", "down"), _growth(r.metrics)))} for r in runs])  # fmt: skip
    gap_fit, neuron_fit = (seed_fit(*pivot(table, "eta", col)) for col in ("gap", "neuron"))
    err, down = float(table["err"].max()), float(table["down"].max())
    mean = table.groupby("eta")[["gap", "neuron"]].mean()
    a = runs[0].metrics
    numbers: dict[str, Any] = {
        f"η = {BN_ETAS[0]:g}, seed 0: ||W₁||² start → end": f"{first(a, 'sqnorm', 1):.8g} → {last(a, 'sqnorm', 1):.8g}",
        "growth against Σ η² ||g₁||², relative error (worst)": err,
        "largest one-step decrease of ||W₁||²": down,
        **{f"η = {e:g}: cross-layer gap drift / (γ, β) drift at t (means)": f"{row.gap:.4g} / {row.neuron:.3g}"
           for e, row in mean.iterrows()},
        "cross-layer gap drift: prediction": f"none ({why_no_law(runs[0].config)})",
        f"slope of the gap drift vs η per seed, mean [95% CI] ({gap_fit.n} seeds)": gap_fit.text(),
        "slope of the (γ, β) drift vs η per seed, mean [95% CI]": neuron_fit.text(),
    }  # fmt: skip
    verdict = verdicts.batchnorm_moves_invariant(err, down, gap_fit, neuron_fit, len(BN_ETAS))
    named = {f"η = {r.config.optim.lr:g}": r.metrics for r in runs if r.config.seed == 0}
    return Finding(numbers, verdict, figures.batchnorm_figure(named), main=0)


# --- 7. deep ReLU networks and a CNN --------------------------------------------------------------------------------


def _layer_sizes(config: RunConfig) -> list[int]:
    """Number of weights of each layer (input side first), from the config's shapes."""
    m, d = config.model, config.data
    if m.name == "cnn":
        side, c_in, sizes = d.image_size, 1, []
        for c in m.hidden_widths():
            sizes.append(c_in * c * 9)
            side, c_in = (side // 2 if side >= 2 else side), c
        return [*sizes, c_in * side * side * d.output_dim]
    dims = (d.input_dim, *m.hidden_widths(), d.output_dim)
    return [a * b for a, b in itertools.pairwise(dims)]


def balanced_scales(config: RunConfig) -> tuple[float, ...]:
    """Per-layer multipliers giving every layer the same expected squared norm (init_scale^2 x the largest
    layer's size): sigma_h proportional to 1 / sqrt(n_h)."""
    sizes = _layer_sizes(config)
    return tuple(math.sqrt(max(sizes) / n) for n in sizes)


DEEP = (("3-layer MLP", "mlp", 3), ("6-layer MLP", "mlp", 6), ("CNN", "cnn", 3))


DEEP_SEEDS = {"mlp": 8, "cnn": 2}  # MLP seeds train as one batched job; a CNN trains one per process


def deep_configs(quick: bool) -> list[RunConfig]:
    """3- and 6-layer ReLU MLPs (width 16) and a 3-layer CNN (4 channels, 6 x 6 inputs) on teacher-student data:
    balanced starts (equal expected squared norms) and unbalanced ones (the first layer at 0.1 of that), with
    ``DEEP_SEEDS`` seeds each."""
    out = []
    for _, name, depth in DEEP:
        steps = (150 if name == "cnn" else 400) if quick else (300 if name == "cnn" else 600)
        c = RunConfig.from_dict({
            "data": {**TEACHER, "image_size": 6},
            "model": {"name": name, "depth": depth, "width": 16 if name == "mlp" else 4},
            "optim": {"name": "gd", "lr": 0.05}, "steps": steps,
        })  # fmt: skip
        scales = balanced_scales(c)
        # init_scale puts the largest layer at sigma = 1 / sqrt(fan-in): a usual scale, so the nets learn
        c = c.replace(**{"model.init_scale": 0.25 if name == "mlp" else 0.15, "model.layer_scales": scales})
        for start in (c, c.replace(**{"model.layer_scales": (scales[0] * 0.1, *scales[1:])})):
            out += [start.replace(seed=s) for s in range(DEEP_SEEDS[name])]
    return out


def deep_analyse(runs: Sequence[Any]) -> Finding:
    labels = [f"{title}, {start}" for title, _, _ in DEEP for start in ("balanced", "unbalanced")]
    counts = [DEEP_SEEDS[name] for _, name, _ in DEEP for _ in range(2)]
    groups, i = {}, 0
    for label, n in zip(labels, counts):
        groups[label], i = runs[i : i + n], i + n
    numbers: dict[str, Any] = {}
    judged: dict[str, tuple[float, float, float]] = {}
    for label, rs in groups.items():
        ms = [r.metrics for r in rs]
        judged[label] = (max(relative_drift(m) for m in ms), max(identity_error(m) for m in ms),
                         max(last(m, "loss") / first(m, "loss") for m in ms))  # fmt: skip
        m = ms[0]
        hs = of_metric(m.columns, "ratio")
        numbers[f"{label}: max |gap drift| / largest ||W||² (worst of {len(ms)} seeds)"] = judged[label][0]
        numbers[f"{label}: final / initial loss (worst seed)"] = judged[label][2]
        numbers[f"{label}: first ratio start → end (seed 0)"] = (
            f"{first(m, 'ratio', hs[0]):.3g} → {last(m, 'ratio', hs[0]):.3g}"
        )
    numbers["identity error / ||W||² (worst)"] = max(e for _, e, _ in judged.values())
    evidence = ", ".join(f"{n} seeds ({name})" for name, n in DEEP_SEEDS.items()) + f" × 2 starts; {len(runs)} runs"
    verdict = verdicts.deep_networks_conserve(judged, evidence)
    tolerance = verdicts.TOL["deep"]["gap drift / largest ||W||^2"]
    example = groups[labels[3]][0]
    fig = figures.deep_figure(example.metrics, labels[3], {k: v[0] for k, v in judged.items()}, tolerance)
    return Finding(numbers, verdict, fig, main=runs.index(example))


# --- 8. the tanh control --------------------------------------------------------------------------------------------

TANH_T = 2.0


def tanh_configs(quick: bool) -> list[RunConfig]:
    """3-layer MLP, tanh and its ReLU twin, GD to t = 2 at 4 step sizes (3 when quick), ``SEEDS`` seeds each."""
    etas = [0.04, 0.02, 0.01] if quick else [0.04, 0.02, 0.01, 0.005]
    out = []
    for act in ("tanh", "relu"):
        base = RunConfig.from_dict({
            "data": TEACHER, "model": {"name": "mlp", "depth": 3, "width": 16, "init_scale": 0.25, "activation": act},
            "optim": {"name": "gd"},
        })  # fmt: skip
        for e in etas:
            c = base.replace(**{"optim.lr": TANH_T / round(TANH_T / e), "steps": round(TANH_T / e)})
            out += [c.replace(seed=s) for s in range(SEEDS)]
    return out


def tanh_analyse(runs: Sequence[Any]) -> Finding:
    table = pd.DataFrame([{"act": r.config.model.activation, "seed": r.config.seed, "eta": r.config.optim.lr,
                           "drift": last(r.metrics, "gap_drift", 1)} for r in runs])  # fmt: skip
    per = {act: pivot(table[table["act"] == a], "eta", "drift") for act, a in (("tanh", "tanh"), ("ReLU", "relu"))}
    fits = {k: seed_fit(*v) for k, v in per.items()}
    etas = per["tanh"][0]
    ratio = ratio_ci([r[0] for r in per["ReLU"][1]], [t[0] for t in per["tanh"][1]])
    numbers: dict[str, Any] = {f"{k}: slope of |drift| vs η per seed, mean [95% CI]": f.text() for k, f in fits.items()}
    for j, e in enumerate(etas):
        t, r = np.mean([s[j] for s in per["tanh"][1]]), np.mean([s[j] for s in per["ReLU"][1]])
        numbers[f"η = {e:g}: mean drift tanh / ReLU"] = f"{t:.4g} / {r:.3g}"
    numbers["tanh / ReLU at the smallest η, geometric mean [95% CI]"] = ratio.text()
    verdict = verdicts.tanh_breaks(fits["tanh"], fits["ReLU"], ratio, len(etas))
    drifts = {k: list(v[1][0])[::-1] for k, v in per.items()}  # seed 0, largest step first
    main = int(np.flatnonzero(((table["act"] == "tanh") & (table["eta"] == etas[0])).to_numpy())[0])
    return Finding(numbers, verdict, figures.tanh_figure(etas[::-1], drifts, fits), main=main)
