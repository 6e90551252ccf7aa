"""The reviewers' claims, each a live experiment with a verdict computed from its runs.

``CLAIMS`` lists them in order 1, 2, ... ``start(claims, store, runner)`` finds each claim's runs in the store
(``balance.runs.reuse``: same config, same code version) and starts the missing ones on the executor, all at once
(each claim's configs of one shape as one job, at the claims' priority);
``collect(claim, ids, ...)`` waits for one claim's runs and returns them with the ``Finding``: the numbers, the
``Verdict`` and the figure. ``evaluate`` does both for one claim. The page (``balance.app.claims``) and the command
line (``balance claims``) both use them.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from balance.claims import figure1, initial, mechanisms, networks, report, smoothness, steps, theorems
from balance.claims.base import KINDS, OUTCOMES, SIDES, Claim, Finding, Verdict, side, who
from balance.engine.status import ENDED
from balance.runs.record import RunRecord
from balance.runs.reuse import cached_runs, load, submit
from balance.runs.reuse import wait as wait_for
from balance.runs.store import RunStore

__all__ = [
    "CLAIMS",
    "KINDS",
    "OUTCOMES",
    "SIDES",
    "Claim",
    "Evaluated",
    "Finding",
    "Verdict",
    "by_number",
    "collect",
    "evaluate",
    "label",
    "ready",
    "report",
    "run",
    "side",
    "start",
    "wait",
    "who",
]

R1, R2, R3, R4 = "Reviewer 1", "Reviewer 2", "Reviewer 3", "Reviewer 4"

CLAIMS: tuple[Claim, ...] = (
    Claim(
        1, "A constant difference is not balance",
        "A constant difference of squared norms is not balance: the ratio can stay far from 1, and the weights can "
        "diverge while the difference holds.",
        R1,
        "The difference remains constant, but the weights could well diverge. [...] The fact that two numbers a and b "
        "satisfy a-b small does not mean that a or b are small.",
        f"A 2-layer ReLU MLP from an unbalanced start (W₁ at 1e-3 of W₂) on a regression task, and the same network "
        f"with the logistic loss on separable data (XOR), where the norms grow without bound; {initial.SEEDS} seeds "
        "each.",
        initial.difference_configs, initial.difference_analyse,
        question="Does a constant difference of squared norms mean the layers are balanced?",
        kind="reviewer",
        reviewer="a constant difference is not balance: the ratio can stay far from 1 and the norms can grow "
                 "without bound",
        paper="gradient flow keeps the differences of squared norms constant (Theorem 2.1)",
    ),
    Claim(
        2, "Gaussian initialisation is not needed",
        "Gaussian initialisation is not needed: a uniform initialisation in a hypercube, of matched variance, "
        "conserves, balances and converges the same way.",
        R1,
        "I do not understand why the authors need Gaussian initialization. [...] The authors could choose uniformly in "
        "a compact set, a hypercube is easy to sample from for example.",
        f"MF (40 × 10, rank 3) and a 3-layer ReLU MLP, Gaussian against uniform initialisation with the same standard "
        f"deviation, {4 * initial.SEEDS} seeds each.",
        initial.init_configs, initial.init_analyse,
        question="Do the results need a Gaussian initialisation, or does a uniform one in a hypercube do the same?",
        kind="reviewer",
        reviewer="Gaussianity is not needed: a uniform hypercube start of matched variance converges and balances "
                 "alike",
        paper="its theorems are proved for Gaussian starts (which it does not claim are necessary)",
    ),
    Claim(
        3, "Discrete steps: the rate to gradient flow",
        "Discrete steps break Theorem 2.1, but GD approaches it as the step size goes to 0: at a fixed training time "
        "the drift is first order in η, and it is exactly Σ η² (||g_(h+1)||² − ||g_h||²).",
        f"{R2}, {R4}",
        "Do we tend to have trajectories of the norms of the weights matrices verifying corollary 2.1 when the step "
        "size tends to zero? If so, we should be able to characterize such convergence (speed...).",
        f"MF (20 × 10, rank 3, σ = 0.1) trained by GD to t = {steps.RATE_T:g} at 7 step sizes over 2 decades, "
        f"{steps.SEEDS} seeds each; the drift's log-log slope fitted per seed, its mean with a 95% confidence interval "
        "across seeds, and the drift against its exact prediction.",
        steps.rate_configs, steps.rate_analyse,
        question="Do GD's norms approach Corollary 2.1's as the step size goes to 0, and how fast?",
        kind="paper",
        reviewer="discrete steps break the invariant (the drift the early epochs of Figure 1 show is discretisation)",
        paper="GD approaches gradient flow's invariant, the drift at a fixed time vanishing at first order in η",
        favours={"supported": "both"},
    ),
    Claim(
        4, "SGD, momentum and Adam",
        "The invariant survives SGD and momentum in the small-step limit (with momentum amplifying the drift by "
        "(1+β)/(1−β), Nesterov by (1−β+2β²)/(1−β)), but not Adam.",
        R2,
        "Prove of Theorem 2.1 is given based on the gradient flow (5). Will it hold for SGD with Momentum?",
        f"A 3-layer ReLU MLP trained to t = {steps.MOMENTUM_T:g} by GD, SGD (batch 32), heavy ball, Nesterov and SGD "
        f"with heavy ball together (β = {steps.BETA}) at matched effective step sizes η/(1−β), and Adam, "
        f"{steps.SEEDS} seeds each; drift against the step size, slopes per seed.",
        steps.momentum_configs, steps.momentum_analyse,
        question="Does Theorem 2.1's invariant hold for SGD and momentum (and Adam)?",
        kind="paper",
        reviewer="the invariant is a gradient-flow result that need not survive other optimisers",
        paper="the invariant extends to SGD and momentum in the small-step limit (not to Adam)",
    ),
    Claim(
        5, "Batch normalisation",
        "Batch normalisation changes what Theorem 2.1 uses: the norm of a layer feeding BatchNorm only grows (by "
        "η²||g||² a step), the cross-layer invariant breaks, and the invariant moves to BatchNorm's (γ, β).",
        R2,
        "Batch-normalization introduces extra scaling in X-space that can effect the relationships used in "
        "derivation of Theorem 2.1.",
        f"x → W₁ → BatchNorm → ReLU → W₂ trained by GD to t = {networks.BN_T:g} at η = {networks.BN_ETAS[0]}, η/2 "
        f"and η/4, {networks.SEEDS} seeds each: which drifts vanish with the step size and which do not.",
        networks.batchnorm_configs, networks.batchnorm_analyse,
        question="Does batch normalisation change the relationships Theorem 2.1 uses?",
        kind="reviewer",
        reviewer="batch normalisation breaks the cross-layer invariant (it moves to BatchNorm's own parameters)",
        paper="homogeneous networks conserve the layer differences (Theorem 2.1, stated without BatchNorm)",
    ),
    Claim(
        6, "Figure 1b and Theorem 3.1",
        "Figure 1b contradicts Theorem 3.1 for the first 300 epochs.",
        R4,
        "The only plot giving the ratio between the norms of two matrices (figure 1b) contradicts theorem 3.1 for "
        "the first 300 epochs.",
        f"The Figure 1 setting (MF 100 × 25, rank 5, σ = 1e-3), {figure1.SEEDS} seeds under Figure 1's constant "
        f"η = 0.01 and {figure1.SEEDS} under the theorem's η_t = {figure1.ETA0:g} (t+1)^-(1/2+{figure1.DELTA:g}); "
        "the ratio, ||UᵀU − VᵀV||_F and that over ||U||² + ||V||² at every step; large init and objective (9) beside.",
        figure1.configs, figure1.analyse,
        question="Does Figure 1b's early ratio contradict Theorem 3.1?",
        kind="reviewer",
        reviewer="Figure 1b's ratio is far from 1 in the early epochs, which Theorem 3.1 seems to exclude",
        paper="Theorem 3.1 bounds ||UᵀU − VᵀV||_F, which stays small at every step; the early ratio is no "
              "contradiction",
    ),
    Claim(
        7, "Deep ReLU networks",
        "Equation (6) holds in deep ReLU networks: consecutive layers keep their difference of squared norms, up to "
        "the exact η² drift, from balanced and from unbalanced starts.",
        f"{R2}, {R3}",
        "Run a simple experiment with a Feed Forward Neural Network (e.g. 3-layer MLP) and observe the dynamics of "
        "L2-norms of Weights at each layer to confirm or disprove eq (6).",
        "3- and 6-layer ReLU MLPs and a CNN on teacher-student data, each from a balanced start (equal squared norms) "
        "and an unbalanced one (first layer at 0.1); 8 seeds per MLP setting, 2 per CNN setting.",
        networks.deep_configs, networks.deep_analyse,
        question="Does equation (6) hold in a trained deep ReLU network?",
        kind="paper",
        reviewer="equation (6) is unconfirmed for real networks",
        paper="consecutive layers of deep ReLU networks keep their differences of squared norms (equation 6)",
    ),
    Claim(
        8, "Control: tanh",
        "A tanh network, which is not homogeneous, does not conserve the invariant at any step size.",
        "control",
        "(A control experiment: the theorem needs a homogeneous activation.)",
        f"A 3-layer tanh MLP and its ReLU twin trained by GD to t = {networks.TANH_T:g} at 4 step sizes, "
        f"{networks.SEEDS} seeds each.",
        networks.tanh_configs, networks.tanh_analyse,
        question="Control: does a non-homogeneous (tanh) network break the invariant?",
        kind="control",
        reviewer="",
        paper="",
    ),
    Claim(
        9, "Weight decay",
        "With coupled weight decay λ the gap decays like (1 − ηλ)^(2k).",
        "formula sheet, section 3.4",
        "(Weight decay is not in the paper; the exact recursion is G_{k+1} = (1 − ηλ)² G_k + η² Δ||g_k||².)",
        f"MF (20 × 10, rank 3) from an unbalanced start, GD η = 0.05 with λ = 0.05, {steps.SEEDS} seeds.",
        steps.decay_configs, steps.decay_analyse,
        question="Control: does the gap decay as the exact weight-decay recursion says?",
        kind="control",
        reviewer="",
        paper="",
    ),
    Claim(
        10, "Large step sizes balance",
        "Large constant step sizes balance matrix factorisation even from an unbalanced start.",
        "Wang, Chen, Zhao, Tao (ICLR 2022)",
        "(Beyond the reviews: 'large learning rate tames homogeneity: convergence and balancing effect'.)",
        "Rank-1 MF (10 × 10, μ = 1) from ||u₀||² ≈ 4, ||v₀||² ≈ 0.01, GD at step sizes from 0.05 to 1.1; the final "
        f"ratio, and (||u|| − ||v||)² against the stability bound 2/η − 2μ; {steps.SEEDS} seeds per step size.",
        steps.large_lr_configs, steps.large_lr_analyse,
        question="Control (Wang et al. 2022): do large constant steps balance matrix factorisation?",
        kind="control",
        reviewer="",
        paper="",
    ),
    Claim(
        11, "'With high probability' quantified",
        "Small random starts, Gaussian or uniform, converge to a balanced global minimum with probability near 1, "
        "and the init scale that keeps it so shrinks polynomially with the size d (Theorem 3.1's ε/poly(d)).",
        R1,
        "Is 3/4 a high probability? Do the authors mean that it can be arbitrarily close to 1? How to tune the "
        "parameters then? [...] this provides no clue about how to choose variance in Theorem 3.1.",
        "MF d × d (rank 2) for several d, GD η = 0.2, Gaussian and uniform starts over a grid of σ, 16 seeds per cell "
        "; the success fraction with Wilson intervals, the largest σ where every seed "
        "succeeds, and the fitted exponent of the half-success σ against d.",
        theorems.hp_configs, theorems.hp_analyse,
        question="How high is 'with high probability', and how small must the initial variance be?",
        kind="paper",
        reviewer="the theorems do not say how high the probability is or how to choose the variance",
        paper="small random starts converge to balanced global minima with high probability (Theorem 3.1)",
        favours={"supported": "both"},
    ),
    Claim(
        12, "Bounded iterates under Theorem 3.1's steps",
        "Under Theorem 3.1's step sizes η_t = η₀ (t+1)^-(1/2+δ), GD from a small start stays bounded, ends balanced "
        "and converges (the more slowly, the larger δ).",
        R1,
        "Nothing even says that they should be bounded. [...] The paragraph after corollary 2.1 affirms without any "
        "supporting arguments that the proposed result explains convergence.",
        f"MF 20 × 10, rank 3, σ = 0.01, GD with η_t = {theorems.BOUNDED_ETA0:g} (t+1)^-(1/2+δ) for δ in "
        f"{', '.join(f'{d:g}' for d in theorems.DELTAS)}, {theorems.SEEDS} seeds each: the largest norm over time, "
        "the final imbalance and the loss.",
        theorems.bounded_configs, theorems.bounded_analyse,
        question="Do the iterates stay bounded, and converge, under the theorem's decaying step sizes?",
        kind="paper",
        reviewer="nothing in the invariant alone keeps the iterates bounded or makes them converge",
        paper="with Theorem 3.1's step sizes GD stays bounded and balanced and converges",
    ),
    Claim(
        13, "Theorem 3.2: the linear rate",
        "Rank-1 MF from a small start with a constant step converges linearly (Theorem 3.2), the loss shrinking by "
        "(1 − ησ₁)² a step near the balanced minimum.",
        "paper, Theorem 3.2",
        "(Reviewer 1: 'I did not have time to check the rank 1 case proof in the appendix.')",
        f"Rank-1 MF 10 × 10 (σ₁ = 1) from σ = 1e-3, GD at η = {', '.join(f'{e:g}' for e in theorems.RANK1_ETAS)}, "
        f"{theorems.SEEDS} seeds each: the per-step loss ratio in the tail against (1 − η min(||u||², ||v||²))².",
        theorems.rank1_configs, theorems.rank1_analyse,
        question="Does rank-1 GD with a constant step converge linearly, at the rate the balanced minimum implies?",
        kind="paper",
        reviewer="the rank-1 proof was not checked",
        paper="rank-1 GD from a small start with a constant step converges at a linear rate (Theorem 3.2)",
    ),
    Claim(
        14, "Balancing and smoothness",
        "Balance keeps the local smoothness modulus small: at a global minimum of rank-1 MF, λ_max of the Hessian is "
        "sqrt(G² + 4s²), smallest (2s) when the layers are balanced, larger the more unbalanced.",
        R1,
        "Balancing implies smoothness? Smoothness is already here, twice continuous differentiability implies "
        "beta-smoothness on any bounded set. [...] the authors actually compute a smoothness modulus.",
        f"Rank-1 MF 10 × 10 (s = 1), GD η = {smoothness.ETA:g}, u's initial scale at "
        f"{', '.join(f'{b:g}' for b in smoothness.U_SCALES)} × σ, {smoothness.SEEDS} seeds each: λ_max by Lanczos "
        "on Hessian-vector products along each run (replayed), against the final imbalance G and the line 2/η.",
        smoothness.configs, smoothness.analyse,
        question="Does balance make the objective smoother, and in what sense?",
        kind="paper",
        reviewer="a polynomial is smooth; 'balancing implies smoothness' can only mean a smaller smoothness modulus",
        paper="balanced iterates have a small local smoothness modulus",
        favours={"supported": "both"},
    ),
    mechanisms.CLAIM,
)  # fmt: skip


def by_number(numbers: list[int] | None = None) -> list[Claim]:
    """The claims with these numbers (all when None); ValueError naming a number that is not a claim."""
    if numbers is None:
        return list(CLAIMS)
    known = {c.number: c for c in CLAIMS}
    bad = [n for n in numbers if n not in known]
    if bad:
        raise ValueError(f"claim {bad[0]}: no such claim; claims are numbered 1 to {len(CLAIMS)}")
    return [known[n] for n in numbers]


def label(claim: Claim) -> str:
    """The run-store sweep (and name prefix) of a claim's runs."""
    return f"claim {claim.number}"


