"""Moved to ``balance.engine.invariants``; this shim keeps the old import path working."""

from balance.engine.invariants import (
    gaps,
    incoming_matrix,
    incoming_sqnorms,
    matrix_invariant,
    neuron_balance,
    outgoing_sqnorms,
    ratios,
    rescale,
    sqnorm,
)

__all__ = [
    "gaps",
    "incoming_matrix",
    "incoming_sqnorms",
    "matrix_invariant",
    "neuron_balance",
    "outgoing_sqnorms",
    "ratios",
    "rescale",
    "sqnorm",
]
