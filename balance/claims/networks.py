"""Claims about architectures: 5 (batch normalisation), 7 (deep ReLU networks and a CNN) and 8 (the tanh control)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from balance.claims import figures, verdicts
from balance.claims.base import Finding, first, identity_error, last, loglog_slope, relative_drift, series
from balance.config import RunConfig
from balance.engine.laws import of_metric, why_no_law

TEACHER = {"name": "teacher", "samples": 128, "input_dim": 5}


# --- 5. batch normalisation -----------------------------------------------------------------------------------------

BN_T = 10.0
BN_ETAS = (0.05, 0.0125)  # the second a quarter of the first


def batchnorm_configs(quick: bool) -> list[RunConfig]:
    """x -> W_1 -> BatchNorm -> ReLU -> W_2 (width 16), GD to t = 10 at eta and eta / 4."""
    base = RunConfig.from_dict({
        "data": TEACHER, "model": {"name": "mlp", "depth": 2, "width": 16, "init_scale": 0.25, "batch_norm": True},
        "optim": {"name": "gd"},
    })  # fmt: skip
    t = BN_T / 2 if quick else BN_T
    return [base.replace(**{"optim.lr": e, "steps": round(t / e)}) for e in BN_ETAS]


def _growth(df: Any) -> tuple[float, float]:
    """(relative error of the total growth of ||W_1||^2 against sum eta^2 ||g_1||^2, largest one-step decrease)."""
    sq = series(df, "sqnorm", 1).to_numpy()
    predicted = float(np.sum((df["lr"].to_numpy() ** 2 * series(df, "grad_norm", 1).to_numpy() ** 2)[:-1]))
    return abs((sq[-1] - sq[0]) / predicted - 1), float(np.max(-np.diff(sq)))


def batchnorm_analyse(runs: Sequence[Any]) -> Finding:
    a, b = runs[0].metrics, runs[1].metrics
    (err_a, down_a), (err_b, down_b) = _growth(a), _growth(b)
    gap_ratio = abs(last(a, "gap_drift", 1) / last(b, "gap_drift", 1))
    neuron_ratio = last(a, "neuron_drift_max") / last(b, "neuron_drift_max")
    ea, eb = (r.config.optim.lr for r in runs)
    numbers = {
        f"η = {ea:g}: ||W₁||² start → end": f"{first(a, 'sqnorm', 1):.8g} → {last(a, 'sqnorm', 1):.8g}",
        "growth against Σ η² ||g₁||², relative error (worst)": max(err_a, err_b),
        "largest one-step decrease of ||W₁||²": max(down_a, down_b),
        f"cross-layer gap drift at t, η = {ea:g} / {eb:g}":
            f"{last(a, 'gap_drift', 1):.4g} / {last(b, 'gap_drift', 1):.4g}",
        "cross-layer gap drift: prediction": f"none ({why_no_law(runs[0].config)})",
        f"(γ, β) per-neuron drift at t, η = {ea:g} / {eb:g}":
            f"{last(a, 'neuron_drift_max'):.3g} / {last(b, 'neuron_drift_max'):.3g}",
        "drift ratio, cross-layer gap (4 if it vanished)": gap_ratio,
        "drift ratio, (γ, β) invariant": neuron_ratio,
    }  # fmt: skip
    verdict = verdicts.batchnorm_moves_invariant(max(err_a, err_b), max(down_a, down_b), gap_ratio, neuron_ratio)
    named = {f"η = {ea:g}": a, f"η = {eb:g}": b}
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


def deep_configs(quick: bool) -> list[RunConfig]:
    """3- and 6-layer ReLU MLPs (width 16) and a 3-layer CNN (4 channels, 6 x 6 inputs) on teacher-student data:
    balanced starts (equal expected squared norms) and unbalanced ones (the first layer at 0.1 of that)."""
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
        out += [c, c.replace(**{"model.layer_scales": (scales[0] * 0.1, *scales[1:])})]
    return out


def deep_analyse(runs: Sequence[Any]) -> Finding:
    labels = [f"{title}, {start}" for title, _, _ in DEEP for start in ("balanced", "unbalanced")]
    numbers: dict[str, Any] = {}
    judged: dict[str, tuple[float, float, float]] = {}
    for label, r in zip(labels, runs):
        m = r.metrics
        judged[label] = (relative_drift(m), identity_error(m), last(m, "loss") / first(m, "loss"))
        hs = of_metric(m.columns, "ratio")
        numbers[f"{label}: max |gap drift| / largest ||W||²"] = judged[label][0]
        numbers[f"{label}: loss start → end"] = f"{first(m, 'loss'):.3g} → {last(m, 'loss'):.3g}"
        numbers[f"{label}: first ratio start → end"] = f"{first(m, 'ratio', hs[0]):.3g} → {last(m, 'ratio', hs[0]):.3g}"
    numbers["identity error / ||W||² (worst)"] = max(e for _, e, _ in judged.values())
    verdict = verdicts.deep_networks_conserve(judged)
    tolerance = verdicts.TOL["deep"]["gap drift / largest ||W||^2"]
    fig = figures.deep_figure(runs[3].metrics, labels[3], {k: v[0] for k, v in judged.items()}, tolerance)
    return Finding(numbers, verdict, fig, main=3)


# --- 8. the tanh control --------------------------------------------------------------------------------------------

TANH_T = 2.0


def tanh_configs(quick: bool) -> list[RunConfig]:
    """3-layer MLP, tanh and its ReLU twin, GD to t = 2 at 4 step sizes (3 when quick)."""
    etas = [0.04, 0.02, 0.01] if quick else [0.04, 0.02, 0.01, 0.005]
    out = []
    for act in ("tanh", "relu"):
        base = RunConfig.from_dict({
            "data": TEACHER, "model": {"name": "mlp", "depth": 3, "width": 16, "init_scale": 0.25, "activation": act},
            "optim": {"name": "gd"},
        })  # fmt: skip
        out += [base.replace(**{"optim.lr": TANH_T / round(TANH_T / e), "steps": round(TANH_T / e)}) for e in etas]
    return out


def tanh_analyse(runs: Sequence[Any]) -> Finding:
    n = len(runs) // 2
    etas = [r.config.optim.lr for r in runs[:n]]
    drifts = {
        "tanh": [last(r.metrics, "gap_drift", 1) for r in runs[:n]],
        "ReLU": [last(r.metrics, "gap_drift", 1) for r in runs[n:]],
    }
    fits = {k: loglog_slope(etas, v) for k, v in drifts.items()}
    ratio = abs(drifts["tanh"][-1] / drifts["ReLU"][-1])
    numbers: dict[str, Any] = {f"{k}: slope of |drift| vs η, 95% CI": f.text() for k, f in fits.items()}
    for e, dt, dr in zip(etas, drifts["tanh"], drifts["ReLU"]):
        numbers[f"η = {e:g}: drift tanh / ReLU"] = f"{dt:.4g} / {dr:.3g}"
    numbers["tanh / ReLU at the smallest η"] = ratio
    verdict = verdicts.tanh_breaks(fits["tanh"], fits["ReLU"], ratio)
    return Finding(numbers, verdict, figures.tanh_figure(etas, drifts, fits), main=n - 1)
