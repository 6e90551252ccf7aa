"""The optimisers' updates on stacked weights [K, ...] (K runs at once, each with its own hyper-parameters), keyed by
the names of ``balance.engine.laws.OPTIMIZERS``, and the gradient-flow integrator (one run).

Each update follows PyTorch's conventions exactly (tested against ``torch.optim`` in float64, member by member);
weight decay is coupled L2, d = g + lambda W. An update returns the per-member, per-parameter inner products its exact
gap law (``balance.engine.theory.RECURSIONS``) reads: for heavy ball ||v_{k+1}||^2 ('vv'); for Nesterov ||u_k||^2
('uu') and <u_k, v_{k+1}> ('uv'); all [K, n_params], summed in float64.

Gradient flow, d theta / dt = -grad L(theta), is integrated by SciPy's adaptive DOP853 (8th-order Runge-Kutta)
at tight tolerances; one "step" advances the time by ``lr``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import DOP853
from torch import Tensor

from balance.engine.laws import OPTIMIZERS, SCHEDULES

Extras = dict[str, np.ndarray]  # name -> [K, n_params] float64

__all__ = ["OPTIMIZERS", "RULES", "SCHEDULES", "Flow", "Members", "Optimizer", "Rule", "Step", "inner"]


def inner(a: Sequence[Tensor], b: Sequence[Tensor]) -> np.ndarray:
    """<a_p, b_p> per member and parameter of stacked tensors, [K, n_params], summed in float64."""
    return torch.stack([torch.linalg.vecdot(x.reshape(len(x), -1).double(), y.reshape(len(y), -1).double())
                        for x, y in zip(a, b)], 1).numpy()  # fmt: skip


class Members:
    """Per-member settings: arrays [K] by name, and (cached) tensors [K, 1, ..., 1] that broadcast against a stacked
    tensor of a given rank and dtype."""

    def __init__(self, values: dict[str, np.ndarray]) -> None:
        self.values = values
        self._tensors: dict[tuple, Tensor] = {}
        self._any = {name: bool(v.any()) for name, v in values.items()}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]

    def any(self, name: str) -> bool:
        """Whether any member's ``name`` is nonzero (e.g. weight decay: else the update skips it)."""
        return self._any[name]

    def like(self, name: str, p: Tensor) -> Tensor:
        key = (name, p.ndim, p.dtype)
        t = self._tensors.get(key)
        if t is None:
            t = self._tensors[key] = torch.tensor(self.values[name], dtype=p.dtype).reshape(-1, *[1] * (p.ndim - 1))
        return t

    def set(self, name: str, member: int, value: float) -> None:
        self.values[name][member] = value
        self._any[name] = bool(self.values[name].any())
        self._tensors = {k: t for k, t in self._tensors.items() if k[0] != name}

    def select(self, keep: np.ndarray) -> Members:
        return Members({k: v[keep] for k, v in self.values.items()})


@dataclass
class Step:
    """What one update sees: the stacked weights, this step's gradients, the buffers, per-member settings and step
    sizes, and k (1 for the first update: Adam's bias correction)."""

    params: list[Tensor]
    grads: list[Tensor]
    buffers: dict[str, list[Tensor]]
    hyper: Members
    lr: np.ndarray  # [K]
    neg_lr: list[Tensor]  # -lr m_p shaped like each parameter
    k: int
    scale: tuple[float, ...] = ()  # per-parameter step-size multipliers m_p (empty: all 1)
    gradient: Callable[[], list[Tensor]] | None = None  # the gradient at the current (possibly shifted) weights

    def per(self, name: str, p: Tensor) -> Tensor:
        return self.hyper.like(name, p)

    def decayed(self) -> list[Tensor]:
        """d = g + lambda theta (coupled L2 weight decay)."""
        if not self.hyper.any("weight_decay"):
            return self.grads
        return [g + self.per("weight_decay", p) * p for p, g in zip(self.params, self.grads)]


@dataclass(frozen=True)
class Rule:
    """An optimiser's torch side: its buffers (zeros at the start) and its in-place update. ``linear``: the update is
    a linear combination of the weights, gradients and buffers (matrix factorisation may then train in the subspace
    its iterates never leave). ``update`` None: an integrator driven by the gradient (gradient flow, one run)."""

    buffers: tuple[str, ...]
    update: Callable[[Step], Extras] | None
    linear: bool = True


