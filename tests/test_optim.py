"""Tests of balance.optim: every update against torch.optim in float64, the buffers the theory reads, schedules,
and the gradient-flow integrator against a closed-form solution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import FEW
from hypothesis import given
from hypothesis import strategies as st

from balance.config import OptimConfig
from balance.optim import (
    GD,
    OPTIMIZERS,
    SCHEDULES,
    Adam,
    Flow,
    HeavyBall,
    Nesterov,
    make_optimizer,
)

SHAPES = [(3, 4), (5,), (2, 3, 2)]
LRS = [0.1, 0.05, 0.2, 0.01, 0.3, 0.07]  # a different step size each step, as a schedule gives


def _tensors(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]


def _grads(params: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """A gradient that depends on the parameters and the step: sin(p) * (k + 1) + p^2 (deterministic)."""
    return [torch.sin(p) * (k + 1) + p * p for p in params]


def _torch_optimizer(cfg: OptimConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    lam = cfg.weight_decay
    if cfg.name in ("gd", "sgd"):
        return torch.optim.SGD(params, lr=1.0, weight_decay=lam)
    if cfg.name == "momentum":
        return torch.optim.SGD(params, lr=1.0, momentum=cfg.momentum, weight_decay=lam)
    if cfg.name == "nesterov":
        return torch.optim.SGD(params, lr=1.0, momentum=cfg.momentum, nesterov=True, weight_decay=lam)
    assert cfg.name == "adam"
    return torch.optim.Adam(params, lr=1.0, betas=(cfg.momentum, cfg.beta2), eps=cfg.eps, weight_decay=lam)


CASES = [
    OptimConfig(name="gd"),
    OptimConfig(name="gd", weight_decay=0.3),
    OptimConfig(name="sgd", batch_size=4, weight_decay=0.1),
    OptimConfig(name="momentum", momentum=0.9),
    OptimConfig(name="momentum", momentum=0.5, weight_decay=0.2),
    OptimConfig(name="nesterov", momentum=0.9),
    OptimConfig(name="nesterov", momentum=0.7, weight_decay=0.2),
    OptimConfig(name="adam"),
    OptimConfig(name="adam", momentum=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1),
]


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"{c.name}-wd{c.weight_decay}-m{c.momentum}")
@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
@FEW
@given(seed=st.integers(0, 2**31 - 1))
def test_updates_match_torch_optim_exactly(cfg: OptimConfig, foreach: bool, seed: int) -> None:
    """Same parameters after every step up to float64 round-off (torch fuses some operations, e.g.
    ``add(alpha=)``, so single elements differ by a few ulp); a wrong coefficient would differ at 1e-3."""
    ours, theirs = _tensors(seed), _tensors(seed)
    opt = make_optimizer(cfg, ours)
    reference = _torch_optimizer(cfg, theirs)
    for group in reference.param_groups:
        group["foreach"] = foreach
    for k, lr in enumerate(LRS):
        opt.step(_grads(ours, k), lr)
        for t, g in zip(theirs, _grads(theirs, k)):
            t.grad = g
        reference.param_groups[0]["lr"] = lr
        reference.step()
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)  # entries are O(1)


@pytest.mark.parametrize("name", ["momentum", "nesterov"])
def test_momentum_buffers_reported_for_the_theory(name: str) -> None:
    """vv = ||v_{k+1}||^2 (heavy ball); uu = ||u_k||^2 and uv = <u_k, v_{k+1}> with u_k = d_k + beta v_{k+1}
    (Nesterov), per parameter, from an independent re-implementation of the buffers."""
    cfg = OptimConfig(name=name, momentum=0.8, weight_decay=0.1)
    params = _tensors(1)
    shadow = [p.clone() for p in params]
    v = [torch.zeros_like(p) for p in params]
    opt = make_optimizer(cfg, params)
    for k, lr in enumerate(LRS):
        grads = _grads(params, k)
        extras = opt.step(grads, lr)
        d = [g + 0.1 * p for g, p in zip(_grads(shadow, k), shadow)]
        v = [0.8 * vi + di for vi, di in zip(v, d)]
        if name == "momentum":
            assert extras["vv"] == pytest.approx([float((vi * vi).sum()) for vi in v], rel=1e-14)
            step = v
        else:
            u = [di + 0.8 * vi for di, vi in zip(d, v)]
            assert extras["uu"] == pytest.approx([float((ui * ui).sum()) for ui in u], rel=1e-14)
            assert extras["uv"] == pytest.approx([float((ui * vi).sum()) for ui, vi in zip(u, v)], rel=1e-14)
            step = u
        shadow = [p - lr * s for p, s in zip(shadow, step)]
        for a, b in zip(params, shadow):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


def test_gd_and_adam_report_no_buffers() -> None:
    for cfg in (OptimConfig(name="gd"), OptimConfig(name="adam")):
        params = _tensors(0)
        assert make_optimizer(cfg, params).step(_grads(params, 0), 0.1) == {}


def test_registry() -> None:
    assert list(OPTIMIZERS) == ["gd", "sgd", "momentum", "nesterov", "adam", "flow"]
    assert {n for n, e in OPTIMIZERS.items() if not e.exact_theory} == {"adam"}
    kinds = {"gd": GD, "sgd": GD, "momentum": HeavyBall, "nesterov": Nesterov, "adam": Adam}
    for name, kind in kinds.items():
        extra = {"batch_size": 2} if name == "sgd" else {}
        assert type(make_optimizer(OptimConfig(name=name, **extra), _tensors(0))) is kind
    flow = make_optimizer(OptimConfig(name="flow"), _tensors(0), gradient=lambda: [])
    assert isinstance(flow, Flow)


# --- 8. schedules ------------------------------------------------------------------------------------------------


def test_schedules_closed_forms() -> None:
    assert list(SCHEDULES) == ["constant", "theorem", "step"]
    cfg = OptimConfig(decay_power=0.3, decay_every=7, decay_factor=0.25)
    for k in [0, 1, 2, 6, 7, 13, 14, 100, 10**6]:
        assert SCHEDULES["constant"](cfg, k) == 1.0
        assert SCHEDULES["theorem"](cfg, k) == pytest.approx((k + 1) ** -0.8, rel=1e-15)
        assert SCHEDULES["step"](cfg, k) == 0.25 ** (k // 7)
    assert SCHEDULES["step"](cfg, 6) == 1.0 and SCHEDULES["step"](cfg, 7) == 0.25
    eta = np.array([SCHEDULES["theorem"](cfg, k) for k in range(2000)])
    assert eta[0] == 1.0 and np.all(np.diff(eta) < 0)
    assert SCHEDULES["theorem"](OptimConfig(decay_power=0.0), 99) == pytest.approx(0.1, rel=1e-15)


# --- gradient flow -------------------------------------------------------------------------------------------


def test_flow_matches_the_matrix_exponential() -> None:
    """L = 1/2 theta^T A theta: theta(t) = exp(-A t) theta(0); steps of different lengths, rtol 1e-10."""
    gen = torch.Generator().manual_seed(0)
    B = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    A = B @ B.T / 6 + 0.1 * torch.eye(6, dtype=torch.float64)
    theta = torch.randn(6, generator=gen, dtype=torch.float64)
    start = theta.clone()
    gradient = lambda: [A @ theta]  # noqa: E731
    flow = make_optimizer(OptimConfig(name="flow"), [theta], gradient)
    t = 0.0
    for lr in [0.3, 1.0, 0.05, 2.0, 0.5]:
        assert flow.step([A @ theta], lr) == {}
        t += lr
        exact = torch.from_numpy(scipy.linalg.expm(-(A * t).numpy())) @ start
        torch.testing.assert_close(theta, exact, rtol=1e-8, atol=1e-9 * float(start.norm()))
    assert math.isclose(t, 3.85)


def test_flow_in_float32_params() -> None:
    """The integrator works in float64 and writes back rounded values into float32 parameters."""
    theta = torch.tensor([1.0, -2.0], dtype=torch.float32)
    flow = make_optimizer(OptimConfig(name="flow"), [theta], lambda: [theta.double().float() * 1.0])
    flow.step([theta.clone()], 1.0)
    assert theta.dtype == torch.float32
    torch.testing.assert_close(theta, torch.tensor([math.exp(-1.0), -2 * math.exp(-1.0)]), rtol=1e-6, atol=0)


def test_flow_sliding_along_a_kink_fails_instead_of_hanging() -> None:
    """L(theta) = relu(theta) + relu(-theta) = |theta|: the flow theta' = -sign(theta) reaches the kink at
    t = |theta_0| = 1 and stays there, the field pointing into the kink from both sides. An adaptive solver
    then crosses the kink back and forth with tiny steps forever (it happens in ReLU MLPs when a pre-activation
    is driven to 0); Flow must raise a clear error after ``max_solver_steps`` instead of hanging."""
    theta = torch.tensor([1.0], dtype=torch.float64)
    flow = make_optimizer(OptimConfig(name="flow"), [theta], lambda: [torch.sign(theta)])
    flow.max_solver_steps = 200
    flow.step([torch.sign(theta)], 0.5)
    assert float(theta) == pytest.approx(0.5, rel=1e-12)  # exact before the kink
    with pytest.raises(FloatingPointError, match=r"stalled at t = 1: .* without reaching t = 1\.5.*kink"):
        flow.step([torch.sign(theta)], 1.0)
