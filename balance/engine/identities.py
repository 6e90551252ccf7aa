"""The per-unit and matrix laws, step by step: what the CSV's identity columns are computed from.

For a hidden unit i with incoming group (row i of W_h and b_h[i], or BatchNorm's gamma_i, beta_i) and outgoing group
(column i of W_{h+1}), B_i = ||w_in,i||^2 - ||w_out,i||^2 obeys one GD / SGD step exactly (formula sheet 3.2, 3.4):

    B_i(k+1) = (1 - eta lambda)^2 B_i(k) - 2 eta (1 - eta lambda) E_i + eta^2 (||g_in,i||^2 - ||g_out,i||^2),

E_i = <w_in,i, g_in,i> - <w_out,i, g_out,i> (0 for a rescaling-invariant objective; MF's balancing regulariser makes
it nonzero, measured). For linear hidden units the matrix D_h = W_{h+1}^T W_{h+1} - [W_h b_h][W_h b_h]^T obeys

    D_h(k+1) = (1 - eta lambda)^2 D_h(k) + eta^2 (G_{h+1}^T G_{h+1} - [G_h g_b][G_h g_b]^T)   (invariant objective).

Gradient flow conserves both. ``UnitLaw`` carries the cumulative per-unit prediction B^_i(k) (every step: the
``pred_neuron_drift_*`` columns) and, before each step whose row is logged, the one-step predictions from the
measured state (the per-step residuals ``identity_residual`` and ``matrix_residual``). Momentum, Nesterov and Adam
(whose per-unit recursions need per-unit buffers), per-layer step sizes and non-homogeneous activations: NaN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from balance.engine import laws
from balance.engine.invariants import matrix_invariant

if TYPE_CHECKING:
    from balance.engine.models import HomogeneousModel

UNIT_LAWS = ("gd", "sgd", "label_noise", "flow")  # optimisers whose per-unit and matrix one-step laws are carried


def unit_law_applies(config: Any) -> bool:
    """Whether the per-unit law predicts ``config`` (a RunConfig): GD, SGD or flow, a homogeneous activation, one step
    size for every layer, and no regulariser under flow (which has no closed form)."""
    m, o = config.model, config.optim
    activation = "linear" if m.name in ("mf", "linear") else m.activation
    return (
        o.name in UNIT_LAWS
        and laws.ACTIVATIONS[activation].homogeneous
        and all(x == 1 for x in o.layer_lrs)
        and not (o.name == "flow" and m.regularizer)
    )


def _f64(arrays: list[np.ndarray]) -> list[np.ndarray]:
    return [a.astype(np.float64, copy=False) for a in arrays]


class UnitLaw:
    """Per-unit predicted balances of K members (all hidden layers side by side, [K, sum n_h]) and the one-step
    predictions of the next logged row."""

    def __init__(self, model: HomogeneousModel, balance0: list[np.ndarray], predicts: bool, flow: bool) -> None:
        self.groups = model.neurons
        self.predicts, self.flow = predicts, flow
        self.B0 = np.concatenate(balance0, 1) if balance0 else np.zeros((0, 0))
        self.B = self.B0.copy() if predicts else np.full_like(self.B0, np.nan)
        self.next_B: np.ndarray | None = None  # one-step prediction of the next row's B, from the measured B
        self.next_D: dict[int, np.ndarray] = {}  # ... and of each linear pair's D_h

    def _units(self, a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
        """in minus out of <a, b> per unit (a = b: squared norms), [K, sum n_h]; one einsum per tensor, no squares
        formed (this runs every step)."""
        parts = []
        for g in self.groups:
            K, n = len(a[g.outgoing]), g.count
            unit = sum(np.einsum("kij,kij->ki", a[i].reshape(K, n, -1), b[i].reshape(K, n, -1)) for i in g.incoming)
            W, V = a[g.outgoing], b[g.outgoing]
            shape = (K, W.shape[1], n, -1)  # W_{h+1} [K, n_out, n_h (x a flattened block), ...]
            parts.append(unit - np.einsum("kaib,kaib->ki", W.reshape(shape), V.reshape(shape)))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, 1)

    def update(self, lr: np.ndarray, lam: np.ndarray, weights: list[np.ndarray], grads: list[np.ndarray],
               reg: np.ndarray, next_logged: bool) -> None:  # fmt: skip
        """Before a step of sizes ``lr`` [K] with coupled decay ``lam`` [K] from ``weights`` with ``grads`` (NumPy,
        [K, ...], params order); ``reg`` [K] bool: the member's objective is not rescaling-invariant (measure E_i; no
        matrix prediction); ``next_logged``: the next row is logged, so predict it from the measured state."""
        if not next_logged:
            self.next_B, self.next_D = None, {}
        if not self.predicts or not self.groups:
            return
        if self.flow:
            if next_logged:
                w = _f64(weights)
                self.next_B = self._units(w, w)
                self.next_D = {g.layer: matrix_invariant(w, g, stacked=True) for g in self.groups if g.linear}
            return
        g = _f64(grads)
        if not next_logged and not lam.any() and not reg.any():  # the common step: B^ += eta^2 Delta||g||^2
            self.B += (lr * lr)[:, None] * self._units(g, g)
            return
        w = _f64(weights)
        eta, decay = lr[:, None], (1 - lr * lam)[:, None]
        change = eta**2 * self._units(g, g)
        if reg.any():
            change -= 2 * eta * decay * reg[:, None] * self._units(w, g)
        self.B = decay**2 * self.B + change
        if next_logged:
            self.next_B = decay**2 * self._units(w, w) + change
            self.next_D = {}
            d3 = decay[:, :, None] ** 2
            for grp in self.groups:
                if grp.linear:
                    D, DG = matrix_invariant(w, grp, stacked=True), matrix_invariant(g, grp, stacked=True)
                    D_next = d3 * D + eta[:, :, None] ** 2 * DG
                    D_next[reg] = np.nan  # the regulariser's matrix cross term is not carried
                    self.next_D[grp.layer] = D_next

    def drift(self) -> np.ndarray:
        """|B^_i(k) - B_i(0)|, [K, sum n_h] (NaN where no law applies)."""
        return np.abs(self.B - self.B0)

    def residual(self, balances: list[np.ndarray]) -> np.ndarray:
        """max_i |B_i(k) - B^_i(k | k-1)| over every hidden unit of every layer, [K] (NaN before the first step)."""
        if self.next_B is None or not balances:
            return np.full(len(self.B0), np.nan)
        return np.abs(np.concatenate(balances, 1) - self.next_B).max(1)

    def matrix_residual(self, matrices: dict[int, np.ndarray]) -> np.ndarray:
        """||D_h(k) - D^_h(k | k-1)||_F per linear pair, [K, n_linear] (NaN where not predicted)."""
        out = np.full((len(self.B0), len(matrices)), np.nan)
        for j, (h, D) in enumerate(matrices.items()):
            if h in self.next_D:
                E = D - self.next_D[h]
                out[:, j] = np.sqrt(np.einsum("kij,kij->k", E, E))
        return out

    def select(self, keep: np.ndarray) -> None:
        self.B0, self.B = self.B0[keep], self.B[keep]
        self.next_B = None if self.next_B is None else self.next_B[keep]
        self.next_D = {h: D[keep] for h, D in self.next_D.items()}