def _gd(s: Step) -> Extras:
    """theta <- theta - eta (g + lambda theta). Mini-batch SGD is the same update on a batch gradient."""
    if len(s.lr) == 1 and not s.scale:  # one run: one fused kernel per parameter with a scalar step size
        torch._foreach_add_(s.params, s.decayed(), alpha=-float(s.lr[0]))
        return {}
    for p, d, a in zip(s.params, s.decayed(), s.neg_lr):
        p.addcmul_(d, a)
    return {}


def _heavy_ball(s: Step) -> Extras:
    """v <- beta v + g + lambda theta;  theta <- theta - eta v   (torch.optim.SGD(momentum=beta), v_0 = 0)."""
    vs = s.buffers["v"]
    for p, v, d, a in zip(s.params, vs, s.decayed(), s.neg_lr):
        v.mul_(s.per("momentum", p)).add_(d)
        p.addcmul_(v, a)
    return {"vv": inner(vs, vs)}


def _nesterov(s: Step) -> Extras:
    """v <- beta v + d;  u = d + beta v;  theta <- theta - eta u   (torch nesterov=True), d = g + lambda theta."""
    vs, us = s.buffers["v"], []
    for p, v, d, a in zip(s.params, vs, s.decayed(), s.neg_lr):
        beta = s.per("momentum", p)
        v.mul_(beta).add_(d)
        us.append(d + beta * v)
        p.addcmul_(us[-1], a)
    return {"uu": inner(us, us), "uv": inner(us, vs)}


def _adam(s: Step) -> Extras:
    """torch.optim.Adam with coupled L2 decay: bias-corrected m / (sqrt(v) + eps), beta1 = ``momentum``."""
    b1, b2 = s.hyper["momentum"], s.hyper["beta2"]
    c1, c2 = 1 - b1**s.k, 1 - b2**s.k  # [K]
    scale = s.scale or (1.0,) * len(s.params)
    for p, m, v, d, mult in zip(s.params, s.buffers["m"], s.buffers["v"], s.decayed(), scale):
        beta1, beta2 = s.per("momentum", p), s.per("beta2", p)
        m.mul_(beta1).add_(d * (1 - beta1))
        v.mul_(beta2).addcmul_(d * (1 - beta2), d)
        shape = (-1, *[1] * (p.ndim - 1))
        denom = (v.sqrt() / torch.tensor(np.sqrt(c2), dtype=p.dtype).reshape(shape)).add_(s.per("eps", p))
        p.addcdiv_(m * torch.tensor(-s.lr * mult / c1, dtype=p.dtype).reshape(shape), denom)
    return {}


def _sam(s: Step) -> Extras:
    """g~ = grad L(theta + rho g / ||g||) (||g|| over all of a member's parameters), then the GD update with g~:
    theta <- theta - eta (g~ + lambda theta) (Foret et al. 2021). Returns ||g~_p||^2 ('tt') and
    rho <g_p, g~_p> / ||g|| ('tg'), [K, n_params], what SAM's law reads."""
    assert s.gradient is not None, "SAM needs the gradient at a shifted point"
    norm = np.sqrt(inner(s.grads, s.grads).sum(1))  # [K]
    step = np.where(norm > 0, s.hyper["rho"] / np.where(norm > 0, norm, 1.0), 0.0)
    shifts = [g * torch.tensor(step, dtype=g.dtype).reshape(-1, *[1] * (g.ndim - 1)) for g in s.grads]
    with torch.no_grad():
        torch._foreach_add_(s.params, shifts)
    tilde = s.gradient()
    with torch.no_grad():
        torch._foreach_sub_(s.params, shifts)
    extras = {"tt": inner(tilde, tilde), "tg": inner(s.grads, tilde) * step[:, None]}
    _gd(Step(s.params, tilde, s.buffers, s.hyper, s.lr, s.neg_lr, s.k, s.scale))
    return extras


RULES: dict[str, Rule] = {
    "gd": Rule((), _gd),
    "sgd": Rule((), _gd),
    "label_noise": Rule((), _gd),  # the noise is in the gradient: the problem draws it (``balance.engine.networks``)
    "sam": Rule((), _sam),
    "momentum": Rule(("v",), _heavy_ball),
    "nesterov": Rule(("v",), _nesterov),
    "adam": Rule(("m", "v"), _adam, linear=False),
    "flow": Rule((), None, linear=False),
}

