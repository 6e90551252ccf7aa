"""Verdicts of claims 7-10 (deep networks, the tanh control, weight decay, large steps): numbers in, a ``Verdict``
out, as ``balance.claims.verdicts`` (which re-exports them and merges ``TOL`` into its own table)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from balance.claims.base import Fit, Verdict, at_most, fit_text, fmt
from balance.runs.stats import Interval, mean_ci

TOL: dict[str, dict[str, float]] = {
    "deep": {"gap drift / largest ||W||^2": 0.01, "identity error / ||W||^2": 1e-9, "loss drop (final / initial)": 0.5},
    "tanh": {"drift / ReLU drift at least": 10.0, "slope at most": 0.3},
    "decay": {"|G_k - G_0 (1 - eta lambda)^2k| / |G_0|": 0.05, "identity error / |G_0|": 1e-9,
              "G_K / G_0 at most": 0.1},
    "large_lr": {"ratio at the smallest step at least": 2.0, "ratio at the largest converged step at most": 1.5,
                 "converged seeds to judge a step size (fraction)": 0.5,
                 "bound slack": 1e-9},
}  # fmt: skip


def _tolerances(name: str) -> dict[str, str]:
    return {k: fmt(v) for k, v in TOL[name].items()}


def _ci(fit: Fit) -> str:
    return fit_text(fit)


# --- 7. deep ReLU networks and CNNs ---------------------------------------------------------------------------------


def deep_networks_conserve(runs: Mapping[str, tuple[float, float, float]], evidence: str = "") -> Verdict:
    """``runs[name]`` = (max gap drift / largest ||W||^2, identity error / ||W||^2, final / initial loss), each the
    worst over that network's seeds."""
    t = TOL["deep"]
    ok = {
        n: at_most(d, t["gap drift / largest ||W||^2"])
        and at_most(e, t["identity error / ||W||^2"])
        and at_most(loss, t["loss drop (final / initial)"])
        for n, (d, e, loss) in runs.items()
    }
    outcome = "supported" if all(ok.values()) else "partly" if any(ok.values()) else "refuted"
    worst = max(runs, key=lambda n: runs[n][0])
    reason = (
        f"In {sum(ok.values())} of {len(runs)} network settings every consecutive pair of every seed kept its "
        f"difference of squared norms (equation 6): the worst drift was {fmt(runs[worst][0], 2)} of the largest "
        f"squared norm ({worst}), equal to the exact η² prediction to {fmt(max(e for _, e, _ in runs.values()), 2)}."
    )
    return Verdict(outcome, reason, _tolerances("deep"), evidence, f"worst drift {fmt(runs[worst][0], 2)} (a bound)")


# --- 8. the tanh control --------------------------------------------------------------------------------------------


def tanh_breaks(tanh_fit: Fit, relu_fit: Fit, drift_ratio: Interval, n_etas: int = 0) -> Verdict:
    """``tanh_fit`` / ``relu_fit``: per-seed slopes of |drift at fixed t| against eta, across seeds;
    ``drift_ratio``: tanh drift over the ReLU twin's at the smallest step size, per seed, across seeds."""
    t = TOL["tanh"]
    big = drift_ratio.low >= t["drift / ReLU drift at least"]
    stays = tanh_fit.high <= t["slope at most"]
    outcome = "supported" if big and stays else "refuted" if tanh_fit.low >= 0.7 else "partly"
    reason = (
        f"The tanh network's drift scales as η^{_ci(tanh_fit)} against the ReLU twin's η^{_ci(relu_fit)}, and at the "
        f"smallest step it is {drift_ratio.text(3)} times the ReLU drift: it "
        f"{'does not vanish' if stays else 'shrinks'} with the step size."
    )
    return Verdict(
        outcome, reason, _tolerances("tanh"), f"{tanh_fit.n} seeds × {n_etas} step sizes per activation",
        f"tanh slope {_ci(tanh_fit)}",
    )  # fmt: skip


