"""Moved to ``balance.engine.theory``; this shim keeps the old import path working (it imports no torch)."""

from balance.engine.theory import (
    RECURSIONS,
    GapLaw,
    mf_balanced_ratio,
    momentum_amplification,
    pair_matrix,
    predicted_ratio,
    weight_decay_gap,
)

__all__ = [
    "RECURSIONS",
    "GapLaw",
    "mf_balanced_ratio",
    "momentum_amplification",
    "pair_matrix",
    "predicted_ratio",
    "weight_decay_gap",
]