class Evaluated(NamedTuple):
    claim: Claim
    runs: list[RunRecord]
    finding: Finding


def start(
    chosen: Sequence[Claim], store: RunStore, runner: Any = None, quick: bool = False
) -> dict[int, list[str | None]]:
    """Each claim's run ids, in its configs' order, without waiting (``balance.runs.reuse.submit``): a reusable
    stored run, a run of the same config and code version training now, or (with a runner) a run started now at the
    claims' priority, so that every claim's missing runs share the workers from the start. Without a runner a
    missing run is None (``collect`` trains it here). ``ready`` says whether a claim's runs have all ended."""
    return {c.number: submit(c.configs(quick), label(c), store, runner, priority="claims") for c in chosen}


def ready(ids: Sequence[str | None], store: RunStore) -> bool:
    """Every run is there and has ended (an analysis reads them whole)."""
    return all(run_id is not None and store.get_run(run_id).state in ENDED for run_id in ids)


def collect(
    claim: Claim,
    ids: Sequence[str | None],
    store: RunStore,
    runner: Any = None,
    on_done: Callable[[int, int], None] | None = None,
    quick: bool = False,
) -> Evaluated:
    """Wait for the claim's runs (ids from ``start``; None: train here, via ``balance.runs.reuse``) and analyse them."""
    if None in ids:
        runs = cached_runs(claim.configs(quick), label(claim), store, on_done=on_done)
    else:
        wait(ids, store, runner, on_done)  # type: ignore[arg-type]
        runs = [load(store, run_id) for run_id in ids]  # type: ignore[arg-type]
    return Evaluated(claim, runs, claim.analyse(runs))