# --- 9. weight decay ------------------------------------------------------------------------------------------------


def weight_decay_formula(
    formula_err: float, identity_err: float, final_fraction: float, rate: float, evidence: str = ""
) -> Verdict:
    """``formula_err``: max_k |G_k - G_0 (1 - eta lambda)^(2k)| / |G_0|; ``identity_err``: the exact recursion's
    error / |G_0|; ``final_fraction``: G_K / G_0 (each the worst over seeds); ``rate``: (1 - eta lambda)^2."""
    t = TOL["decay"]
    close = at_most(formula_err, t["|G_k - G_0 (1 - eta lambda)^2k| / |G_0|"])
    exact = at_most(identity_err, t["identity error / |G_0|"])
    decayed = abs(final_fraction) <= t["G_K / G_0 at most"]
    outcome = "supported" if close and exact and decayed else "partly" if exact or close else "refuted"
    reason = (
        f"The gap fell to {fmt(final_fraction)} of its start, within {fmt(100 * formula_err, 2)}% of G_0 of the "
        f"geometric decay by {fmt(rate, 6)} per step, and the exact recursion with the η² terms matched to "
        f"{fmt(identity_err, 2)}."
    )
    return Verdict(
        outcome, reason, _tolerances("decay"), evidence, f"worst formula error {fmt(formula_err, 2)} (a bound)"
    )


# --- 10. large step sizes balance -----------------------------------------------------------------------------------


def large_steps_balance(
    etas: Sequence[float], ratios: Sequence[Sequence[float]], converged: Sequence[Sequence[bool]],
    slack: Sequence[Sequence[float]],
) -> Verdict:  # fmt: skip
    """Per step size, per seed: final ||U|| / ||V||, whether the run converged, and 2/eta - 2 mu - (||u|| - ||v||)^2
    (the stability bound's slack; >= 0 when it holds). A step size is judged when at least half its seeds converged,
    on those seeds' imbalance max(r, 1/r) (mean and 95% CI); the smallest and the largest judged are compared."""
    t = TOL["large_lr"]
    need = t["converged seeds to judge a step size (fraction)"]
    done = [
        (e, [max(r, 1 / r) for r, ok in zip(rs, c) if ok], [x for x, ok in zip(s, c) if ok], sum(c), len(c))
        for e, rs, c, s in zip(etas, ratios, converged, slack)
        if sum(c) >= need * len(c) and sum(c) >= 2
    ]
    seeds = min(len(r) for r in ratios)
    tolerances = _tolerances("large_lr")
    if len(done) < 2:
        return Verdict("refuted", f"Only {len(done)} of {len(etas)} step sizes converged for enough seeds.",
                       tolerances, f"{seeds} seeds × {len(etas)} step sizes", "")  # fmt: skip
    small, large = min(done, key=lambda x: x[0]), max(done, key=lambda x: x[0])
    a, b = mean_ci(small[1]), mean_ci(large[1])
    unbalanced = a.low >= t["ratio at the smallest step at least"]
    balanced = b.high <= t["ratio at the largest converged step at most"]
    held = sum(all(x >= -t["bound slack"] for x in s) for _, _, s, _, _ in done)
    outcome = ("supported" if unbalanced and balanced and held == len(done) else "partly" if b.value < a.value
               else "refuted")  # fmt: skip
    reason = (
        f"From unbalanced starts GD ended at imbalance max(r, 1/r) = {a.text(3)} with η = {fmt(small[0])} "
        f"({small[3]}/{small[4]} seeds converged) but {b.text(3)} with η = {fmt(large[0])} ({large[3]}/{large[4]}), "
        f"the largest of {len(done)} step sizes where most seeds converged, and (||u|| − ||v||)² ≤ 2/η − 2μ held "
        f"for every converged seed at {held} of them."
    )
    return Verdict(outcome, reason, tolerances, f"{seeds} seeds × {len(etas)} step sizes",
                   f"imbalance {a.text(3)} → {b.text(3)}")  # fmt: skip