HYPER = {  # per-member settings the updates read, by their name in OptimConfig
    "weight_decay": 0.0,
    "momentum": 0.9,
    "beta2": 0.999,
    "eps": 1e-8,
    "rho": 0.05,
    "label_noise": 0.1,
}


class Optimizer:
    """``RULES[name]`` over the stacked weights ``params`` with per-member settings ``hyper`` (``Members`` holding
    at least ``HYPER``'s names) and per-parameter step-size multipliers ``scale`` (eta_p = eta m_p; None: all 1)."""

    def __init__(self, name: str, params: list[Tensor], hyper: Members, scale: Sequence[float] | None = None) -> None:
        self.rule = RULES[name]
        self.params, self.hyper = params, hyper
        uniform = scale is None or all(m == 1.0 for m in scale)
        self.scale: tuple[float, ...] = () if uniform else tuple(float(m) for m in scale)  # type: ignore[union-attr]
        self.buffers = {b: [torch.zeros_like(p) for p in params] for b in self.rule.buffers}
        self.k = 0
        self._neg_lr: tuple[np.ndarray | None, list[Tensor]] = (None, [])

    def step(self, grads: list[Tensor], lr: np.ndarray, gradient: Callable[[], list[Tensor]] | None = None) -> Extras:
        """Update the weights in place with step sizes ``lr`` [K]; returns what the gap law reads. ``gradient``: the
        gradient at the current weights (SAM evaluates it at a shifted point)."""
        self.k += 1
        if self._neg_lr[0] is not lr:  # a constant step size is the same array every step: build once
            shape = [(-1, *[1] * (p.ndim - 1)) for p in self.params]
            scale = self.scale or (1.0,) * len(self.params)
            self._neg_lr = (
                lr,
                [torch.tensor(-lr * m, dtype=p.dtype).reshape(s) for p, s, m in zip(self.params, shape, scale)],
            )
        assert self.rule.update is not None
        step = Step(self.params, grads, self.buffers, self.hyper, lr, self._neg_lr[1], self.k, self.scale, gradient)
        if self.params[0].requires_grad:  # autograd leaves (stacked networks): update outside the graph
            with torch.no_grad():
                return self.rule.update(step)
        return self.rule.update(step)

    def select(self, index: Tensor, params: list[Tensor], hyper: Members) -> None:
        """Keep the members ``index`` (the engine dropped the others); ``params`` and ``hyper`` are already narrowed."""
        self.params, self.hyper = params, hyper
        self.buffers = {b: [t.index_select(0, index) for t in ts] for b, ts in self.buffers.items()}
        self._neg_lr = (None, [])


FLOAT32_RTOL = 1e-6  # asking float32 gradients for more makes the flow solver's error control crawl


class Flow:
    """Gradient flow: d theta/dt = -grad L(theta) (per-layer rates: d theta_p/dt = -m_p g_p), integrated by SciPy's
    DOP853 at rtol (atol = rtol / 100).

    One run (the weights may be stacked with K = 1: the solver sees one flat vector). One integrator lives across
    steps, taking its own adaptive steps; each optimiser "step" advances the time by ``lr`` and reads the state there
    from the integrator's dense output (7th order), so a small ``lr`` costs no extra gradient evaluations.
    Restarting ``solve_ivp`` every step cost about 37 evaluations a step.
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        rtol: float,
        gradient: Callable[[], list[Tensor]],
        scale: Sequence[float] | None = None,
    ) -> None:
        self.params = list(params)
        ms = scale if scale is not None else [1.0] * len(self.params)
        self.scale = np.concatenate([np.full(p.numel(), float(m)) for p, m in zip(self.params, ms)])
        self.rtol = rtol
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
            return -self.scale * self._flat(self.gradient())

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor], lr: float | np.ndarray, gradient: object = None) -> Extras:
        if self.solver is None:
            y0 = self._flat(self.params)
            rtol = self.rtol
            if self.params and self.params[0].dtype == torch.float32:  # its gradients carry ~1e-7 round-off
                rtol = max(rtol, FLOAT32_RTOL)
            self.solver = DOP853(self._rhs, 0.0, y0, t_bound=np.inf, rtol=rtol, atol=rtol / 100)
        target = self.t + float(np.asarray(lr).reshape(-1)[0])
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