def wait(
    ids: Sequence[str], store: RunStore, runner: Any = None, on_done: Callable[[int, int], None] | None = None
) -> None:
    """Block until each run has ended (in order; in this runner or any process), reporting ``on_done(done, total)``
    after each."""
    for done, run_id in enumerate(ids, 1):
        wait_for(store, run_id, runner)
        if on_done is not None:
            on_done(done, len(ids))


def run(
    numbers: Sequence[int] | None = None, quick: bool = False, home: str | None = None, workers: int | None = None
) -> list[Evaluated]:
    """``balance.claims(...)``: the claims numbered ``numbers`` (all when None) evaluated, their missing runs trained
    in ``workers`` processes (default: the cores) into the run store at ``home`` (default: $BALANCE_HOME, else
    ~/.balance); stored runs of the same config and code are reused. ``report.write(results, path, seconds)`` writes
    them as the command line's report."""
    from balance.runs.executor import Runner
    from balance.runs.store import RunStore

    chosen = by_number(list(numbers) if numbers is not None else None)
    with RunStore(home) as store:
        runner = Runner(store, max_workers=workers)
        try:
            ids = start(chosen, store, runner, quick=quick)
            return [collect(c, ids[c.number], store, runner, quick=quick) for c in chosen]
        finally:
            runner.shutdown()


class _Callable(types.ModuleType):
    def __call__(
        self, numbers: Sequence[int] | None = None, quick: bool = False, home: str | None = None,
        workers: int | None = None,
    ) -> list[Evaluated]:  # fmt: skip
        return run(numbers, quick, home, workers)


sys.modules[__name__].__class__ = _Callable  # balance.claims(...) runs them, as balance.watch(...) watches


def evaluate(
    claim: Claim,
    store: RunStore,
    runner: Any = None,
    on_done: Callable[[int, int], None] | None = None,
    quick: bool = False,
) -> Evaluated:
    """Train or reuse one claim's runs and analyse them (``start`` then ``collect``)."""
    ids = start([claim], store, runner, quick)[claim.number]
    return collect(claim, ids, store, runner, on_done, quick)
