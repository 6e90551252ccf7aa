"""Moved to ``balance.engine.sharpness``; this shim keeps the old import path working."""

from balance.engine.sharpness import (
    LANCZOS_STEPS,
    extreme_eigenvalues,
    hessian_operator,
    initial_sharpness,
    nice_below,
    step_advice,
)

__all__ = ["LANCZOS_STEPS", "extreme_eigenvalues", "hessian_operator", "initial_sharpness", "nice_below", "step_advice"]
