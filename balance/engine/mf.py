"""Matrix factorisation of K members in closed form, on stacked factors: layer 1 is V^T [K, r, d2], layer 2 is
U [K, d1, r], the objective f = 1/2 ||U V^T - M||_F^2 + lambda/8 ||U^T U - V^T V||_F^2 (the paper's (7) and (9)),
R = U V^T - M, D = U^T U - V^T V:

    dL/dU = R V + lambda/2 U D,   dL/dV^T = U^T R - lambda/2 D V^T     (tested against autograd).

``Subspace``: for updates that are linear combinations of weights and gradients (GD, SGD, momentum, Nesterov) the
iterates never leave span [U_0, L] x span [V_0, R] (M = L R^T): an exact change of coordinates to orthonormal bases
makes every step cost O((r + r*)^2 r) instead of O(d1 d2 r), and leaves every logged metric unchanged (norms, column
norms, U^T U - V^T V). ``Full``: the other updates (Adam is coordinate-wise; gradient flow), without ever forming the
[K, d1, d2] residual.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from balance.engine.optim import Members


def factors(M: Tensor, rank: int, rtol: float = 1e-13) -> tuple[Tensor, Tensor]:
    """L [.., d1, r*], R [.., d2, r*] with M = L R^T to ``rtol`` (relative): the target's truncated SVD (computed in
    float64) when M has rank r* (the lowrank data set is exactly rank r*, so the gradient GEMMs shrink by d2 / r*),
    else (M, I)."""
    U, S, Vh = torch.linalg.svd(M.double(), full_matrices=False)
    L, R = (U[..., :rank] * S[..., None, :rank]).to(M.dtype), Vh[..., :rank, :].mT.to(M.dtype)
    if torch.linalg.vector_norm((L @ R.mT - M).double()) <= rtol * torch.linalg.vector_norm(M.double()):
        return L.contiguous(), R.contiguous()
    return M, torch.eye(M.shape[-1], dtype=M.dtype)


# A float32 lowrank target is the rounding of an exactly rank-r* matrix: its rank-r* factors reproduce it to that
# rounding, and the subspace trains against their product (a difference of ~1e-7 relative, float32's own precision).
SUBSPACE_RTOL = {torch.float64: 1e-13, torch.float32: 1e-6}


def _sum_sq(x: np.ndarray) -> np.ndarray:
    """||x_k||^2 per member of a stacked [K, i, j] array, summed in float64 (a float32 product is exact in float64)."""
    if x.dtype == np.float64:
        return np.einsum("kij,kij->k", x, x)
    return np.multiply(x, x, dtype=np.float64).sum((1, 2))


def _vecdot(a: Tensor, b: Tensor) -> np.ndarray:
    return torch.linalg.vecdot(a.reshape(len(a), -1), b.reshape(len(b), -1)).numpy()


class Subspace:
    """X [K, p, r], Y^T [K, r, q] with U = B_U X, V = B_V Y (B orthonormal [K, d1, p], [K, d2, q]), target
    m = B_U^T M B_V; ``params`` = [Y^T, X] in the model's order (V^T, U). Loss and gradients in NumPy on views of the
    weight tensors: for these tiny stacked matrices a NumPy op costs about half a PyTorch op."""

    def __init__(self, Vt: Tensor, U: Tensor, targets: Tensor, rank: int, hyper: Members) -> None:
        K = len(U)
        L, R = (f.expand(K, *f.shape[-2:]) for f in factors(targets, rank, SUBSPACE_RTOL[targets.dtype]))
        self.B_U = torch.linalg.qr(torch.cat([U, L], 2)).Q  # [K, d1, min(d1, r + r*)]
        self.B_V = torch.linalg.qr(torch.cat([Vt.mT, R], 2)).Q
        X, Yt = self.B_U.mT @ U, Vt @ self.B_V  # [K, p, r], [K, r, q]
        self.params = [Yt.contiguous(), X.contiguous()]
        self.target = ((self.B_U.mT @ L) @ (self.B_V.mT @ R).mT).numpy()  # m [K, p, q]
        self.hyper = hyper
        self._arrays()

    def _arrays(self) -> None:
        """NumPy views of the weights' memory (the updates are in place) and their transposes, made once."""
        Yt, X = (p.numpy() for p in self.params)
        self.arrays = [Yt, X]
        self._np = (Yt, X, Yt.transpose(0, 2, 1), X.transpose(0, 2, 1))

    def evaluate(self) -> tuple[np.ndarray, list[Tensor], np.ndarray]:
        """E = X Y^T - m, loss = ||E||^2 / 2 (+ lambda/8 ||X^T X - Y^T Y||^2), dL/dX = E Y, dL/dY^T = X^T E
        (regulariser as above); and ||g||^2 [K, 2]."""
        Yt, X, Y, Xt = self._np
        E = X @ Yt
        E -= self.target
        loss = 0.5 * np.einsum("kij,kij->k", E, E)
        gX, gYt = E @ Y, Xt @ E
        reg = self.hyper["regularizer"]
        if self.hyper.any("regularizer"):
            D = Xt @ X - Yt @ Y
            loss = loss + reg / 8 * np.einsum("kij,kij->k", D, D)
            gX += (reg / 2)[:, None, None] * (X @ D)
            gYt -= (reg / 2)[:, None, None] * (D @ Yt)
        grad_sq = np.empty((len(X), 2))
        grad_sq[:, 0], grad_sq[:, 1] = _sum_sq(gYt), _sum_sq(gX)
        return loss, [torch.from_numpy(gYt), torch.from_numpy(gX)], grad_sq

    def row_loss(self, loss: np.ndarray) -> np.ndarray:
        return loss  # exact: the residual is formed in the subspace

    def weights(self, i: int) -> list[Tensor]:
        """Member i's V^T [r, d2] and U [d1, r] in full coordinates."""
        Yt, X = self.params
        return [Yt[i] @ self.B_V[i].T, self.B_U[i] @ X[i]]

    def full_grads(self, i: int, grads: list[Tensor]) -> list[Tensor]:
        gYt, gX = grads
        return [gYt[i] @ self.B_V[i].T, self.B_U[i] @ gX[i]]

    def select(self, index: Tensor) -> None:
        self.params = [p.index_select(0, index) for p in self.params]
        self._arrays()
        self.B_U, self.B_V = self.B_U.index_select(0, index), self.B_V.index_select(0, index)
        self.target = self.target[index.numpy()]


