"""Pure functions for the quantities Du, Hu and Lee (2018) conserve, and the ones their reviewers asked about.

Every function takes arrays (torch tensors or numpy arrays: only ``reshape``, ``sum``, ``@`` and ``.T`` are
used) and returns arrays or floats; nothing here trains, logs or draws. Sign conventions follow the paper and
the issue text:

- layer gap  G_h = ||W_{h+1}||_F^2 - ||W_h||_F^2 - ||b_h||^2   (b_{h+1} belongs to G_{h+1}; b_L is free);
- neuron balance  B_{h,i} = ||w_in||^2 - ||w_out||^2  with w_in = (W_h[i, ...], b_h[i]) (or BatchNorm's
  (gamma_i, beta_i)) and w_out = W_{h+1}[:, i, ...];
- matrix invariant  D_h = W_{h+1}^T W_{h+1} - [W_h b_h][W_h b_h]^T  (n_h x n_h), for identity activations.

Under gradient flow all three are constant (Theorems 2.1, 2.2 and Corollary 2.1). One step of GD or SGD,
theta' = theta - eta g, changes each by exactly eta^2 times the same expression in the gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the functions only read a group's fields: importing them needs no torch
    from balance.engine.models import Neurons

Array = Any  # torch.Tensor or numpy.ndarray


def sqnorm(x: Array) -> float:
    """||x||^2 summed over all entries."""
    flat = x.reshape(-1)
    return float(flat @ flat)


def _lead(x: Array, stacked: bool) -> tuple[int, ...]:
    """The leading member dimension of a stacked tensor [K, ...] (``stacked``), else none."""
    return tuple(x.shape[:1]) if stacked else ()


def incoming_sqnorms(params: Sequence[Array], group: Neurons, stacked: bool = False, squared: bool = False) -> Array:
    """||w_in,i||^2 for every unit i of the group, shape [n_h]: sum of squares of row i of each incoming param.

    ``stacked``: every param is K runs' [K, ...], the result [K, n_h] (the engine's metrics). ``squared``: the params
    are already squared entry by entry (the engine squares each weight once for all its metrics)."""
    total = 0
    for index in group.incoming:
        p = params[index]
        total = total + (p if squared else p * p).reshape(*_lead(p, stacked), group.count, -1).sum(axis=-1)
    return total


def outgoing_sqnorms(params: Sequence[Array], group: Neurons, stacked: bool = False, squared: bool = False) -> Array:
    """||w_out,i||^2 = ||W_{h+1}[:, i, ...]||^2, shape [n_h] (stacked: [K, n_h]); a flattened head's columns group by
    channel."""
    W = params[group.outgoing]
    lead = _lead(W, stacked)
    return (W if squared else W * W).reshape(*lead, W.shape[len(lead)], group.count, -1).sum(axis=(-3, -1))


def neuron_balance(params: Sequence[Array], group: Neurons, stacked: bool = False, squared: bool = False) -> Array:
    """B_i = ||w_in,i||^2 - ||w_out,i||^2 for every unit of the group, shape [n_h] (Theorem 2.1)."""
    return incoming_sqnorms(params, group, stacked, squared) - outgoing_sqnorms(params, group, stacked, squared)


def incoming_matrix(params: Sequence[Array], group: Neurons, stacked: bool = False) -> Array:
    """[W_h b_h] as an [n_h, fan_in (+1)] matrix (rows = units; stacked: [K, n_h, fan_in (+1)])."""
    blocks = [params[i].reshape(*_lead(params[i], stacked), group.count, -1) for i in group.incoming]
    if len(blocks) == 1:
        return blocks[0]
    try:  # torch
        import torch

        if isinstance(blocks[0], torch.Tensor):
            return torch.cat(blocks, dim=-1)
    except ImportError:  # pragma: no cover
        pass
    import numpy as np

    return np.concatenate(blocks, axis=-1)


def matrix_invariant(params: Sequence[Array], group: Neurons, stacked: bool = False) -> Array:
    """D_h = W_{h+1}^T W_{h+1} - [W_h b_h][W_h b_h]^T, shape [n_h, n_h] (stacked: [K, n_h, n_h]) (Theorem 2.2; for
    MF: U^T U - V^T V).

    Its diagonal is -B (the neuron balances) and its trace is the layer gap G_h.
    """
    A = incoming_matrix(params, group, stacked)
    W = params[group.outgoing]
    W = W.reshape(*_lead(W, stacked), -1, group.count)
    return W.swapaxes(-1, -2) @ W - A @ A.swapaxes(-1, -2)


def gaps(sqnorms: Sequence[float], bias_sqnorms: Sequence[float]) -> list[float]:
    """G_h = ||W_{h+1}||^2 - ||W_h||^2 - ||b_h||^2 for h = 1 .. L-1 (Corollary 2.1)."""
    return [sqnorms[h + 1] - sqnorms[h] - bias_sqnorms[h] for h in range(len(sqnorms) - 1)]


def ratios(sqnorms: Sequence[float]) -> list[float]:
    """||W_{h+1}||_F / ||W_h||_F for h = 1 .. L-1 (the reviewers' notion of balance)."""
    return [(sqnorms[h + 1] / sqnorms[h]) ** 0.5 if sqnorms[h] > 0 else float("inf") for h in range(len(sqnorms) - 1)]


def rescale(params: Sequence[Array], group: Neurons, c: float) -> list[Array]:
    """Multiply the incoming weights of every unit by c and the outgoing by 1/c (the network's symmetry)."""
    out = list(params)
    for index in group.incoming:
        out[index] = params[index] * c
    out[group.outgoing] = params[group.outgoing] / c
    return out
