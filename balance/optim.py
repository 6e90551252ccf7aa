"""Optimisers and step-size schedules, written out so the theory can read their buffers.

Each update follows PyTorch's conventions exactly (tested against ``torch.optim`` in float64); weight decay is
coupled L2, g <- g + lambda W. ``step`` returns the per-parameter inner products the exact gap recursions of
``balance.theory`` need (for momentum: ||v_{k+1}||^2; for Nesterov: ||u_k||^2 and <u_k, v_{k+1}>).

Gradient flow, d theta / dt = -grad L(theta), is integrated by SciPy's adaptive DOP853 (8th-order Runge-Kutta)
at tight tolerances; one "step" advances the time by ``lr``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import DOP853
from torch import Tensor

from balance.config import OptimConfig

Extras = dict[str, list[float]]


def _dot(a: Tensor, b: Tensor) -> float:
    return float(a.reshape(-1) @ b.reshape(-1))


class Optimizer:
    """In-place update of ``params`` from ``grads`` with step size ``lr``."""

    def __init__(self, cfg: OptimConfig, params: Sequence[Tensor]) -> None:
        self.cfg = cfg
        self.params = list(params)

    def _decayed(self, grads: Sequence[Tensor]) -> list[Tensor]:
        lam = self.cfg.weight_decay
        return [g + lam * p for p, g in zip(self.params, grads)] if lam else list(grads)

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor], lr: float) -> Extras:
        raise NotImplementedError


class GD(Optimizer):
    """theta <- theta - eta (g + lambda theta). Mini-batch SGD is the same update on a batch gradient."""

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor], lr: float) -> Extras:
        torch._foreach_add_(self.params, self._decayed(grads), alpha=-lr)
        return {}


class HeavyBall(Optimizer):
    """v <- beta v + g + lambda theta;  theta <- theta - eta v   (torch.optim.SGD(momentum=beta), v_0 = 0)."""

    def __init__(self, cfg: OptimConfig, params: Sequence[Tensor]) -> None:
        super().__init__(cfg, params)
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor], lr: float) -> Extras:
        beta = self.cfg.momentum
        for v, d in zip(self.v, self._decayed(grads)):
            v.mul_(beta).add_(d)
        torch._foreach_add_(self.params, self.v, alpha=-lr)
        return {"vv": [_dot(v, v) for v in self.v]}


class Nesterov(HeavyBall):
    """v <- beta v + d;  u = d + beta v;  theta <- theta - eta u   (torch nesterov=True), d = g + lambda theta."""

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor], lr: float) -> Extras:
        beta = self.cfg.momentum
        ds = self._decayed(grads)
        us = []
        for v, d in zip(self.v, ds):
            v.mul_(beta).add_(d)
            us.append(d + beta * v)
        torch._foreach_add_(self.params, us, alpha=-lr)
        return {"uu": [_dot(u, u) for u in us], "uv": [_dot(u, v) for u, v in zip(us, self.v)]}


class Adam(Optimizer):
    """torch.optim.Adam with coupled L2 decay: bias-corrected m / (sqrt(v) + eps), beta1 = ``momentum``."""

    def __init__(self, cfg: OptimConfig, params: Sequence[Tensor]) -> None:
        super().__init__(cfg, params)
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.k = 0

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor], lr: float) -> Extras:
        b1, b2, eps = self.cfg.momentum, self.cfg.beta2, self.cfg.eps
        self.k += 1
        c1, c2 = 1 - b1**self.k, 1 - b2**self.k
        for p, m, v, d in zip(self.params, self.m, self.v, self._decayed(grads)):
            m.mul_(b1).add_(d, alpha=1 - b1)
            v.mul_(b2).addcmul_(d, d, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(c2)).add_(eps)
            p.addcdiv_(m, denom, value=-lr / c1)
        return {}


FLOAT32_RTOL = 1e-6  # asking float32 gradients for more makes the flow solver's error control crawl


class Flow(Optimizer):
    """Gradient flow: d theta/dt = -grad L(theta), integrated by SciPy's DOP853 at rtol (atol = rtol / 100).

    One integrator lives across steps, taking its own adaptive steps; each optimiser "step" advances the time by
    ``lr`` and reads the state there from the integrator's dense output (7th order), so a small ``lr`` costs no
    extra gradient evaluations. Restarting ``solve_ivp`` every step cost about 37 evaluations a step.
    """

    def __init__(self, cfg: OptimConfig, params: Sequence[Tensor], gradient: Callable[[], list[Tensor]]) -> None:
        super().__init__(cfg, params)
        self.gradient = gradient  # gradient at the current params
        self.solver: DOP853 | None = None
        self.t = 0.0
        # A smooth flow needs a handful of solver steps per optimiser step. Thousands mean the solver is crawling
        # (a ReLU pre-activation sliding along its kink, where the flow is not smooth): fail instead of hanging.
        self.max_solver_steps = 20_000

    def _set(self, flat: np.ndarray) -> None:
        offset = 0
        for p in self.params:
            n = p.numel()
            p.copy_(torch.from_numpy(flat[offset : offset + n]).reshape(p.shape))
            offset += n

    def _flat(self, tensors: Sequence[Tensor]) -> np.ndarray:
        return np.concatenate([t.detach().reshape(-1).double().numpy() for t in tensors])

    def _rhs(self, _t: float, y: np.ndarray) -> np.ndarray:
        self._set(y)
        with torch.enable_grad():
            return -self._flat(self.gradient())

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor], lr: float) -> Extras:
        if self.solver is None:
            y0 = self._flat(self.params)
            rtol = self.cfg.rtol
            if self.params and self.params[0].dtype == torch.float32:  # its gradients carry ~1e-7 round-off
                rtol = max(rtol, FLOAT32_RTOL)
            self.solver = DOP853(self._rhs, 0.0, y0, t_bound=np.inf, rtol=rtol, atol=rtol / 100)
        target = self.t + lr
        taken = 0
        while self.solver.t < target:
            if taken == self.max_solver_steps:
                raise FloatingPointError(
                    f"gradient flow stalled at t = {self.solver.t:.6g}: {taken} solver steps (the last "
                    f"{self.solver.step_size:.2g} long) without reaching t = {target:.6g}; typically a ReLU "
                    "pre-activation sliding along its kink, where the flow is not smooth. Use gd with a small step size"
                )
            message = self.solver.step()
            taken += 1
            if self.solver.status == "failed":
                raise FloatingPointError(f"the gradient-flow solver failed: {message}")
        self._set(self.solver.dense_output()(target))
        self.t = target
        return {}


@dataclass(frozen=True)
class OptimizerEntry:
    build: Callable[..., Optimizer]
    help: str
    exact_theory: bool  # the gap recursion of balance.theory is exact for it


OPTIMIZERS: dict[str, OptimizerEntry] = {
    "gd": OptimizerEntry(GD, "full-batch gradient descent", True),
    "sgd": OptimizerEntry(GD, "mini-batch stochastic gradient descent", True),
    "momentum": OptimizerEntry(HeavyBall, "heavy-ball momentum (PyTorch convention)", True),
    "nesterov": OptimizerEntry(Nesterov, "Nesterov momentum (PyTorch convention)", True),
    "adam": OptimizerEntry(Adam, "Adam (coordinate-wise: breaks the invariant)", False),
    "flow": OptimizerEntry(Flow, "gradient flow, integrated by an adaptive ODE solver", True),
}


def _constant(cfg: OptimConfig, k: int) -> float:
    return 1.0


def _theorem(cfg: OptimConfig, k: int) -> float:
    """eta_k = eta_0 (k+1)^-(1/2+delta): square-summable but not summable (the paper's Theorem 3.1)."""
    return (k + 1) ** -(0.5 + cfg.decay_power)


def _step_decay(cfg: OptimConfig, k: int) -> float:
    return cfg.decay_factor ** (k // cfg.decay_every)


SCHEDULES: dict[str, Callable[[OptimConfig, int], float]] = {
    "constant": _constant,
    "theorem": _theorem,
    "step": _step_decay,
}


def make_optimizer(
    cfg: OptimConfig, params: Sequence[Tensor], gradient: Callable[[], list[Tensor]] | None = None
) -> Optimizer:
    entry = OPTIMIZERS[cfg.name]
    if entry.build is Flow:
        return Flow(cfg, params, gradient)  # type: ignore[arg-type]
    return entry.build(cfg, params)
