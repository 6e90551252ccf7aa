"""The reviewers' claims, each a live experiment with a verdict computed from its runs.

``CLAIMS`` lists them in order 1..10. ``start(claims, store, runner)`` finds each claim's runs in the store
(``balance.runs.reuse``: same config, same code version) and starts the missing ones on the executor, all at once
(each claim's configs of one shape as one job, at the claims' priority);
``collect(claim, ids, ...)`` waits for one claim's runs and returns them with the ``Finding``: the numbers, the
``Verdict`` and the figure. ``evaluate`` does both for one claim. The page (``balance.app.claims``) and the command
line (``balance claims``) both use them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from balance.claims import initial, mechanisms, networks, report, steps
from balance.claims.base import OUTCOMES, Claim, Finding, Verdict
from balance.engine.status import ENDED
from balance.runs.record import RunRecord
from balance.runs.reuse import cached_runs, load, submit
from balance.runs.reuse import wait as wait_for
from balance.runs.store import RunStore

__all__ = [
    "CLAIMS",
    "OUTCOMES",
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
    "start",
    "wait",
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
        "A 2-layer ReLU MLP from an unbalanced start (W₁ at 1e-3 of W₂) on a regression task, and the same network "
        "with the logistic loss on separable data (XOR), where the norms grow without bound.",
        initial.difference_configs, initial.difference_analyse,
    ),
    Claim(
        2, "Gaussian initialisation is not needed",
        "Gaussian initialisation is not needed: a uniform initialisation in a hypercube, of matched variance, "
        "conserves, balances and converges the same way.",
        R1,
        "I do not understand why the authors need Gaussian initialization. [...] The authors could choose uniformly in "
        "a compact set, a hypercube is easy to sample from for example.",
        f"MF (40 × 10, rank 3) and a 3-layer ReLU MLP, Gaussian against uniform initialisation with the same standard "
        f"deviation, {initial.SEEDS} seeds each.",
        initial.init_configs, initial.init_analyse,
    ),
    Claim(
        3, "Discrete steps: the rate to gradient flow",
        "Discrete steps break Theorem 2.1, but GD approaches it as the step size goes to 0: at a fixed training time "
        "the drift is first order in η, and it is exactly Σ η² (||g_(h+1)||² − ||g_h||²).",
        f"{R2}, {R4}",
        "Do we tend to have trajectories of the norms of the weights matrices verifying corollary 2.1 when the step "
        "size tends to zero? If so, we should be able to characterize such convergence (speed...).",
        f"MF (20 × 10, rank 3, σ = 0.1) trained by GD to t = {steps.RATE_T:g} at 7 step sizes over 2 decades; the "
        "drift's log-log slope with a 95% confidence interval, and the drift against its exact prediction.",
        steps.rate_configs, steps.rate_analyse,
    ),
    Claim(
        4, "SGD, momentum and Adam",
        "The invariant survives SGD and momentum in the small-step limit (with momentum amplifying the drift by "
        "(1+β)/(1−β), Nesterov by (1−β+2β²)/(1−β)), but not Adam.",
        R2,
        "Prove of Theorem 2.1 is given based on the gradient flow (5). Will it hold for SGD with Momentum?",
        f"A 3-layer ReLU MLP trained to t = {steps.MOMENTUM_T:g} by GD, SGD (batch 32), heavy ball and Nesterov "
        f"(β = {steps.BETA}) at matched effective step sizes η/(1−β), and Adam; drift against the step size.",
        steps.momentum_configs, steps.momentum_analyse,
    ),
    Claim(
        5, "Batch normalisation",
        "Batch normalisation changes what Theorem 2.1 uses: the norm of a layer feeding BatchNorm only grows (by "
        "η²||g||² a step), the cross-layer invariant breaks, and the invariant moves to BatchNorm's (γ, β).",
        R2,
        "Batch-normalization introduces extra scaling in X-space that can effect the relationships used in "
        "derivation of Theorem 2.1.",
        f"x → W₁ → BatchNorm → ReLU → W₂ trained by GD to t = {networks.BN_T:g} at η = {networks.BN_ETAS[0]} and "
        f"η/4: which drifts vanish with the step size and which do not.",
        networks.batchnorm_configs, networks.batchnorm_analyse,
    ),
    Claim(
        6, "Figure 1b and Theorem 3.1",
        "Figure 1b contradicts Theorem 3.1 for the first 300 epochs.",
        R4,
        "The only plot giving the ratio between the norms of two matrices (figure 1b) contradicts theorem 3.1 for "
        "the first 300 epochs.",
        "The Figure 1 setting (MF 100 × 25, rank 5, GD η = 0.01): small (σ = 1e-3) and large (σ = 0.5) "
        "initialisation, objective (7) and the regularised (9) with λ = 1.",
        initial.figure1_configs, initial.figure1_analyse,
    ),
    Claim(
        7, "Deep ReLU networks",
        "Equation (6) holds in deep ReLU networks: consecutive layers keep their difference of squared norms, up to "
        "the exact η² drift, from balanced and from unbalanced starts.",
        f"{R2}, {R3}",
        "Run a simple experiment with a Feed Forward Neural Network (e.g. 3-layer MLP) and observe the dynamics of "
        "L2-norms of Weights at each layer to confirm or disprove eq (6).",
        "3- and 6-layer ReLU MLPs and a CNN on teacher-student data, each from a balanced start (equal squared norms) "
        "and an unbalanced one (first layer at 0.1).",
        networks.deep_configs, networks.deep_analyse,
    ),
    Claim(
        8, "Control: tanh",
        "A tanh network, which is not homogeneous, does not conserve the invariant at any step size.",
        "control",
        "(A control experiment: the theorem needs a homogeneous activation.)",
        f"A 3-layer tanh MLP and its ReLU twin trained by GD to t = {networks.TANH_T:g} at 4 step sizes.",
        networks.tanh_configs, networks.tanh_analyse,
    ),
    Claim(
        9, "Weight decay",
        "With coupled weight decay λ the gap decays like (1 − ηλ)^(2k).",
        "formula sheet, section 3.4",
        "(Weight decay is not in the paper; the exact recursion is G_{k+1} = (1 − ηλ)² G_k + η² Δ||g_k||².)",
        "MF (20 × 10, rank 3) from an unbalanced start, GD η = 0.05 with λ = 0.05.",
        steps.decay_configs, steps.decay_analyse,
    ),
    Claim(
        10, "Large step sizes balance",
        "Large constant step sizes balance matrix factorisation even from an unbalanced start.",
        "Wang, Chen, Zhao, Tao (ICLR 2022)",
        "(Beyond the reviews: 'large learning rate tames homogeneity: convergence and balancing effect'.)",
        "Rank-1 MF (10 × 10, μ = 1) from ||u₀||² ≈ 4, ||v₀||² ≈ 0.01, GD at step sizes from 0.05 to 1.1; the final "
        "ratio, and (||u|| − ||v||)² against the stability bound 2/η − 2μ.",
        steps.large_lr_configs, steps.large_lr_analyse,
    ),
    mechanisms.CLAIM,
)  # fmt: skip


def by_number(numbers: list[int] | None = None) -> list[Claim]:
    """The claims with these numbers (all when None); ValueError naming a number that is not 1..10."""
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
