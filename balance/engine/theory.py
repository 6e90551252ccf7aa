"""What the theory predicts, next to what the engine measures: the numbers of each optimiser's exact law
(``RECURSIONS``, keyed by the names of ``balance.engine.laws.OPTIMIZERS``), advanced for K runs at once by ``GapLaw``.

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
- tanh, BatchNorm:        no prediction (no rescaling symmetry between the layers; ``balance.engine.laws``).

A term of the objective that is not rescaling-invariant by design (MF's balancing regulariser
lambda/8 ||U^T U - V^T V||_F^2, problem (9)) makes E = Delta<theta, g> nonzero; it is measured each step and enters
exactly where the recursions above drop it: GD  G_{k+1} = (1 - eta lambda)^2 G_k - 2 eta (1 - eta lambda) E_k +
eta^2 Delta||g_k||^2; heavy ball and Nesterov add E_k wherever lambda G_k appears. For the regulariser,
E = lambda/2 (||U^T U||_F^2 - ||V^T V||_F^2). Gradient flow then has no closed form: no prediction (NaN).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # read for its layers only: this module imports no torch (the charts use its functions)
    from balance.engine.models import HomogeneousModel


def pair_matrix(model: HomogeneousModel) -> np.ndarray:
    """P [L-1, n_params] with +1 on W_{h+1} and -1 on W_h, b_h, so Delta = P @ (per-parameter values)."""
    P = np.zeros((len(model.layers) - 1, len(model.params)))
    for h in range(len(model.layers) - 1):
        P[h, model.layers[h + 1].weight] = 1.0
        P[h, model.layers[h].weight] = -1.0
        if model.layers[h].bias is not None:
            P[h, model.layers[h].bias] = -1.0
    return P


def param_scale(model: HomogeneousModel, layer_lrs: Sequence[float]) -> np.ndarray:
    """m_p [n_params]: the step-size multiplier of each parameter, layer h's ``layer_lrs[h]`` on W_h, b_h and the
    BatchNorm parameters of the units W_h feeds (all 1 when ``layer_lrs`` is empty)."""
    m = np.ones(len(model.params))
    if not layer_lrs:
        return m
    for h, layer in enumerate(model.layers):
        for index in (layer.weight, layer.bias):
            if index is not None:
                m[index] = layer_lrs[h]
    for group in model.neurons:
        m[list(group.incoming)] = layer_lrs[group.layer]
    return m


@dataclass
class LawStep:
    """One step's inputs to a gap recursion, per member: eta, lambda, beta [K, 1]; E = Delta<theta_k, g_k> [K, L-1]
    (0 for a rescaling-invariant objective); ``delta(name)`` is Delta of a per-parameter quantity: 'gg' = ||g_k||^2
    and the optimiser's extras ('vv', 'uu', 'uv'), each [K, L-1]."""

    eta: np.ndarray
    lam: np.ndarray
    beta: np.ndarray
    E: np.ndarray | float
    delta: Callable[[str], np.ndarray]
    plain: bool = False  # lambda = 0 and E = 0 for every member (saves a few array operations per step)
    raw: Callable[[str], np.ndarray] | None = None  # Delta without the per-layer weights m (SAM's first-order term)


def _gd(G: np.ndarray, B: np.ndarray, s: LawStep) -> tuple[np.ndarray, np.ndarray]:
    growth = s.eta**2 * s.delta("gg")
    if s.plain:
        return G + growth, B
    decay = 1 - s.eta * s.lam
    return decay**2 * G - 2 * s.eta * decay * s.E + growth, B


def _heavy_ball(G: np.ndarray, B: np.ndarray, s: LawStep) -> tuple[np.ndarray, np.ndarray]:
    eta, lam, beta, C = s.eta, s.lam, s.beta, s.delta("vv")
    return G - 2 * eta * (beta * B + s.E + lam * G) + eta**2 * C, beta * B + s.E + lam * G - eta * C


