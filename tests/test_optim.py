"""Tests of balance.engine.optim: every update on stacked weights against torch.optim in float64, member by member,
the buffers the theory reads, dropping members, the registry, schedules, and the gradient-flow integrator against a
closed-form solution."""

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
from balance.engine import laws
from balance.engine.optim import HYPER, RULES, SCHEDULES, Flow, Members, Optimizer
from balance.engine.theory import RECURSIONS

SHAPES = [(3, 4), (5,), (2, 3, 2)]
LRS = [0.1, 0.05, 0.2, 0.01, 0.3, 0.07]  # a different step size each step, as a schedule gives


def _tensors(seed: int, k: int | None = None) -> list[torch.Tensor]:
    """One run's parameters, or K runs' stacked [K, *shape] (member i drawn with seed + i)."""
    if k is not None:
        return [torch.stack(ts) for ts in zip(*(_tensors(seed + i) for i in range(k)))]
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


def _members(cfgs: list[OptimConfig]) -> Members:
    return Members({name: np.array([float(getattr(c, name)) for c in cfgs]) for name in HYPER})


# Per optimiser, members that differ in every setting the update reads (one stack, as an engine holds them).
CASES: dict[str, list] = {
    "gd": [{}, {"weight_decay": 0.3}],
    "sgd": [{"batch_size": 4, "weight_decay": 0.1}, {"batch_size": 4}],
    "momentum": [{"momentum": 0.9}, {"momentum": 0.5, "weight_decay": 0.2}],
    "nesterov": [{"momentum": 0.9}, {"momentum": 0.7, "weight_decay": 0.2}],
    "adam": [{}, {"momentum": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.1}],
}
CASES = {name: [OptimConfig(name=name, **c) for c in cs] for name, cs in CASES.items()}
MEMBER_LR = np.array([1.0, 0.5])  # member i's step size is LRS[k] * MEMBER_LR[i]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
@FEW
@given(seed=st.integers(0, 2**31 - 1))
def test_updates_match_torch_optim_member_by_member(name: str, foreach: bool, seed: int) -> None:
    """K = 2 stacked members with their own settings and step sizes against one ``torch.optim`` optimiser per member:
    the same parameters after every step up to float64 round-off (torch fuses some operations, e.g. ``add(alpha=)``,
    so single elements differ by a few ulp); a wrong coefficient, or members mixed up, would differ at 1e-3."""
    cfgs = CASES[name]
    ours = _tensors(seed, len(cfgs))
    opt = Optimizer(name, ours, _members(cfgs))
    theirs = [_tensors(seed + i) for i in range(len(cfgs))]
    references = [_torch_optimizer(c, ts) for c, ts in zip(cfgs, theirs)]
    for ref in references:
        for group in ref.param_groups:
            group["foreach"] = foreach
    for k, lr in enumerate(LRS):
        opt.step(_grads(ours, k), lr * MEMBER_LR)
        for i, (ts, ref) in enumerate(zip(theirs, references)):
            for t, g in zip(ts, _grads(ts, k)):
                t.grad = g
            ref.param_groups[0]["lr"] = lr * MEMBER_LR[i]
            ref.step()
        for i, ts in enumerate(theirs):
            for a, b in zip(ours, ts):
                torch.testing.assert_close(a[i], b, rtol=1e-14, atol=1e-15)  # entries are O(1)


@pytest.mark.parametrize("name", ["momentum", "nesterov"])
def test_momentum_buffers_reported_for_the_theory(name: str) -> None:
    """vv = ||v_{k+1}||^2 (heavy ball); uu = ||u_k||^2 and uv = <u_k, v_{k+1}> with u_k = d_k + beta v_{k+1}
    (Nesterov), per member and parameter [K, n_params], from an independent re-implementation of the buffers."""
    betas, lams = [0.8, 0.3], [0.1, 0.0]
    params = _tensors(1, 2)
    cfgs = [OptimConfig(name=name, momentum=b, weight_decay=w) for b, w in zip(betas, lams)]
    opt = Optimizer(name, params, _members(cfgs))
    shadows = [[p[i].clone() for p in params] for i in range(2)]
    vs = [[torch.zeros_like(p) for p in shadow] for shadow in shadows]
    for k, lr in enumerate(LRS):
        extras = opt.step(_grads(params, k), lr * MEMBER_LR)
        for i in range(2):
            d = [g + lams[i] * p for g, p in zip(_grads(shadows[i], k), shadows[i])]
            v = vs[i] = [betas[i] * vi + di for vi, di in zip(vs[i], d)]
            if name == "momentum":
                assert extras["vv"][i] == pytest.approx([float((vi * vi).sum()) for vi in v], rel=1e-14)
                step = v
            else:
                u = [di + betas[i] * vi for di, vi in zip(d, v)]
                assert extras["uu"][i] == pytest.approx([float((ui * ui).sum()) for ui in u], rel=1e-14)
                assert extras["uv"][i] == pytest.approx([float((ui * vi).sum()) for ui, vi in zip(u, v)], rel=1e-14)
                step = u
            shadows[i] = [p - lr * MEMBER_LR[i] * s for p, s in zip(shadows[i], step)]
            for a, b in zip(params, shadows[i]):
                torch.testing.assert_close(a[i], b, rtol=1e-14, atol=1e-15)


