"""The torch side of the metric registry: how each metric of ``balance.engine.laws.METRICS`` is computed from the
engine's state, keyed by the same names.

Every function takes a ``Snapshot`` of the running members and returns one value per member and index, [K] or
[K, n_indices] in the order of ``Layout.indices``. The conserved quantities themselves are the pure functions of
``balance.engine.invariants`` (formulas in their docstrings), applied to the stacked weights. Everything is summed
in float64 whatever the training precision (a float32 sum of 10^4 squares loses ~1e-4), on NumPy views of the
weights: for the small tensors of these models a NumPy reduction costs about 1 us against about 10 us for a PyTorch
op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from balance.engine.invariants import incoming_sqnorms, matrix_invariant, neuron_balance, outgoing_sqnorms

if TYPE_CHECKING:
    from balance.engine.engine import Engine


class cached_property:
    """Computed on first access, then an ordinary attribute of the instance."""

    def __init__(self, f: Callable[[Any], Any]) -> None:
        self.f, self.name = f, f.__name__

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.f(obj)
        return value


class Snapshot:
    """The running members' state at one step, read once; what several metrics share is computed on first use."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.model = engine.model
        self.K = len(engine.members)

    @cached_property
    def raw(self) -> list[np.ndarray]:
        """The weights [K, ...] as NumPy views of the tensors, in the training precision."""
        return self.engine.problem.arrays

    @cached_property
    def views(self) -> list[np.ndarray]:
        """The weights [K, ...] as float64 arrays (views of a float64 run's tensors)."""
        return [v.astype(np.float64, copy=False) for v in self.raw]

    @cached_property
    def squares(self) -> list[np.ndarray]:
        """theta_p^2 entry by entry [K, ...] in float64 (exact: a product of two float32 fits a float64), once for
        every metric that sums squares."""
        return [np.square(v) for v in self.views]

    @cached_property
    def sq(self) -> np.ndarray:
        """||theta_p||^2 per member and parameter, [K, n_params]."""
        out = np.empty((self.K, len(self.views)))
        for j, x in enumerate(self.squares):
            out[:, j] = x.reshape(self.K, -1).sum(1)
        return out

    @cached_property
    def gaps(self) -> np.ndarray:
        """G_h = ||W_{h+1}||^2 - ||W_h||^2 - ||b_h||^2, [K, L-1] (the pair matrix P has exactly those signs); with
        per-layer step-size multipliers m the eta-weighted ||W_{h+1}||^2/m_{h+1} - (||W_h||^2 + ||b_h||^2)/m_h."""
        return self.sq @ self.engine.P_gap.T

    def incoming(self) -> list[np.ndarray]:
        """||w_in,i||^2 per hidden layer, [K, n_h]."""
        return [incoming_sqnorms(self.squares, g, stacked=True, squared=True) for g in self.model.neurons]

    def outgoing(self) -> list[np.ndarray]:
        """||w_out,i||^2 per hidden layer, [K, n_h]."""
        return [outgoing_sqnorms(self.squares, g, stacked=True, squared=True) for g in self.model.neurons]

    @cached_property
    def balances(self) -> list[np.ndarray]:
        """B_i = ||w_in,i||^2 - ||w_out,i||^2 per hidden layer, [K, n_h]."""
        return [neuron_balance(self.squares, g, stacked=True, squared=True) for g in self.model.neurons]

    @cached_property
    def neuron_drift(self) -> np.ndarray:
        """|B_i(k) - B_i(0)| of every hidden unit, [K, sum n_h]."""
        drift = [np.abs(b - b0) for b, b0 in zip(self.balances, self.engine.balance0)]
        return drift[0] if len(drift) == 1 else np.concatenate(drift, 1)

    @cached_property
    def matrices(self) -> dict[int, np.ndarray]:
        """D_h = W_{h+1}^T W_{h+1} - [W_h b_h][W_h b_h]^T, [K, n_h, n_h], for linear hidden units (by 0-based layer)."""
        return {g.layer: matrix_invariant(self.views, g, stacked=True) for g in self.model.neurons if g.linear}


def _ratio(s: Snapshot) -> np.ndarray:
    """||W_{h+1}|| / ||W_h|| per pair, [K, L-1]; inf where ||W_h|| = 0."""
    inner, outer = s.sq[:, s.engine.weight_index[:-1]], s.sq[:, s.engine.weight_index[1:]]
    return np.where(inner > 0, np.sqrt(outer / inner), np.inf)


def _matrix(s: Snapshot, drift: bool) -> np.ndarray:
    """||D_h||_F (or ||D_h - D_h(0)||_F) per linear pair, [K, n_linear]."""
    m0, out = s.engine.matrix0, np.empty((s.K, len(s.matrices)))
    for j, (h, D) in enumerate(s.matrices.items()):
        E = D - m0[h] if drift else D
        out[:, j] = np.einsum("kij,kij->k", E, E)
    return np.sqrt(out)


COMPUTE: dict[str, Callable[[Snapshot], Any]] = {
    "step": lambda s: s.engine.step_index,
    "t": lambda s: s.engine.t,
    "lr": lambda s: s.engine.lr_at(s.engine.step_index),
    "loss": lambda s: s.engine.row_loss(),
    "sqnorm": lambda s: s.sq[:, s.engine.weight_index],
    "bias_sqnorm": lambda s: s.sq[:, s.engine.bias_index],
    "grad_norm": lambda s: np.sqrt(s.engine.grad_sq[:, s.engine.weight_index]),
    "gap": lambda s: s.gaps,
    "gap_drift": lambda s: s.gaps - s.engine.gap0,
    "pred_gap_drift": lambda s: s.engine.law.drift,
    "ratio": _ratio,
    "neuron_drift_max": lambda s: s.neuron_drift.max(1),
    "neuron_drift_mean": lambda s: s.neuron_drift.sum(1) / s.neuron_drift.shape[1],
    "matrix_inv": lambda s: _matrix(s, False),
    "matrix_drift": lambda s: _matrix(s, True),
    "pred_neuron_drift_max": lambda s: s.engine.units.drift().max(1),
    "pred_neuron_drift_mean": lambda s: s.engine.units.drift().mean(1),
    "identity_residual": lambda s: s.engine.units.residual(s.balances),
    "matrix_residual": lambda s: s.engine.units.matrix_residual(s.matrices),
    "sharpness": lambda s: s.engine.curvature.values(s.engine),
    "stability_bound": lambda s: 2.0 / s.engine.lr_at(s.engine.step_index),
    # neuron scope: one [K, n_h] array per hidden layer
    "in_sqnorm": Snapshot.incoming,
    "out_sqnorm": Snapshot.outgoing,
}