def _nesterov(G: np.ndarray, B: np.ndarray, s: LawStep) -> tuple[np.ndarray, np.ndarray]:
    eta, lam, beta = s.eta, s.lam, s.beta
    G_next = G - 2 * eta * ((1 + beta) * (lam * G + s.E) + beta**2 * B) + eta**2 * s.delta("uu")
    return G_next, beta * B + lam * G + s.E - eta * s.delta("uv")


def _sam(G: np.ndarray, B: np.ndarray, s: LawStep) -> tuple[np.ndarray, np.ndarray]:
    """E = Delta<theta, g~> = -rho Delta<g^, g~> (Euler's identity at the perturbed point), so
    G_{k+1} = (1 - eta lambda)^2 G_k + 2 eta (1 - eta lambda) rho Delta<g^, g~> + eta^2 Delta||g~||^2."""
    assert s.raw is not None
    decay = 1 - s.eta * s.lam
    return decay**2 * G + 2 * s.eta * decay * s.raw("tg") + s.eta**2 * s.delta("tt"), B


def _constant(G: np.ndarray, B: np.ndarray, s: LawStep) -> tuple[np.ndarray, np.ndarray]:
    return G, B


# The numbers of each optimiser's law (``balance.engine.laws.OPTIMIZERS[name].law``), by the same names.
RECURSIONS: dict[str, Callable[[np.ndarray, np.ndarray, LawStep], tuple[np.ndarray, np.ndarray]]] = {
    "gd": _gd,
    "sgd": _gd,
    "label_noise": _gd,
    "sam": _sam,
    "momentum": _heavy_ball,
    "nesterov": _nesterov,
    "flow": _constant,
}


class GapLaw:
    """The predicted gaps G [K, L-1] of K runs (and the momentum state B = Delta<theta, v>), advanced step by step by
    ``RECURSIONS[name]``; NaN where no law applies (``predicts`` False). With per-parameter step-size multipliers
    ``scale`` (m_p) the gaps are the eta-weighted ones and Delta of the optimiser's buffers is weighted by m
    (``balance.engine.laws.Law``); E stays unweighted."""

    def __init__(
        self, name: str, pairs: np.ndarray, gap0: np.ndarray, predicts: bool = True, scale: np.ndarray | None = None
    ) -> None:
        self.recursion = RECURSIONS.get(name) if predicts else None
        self.P = pairs
        self.P_step = pairs if scale is None else pairs * scale  # Delta weighted by m_p
        self.gap0 = np.array(gap0, dtype=float)
        self.G = self.gap0.copy() if self.recursion is not None else np.full_like(self.gap0, np.nan)
        self.B = np.zeros_like(self.G)

    @property
    def drift(self) -> np.ndarray:
        return self.G - self.gap0

    def update(
        self,
        lr: np.ndarray,
        hyper: Any,
        grad_sq: np.ndarray,
        extras: dict[str, np.ndarray],
        theta_grad: np.ndarray | None = None,
    ) -> None:
        """Advance by one step of sizes ``lr`` [K]: ``hyper`` holds per-member 'weight_decay' and 'momentum' [K];
        ``grad_sq`` ||g_p||^2 [K, n_params] of the gradient used; ``extras`` the update's inner products;
        ``theta_grad`` <theta_p, g_p> [K, n_params], only for an objective that is not rescaling-invariant."""
        if self.recursion is None:
            return
        P = self.P

        def delta(name: str) -> np.ndarray:
            return (grad_sq if name == "gg" else extras[name]) @ self.P_step.T

        E = 0.0 if theta_grad is None else theta_grad @ P.T
        lam = hyper["weight_decay"]
        plain = theta_grad is None and not hyper.any("weight_decay")

        def raw(name: str) -> np.ndarray:
            return extras[name] @ P.T

        step = LawStep(lr[:, None], lam[:, None], hyper["momentum"][:, None], E, delta, plain, raw)
        self.G, self.B = self.recursion(self.G, self.B, step)

    def select(self, keep: np.ndarray) -> None:
        self.gap0, self.G, self.B = self.gap0[keep], self.G[keep], self.B[keep]


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
