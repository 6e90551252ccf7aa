"""What the theory predicts, next to what the trainer measures.

Notation: for a pair of consecutive layers h, group A = (W_h, b_h) and group B = W_{h+1}, and for per-parameter
tensors x, y let  Delta<x, y> = <x_B, y_B> - <x_A, y_A>.  The layer gap is G = Delta<theta, theta>. Because the
network is rescaling-invariant, Delta<theta, g> = 0 for every loss and batch (Euler's identity), which makes the
recursions below exact (formula sheet, section 3):

- gradient flow:         G(t) = G(0);
- GD / SGD, decay lambda: G_{k+1} = (1 - eta lambda)^2 G_k + eta^2 Delta||g_k||^2;
- heavy ball (beta):      G_{k+1} = G_k - 2 eta beta B_k - 2 eta lambda G_k + eta^2 C_{k+1},
                          B_{k+1} = beta B_k + lambda G_k - eta C_{k+1},   B = Delta<theta, v>, C = Delta||v||^2;
- Nesterov:               G_{k+1} = G_k - 2 eta (lambda (1+beta) G_k + beta^2 B_k) + eta^2 Delta||u_k||^2,
                          B_{k+1} = beta B_k + lambda G_k - eta Delta<u_k, v_{k+1}>;
- Adam:                   no prediction (coordinate-wise scaling breaks the symmetry at first order);
- tanh, BatchNorm:        no prediction (no rescaling symmetry between the layers; ``balance.laws``).

A term of the objective that is not rescaling-invariant by design (MF's balancing regulariser
lambda/8 ||U^T U - V^T V||_F^2, problem (9)) makes E = Delta<theta, g> nonzero; it is measured each step and enters
exactly where the recursions above drop it: GD  G_{k+1} = (1 - eta lambda)^2 G_k - 2 eta (1 - eta lambda) E_k +
eta^2 Delta||g_k||^2; heavy ball and Nesterov add E_k wherever lambda G_k appears. For the regulariser,
E = lambda/2 (||U^T U||_F^2 - ||V^T V||_F^2). Gradient flow then has no closed form: no prediction (NaN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from balance.config import OptimConfig
from balance.models import HomogeneousModel


def pair_matrix(model: HomogeneousModel) -> np.ndarray:
    """P [L-1, n_params] with +1 on W_{h+1} and -1 on W_h, b_h, so Delta = P @ (per-parameter values)."""
    P = np.zeros((len(model.layers) - 1, len(model.params)))
    for h in range(len(model.layers) - 1):
        P[h, model.layers[h + 1].weight] = 1.0
        P[h, model.layers[h].weight] = -1.0
        if model.layers[h].bias is not None:
            P[h, model.layers[h].bias] = -1.0
    return P


class GapPredictor:
    """Accumulates the predicted drift G_k - G_0 step by step; ``drift`` is NaN where theory has no prediction."""

    def __init__(self, cfg: OptimConfig, pairs: np.ndarray, gap0: Sequence[float], predicts: bool = True) -> None:
        """``predicts``: the law applies (``balance.laws.why_no_law`` is ''); else every drift is NaN. An objective
        that is not rescaling-invariant (MF's regulariser) needs E = Delta<theta, g> in ``update`` each step."""
        self.cfg = cfg
        self.P = pairs
        self.gap0 = np.asarray(gap0, dtype=float)
        self.G = self.gap0.copy()
        self.B = np.zeros_like(self.G)
        if not predicts:
            self.G[:] = np.nan

    @property
    def drift(self) -> np.ndarray:
        return self.G - self.gap0

    def update(
        self, lr: float, grad_sq: np.ndarray, extras: dict[str, list[float]], theta_grad: np.ndarray | None = None
    ) -> None:
        """Advance by one step of size ``lr``; ``grad_sq`` holds ||g_p||^2 per parameter (the gradient used) and
        ``theta_grad`` <theta_p, g_p> (only needed, and only used, when the objective is not invariant)."""
        name, lam, beta = self.cfg.name, self.cfg.weight_decay, self.cfg.momentum
        G, B = self.G, self.B
        E = 0.0 if theta_grad is None else self.P @ theta_grad  # Delta<theta, g>: 0 for an invariant objective
        if name in ("gd", "sgd"):
            self.G = (1 - lr * lam) ** 2 * G - 2 * lr * (1 - lr * lam) * E + lr**2 * (self.P @ grad_sq)
        elif name == "momentum":
            C = self.P @ np.asarray(extras["vv"])
            self.G = G - 2 * lr * (beta * B + E + lam * G) + lr**2 * C
            self.B = beta * B + E + lam * G - lr * C
        elif name == "nesterov":
            uu, uv = self.P @ np.asarray(extras["uu"]), self.P @ np.asarray(extras["uv"])
            self.G = G - 2 * lr * ((1 + beta) * (lam * G + E) + beta**2 * B) + lr**2 * uu
            self.B = beta * B + lam * G + E - lr * uv
        # flow: G stays G_0; adam: stays NaN


def weight_decay_gap(gap0: float, lr: float, weight_decay: float, k: np.ndarray) -> np.ndarray:
    """(1 - eta lambda)^(2k) G_0: the gap under decay once the eta^2 gradient terms are negligible."""
    return gap0 * (1 - lr * weight_decay) ** (2 * np.asarray(k, dtype=float))


def predicted_ratio(sqnorm_h: np.ndarray, bias_sqnorm_h: np.ndarray, gap0: float, drift: np.ndarray) -> np.ndarray:
    """||W_{h+1}|| / ||W_h|| implied by the invariant: sqrt((||W_h||^2 + ||b_h||^2 + G_0 + drift) / ||W_h||^2).

    With drift = 0 this is the gradient-flow reading sqrt(1 - Phi_0 / ||W_h||^2), Phi_0 = -G_0 (no biases):
    the ratio is near 1 only once the norms are large compared with |G_0|.
    """
    num = np.asarray(sqnorm_h) + np.asarray(bias_sqnorm_h) + gap0 + np.asarray(drift)
    return np.sqrt(np.clip(num, 0, None) / np.asarray(sqnorm_h))


def momentum_amplification(beta: float, nesterov: bool = False) -> float:
    """Factor by which momentum multiplies the O(eta_eff) drift at fixed time: (1+b)/(1-b) or (1-b+2b^2)/(1-b)."""
    return (1 - beta + 2 * beta**2) / (1 - beta) if nesterov else (1 + beta) / (1 - beta)


def mf_balanced_ratio(singular_values: Sequence[float], trace_d: float, rank: int) -> float:
    """Predicted final ||U||_F / ||V||_F for MF at a global minimum, isotropic approximation D = U^T U - V^T V ~ c I.

    c = tr(D) / r; per singular value s_i: y_i = (-c + sqrt(c^2 + 4 s_i^2)) / 2 (= ||v_i||^2), ||u_i||^2 = y_i + c.
    """
    c = trace_d / rank
    y = [(-c + math.sqrt(c * c + 4 * s * s)) / 2 for s in singular_values]
    return math.sqrt(sum(v + c for v in y) / sum(y))