def test_gd_and_adam_report_no_buffers() -> None:
    for name in ("gd", "adam"):
        params = _tensors(0, 2)
        assert Optimizer(name, params, _members(CASES[name])).step(_grads(params, 0), np.array([0.1, 0.2])) == {}


@pytest.mark.parametrize("name", list(CASES))
def test_dropping_a_member_leaves_the_others_as_if_alone(name: str) -> None:
    """``select`` keeps member 1 (buffers, settings): it goes on exactly as a stack that only ever held it."""
    cfgs = CASES[name]
    params, alone = _tensors(3, 2), [p[1:].clone() for p in _tensors(3, 2)]
    both, single = Optimizer(name, params, _members(cfgs)), Optimizer(name, alone, _members(cfgs[1:]))
    for k, lr in enumerate(LRS):
        if k == 2:
            index = torch.tensor([1])
            params = [p.index_select(0, index) for p in params]
            both.select(index, params, both.hyper.select(np.array([False, True])))
        lrs = lr * MEMBER_LR
        both.step(_grads(params, k), lrs if k < 2 else lrs[1:])
        single.step(_grads(alone, k), lrs[1:])
        if k < 2:
            continue
        for a, b in zip(params, alone):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_registry() -> None:
    """Every optimiser of the registry has its update, every law its recursion, keyed by the same names."""
    assert list(laws.OPTIMIZERS) == ["gd", "sgd", "momentum", "nesterov", "label_noise", "sam", "adam", "flow"]
    assert set(RULES) == set(laws.OPTIMIZERS)
    assert {n for n, e in laws.OPTIMIZERS.items() if not e.exact_theory} == {"adam"}
    assert set(RECURSIONS) == {n for n, e in laws.OPTIMIZERS.items() if e.law is not None}
    assert all(e.help and "optim.lr" in e.settings for e in laws.OPTIMIZERS.values())
    assert all(e.no_law for e in laws.OPTIMIZERS.values() if e.law is None)
    assert {n for n, r in RULES.items() if r.update is None} == {"flow"}  # an integrator, not an update
    assert {n for n, e in laws.OPTIMIZERS.items() if not e.batches} == {"flow"}
    assert {n for n, r in RULES.items() if not r.linear} == {"adam", "flow"}
    for name, rule in RULES.items():
        used = {"optim.momentum"} if "v" in rule.buffers or "m" in rule.buffers else set()
        assert used <= set(laws.OPTIMIZERS[name].settings), name


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
    flow = Flow([theta], OptimConfig(name="flow").rtol, gradient)
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
    flow = Flow([theta], 1e-10, lambda: [theta.double().float() * 1.0])
    flow.step([theta.clone()], 1.0)
    assert theta.dtype == torch.float32
    torch.testing.assert_close(theta, torch.tensor([math.exp(-1.0), -2 * math.exp(-1.0)]), rtol=1e-6, atol=0)


def test_flow_sliding_along_a_kink_fails_instead_of_hanging() -> None:
    """L(theta) = relu(theta) + relu(-theta) = |theta|: the flow theta' = -sign(theta) reaches the kink at
    t = |theta_0| = 1 and stays there, the field pointing into the kink from both sides. An adaptive solver
    then crosses the kink back and forth with tiny steps forever (it happens in ReLU MLPs when a pre-activation
    is driven to 0); Flow must raise a clear error after ``max_solver_steps`` instead of hanging."""
    theta = torch.tensor([1.0], dtype=torch.float64)
    flow = Flow([theta], 1e-10, lambda: [torch.sign(theta)])
    flow.max_solver_steps = 200
    flow.step([torch.sign(theta)], 0.5)
    assert float(theta) == pytest.approx(0.5, rel=1e-12)  # exact before the kink
    with pytest.raises(FloatingPointError, match=r"stalled at t = 1: .* without reaching t = 1\.5.*kink"):
        flow.step([torch.sign(theta)], 1.0)
