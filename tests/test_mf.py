"""balance.engine.mf: the closed-form loss and gradients of stacked matrix factorisations against autograd (float64),
in the full coordinates and in the subspace, for members with their own weights, targets and regulariser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FEW
from hypothesis import given
from hypothesis import strategies as st

from balance.engine.mf import Full, Subspace, factors
from balance.engine.optim import Members

REGULARIZERS = np.array([0.0, 0.5, 2.0])


def _autograd(Vt: torch.Tensor, U: torch.Tensor, M: torch.Tensor, reg: float) -> tuple[float, list[torch.Tensor]]:
    """1/2 ||U V^T - M||^2 + lambda/8 ||U^T U - V^T V||^2 and its gradients (V^T, U) by autograd."""
    Vt, U = Vt.clone().requires_grad_(True), U.clone().requires_grad_(True)
    D = U.T @ U - Vt @ Vt.T
    loss = 0.5 * ((U @ Vt - M) ** 2).sum() + reg / 8 * (D * D).sum()
    return float(loss.detach()), list(torch.autograd.grad(loss, [Vt, U]))


def _members(d1: int, d2: int, r: int, rank: int, seed: int, shared: bool):
    """Three members' factors [3, r, d2], [3, d1, r] and targets of rank ``rank`` (shared [d1, d2] or [3, d1, d2])."""
    gen = torch.Generator().manual_seed(seed)
    Vt = torch.randn(3, r, d2, generator=gen, dtype=torch.float64)
    U = torch.randn(3, d1, r, generator=gen, dtype=torch.float64)
    k = 1 if shared else 3
    M = torch.randn(k, d1, rank, generator=gen, dtype=torch.float64) @ torch.randn(k, rank, d2, generator=gen,
                                                                                  dtype=torch.float64)  # fmt: skip
    return Vt, U, (M[0] if shared else M)


@pytest.mark.parametrize("kind", [Full, Subspace])
@pytest.mark.parametrize("shared", [True, False], ids=["shared-target", "own-targets"])
@FEW
@given(d1=st.integers(1, 6), d2=st.integers(1, 6), r=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_closed_forms_against_autograd(kind: type, shared: bool, d1: int, d2: int, r: int, seed: int) -> None:
    """Each member's loss and gradients (in the model's coordinates) equal autograd's of its own objective, with a
    target of full rank min(d1, d2) (the factors fall back to (M, I)) or lower."""
    rank = max(1, min(d1, d2) - 1) if seed % 2 else min(d1, d2)
    Vt, U, M = _members(d1, d2, r, rank, seed, shared)
    problem = kind(Vt, U, M, rank, Members({"regularizer": REGULARIZERS.copy()}))
    loss, grads, grad_sq = problem.evaluate()
    exact = problem.row_loss(loss)
    for i, reg in enumerate(REGULARIZERS):
        target = M if shared else M[i]
        value, expected = _autograd(Vt[i], U[i], target, float(reg))
        scale = 1 + abs(value)
        assert exact[i] == pytest.approx(value, rel=1e-12, abs=1e-12)
        assert abs(loss[i] - value) <= 1e-9 * scale  # Full's expanded form: for the divergence check only
        for w, original in zip(problem.weights(i), (Vt[i], U[i])):
            torch.testing.assert_close(w, original, rtol=1e-12, atol=1e-12)
        for g, e in zip(problem.full_grads(i, grads), expected):
            torch.testing.assert_close(g, e, rtol=1e-11, atol=1e-11 * scale)
        assert grad_sq[i] == pytest.approx([float((e * e).sum()) for e in expected], rel=1e-10, abs=1e-10 * scale)


def test_factors_of_a_low_rank_target_are_exact() -> None:
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(7, 2, generator=gen, dtype=torch.float64) @ torch.randn(2, 5, generator=gen, dtype=torch.float64)
    L, R = factors(M, 2)
    assert L.shape == (7, 2) and R.shape == (5, 2)
    torch.testing.assert_close(L @ R.T, M, rtol=1e-13, atol=1e-13)
    L, R = factors(M, 1)  # asked for less than the rank: no exact factors, the identity fallback
    assert R.shape == (5, 5) and torch.equal(L, M)


def test_subspace_is_small_and_keeps_every_norm() -> None:
    """d1 = 40, d2 = 30, factor rank 3 and target rank 2: the subspace coordinates are [5, 3] and [3, 5], and every
    quantity the metrics read (squared norms, column norms, U^T U - V^T V) is that of the full weights."""
    Vt, U, M = _members(40, 30, 3, 2, 1, True)
    sub = Subspace(Vt, U, M, 2, Members({"regularizer": np.zeros(3)}))
    Yt, X = sub.params
    assert Yt.shape == (3, 3, 5) and X.shape == (3, 5, 3)
    torch.testing.assert_close((X * X).sum((1, 2)), (U * U).sum((1, 2)), rtol=1e-13, atol=0)
    torch.testing.assert_close((X * X).sum(1), (U * U).sum(1), rtol=1e-13, atol=0)
    torch.testing.assert_close((Yt * Yt).sum(2), (Vt * Vt).sum(2), rtol=1e-13, atol=0)
    D_sub = X.mT @ X - Yt @ Yt.mT
    torch.testing.assert_close(D_sub, U.mT @ U - Vt @ Vt.mT, rtol=1e-12, atol=1e-12)


def test_a_float32_target_trains_in_the_subspace_and_follows_float64() -> None:
    """A float32 lowrank target is the rounding of a rank-r* matrix: its factors reproduce it to float32 precision,
    so float32 runs train in the small subspace too, and follow the float64 run to float32 precision."""
    from conftest import FAMILIES, make_config

    from balance.engine.engine import Engine
    from balance.runs.loop import run

    config = make_config(FAMILIES[0], steps=50, data={"d1": 40, "d2": 30, "rank": 2}, model={"init_scale": 0.3})
    engine = Engine([config.replace(dtype="float32")])
    assert [tuple(p.shape) for p in engine.params] == [(1, 2, 4), (1, 4, 2)]  # r = r* = 2: p = q = 4
    single, double = run(config.replace(dtype="float32")).metrics, run(config).metrics
    for column in ("loss", "sqnorm_1", "sqnorm_2", "gap_1"):
        np.testing.assert_allclose(single[column], double[column], rtol=2e-5, err_msg=column)
