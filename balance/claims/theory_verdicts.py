"""Verdicts of the claims on the paper's theorems (``balance.claims.theorems``): numbers in, a ``Verdict`` out, as
``balance.claims.verdicts`` (tolerances in ``TOL``, the reason built from the numbers). Pure functions."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from balance.claims.base import Verdict, at_most, fmt
from balance.runs.stats import Interval, mean_ci, wilson

TOL: dict[str, dict[str, float]] = {
    "hp": {"success fraction called high": 0.99},
    "bounded": {"max ||U||^2 + ||V||^2 / balanced minimum's, at most": 1.05, "final imbalance at most": 0.01,
                "converged: log10 final / initial loss at most": -6.0},
    "rank1": {"rate relative error": 0.01},
    "flat": {"lambda_max / sqrt(G^2 + 4 s^2) relative error": 0.02, "balanced lambda_max / 2s at most": 1.05,
             "rank correlation with |G| at least": 0.9,
             "converged: final / initial loss at most": 1e-6},
}  # fmt: skip


def _tolerances(name: str) -> dict[str, str]:
    return {k: fmt(v) for k, v in TOL[name].items()}


# --- 11. "with high probability" ------------------------------------------------------------------------------------


def half_point(curve: Sequence[tuple[float, int, int]]) -> float:
    """The sigma where the success fraction crosses 1/2, interpolated in log sigma (NaN when it never does)."""
    for (s0, k0, n0), (s1, k1, n1) in itertools.pairwise(curve):
        p0, p1 = k0 / n0, k1 / n1
        if p0 >= 0.5 > p1:
            return float(math.exp(math.log(s0) + (p0 - 0.5) / (p0 - p1) * (math.log(s1) - math.log(s0))))
    return math.nan


def hp_quantified(
    curves: Mapping[tuple[str, int], Sequence[tuple[float, int, int]]],
) -> tuple[Verdict, dict[tuple[str, int], tuple[float, float]]]:
    """``curves[(init, d)]`` = (sigma, successes, seeds) per init scale, sigma increasing. Returns the verdict and,
    per (init, d), (the largest sigma with success fraction >= 0.99, NaN if none; the interpolated sigma where half
    succeed). Supported when every (init, d) has a sigma with success >= 0.99 and a boundary (some sigma below 1/2),
    and the half-success scale shrinks with d (fitted exponent of log sigma_50 against log d below 0 for each init);
    partly when the high-probability region exists but the scale is not found to shrink; refuted when some (init, d)
    has no sigma that succeeds with high probability."""
    high = TOL["hp"]["success fraction called high"]
    read = {}
    for key, curve in curves.items():
        good = [s for s, k, n in curve if k / n >= high]
        read[key] = (max(good) if good else math.nan, half_point(curve))
    inits = sorted({i for i, _ in curves})
    exponents: dict[str, float] = {}
    for init in inits:
        pts = [(d, s50) for (i, d), (_, s50) in read.items() if i == init and math.isfinite(s50)]
        if len(pts) >= 2:
            exponents[init] = float(np.polyfit(np.log([d for d, _ in pts]), np.log([s for _, s in pts]), 1)[0])
    exists = all(math.isfinite(star) for star, _ in read.values())
    bounded = all(math.isfinite(s50) for _, s50 in read.values())
    shrinks = len(exponents) == len(inits) and all(e < 0 for e in exponents.values())
    outcome = "supported" if exists and bounded and shrinks else "partly" if exists else "refuted"
    seeds = min(n for curve in curves.values() for _, _, n in curve)
    stars = "; ".join(f"{i} d = {d}: σ ≤ {fmt(star)}" for (i, d), (star, _) in read.items())
    scal = ", ".join(f"{i} σ₅₀ ∝ d^{fmt(e)}" for i, e in exponents.items()) or "no scaling fitted"
    reason = (
        f"With {seeds} seeds per cell, every seed converged to a balanced global minimum up to {stars}; the scale "
        f"where half succeed shrinks as {scal}: 'ε/poly(d)' in numbers, for Gaussian and uniform starts alike."
    )
    lows = [wilson(k, n).low for curve in curves.values() for _, k, n in curve if k == n]
    interval = f"all-success cells: Wilson lower bound ≥ {fmt(min(lows)) if lows else 'none'}; exponents {scal}"
    sizes = sorted({d for _, d in curves})
    evidence = f"{seeds} seeds × {len(next(iter(curves.values())))} scales × {len(sizes)} sizes × {len(inits)} inits"
    return Verdict(outcome, reason, _tolerances("hp"), evidence, interval), read


# --- 12. boundedness and convergence under eta_t = eta_0 (t+1)^-(1/2+delta) -----------------------------------------


def bounded_converges(per_delta: Mapping[float, tuple[float, float, Interval]]) -> Verdict:
    """``per_delta[delta]`` = (largest ||U||^2 + ||V||^2 over time and seeds / the balanced minimum's, the largest
    final ||U^T U - V^T V||_F / (||U||^2 + ||V||^2), log10 of final / initial loss across seeds). Supported when
    every run stayed bounded and ended balanced, and the loss converged for at least the smallest delta; partly
    when bounded and balanced but not converged within the budget; refuted when a run left the bound."""
    t = TOL["bounded"]
    bounded = all(
        at_most(n, t["max ||U||^2 + ||V||^2 / balanced minimum's, at most"]) for n, _, _ in per_delta.values()
    )
    balanced = all(at_most(b, t["final imbalance at most"]) for _, b, _ in per_delta.values())
    converged = [
        d for d, (_, _, loss) in per_delta.items() if loss.high <= t["converged: log10 final / initial loss at most"]
    ]
    outcome = ("supported" if bounded and balanced and converged and min(per_delta) in converged
               else "partly" if bounded else "refuted")  # fmt: skip
    worst = max(n for n, _, _ in per_delta.values())
    losses = ", ".join(f"δ = {fmt(d)}: 10^{fmt(loss.value)}" for d, (_, _, loss) in per_delta.items())
    reason = (
        f"Under η_t = η₀ (t+1)^-(1/2+δ) the iterates stayed bounded (||U||² + ||V||² at most {fmt(worst)} times the "
        f"balanced minimum's) and ended balanced (‖D‖ ≤ {fmt(max(b for _, b, _ in per_delta.values()), 2)} of the "
        f"norms); the loss fell to {losses} of its start: converged for δ ∈ {{{', '.join(fmt(d) for d in converged)}}}"
        f" within the budget, the larger δ the less total time Σ η_t."
    )
    n = next(iter(per_delta.values()))[2].n
    return Verdict(outcome, reason, _tolerances("bounded"), f"{n} seeds × {len(per_delta)} values of δ",
                   f"log10 final loss ratio: {losses}")  # fmt: skip


# --- 13. Theorem 3.2: the linear rate -------------------------------------------------------------------------------


def rank1_linear_rate(errors: Sequence[float], measured: Sequence[float], n_etas: int = 0) -> Verdict:
    """``errors``: per run, |measured / predicted - 1| of the log per-step loss ratio in the tail; ``measured``: the
    rates (negative: the loss shrinks). Supported when every run converges linearly (a finite negative rate) at
    the predicted rate to ``rate relative error``; partly when linear but off; refuted when not linear."""
    tol = TOL["rank1"]["rate relative error"]
    linear = all(math.isfinite(m) and m < 0 for m in measured)
    close = linear and all(at_most(e, tol) for e in errors)
    outcome = "supported" if close else "partly" if linear else "refuted"
    worst = max(errors) if errors else math.nan
    reason = (
        f"From a small start with a constant step, every run's loss fell linearly, at a per-step factor matching "
        f"(1 − η min(||u||², ||v||²))² = (1 − ησ₁)² at the balanced minimum to a relative {fmt(worst, 2)} of its log."
        if close
        else f"The loss's per-step factor was off its prediction (1 − ησ₁)² by up to {fmt(worst, 2)} of its "
        f"log{'' if linear else ', or the loss did not fall linearly'}."
    )
    iv = mean_ci(list(errors)) if len(errors) >= 2 else Interval(worst, worst, worst, len(errors))
    return Verdict(outcome, reason, _tolerances("rank1"), f"{iv.n // max(n_etas, 1)} seeds × {n_etas} step sizes",
                   f"relative error of the rate, mean {iv.text(2)}")  # fmt: skip


# --- 14. balancing and smoothness -------------------------------------------------------------------------------------


def balance_is_flat(
    formula_err: float,
    rho: float,
    p_value: float,
    flattest: float,
    stable: bool,
    seeds: int,
    levels: int,
    worst_loss: float,
) -> Verdict:
    """``formula_err``: worst |lambda_max / sqrt(G^2 + 4 s^2) - 1| at the minima reached; ``rho``, ``p_value``:
    Spearman's rank correlation of lambda_max with |G| over every run and its p-value; ``flattest``: the
    lambda_max of the most balanced run over 2 s; ``stable``: lambda_max < 2 / eta along every run;
    ``worst_loss``: the largest final / initial loss. Supported when every run converged, its minimum's lambda_max
    is sqrt(G^2 + 4 s^2), the most balanced is the flattest (2 s) and lambda_max rises with |G| (rho at least 0.9,
    p < 0.01); undecided when the rise is not significant; refuted when the formula fails or lambda_max falls."""
    t = TOL["flat"]
    formula = at_most(formula_err, t["lambda_max / sqrt(G^2 + 4 s^2) relative error"])
    flat = at_most(flattest, t["balanced lambda_max / 2s at most"])
    converged = at_most(worst_loss, t["converged: final / initial loss at most"])
    rises = rho >= t["rank correlation with |G| at least"] and p_value < 0.01
    outcome = ("supported" if formula and flat and rises and converged
               else "refuted" if not formula or rho <= 0 else "undecided" if not rises else "partly")  # fmt: skip
    reason = (
        f"At the minima reached, λ_max = sqrt(G² + 4s²) to a relative {fmt(formula_err, 2)}: the most balanced run's "
        f"λ_max was {fmt(flattest, 4)} × 2s, the flattest, and λ_max rose with the imbalance |G| (Spearman ρ = "
        f"{fmt(rho, 3)}, p = {fmt(p_value, 2)}); it stayed {'below' if stable else 'not always below'} 2/η along "
        "every run. A local smoothness modulus, not smoothness itself, is what balance keeps small."
    )
    return Verdict(outcome, reason, _tolerances("flat"), f"{seeds} seeds × {levels} starts",
                   f"Spearman ρ {fmt(rho, 3)} (p {fmt(p_value, 2)}); formula error {fmt(formula_err, 2)}")  # fmt: skip
