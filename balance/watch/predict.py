"""Each law's exact prediction under a ``torch.optim`` optimiser, advanced after every step from the optimiser's own
param groups and state.

For law j with terms X_t (coefficients c_t) whose parameters step with sizes eta r_t (r_t = 1 for one step size),
the watched quantity is Q_j = sum_t (c_t / r_t) X_t X_t^T, and with Delta<x, y> = sum_t c_t r_t <x_t, y_t> the
registry's recursions (``balance.engine.theory.RECURSIONS``) are exact (formula sheet 3.4):

- SGD, decay lambda:  Q_{k+1} = (1 - eta lambda)^2 Q_k + eta^2 Delta||g_k||^2
- heavy ball (beta):  Q_{k+1} = Q_k - 2 eta (beta B_k + lambda Q_k) + eta^2 Delta||v_{k+1}||^2,
                      B_{k+1} = beta B_k + lambda Q_k - eta Delta||v_{k+1}||^2      (B = sum_t c_t <X_t, V_t>)
- Nesterov:           the same with u_k = d_k + beta v_{k+1} (``theory._nesterov``).

The gradient g_k is read from ``p.grad`` after the step (the optimiser does not change it), the momentum buffer
v_{k+1} from ``optimizer.state[p]``. Per-unit laws are tracked as their trace (one number; every unit's own law
holds too), matrix laws as the whole matrix per group. Everything else (Adam, ...) is measured only, with the reason.
Per step this costs one fused norm over the laws' gradients and a few small matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from balance.engine.laws import OPTIMIZERS
from balance.engine.symmetries import BREAKS, SGD_UNSUPPORTED, TORCH_OPTIMIZERS, UNKNOWN_OPTIMIZER
from balance.engine.theory import RECURSIONS, LawStep
from balance.watch.forms import Law, Term

Tensor = torch.Tensor


@dataclass
class Tracked:
    """One law's state: its step sizes' ratios, its quantity at step 0, the prediction (and momentum state)."""

    law: Law
    rule: str | None = None  # key of RECURSIONS, None: measured only
    reason: str = ""  # why measured only
    ratios: dict[str, float] = field(default_factory=dict)  # r_t per parameter
    reference: str = ""  # the parameter whose step size is eta
    Q0: Tensor | None = None
    Q: Tensor | None = None  # predicted
    B: Tensor | None = None

    def weights(self) -> dict[str, float]:
        """1 / r_t: the measured quantity's weights."""
        return {name: 1.0 / r for name, r in self.ratios.items()}


def _whole(term: Term, tensor: Tensor) -> bool:
    """Whether the term covers its parameter entirely (its squared norm is the tensor's)."""
    return term.start == 0 and term.length == tensor.shape[term.axis]


def _hyper(group: dict[str, Any]) -> tuple[float, float, float, bool, bool, float]:
    lr = float(group["lr"])
    return (lr, float(group.get("momentum", 0.0)), float(group.get("weight_decay", 0.0)),
            bool(group.get("nesterov", False)), bool(group.get("maximize", False)),
            float(group.get("dampening", 0.0)))  # fmt: skip


