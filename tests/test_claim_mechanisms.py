"""Claim 11, what actually balances: its quick runs give the verdict "supported" with the numbers it reports, and its
verdict function has data that must pass and data that must fail."""

from __future__ import annotations

import pytest

import balance.claims
from balance.claims import mechanisms as claim
from balance.engine.mechanisms import MECHANISMS, predicted_rate
from balance.runs.loop import run


@pytest.fixture(scope="module")
def finding() -> object:
    configs = claim.configs(True)
    assert len(configs) == 4 * len(MECHANISMS)
    return claim.analyse([run(c) for c in configs])


def test_the_claim_is_registered() -> None:
    assert claim.CLAIM in balance.claims.CLAIMS


def test_quick_runs_support_the_claim(finding: object) -> None:
    assert finding.verdict.outcome == "supported", finding.verdict.reason
    assert "Reviewer 1 is right" in finding.verdict.reason
    text = finding.numbers[MECHANISMS["weight_decay"].title]
    assert f"(predicted {predicted_rate('weight_decay'):.6f})" in text
    assert "over 4 seeds" in finding.numbers[MECHANISMS["gd"].title]
    assert len(finding.figure.data) >= 3 * len(MECHANISMS) - 1  # gap, ratio, sharpness per arm


def _arms(gd_moved: float, others: float, residual: float = 1e-14, bound: float = 0.5) -> dict:
    """Eight seeds per arm; GD ends with |log ratio| 1.2, the others 0.4 (more balanced)."""
    arms = {}
    for name in MECHANISMS:
        gd = name == "gd"
        arms[name] = [
            {"seed": float(j), "moved": (gd_moved if gd else others) + 0.01 * (j % 3 - 1),
             "imbalance": (1.2 if gd else 0.4) + 0.01 * (j % 2), "factor": predicted_rate("weight_decay"),
             "residual": residual, "bound": bound, "finished": 1.0}
            for j in range(8)
        ]  # fmt: skip
    return arms


def test_verdict_passes_and_fails_on_data() -> None:
    assert claim.verdict(_arms(0.0, 0.8)).outcome == "supported"
    assert claim.verdict(_arms(0.5, 0.8)).outcome == "partly"  # GD itself moved the gap: not the claim
    assert claim.verdict(_arms(0.0, 0.1)).outcome == "partly"  # nothing else moved it
    assert claim.verdict(_arms(0.0, 0.8, residual=1e-3)).outcome == "partly"  # a law off
    assert claim.verdict(_arms(0.0, 0.8, bound=1.2)).outcome == "partly"  # the stability bound broken
