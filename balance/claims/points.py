"""Every point the four reviews raise (``shared/reference/reviews.txt``), with the claim that answers it by
experiment, or why it is editorial (wording, notation, proofs: nothing a run can settle).

``POINTS`` is the one list; the report prints it as a table, so a reader checks coverage at a glance and a point
without an experiment is visible as such rather than silently missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple


class Point(NamedTuple):
    reviewer: str
    point: str
    claims: tuple[int, ...]  # the claims answering it by experiment (empty: editorial or not yet built)
    note: str = ""  # for an editorial point: why no experiment settles it; else what the claims show of it


R1, R2, R3, R4 = "Reviewer 1", "Reviewer 2", "Reviewer 3", "Reviewer 4"
POINTS: tuple[Point, ...] = (
    Point(R1, "Balance is about magnitude, not a difference (1e-13 and 1 are unbalanced)", (1, 6)),
    Point(R1, "Nothing says the weights stay bounded; the difference holds while they diverge", (1, 12),
          "claim 1: with the logistic loss the norms grow x10+ while the difference is kept; claim 12: under "
          "Theorem 3.1's decaying steps they stay bounded"),
    Point(R1, "Lines 160-163: balance is said to explain convergence", (1, 12, 13),
          "a constant difference alone did not balance an unbalanced start (claim 1); from small starts the theorems' "
          "step sizes converge (claim 12) and the constant-step rate is the balanced minimum's (claim 13)"),
    Point(R1, "Nothing in Theorems 2.1 and 2.3 says that the weights will adjust and balance", (1, 15),
          "claim 1: the flow only conserves the gap; claim 15: SGD noise, large steps, SAM and weight decay move it, "
          "each at its exact law's rate, where plain GD barely does"),
    Point(R1, "Gaussian initialisation is not needed; a hypercube would do", (2,)),
    Point(R1, "'With high probability' is not quantified (is 3/4 high? how to choose eps/poly(d)?)", (11,)),
    Point(R1, "'Balancing implies smoothness': a smoothness modulus along runs", (14,),
          "the word is editorial; the modulus (lambda_max) is measured"),
    Point(R1, "Smooth vs beta-smooth vs stiff: a polynomial is smooth", (), "editorial: terminology"),
    Point(R1, "O, Theta and poly notation used with fixed epsilon, d, d1, d2", (), "editorial: notation"),
    Point(R1, "Theorem 2.1 is a special case of Theorem 2.3", (), "editorial: presentation of the proofs"),
    Point(R1, "Existence of solutions of the differential inclusion (5); the chain rule at line 197", (),
          "editorial: proof rigour (gradient flow is integrated numerically in balance, not proved to exist)"),
    Point(R1, "Minor: notation [.], 1-D homogeneous functions, a missing equality after line 206, line 207, "
          "ODE literature (Attouch), typos at 381 and (16), boundedness of V at line 435", (), "editorial"),
    Point(R1, "The rank-1 proof (Theorem 3.2) was not checked", (13,), "its conclusion, the linear rate, is measured"),
    Point(R2, "(1) A 3-layer MLP: confirm or disprove equation (6)", (7,)),
    Point(R2, "(2) Effects of discrete time steps on Theorem 2.1", (3,)),
    Point(R2, "(3) Does it hold for SGD with momentum?", (4,), "SGD, heavy ball, Nesterov, and SGD with heavy ball "
          "together (mini-batches and momentum at once)"),
    Point(R2, "(4) Batch normalisation's extra scaling", (5,)),
    Point(R3, "Too few experiments; deep homogeneous networks should be tried", (7, 8)),
    Point(R3, "Batch normalisation's power may be avoiding local minima", (), "editorial: an interpretation"),
    Point(R4, "The mismatch with Corollary 2.1 in the first 100 epochs: discretisation? as eta -> 0, how fast?", (3,)),
    Point(R4, "Figure 1b contradicts Theorem 3.1 for the first 300 epochs", (6,)),
    Point(R4, "No experiment on neural networks", (7,)),
    Point(R4, "Is the paper about matrix factorisation or neural networks?", (), "editorial: the paper's framing"),
)  # fmt: skip


def markdown(results: Sequence[Any]) -> list[str]:
    """The reviewer-point table: each point, the claims answering it (with their verdicts when in ``results``)."""
    outcomes = {e.claim.number: e.finding.verdict.outcome for e in results}
    lines = ["### Every reviewer point and what answers it", "", "| reviewer | point | answered by |", "|---|---|---|"]
    for p in POINTS:
        answer = ", ".join(f"claim {n}" + (f" ({outcomes[n]})" if n in outcomes else "") for n in p.claims)
        text = "; ".join(x for x in (answer, p.note) if x) or "editorial"
        lines.append(f"| {p.reviewer} | {p.point.replace('|', '/')} | {text.replace('|', '/')} |")
    return lines
