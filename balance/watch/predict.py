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
v_{k+1} from ``optimizer.state[p]``. What is predicted is each law's trace tr Q_j (the sum of every unit's or every
head's own law, each of which holds too): for SGD and heavy ball that costs one fused norm over the laws' parameter
blocks per step (Delta = P @ ||block||^2) and one recursion on the vector of all traces. With ``matrices=True`` the
matrix laws (attention heads, linear pairs) are also predicted as whole matrices [G, n, n] (a few small matrix
products per law and step); Nesterov's laws always take that per-law path. Everything else (Adam, ...) is measured
only, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from balance.engine.laws import OPTIMIZERS
from balance.engine.symmetries import BREAKS, SGD_UNSUPPORTED, TORCH_OPTIMIZERS, UNKNOWN_OPTIMIZER
from balance.engine.theory import RECURSIONS, LawStep
from balance.watch.forms import Law

Tensor = torch.Tensor
_NEEDS = {"sgd": ("gg",), "momentum": ("vv",), "nesterov": ("uu", "uv")}


@dataclass
class Tracked:
    """One law: how it is predicted (``rule``, a key of RECURSIONS, or None and the reason), its step sizes' ratios,
    its quantity at step 0 and, where tracked as a matrix, the predicted matrix and its momentum state."""

    law: Law
    rule: str | None = None
    reason: str = ""
    ratios: dict[str, float] = field(default_factory=dict)  # r_t per parameter
    reference: str = ""  # the parameter whose step size is eta
    Q0: Tensor | None = None  # the weighted quantity at step 0: [G, n, n] (matrix) or a trace [1]
    Qm: Tensor | None = None  # predicted matrix (matrix tracking only)
    Bm: Tensor | None = None

    def weights(self) -> dict[str, float]:
        """1 / r_t: the measured quantity's weights."""
        return {name: 1.0 / r for name, r in self.ratios.items()}


class _Grads(dict):
    """Each parameter's gradient by name, read once per step (zeros where the step had none)."""

    def __init__(self, params: dict[str, Tensor]) -> None:
        super().__init__()
        self.params = params

    def __missing__(self, name: str) -> Tensor:
        g = self.params[name].grad
        value = self[name] = torch.zeros_like(self.params[name]) if g is None else g
        return value


def _hyper(group: dict[str, Any]) -> tuple[float, float, float, bool, bool, float]:
    return (float(group["lr"]), float(group.get("momentum", 0.0)), float(group.get("weight_decay", 0.0)),
            bool(group.get("nesterov", False)), bool(group.get("maximize", False)),
            float(group.get("dampening", 0.0)))  # fmt: skip