class Full:
    """V^T [K, r, d2] and U [K, d1, r], U kept as a view of a contiguous U^T (its GEMMs want it). With M = L R^T,
    A = V^T V, C = U^T U [K, r, r], P = U^T L, Q = V^T R [K, r, r*]:

        dL/dU^T = A U^T - Q L^T,  dL/dV^T = C V^T - P R^T,  loss = (||M||^2 - 2 <P, Q> + <A, C>) / 2,

    the loss only for the divergence check (logged rows recompute it from R = U V^T - M, ``row_loss``)."""

    def __init__(self, Vt: Tensor, U: Tensor, targets: Tensor, rank: int, hyper: Members) -> None:
        self.params = [Vt.contiguous(), U.mT.contiguous().mT]
        self.arrays = [p.numpy() for p in self.params]  # views of the weights' memory (the updates are in place)
        self.targets = targets  # [d1, d2] shared or [K, d1, d2]
        self.L, self.R = factors(targets, rank)
        M = targets.reshape(len(targets) if targets.ndim == 3 else 1, -1)
        self.target_sq = torch.linalg.vecdot(M, M).numpy()  # ||M||^2, [K] or [1]
        self.hyper = hyper

    def evaluate(self) -> tuple[np.ndarray, list[Tensor], np.ndarray]:
        Vt, Ut = self.params[0], self.params[1].mT
        A, C = torch.bmm(Vt, Vt.mT), torch.bmm(Ut, Ut.mT)
        P, Q = torch.matmul(Ut, self.L), torch.matmul(Vt, self.R)
        gUt = torch.baddbmm(torch.matmul(Q, self.L.mT), A, Ut, beta=-1)
        gVt = torch.baddbmm(torch.matmul(P, self.R.mT), C, Vt, beta=-1)
        loss = 0.5 * (self.target_sq - 2 * _vecdot(P, Q) + _vecdot(A, C))  # [K] arithmetic in NumPy: ~1 us an op
        reg = self.hyper["regularizer"]
        if self.hyper.any("regularizer"):
            D = C - A
            loss = loss + reg / 8 * _vecdot(D, D)
            gUt += self.hyper.like("regularizer", Vt) / 2 * torch.bmm(D, Ut)
            gVt -= self.hyper.like("regularizer", Vt) / 2 * torch.bmm(D, Vt)
        grad_sq = np.stack([_vecdot(g.double(), g.double()) for g in (gVt, gUt)], 1)
        return loss.astype(float), [gVt, gUt.mT], grad_sq

    @torch.no_grad()
    def row_loss(self, loss: np.ndarray) -> np.ndarray:
        """||U V^T - M||^2 / 2 (+ lambda/8 ||U^T U - V^T V||^2) per member, [K], from the residual itself."""
        Vt, U = self.params
        R = torch.baddbmm(self.targets.expand(len(U), *self.targets.shape[-2:]), U, Vt, beta=-1).reshape(len(U), -1)
        exact = 0.5 * torch.linalg.vecdot(R, R).numpy()
        reg = self.hyper["regularizer"]
        if reg.any():
            D = torch.bmm(U.mT, U) - torch.bmm(Vt, Vt.mT)
            exact = exact + reg / 8 * _vecdot(D, D)
        return exact.astype(float)

    def gradient(self) -> list[Tensor]:
        return self.evaluate()[1]

    def weights(self, i: int) -> list[Tensor]:
        return [p[i] for p in self.params]

    def full_grads(self, i: int, grads: list[Tensor]) -> list[Tensor]:
        return [g[i] for g in grads]

    def select(self, index: Tensor) -> None:
        Vt, U = self.params
        self.params = [Vt.index_select(0, index), U.mT.index_select(0, index).contiguous().mT]
        self.arrays = [p.numpy() for p in self.params]
        if self.targets.ndim == 3:
            self.targets = self.targets.index_select(0, index)
            self.L, self.R = (f.index_select(0, index) if f.ndim == 3 else f for f in (self.L, self.R))
            self.target_sq = self.target_sq[index.numpy()]