class Predictor:
    """The laws of a model under its optimiser: ``measure()`` the quantities now, ``advance()`` after each step."""

    def __init__(self, laws: list[Law], model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.params = dict(model.named_parameters())
        self.optimizer = optimizer
        self.group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        self.tracked = [self._plan(law) for law in laws]
        self.problem = ""  # the last reason a prediction stopped (logged once)
        with torch.no_grad():
            for t in self.tracked:
                t.Q0 = self._quantity(t, self.params, weights=t.weights()).double()
                if t.rule is not None:
                    t.Q, t.B = t.Q0.clone(), torch.zeros_like(t.Q0)
        self._build_scalar_plan()

    # --- which law can be predicted, and how ----------------------------------------------------------------------

    def _plan(self, law: Law) -> Tracked:
        t = Tracked(law)
        name = type(self.optimizer).__name__
        entry = TORCH_OPTIMIZERS.get(name)
        if entry is None or entry.law is None:
            t.reason = entry.no_law if entry is not None else UNKNOWN_OPTIMIZER.format(name=name)
            return t
        groups = []
        for p in law.params:
            param = self.params[p]
            group = self.group_of.get(id(param))
            if group is None or not param.requires_grad:
                t.reason = f"measured only: {p}: {BREAKS['frozen']}"
                return t
            groups.append(group)
        hypers = [_hyper(g) for g in groups]
        lr0, beta, lam, nesterov, maximize, dampening = hypers[0]
        if any(h[1:4] != hypers[0][1:4] for h in hypers):
            t.reason = SGD_UNSUPPORTED["mixed"]
        elif maximize:
            t.reason = SGD_UNSUPPORTED["maximize"]
        elif beta and dampening:
            t.reason = SGD_UNSUPPORTED["dampening"]
        elif any(h[0] <= 0 for h in hypers):
            t.reason = f"measured only: a parameter of the law has step size 0 ({BREAKS['frozen']})"
        if t.reason:
            return t
        t.reference = law.params[0]
        t.ratios = {p: h[0] / lr0 for p, h in zip(law.params, hypers)}
        if lam and any(r != 1.0 for r in t.ratios.values()):
            t.reason = SGD_UNSUPPORTED["decay_ratio"]
            t.ratios = {}
            return t
        t.rule = "nesterov" if nesterov and beta else "momentum" if beta else "sgd"
        assert OPTIMIZERS[t.rule].law is not None and t.rule in RECURSIONS
        return t

    def _build_scalar_plan(self) -> None:
        """Scalar laws whose terms cover whole parameters share one fused norm per step: Delta = P @ ||x_p||^2."""
        self.scalar = [i for i, t in enumerate(self.tracked) if t.rule is not None and not t.law.matrix]
        fast = [
            i for i in self.scalar if all(_whole(term, self.params[term.param]) for term in self.tracked[i].law.terms)
        ]
        self.fast = fast
        names = list(dict.fromkeys(term.param for i in fast for term in self.tracked[i].law.terms))
        self.fast_names = names
        P = torch.zeros(len(fast), len(names), dtype=torch.float64)
        for row, i in enumerate(fast):
            t = self.tracked[i]
            for term in t.law.terms:
                P[row, names.index(term.param)] += term.coef * t.ratios[term.param]
        device = next(iter(self.params.values())).device if self.params else torch.device("cpu")
        self.P = P.to(device)

    # --- measuring ------------------------------------------------------------------------------------------------

    @staticmethod
    def _quantity(t: Tracked, tensors: dict[str, Tensor], weights: dict[str, float] | None = None) -> Tensor:
        Q = t.law.quantity(tensors, weights)
        return Q if t.law.matrix else Q.sum().reshape(1)

    @torch.no_grad()
    def measure(self) -> list[Tensor]:
        """Each law's weighted quantity now: a [1] trace for per-unit laws, [G, n, n] for matrix laws (float64)."""
        return [self._quantity(t, self.params, t.weights()).double() for t in self.tracked]

    @torch.no_grad()
    def units(self) -> list[Tensor]:
        """Per law, the per-unit values diag(Q) [G * n] now (unweighted)."""
        out = []
        for t in self.tracked:
            Q = t.law.quantity(self.params)
            out.append((Q.diagonal(dim1=-2, dim2=-1) if t.law.matrix else Q).reshape(-1).double())
        return out

    # --- one step -------------------------------------------------------------------------------------------------

    def _stop(self, t: Tracked, why: str, step: int) -> None:
        t.rule, t.reason = None, f"{why} (from step {step})"
        t.Q = t.B = None
        self.problem = f"{t.law.name}: {t.reason}"

    @torch.no_grad()
    def advance(self, step: int) -> None:
        """After the optimiser's step ``step`` (0-based): move every prediction to step + 1."""
        grads: dict[str, Tensor] = {}
        for t in self.tracked:
            if t.rule is None:
                continue
            group = self.group_of[id(self.params[t.reference])]
            eta, beta, lam = (
                float(group["lr"]),
                float(group.get("momentum", 0.0)),
                float(group.get("weight_decay", 0.0)),
            )
            lrs = {p: float(self.group_of[id(self.params[p])]["lr"]) for p in t.law.params}
            if any(abs(lrs[p] - eta * r) > 1e-12 * eta for p, r in t.ratios.items()):
                self._stop(t, SGD_UNSUPPORTED["ratio_changed"], step)
                continue
            missing = [p for p in t.law.params if self.params[p].grad is None]
            if missing and (beta or lam):
                self._stop(t, f"{missing[0]} had no gradient: the optimiser skipped it", step)
                continue
            for p in t.law.params:
                if p not in grads:
                    g = self.params[p].grad
                    grads[p] = torch.zeros_like(self.params[p]) if g is None else g
        fast = self._fast_deltas(grads)
        for i, t in enumerate(self.tracked):
            if t.rule is None or t.Q is None:
                continue
            group = self.group_of[id(self.params[t.reference])]
            eta, beta, lam = (
                float(group["lr"]),
                float(group.get("momentum", 0.0)),
                float(group.get("weight_decay", 0.0)),
            )
            deltas = self._deltas(i, t, grads, beta, lam, fast)
            s = LawStep(eta, lam, beta, 0.0, deltas.__getitem__, plain=lam == 0.0)  # type: ignore[arg-type]
            t.Q, t.B = RECURSIONS[t.rule](t.Q, t.B, s)

    def _fast_deltas(self, grads: dict[str, Tensor]) -> dict[str, Tensor]:
        """Delta||g||^2 (and Delta||v||^2 for heavy ball) of the whole-parameter scalar laws, by one fused norm each."""
        if not self.fast:
            return {}
        names = self.fast_names
        out: dict[str, Tensor] = {}
        norms = torch._foreach_norm([grads[n] if n in grads else self._grad(n) for n in names])
        out["gg"] = self.P @ torch.stack(norms).double().square()
        if any(self.tracked[i].rule == "momentum" for i in self.fast):
            buffers = [self._buffer(n) for n in names]
            if all(b is not None for b in buffers):
                norms = torch._foreach_norm(buffers)  # type: ignore[arg-type]
                out["vv"] = self.P @ torch.stack(norms).double().square()
        return out

    def _grad(self, name: str) -> Tensor:
        g = self.params[name].grad
        return torch.zeros_like(self.params[name]) if g is None else g

    def _buffer(self, name: str) -> Tensor | None:
        return self.optimizer.state.get(self.params[name], {}).get("momentum_buffer")

    def _deltas(self, i: int, t: Tracked, grads: dict[str, Tensor], beta: float, lam: float,
                fast: dict[str, Tensor]) -> dict[str, Tensor]:  # fmt: skip
        """The Delta terms the law's recursion reads: 'gg', 'vv', 'uu', 'uv'."""
        r = t.ratios
        if i in self.fast and t.rule == "sgd":
            return {"gg": fast["gg"][self.fast.index(i)].reshape(1)}
        if i in self.fast and t.rule == "momentum" and "vv" in fast:
            return {"vv": fast["vv"][self.fast.index(i)].reshape(1)}
        if t.rule == "sgd":
            return {"gg": self._quantity(t, grads, r).double()}
        buffers = {p: self._buffer(p) for p in t.law.params}
        v = {p: b if b is not None else torch.zeros_like(grads[p]) for p, b in buffers.items()}
        if t.rule == "momentum":
            return {"vv": self._quantity(t, v, r).double()}
        d = grads
        if lam:  # d_k = g_k + lambda theta_k, with theta_k recovered from theta_{k+1} = theta_k - eta u_k (r = 1)
            eta = float(self.group_of[id(self.params[t.reference])]["lr"])
            d = {}
            for p in t.law.params:
                theta = (self.params[p] + eta * (grads[p] + beta * v[p])) / (1 - eta * lam)
                d[p] = grads[p] + lam * theta
        u = {p: d[p] + beta * v[p] for p in t.law.params}
        cross = t.law.cross(u, v, r)
        cross = cross if t.law.matrix else cross.sum().reshape(1)
        return {"uu": self._quantity(t, u, r).double(), "uv": cross.double()}

    # --- reading --------------------------------------------------------------------------------------------------

    def predicted(self) -> list[Tensor | None]:
        return [t.Q for t in self.tracked]