class Predictor:
    """The laws of a model under its optimiser: ``measure()`` the quantities now, ``advance()`` after each step,
    ``traces()`` the predicted traces (NaN where measured only)."""

    def __init__(
        self, laws: list[Law], model: nn.Module, optimizer: torch.optim.Optimizer, matrices: bool = False
    ) -> None:
        self.params = dict(model.named_parameters())
        self.optimizer = optimizer
        self.group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        self.tracked = [self._plan(law) for law in laws]
        self.problem = ""  # the last reason a prediction stopped
        device = next(iter(self.params.values())).device if self.params else torch.device("cpu")
        self.device = device
        with torch.no_grad():
            for t in self.tracked:
                t.Q0 = self._quantity(t, self.params, t.weights()).double()
                if t.rule is not None and t.law.matrix and (matrices or t.rule == "nesterov"):
                    t.Qm, t.Bm = t.Q0.clone(), torch.zeros_like(t.Q0)
            traces = [float(_trace(t.Q0, t.law.matrix)) if t.Q0 is not None else 0.0 for t in self.tracked]
        self.Q = torch.tensor(traces, dtype=torch.float64, device=device)  # predicted traces [laws]
        self.B = torch.zeros_like(self.Q)
        self._blocks()
        self._cache_key: Any = None
        self._cache: tuple[Tensor, ...] = ()

    # --- which law can be predicted, and how ----------------------------------------------------------------------

    def _plan(self, law: Law) -> Tracked:
        t = Tracked(law)
        name = type(self.optimizer).__name__
        entry = TORCH_OPTIMIZERS.get(name)
        if entry is None or entry.law is None:
            t.reason = entry.no_law if entry is not None else UNKNOWN_OPTIMIZER.format(name=name)
            return t
        hypers = []
        for p in law.params:
            param = self.params[p]
            group = self.group_of.get(id(param))
            if group is None or not param.requires_grad:
                t.reason = f"measured only: {p}: {BREAKS['frozen']}"
                return t
            hypers.append(_hyper(group))
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
            t.reason, t.ratios = SGD_UNSUPPORTED["decay_ratio"], {}
            return t
        t.rule = "nesterov" if nesterov and beta else "momentum" if beta else "sgd"
        assert OPTIMIZERS[t.rule].law is not None and t.rule in RECURSIONS
        return t

    def _blocks(self) -> None:
        """The parameter blocks of every SGD and heavy-ball law and P [laws, blocks] with c_t r_t, so that the
        Delta of every trace is P @ ||block||^2, one fused norm for all."""
        keys: list[tuple[str, int, int, int]] = []
        entries: list[tuple[int, int, float]] = []
        for j, t in enumerate(self.tracked):
            if t.rule not in ("sgd", "momentum"):
                continue
            for term in t.law.terms:
                key = (term.param, term.axis, term.start, term.length)
                if key not in keys:
                    keys.append(key)
                entries.append((j, keys.index(key), term.coef * t.ratios[term.param]))
        P = torch.zeros(len(self.tracked), len(keys), dtype=torch.float64)
        for j, k, c in entries:
            P[j, k] += c
        self.block_keys, self.P = keys, P.to(self.device)

    def _regions(self, tensors: dict[str, Tensor]) -> list[Tensor]:
        return [tensors[p].narrow(axis, start, length) for p, axis, start, length in self.block_keys]

    # --- measuring ------------------------------------------------------------------------------------------------

    @staticmethod
    def _quantity(t: Tracked, tensors: Any, weights: dict[str, float] | None = None) -> Tensor:
        Q = t.law.quantity(tensors, weights)
        return Q if t.law.matrix else Q.sum().reshape(1)

    @torch.no_grad()
    def measure(self) -> list[Tensor]:
        """Each law's weighted quantity now: a [1] trace for per-unit laws, [G, n, n] for matrix laws (float64)."""
        return [self._quantity(t, self.params, t.weights()).double() for t in self.tracked]

    @torch.no_grad()
    def units(self, measured: list[Tensor]) -> list[Tensor]:
        """Per law, the per-unit values diag(Q) [G * n] now, unweighted (a matrix law's from ``measured``, the
        output of ``measure``, where its weights are all 1)."""
        out = []
        for t, Q in zip(self.tracked, measured):
            if not (t.law.matrix and all(r == 1.0 for r in t.ratios.values())):
                Q = t.law.quantity(self.params)
            out.append((Q.diagonal(dim1=-2, dim2=-1) if t.law.matrix else Q).reshape(-1).double())
        return out

    def traces(self) -> Tensor:
        """The predicted trace of every law [laws] (NaN where measured only)."""
        mask = torch.tensor([t.rule is None for t in self.tracked], device=self.device)
        return self.Q.masked_fill(mask, float("nan"))

    # --- one step -------------------------------------------------------------------------------------------------

    def _stop(self, t: Tracked, why: str, step: int) -> None:
        t.rule, t.reason = None, f"{why} (from step {step})"
        t.Qm = t.Bm = None
        self.problem = f"{t.law.name}: {t.reason}"
        self._blocks()

    def _group_hyper(self, t: Tracked) -> tuple[float, float, float]:
        """(eta, beta, lambda) of the law's reference parameter's group now."""
        group = self.group_of[id(self.params[t.reference])]
        return float(group["lr"]), float(group.get("momentum", 0.0)), float(group.get("weight_decay", 0.0))

    @torch.no_grad()
    def advance(self, step: int) -> None:
        """After the optimiser's step ``step`` (0-based): move every prediction to step + 1."""
        hyper: dict[int, tuple[float, float, float]] = {}
        for j, t in enumerate(self.tracked):
            if t.rule is None:
                continue
            h = hyper[j] = self._group_hyper(t)
            if len(t.ratios) > 1 and any(
                abs(float(self.group_of[id(self.params[p])]["lr"]) - h[0] * r) > 1e-12 * h[0]
                for p, r in t.ratios.items()
            ):
                self._stop(t, SGD_UNSUPPORTED["ratio_changed"], step)
            elif (h[1] or h[2]) and any(self.params[p].grad is None for p in t.law.params):
                missing = next(p for p in t.law.params if self.params[p].grad is None)
                self._stop(t, f"{missing} had no gradient: the optimiser skipped it", step)
        grads = _Grads(self.params)
        deltas = self._block_deltas(grads, hyper)
        for rule, names in _NEEDS.items():
            laws = [j for j in hyper if self.tracked[j].rule == rule]
            if not laws:
                continue
            if rule == "nesterov":
                flat = {name: torch.zeros(len(self.tracked), dtype=torch.float64, device=self.device) for name in names}
                for j in laws:
                    d = self._nesterov(self.tracked[j], grads, hyper[j])
                    for name in names:
                        flat[name][j] = _trace(d[name], self.tracked[j].law.matrix)
            else:
                flat = deltas
            self._recur(rule, laws, hyper, flat)
        for j in hyper:
            t = self.tracked[j]
            if t.Qm is not None and t.rule is not None:
                d = self._nesterov(t, grads, hyper[j]) if t.rule == "nesterov" else self._matrix_deltas(t, grads)
                eta, beta, lam = hyper[j]
                s = LawStep(eta, lam, beta, 0.0, d.__getitem__, plain=lam == 0.0)  # type: ignore[arg-type]
                t.Qm, t.Bm = RECURSIONS[t.rule](t.Qm, t.Bm, s)

    def _recur(self, rule: str, laws: list[int], hyper: dict[int, tuple[float, float, float]],
               flat: dict[str, Tensor]) -> None:  # fmt: skip
        """One recursion for every law under ``rule``, on the vector of traces (eta, beta, lambda per law)."""
        index, eta, beta, lam = self._vectors(rule, tuple(laws), tuple(hyper[j] for j in laws))
        picked = {name: value[index] for name, value in flat.items()}
        plain = not any(hyper[j][2] for j in laws)
        step = LawStep(eta, lam, beta, 0.0, picked.__getitem__, plain)  # type: ignore[arg-type]
        Q, B = RECURSIONS[rule](self.Q[index], self.B[index], step)
        self.Q[index], self.B[index] = Q, B

    def _vectors(self, rule: str, laws: tuple[int, ...], hyper: tuple[tuple[float, float, float], ...]) -> tuple:
        """The laws' index and their eta, beta, lambda as vectors (cached: they change only with the groups)."""
        key = (rule, laws, hyper)
        if self._cache_key != key:
            columns = torch.tensor(hyper, dtype=torch.float64, device=self.device)
            index = torch.tensor(laws, device=self.device)
            self._cache_key, self._cache = key, (index, columns[:, 0], columns[:, 1], columns[:, 2])
        return self._cache

    def _block_deltas(self, grads: _Grads, hyper: dict[int, tuple[float, float, float]]) -> dict[str, Tensor]:
        """Delta||g||^2 and Delta||v_{k+1}||^2 of every SGD and heavy-ball law's trace: one fused norm each."""
        rules = {self.tracked[j].rule for j in hyper}
        out: dict[str, Tensor] = {}
        if not self.block_keys:
            return out
        if "sgd" in rules:
            out["gg"] = self.P @ torch.stack(torch._foreach_norm(self._regions(grads))).double().square()
        if "momentum" in rules:
            out["vv"] = self.P @ torch.stack(torch._foreach_norm(self._buffer_regions(grads))).double().square()
        return out

    def _buffer_regions(self, grads: _Grads) -> list[Tensor]:
        """The blocks of the momentum buffers: views made once, as the optimiser updates its buffers in place."""
        state = self.optimizer.state
        buffers = [state.get(self.params[p], {}).get("momentum_buffer") for p, _, _, _ in self.block_keys]
        key = tuple(id(b) for b in buffers)
        if getattr(self, "_buffer_key", None) != key or any(b is None for b in buffers):
            self._buffer_key = key
            self._buffer_views = self._regions(_Buffers(self.optimizer, self.params, grads))
        return self._buffer_views

    def _matrix_deltas(self, t: Tracked, grads: _Grads) -> dict[str, Tensor]:
        r = t.ratios
        if t.rule == "sgd":
            return {"gg": self._quantity(t, grads, r).double()}
        return {"vv": self._quantity(t, _Buffers(self.optimizer, self.params, grads), r).double()}

    def _nesterov(self, t: Tracked, grads: _Grads, hyper: tuple[float, float, float]) -> dict[str, Tensor]:
        """'uu' = Delta||u_k||^2, 'uv' = Delta<u_k, v_{k+1}>: u_k = d_k + beta v_{k+1}, d_k = g_k + lambda theta_k."""
        eta, beta, lam = hyper
        v = _Buffers(self.optimizer, self.params, grads)
        d: Any = grads
        if lam:  # theta_k recovered from theta_{k+1} = theta_k - eta u_k (one step size: r = 1)
            d = {}
            for p in t.law.params:
                theta = (self.params[p] + eta * (grads[p] + beta * v[p])) / (1 - eta * lam)
                d[p] = grads[p] + lam * theta
        u = {p: d[p] + beta * v[p] for p in t.law.params}
        cross = t.law.cross(u, v, t.ratios)
        cross = cross if t.law.matrix else cross.sum().reshape(1)
        return {"uu": self._quantity(t, u, t.ratios).double(), "uv": cross.double()}


class _Buffers(dict):
    """Each parameter's momentum buffer v_{k+1} after the step, by name (zeros where there is none)."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: dict[str, Tensor], like: _Grads) -> None:
        super().__init__()
        self.optimizer, self.params, self.like = optimizer, params, like

    def __missing__(self, name: str) -> Tensor:
        b = self.optimizer.state.get(self.params[name], {}).get("momentum_buffer")
        value = self[name] = torch.zeros_like(self.params[name]) if b is None else b
        return value


def _trace(Q: Tensor, matrix: bool) -> Tensor:
    return Q.diagonal(dim1=-2, dim2=-1).sum() if matrix else Q.sum()
