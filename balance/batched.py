"""K runs of one shape trained in one vectorised computation: stacked weights [K, ...] and batched matmuls.

Members share everything that fixes the computation's shapes and graph (data set, model family and sizes,
activation, optimiser, steps, dtype: ``batch_key``) and each keeps its own step size, schedule, momentum, Adam
betas, weight decay, initialisation (scale, distribution, per-layer multipliers), MF regulariser, run seed and data
seed. Every member starts from exactly the weights ``Trainer`` would build (``build_model`` with its own seed) and
logs exactly the rows ``Trainer`` logs: the same ``metric_columns``, the same thinning (``should_log``), the same
divergence rule, the same exact gap recursions (``theory.GapPredictor``), batched over members.

Gradients: matrix factorisation uses the closed form of ``MatrixFactorisation.loss_and_gradients``, for GD and
momentum in the (r + r*)-dimensional subspaces the iterates never leave (``_reduce``: an exact change of
coordinates, so the per-step cost no longer grows with d1 x d2); linear and MLP networks use backpropagation
written out on the stacked weights (``_network_loss_and_gradients``), tested against single runs' autograd.

A diverged member is dropped from the stack (its rows so far and its status are kept); the others go on.
Mini-batch SGD, gradient flow, CNNs and BatchNorm do not batch (``batch_key`` is None): ``balance.sweep`` runs
them in a process pool.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from balance.api import RunResult, frame
from balance.config import RunConfig
from balance.data import make_task
from balance.laws import why_no_law
from balance.models import HomogeneousModel, build_model
from balance.optim import SCHEDULES
from balance.sharpness import step_advice
from balance.theory import pair_matrix
from balance.trainer import DIVERGENCE_FACTOR, DTYPES, RunStatus, metric_columns, should_log

# Settings each member may choose for itself; everything else must agree within a batch.
PER_MEMBER = (
    "seed",
    "max_seconds",
    "data.seed",
    "model.init",
    "model.init_scale",
    "model.layer_scales",
    "model.regularizer",
    "optim.lr",
    "optim.momentum",
    "optim.beta2",
    "optim.eps",
    "optim.weight_decay",
    "optim.schedule",
    "optim.decay_power",
    "optim.decay_every",
    "optim.decay_factor",
    "optim.rtol",
)
BATCHED_OPTIMIZERS = ("gd", "momentum", "nesterov", "adam")


def why_not_batched(config: RunConfig) -> str:
    """Why ``config`` cannot join a batch ('' when it can)."""
    m, o = config.model, config.optim
    if m.name == "cnn":
        return "convolutional networks are trained one per process"
    if m.batch_norm:
        return "BatchNorm runs are trained one per process"
    if o.name not in BATCHED_OPTIMIZERS:
        return f"the {o.name} optimiser is trained one run per process"
    return ""


def batch_key(config: RunConfig) -> str | None:
    """Configs with equal keys train together; None for a config that cannot batch (see ``why_not_batched``)."""
    if why_not_batched(config):
        return None
    flat = {k: v for s, sub in config.to_dict().items() for k, v in _items(s, sub)}
    return json.dumps({k: v for k, v in flat.items() if k not in PER_MEMBER}, sort_keys=True)


def _items(section: str, value: object) -> list[tuple[str, object]]:
    return [(f"{section}.{k}", v) for k, v in value.items()] if isinstance(value, dict) else [(section, value)]


def _per(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """A per-member vector shaped [K, 1, ..., 1] to broadcast against a stacked tensor ``like`` [K, ...]."""
    return torch.tensor(values, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


class BatchedTrainer:
    """Trains ``configs`` (equal ``batch_key``) together; ``step()`` returns {member index: rows logged}."""

    def __init__(self, configs: Sequence[RunConfig]) -> None:
        if not configs:
            raise ValueError("a batch needs at least one config")
        keys = {batch_key(c) for c in configs}
        if None in keys or len(keys) != 1:
            why = next((why_not_batched(c) for c in configs if why_not_batched(c)), "the configs differ in shape")
            raise ValueError(f"these configs cannot train as one batch: {why}")
        self.configs = list(configs)
        first = configs[0]
        self.dtype = DTYPES[first.dtype]
        tasks = {}
        for c in configs:
            if c.data not in tasks:
                tasks[c.data] = make_task(c.data, self.dtype)
        models = [build_model(c, tasks[c.data], torch.Generator().manual_seed(c.seed), self.dtype) for c in configs]
        self.model: HomogeneousModel = models[0]  # layout only: layers, neurons, activation
        self.columns = metric_columns(self.model)
        self.mf = first.model.name == "mf"
        m = first.model
        self.activation = ("linear" if m.name == "linear" else m.activation, m.negative_slope)
        task0 = tasks[first.data]
        self.loss_kind, self.samples = task0.loss, task0.samples
        self.stacked = len(tasks) > 1  # else one data set for all: broadcast instead of stacking
        pick = (lambda f: torch.stack([f(tasks[c.data]) for c in configs])) if self.stacked else (lambda f: f(task0))
        self.targets = pick(lambda t: t.targets)
        self.inputs = None if self.mf else pick(lambda t: t.inputs.reshape(t.samples, -1))
        if self.mf:
            self.factors = _factors(self.targets, first.data.rank)
            M = self.targets.reshape(len(self.targets) if self.stacked else 1, -1)
            self.target_sq = torch.linalg.vecdot(M, M).numpy()  # ||M||^2, [K] or [1]
        n_params = len(self.model.params)
        self.params = [torch.stack([m.params[i].detach() for m in models]) for i in range(n_params)]
        self._layout()
        self.members = np.arange(len(configs))  # batch row -> index into configs
        o = [c.optim for c in configs]
        self.base_lr = np.array([x.lr for x in o])
        self.hyper = {  # per-member optimiser settings, [K]
            "lam": np.array([x.weight_decay for x in o]),
            "beta": np.array([x.momentum for x in o]),
            "beta2": np.array([x.beta2 for x in o]),
            "eps": np.array([x.eps for x in o]),
            "reg": np.array([c.model.regularizer for c in configs]),
        }
        self.constant_lr = all(x.schedule == "constant" for x in o)
        self.optimizer = first.optim.name
        self.reduced = self.mf and self.optimizer != "adam"
        if self.reduced:
            self._reduce()
        self.buffers: dict[str, list[torch.Tensor]] = {}
        if self.optimizer in ("momentum", "nesterov"):
            self.buffers["v"] = [torch.zeros_like(p, requires_grad=False) for p in self.params]
        if self.optimizer == "adam":
            self.buffers["m"] = [torch.zeros_like(p, requires_grad=False) for p in self.params]
            self.buffers["v"] = [torch.zeros_like(p, requires_grad=False) for p in self.params]
        self.adam_k = 0
        self._neg_lr: tuple[np.ndarray, list[torch.Tensor]] | None = None
        self.steps, self.log_every = first.steps, first.log_every
        self.step_index = 0
        self.t = np.zeros(len(configs))
        self.status = [RunStatus("running", 0) for _ in configs]
        self.deadline = time.monotonic() + min(c.max_seconds for c in configs)
        self.P = pair_matrix(self.model)  # [L-1, n_params]
        self._evaluate()
        self.loss0 = self._row_loss()
        sq = self._sqnorms()
        self.gap0 = self._gaps(sq)
        self.G, self.B = self.gap0.copy(), np.zeros_like(self.gap0)
        if why_no_law(first):  # Adam, tanh: no law (the reason is shared: both are part of the batch key)
            self.G[:] = np.nan
        self.balance0 = self._balances()
        self.matrix0 = self._matrices()

    def _layout(self) -> None:
        """MF in full coordinates: U [K, d1, r] kept as a view of a contiguous U^T (its GEMMs want it)."""
        if self.mf and not getattr(self, "reduced", False):  # set by _reduce, which comes after the first call
            self.params[1] = self.params[1].mT.contiguous().mT

    def _reduce(self) -> None:
        """MF in the subspace where gradient descent keeps it: an exact change of coordinates.

        Every GD / momentum / Nesterov update of U is a combination of U's columns and of L's (dL/dU = U V^T V -
        L R^T V, decay adds U): U stays in span [U_0, L] (d1 x (r + r*)), V in span [V_0, R]. With orthonormal
        bases B_U, B_V (QR), U = B_U X, V = B_V Y, M = B_U m B_V^T (m = (B_U^T L)(B_V^T R)^T), and the problem in
        X [K, p, r], Y [K, q, r] (p, q <= r + r*) has the same losses, gradients (up to B), norms, per-column
        balances and U^T U - V^T V: every logged metric is unchanged, at a cost that no longer grows with d1, d2.
        Adam is coordinate-wise, leaves the subspace, and keeps the full coordinates.
        """
        Vt, U = self.params
        L, R = (f.expand(len(U), *f.shape[-2:]) for f in self.factors)
        B_U = torch.linalg.qr(torch.cat([U, L], 2)).Q  # [K, d1, min(d1, r + r*)]
        B_V = torch.linalg.qr(torch.cat([Vt.mT, R], 2)).Q
        X, Yt = B_U.mT @ U, Vt @ B_V  # [K, p, r], [K, r, q]
        Lr, Rr = (B_U.mT @ L).contiguous(), (B_V.mT @ R).contiguous()
        self.params = [Yt.contiguous(), X.contiguous()]
        self.factors, self.targets, self.stacked = (Lr, Rr), Lr @ Rr.mT, True
        m = self.targets.reshape(len(X), -1)
        self.target_sq = torch.linalg.vecdot(m, m).numpy()

    # --- evaluation -------------------------------------------------------------------------------------------

    def _evaluate(self) -> None:
        """Loss [K], gradients [K, ...] and per-parameter ||g||^2 [K, n_params] at the current weights."""
        if self.reduced:
            self.loss, self.grads = self._reduced_loss_and_gradients()
        elif self.mf:
            self.loss, self.grads = self._mf_loss_and_gradients()
        else:
            self.loss, self.grads = self._network_loss_and_gradients()
            self.flat_grads = self.grads
        if not self.reduced:
            K = len(self.loss)
            flat = [g.reshape(K, -1).double() for g in self.flat_grads]  # float64 sums, also of a float32 batch
            self.grad_sq = torch.stack([torch.linalg.vecdot(g, g) for g in flat], 1).numpy()

    def _reduced_loss_and_gradients(self) -> tuple[np.ndarray, list[torch.Tensor]]:
        """``MatrixFactorisation.loss_and_gradients`` in the subspace coordinates (see ``_reduce``), [K, p, q] at most
        [K, r + r*, r + r*]: E = X Y^T - m, loss = ||E||^2 / 2, dL/dX = E Y, dL/dY^T = X^T E; regulariser as there.

        In NumPy on views of the weight tensors: for these tiny stacked matrices a NumPy op costs about half a
        PyTorch op. Also sets ``grad_sq``.
        """
        Yt, X = (p.numpy() for p in self.params)
        E = X @ Yt
        E -= self.targets.numpy()
        loss = 0.5 * np.einsum("kij,kij->k", E, E)
        gX, gYt = E @ Yt.transpose(0, 2, 1), X.transpose(0, 2, 1) @ E
        reg = self.hyper["reg"]
        if reg.any():
            D = X.transpose(0, 2, 1) @ X - Yt @ Yt.transpose(0, 2, 1)
            loss = loss + reg / 8 * np.einsum("kij,kij->k", D, D)
            gX += (reg / 2)[:, None, None] * (X @ D)
            gYt -= (reg / 2)[:, None, None] * (D @ Yt)
        self.grad_sq = np.stack([_sum_sq(gYt), _sum_sq(gX)], 1)
        self.flat_grads = [torch.from_numpy(gYt), torch.from_numpy(gX)]
        return loss, self.flat_grads

    def _mf_loss_and_gradients(self) -> tuple[np.ndarray, list[torch.Tensor]]:
        """Gradients of ``MatrixFactorisation.loss_and_gradients`` without the [K, d1, d2] residual, M = L R^T:

        A = V^T V, C = U^T U [K, r, r], P = U^T L, Q = V^T R [K, r, r*];
        dL/dU^T = A U^T - Q L^T,  dL/dV^T = C V^T - P R^T  (the products with L, R are one folded GEMM each);
        loss = (||M||^2 - 2 <P, Q> + <A, C>) / 2, used only by the divergence check (logged rows recompute it
        from R = U V^T - M, see ``_exact_loss``). Regulariser, D = C - A: loss += lambda/8 ||D||^2,
        dL/dU^T += lambda/2 D U^T,  dL/dV^T -= lambda/2 D V^T.
        """
        Vt, Ut = self.params[0], self.params[1].mT  # U is stored transposed: U^T is contiguous
        K, (L, R) = len(Vt), self.factors
        A, C = torch.bmm(Vt, Vt.mT), torch.bmm(Ut, Ut.mT)
        P, Q = torch.matmul(Ut, L), torch.matmul(Vt, R)
        gUt = torch.baddbmm(torch.matmul(Q, L.mT), A, Ut, beta=-1)
        gVt = torch.baddbmm(torch.matmul(P, R.mT), C, Vt, beta=-1)
        flat = lambda t: t.reshape(K, -1)  # noqa: E731
        PQ, AC = torch.linalg.vecdot(flat(P), flat(Q)).numpy(), torch.linalg.vecdot(flat(A), flat(C)).numpy()
        loss = 0.5 * (self.target_sq - 2 * PQ + AC)  # [K] arithmetic in NumPy: ~1 us an op against ~10 us
        if self.hyper["reg"].any():
            reg = _per(self.hyper["reg"], Vt)
            D = C - A
            loss = loss + self.hyper["reg"] / 8 * torch.linalg.vecdot(flat(D), flat(D)).numpy()
            gUt += reg / 2 * torch.bmm(D, Ut)
            gVt -= reg / 2 * torch.bmm(D, Vt)
        self.flat_grads = [gVt, gUt]
        return loss.astype(float), [gVt, gUt.mT]

    @torch.no_grad()
    def _exact_loss(self) -> np.ndarray:
        """||U V^T - M||^2 / 2 (+ lambda/8 ||U^T U - V^T V||^2) per member, [K], as the single trainer computes it."""
        Vt, U = self.params
        R = torch.baddbmm(self.targets, U, Vt, beta=-1).reshape(len(U), -1)
        loss = 0.5 * torch.linalg.vecdot(R, R)
        if self.hyper["reg"].any():
            D = (torch.bmm(U.mT, U) - torch.bmm(Vt, Vt.mT)).reshape(len(U), -1)
            loss = loss + torch.from_numpy(self.hyper["reg"]) / 8 * torch.linalg.vecdot(D, D)
        return loss.numpy().astype(float)

    @torch.no_grad()
    def _network_loss_and_gradients(self) -> tuple[np.ndarray, list[torch.Tensor]]:
        """Each member's loss [K] (``data.loss_value``) and gradients, backpropagation written out.

        Forward: z_h = a_{h-1} W_h^T + b_h, a_h = phi(z_h), a_0 = x [N, d] (or [K, N, d]). Backward from
        dL/dz_L (squared: (f - y) / N; logistic: -y sigmoid(-y f) / N; cross-entropy: (softmax f - onehot y) / N):
        dL/dW_h = dz_h^T a_{h-1}, dL/db_h = sum_n dz_h, dz_{h-1} = (dz_h W_h) * phi'(z_{h-1}). About a third
        fewer kernels than autograd on these stacked shapes, and no graph to build.
        """
        layers, ps = self.model.layers, self.params
        acts, zs = [self.inputs], []
        for h, layer in enumerate(layers):
            z = torch.matmul(acts[-1], ps[layer.weight].mT)  # [K, N, n_out]
            if layer.bias is not None:
                z += ps[layer.bias][:, None, :]
            if h < len(layers) - 1:
                zs.append(z)
                acts.append(self._phi(z))
        f, y, (K, N) = z, self.targets, z.shape[:2]
        if self.loss_kind == "squared":
            dz = f - y
            loss = 0.5 * (dz * dz).sum((1, 2)) / N
            dz /= N
        elif self.loss_kind == "logistic":
            loss = torch.logaddexp(torch.zeros_like(f), -y * f).mean((1, 2))
            dz = -y * torch.sigmoid(-y * f) / (N * f.shape[2])
        else:
            logp = torch.log_softmax(f, 2)
            labels = y.expand(K, -1)[:, :, None]
            loss = -logp.gather(2, labels)[:, :, 0].mean(1)
            dz = torch.exp(logp).scatter_add_(2, labels, torch.full(labels.shape, -1.0, dtype=f.dtype)) / N
        grads: list[torch.Tensor] = [torch.empty(0)] * len(ps)
        for h in range(len(layers) - 1, -1, -1):
            layer = layers[h]
            grads[layer.weight] = torch.matmul(dz.mT, acts[h])  # [K, n_out, n_in]
            if layer.bias is not None:
                grads[layer.bias] = dz.sum(1)
            if h:
                dz = self._dphi(torch.matmul(dz, ps[layer.weight]), zs[h - 1], acts[h])
        return loss.numpy().astype(float), grads

    def _phi(self, z: torch.Tensor) -> torch.Tensor:
        name, slope = self.activation
        if name == "relu":
            return torch.relu(z)
        if name == "leaky_relu":
            return F.leaky_relu(z, slope)
        return torch.tanh(z) if name == "tanh" else z

    def _dphi(self, da: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """dL/dz from dL/da = da at pre-activation z (post-activation a), as autograd's backward of ``_phi``."""
        name, slope = self.activation
        # autograd's own backward kernels: torch.where(z > 0, da, 0.0) costs 15x more at [8, 256, 64]
        if name == "relu":
            return torch.ops.aten.threshold_backward(da, z, 0)
        if name == "leaky_relu":
            return torch.ops.aten.leaky_relu_backward(da, z, slope, False)
        return da * (1 - a * a) if name == "tanh" else da

    def _views(self) -> list[np.ndarray]:
        """The weights as float64 NumPy arrays (sharing their memory in a float64 batch): metrics are small
        reductions, cheaper in NumPy, and summed in float64 whatever the training precision."""
        return [p.detach().numpy().astype(np.float64, copy=False) for p in self.params]

    def _sqnorms(self) -> np.ndarray:
        """||theta_p||^2 per member and parameter, [K, n_params]."""
        flat = [v.reshape(len(v), -1) for v in self._views()]
        return np.stack([np.einsum("ki,ki->k", v, v) for v in flat], 1).astype(float)

    def _gaps(self, sq: np.ndarray) -> np.ndarray:
        """G_h = ||W_{h+1}||^2 - ||W_h||^2 - ||b_h||^2, [K, L-1] (the pair matrix P has exactly those signs)."""
        return sq @ self.P.T

    def _balances(self) -> list[np.ndarray]:
        """Per hidden layer: B_i = ||w_in,i||^2 - ||w_out,i||^2, [K, n_h] (``invariants.neuron_balance``)."""
        views, out = self._views(), []
        for g in self.model.neurons:
            K = len(views[0])
            incoming = sum((views[i] ** 2).reshape(K, g.count, -1).sum(2) for i in g.incoming)
            W = views[g.outgoing]
            out.append(incoming - (W * W).reshape(K, W.shape[1], g.count, -1).sum((1, 3)))
        return out

    def _matrices(self) -> dict[int, np.ndarray]:
        """D_h = W_{h+1}^T W_{h+1} - [W_h b_h][W_h b_h]^T, [K, n_h, n_h], for identity activations."""
        views, out = self._views(), {}
        for g in self.model.neurons:
            if g.linear:
                K = len(views[0])
                A = np.concatenate([views[i].reshape(K, g.count, -1) for i in g.incoming], 2)
                W = views[g.outgoing].reshape(K, -1, g.count)
                out[g.layer] = W.transpose(0, 2, 1) @ W - A @ A.transpose(0, 2, 1)
        return out

    # --- rows -----------------------------------------------------------------------------------------------

    def _row_loss(self) -> np.ndarray:
        return self._exact_loss() if self.mf and not self.reduced else self.loss

    def lr_at(self, k: int) -> np.ndarray:
        """eta_k of every member in the batch, [K]."""
        if self.constant_lr:
            return self.base_lr
        cfgs = [self.configs[i].optim for i in self.members]
        return self.base_lr * np.array([SCHEDULES[c.schedule](c, k) for c in cfgs])

    def rows(self) -> np.ndarray:
        """Every metric of every member's current state, [K, len(columns)] in ``columns`` order."""
        with np.errstate(all="ignore"):  # a diverging member's last row may hold inf / nan, as Trainer's does
            return self._rows()

    def _rows(self) -> np.ndarray:
        k, K, layers = self.step_index, len(self.members), self.model.layers
        sq = self._sqnorms()
        w = [layer.weight for layer in layers]
        cols = [np.full(K, float(k)), self.t, self.lr_at(k), self._row_loss(), *sq[:, w].T]
        cols += [sq[:, layer.bias] for layer in layers if layer.bias is not None]
        cols += list(np.sqrt(self.grad_sq[:, w]).T)
        G = self._gaps(sq)
        ratio = [np.where(sq[:, a] > 0, np.sqrt(sq[:, b] / sq[:, a]), np.inf) for a, b in itertools.pairwise(w)]
        cols += [*G.T, *(G - self.gap0).T, *(self.G - self.gap0).T, *ratio]
        drift = np.concatenate([np.abs(b - b0) for b, b0 in zip(self._balances(), self.balance0)], 1)
        cols += [drift.max(1), drift.mean(1)]
        for h, D in self._matrices().items():
            E = D - self.matrix0[h]
            cols += [np.sqrt(np.einsum("kij,kij->k", D, D)), np.sqrt(np.einsum("kij,kij->k", E, E))]
        return np.stack([np.asarray(c, dtype=float) for c in cols], 1)

    # --- stepping -------------------------------------------------------------------------------------------

    def _diverged(self) -> list[str]:
        """Trainer's rule per member: a non-finite loss, or one above 10^8 max(loss_0, 1) ('' where healthy)."""
        with np.errstate(invalid="ignore"):
            if np.all(self.loss <= DIVERGENCE_FACTOR * np.maximum(self.loss0, 1.0)):  # False for nan
                return [""] * len(self.loss)
        out = []
        for loss, loss0 in zip(self.loss, self.loss0):
            if not math.isfinite(loss):
                out.append(f"the loss became {loss}")
            elif loss > DIVERGENCE_FACTOR * max(loss0, 1.0):
                out.append(f"the loss exploded to {loss:.3g} (from {loss0:.3g})")
            else:
                out.append("")
        return out

    @property
    def running(self) -> bool:
        return len(self.members) > 0

    def step(self) -> dict[int, list[np.ndarray]]:
        """One step of every running member; returns {config index: rows logged}, as ``Trainer.step`` does."""
        out: dict[int, list[np.ndarray]] = {}
        if not self.running:
            return out
        k, last = self.step_index, self.steps
        why = self._diverged()
        logged = should_log(k, last, self.log_every)
        if logged or any(why):
            rows = self.rows()
            for i, member in enumerate(self.members):
                if logged or why[i]:
                    out.setdefault(int(member), []).append(rows[i])
        lr = self.lr_at(k)
        for i, member in enumerate(self.members):
            if why[i]:
                advice = step_advice(self.configs[member], float(lr[i]))[1]
                msg = f"diverged at step {k} (t = {self.t[i]:.4g}): {why[i]}; {advice}"
                self.status[member] = RunStatus("diverged", k, msg)
            elif k == last:
                self.status[member] = RunStatus("finished", k)
        if k == last:
            self._keep(np.zeros(len(self.members), dtype=bool))
            return out
        if any(why):
            keep = np.array([not w for w in why])
            self._keep(keep)
            lr = lr[keep]
            if not self.running:
                return out
        E = self._symmetry_defect()  # before the update moves theta
        if self.mf:
            extras = self._update(lr)
        else:
            with torch.no_grad():
                extras = self._update(lr)
        self._predict(lr, extras, E)
        self.step_index, self.t = k + 1, self.t + lr
        self._evaluate()
        if self.step_index == last:
            for member, rows in self.step().items():
                out.setdefault(member, []).extend(rows)
        return out

    def stop(self, message: str) -> dict[int, list[np.ndarray]]:
        """Stop every running member here (the wall-time limit): log its current state, as ``api.run`` does."""
        rows = self.rows() if self.running else []
        out = {int(m): [rows[i]] for i, m in enumerate(self.members)}
        for member in self.members:
            self.status[member] = RunStatus("stopped", self.step_index, message)
        self._keep(np.zeros(len(self.members), dtype=bool))
        return out

    def _update(self, lr: np.ndarray) -> dict[str, np.ndarray]:
        """The optimiser step of ``balance.optim`` per member (coupled decay d = g + lambda theta).

        In place on the weights: networks call it under ``torch.no_grad`` (their weights are autograd leaves).
        """
        ps, h = self.params, self.hyper
        ds = [g + _per(h["lam"], p) * p for p, g in zip(ps, self.grads)] if h["lam"].any() else self.grads
        if self._neg_lr is None or self._neg_lr[0] is not lr:  # a constant step size: the same array every step
            self._neg_lr = (lr, [_per(-lr, p) for p in ps])
        neg_lr = self._neg_lr[1]
        name = self.optimizer
        if name == "gd" and self.reduced:  # NumPy on the tensors' memory, as in _reduced_loss_and_gradients
            for p, d, a in zip(ps, ds, neg_lr):
                view = p.numpy()
                view += a.numpy() * d.numpy()
            return {}
        if name == "gd":
            for p, d, a in zip(ps, ds, neg_lr):
                p.addcmul_(d, a)
            return {}
        if name == "adam":
            self.adam_k += 1
            b1, b2 = h["beta"], h["beta2"]
            c1, c2 = 1 - b1**self.adam_k, 1 - b2**self.adam_k
            for p, m, v, d in zip(ps, self.buffers["m"], self.buffers["v"], ds):
                m.mul_(_per(b1, p)).add_(d * _per(1 - b1, p))
                v.mul_(_per(b2, p)).addcmul_(d * _per(1 - b2, p), d)
                denom = (v.sqrt() / _per(np.sqrt(c2), p)).add_(_per(h["eps"], p))
                p.addcdiv_(m * _per(-lr / c1, p), denom)
            return {}
        vs, us = self.buffers["v"], []
        for p, v, d in zip(ps, vs, ds):
            beta = _per(h["beta"], p)
            v.mul_(beta).add_(d)
            us.append(d + beta * v if name == "nesterov" else v)
        for p, u, a in zip(ps, us, neg_lr):
            p.addcmul_(u, a)
        if name == "momentum":
            return {"vv": _inner(vs, vs)}
        return {"uu": _inner(us, us), "uv": _inner(us, vs)}

    @torch.no_grad()
    def _symmetry_defect(self) -> np.ndarray:
        """E = Delta<theta, g> [K, L-1]: nonzero only for MF members with the balancing regulariser, as the single
        trainer measures it (0 for the others, whose objective is rescaling-invariant). The subspace coordinates
        are orthonormal, so the inner products are those of the full weights."""
        E = np.zeros_like(self.G)
        if not self.mf or not self.hyper["reg"].any():
            return E
        (Vt, U), (gVt, gU) = self.params, self.flat_grads
        if not self.reduced:  # U is stored transposed, and its gradient kept as U^T
            U = U.mT
        K = len(Vt)
        dots = [
            torch.linalg.vecdot(x.reshape(K, -1).double(), g.reshape(K, -1).double()).numpy()
            for x, g in ((Vt, gVt), (U, gU))
        ]
        E[:] = np.stack(dots, 1) @ self.P.T
        E[self.hyper["reg"] == 0] = 0.0
        return E

    def _predict(self, lr: np.ndarray, extras: dict[str, np.ndarray], E: np.ndarray) -> None:
        """``theory.GapPredictor.update`` for every member at once: G, B [K, L-1]; E as ``_symmetry_defect``."""
        lam, beta = self.hyper["lam"][:, None], self.hyper["beta"][:, None]
        eta, G, B = lr[:, None], self.G, self.B
        if self.optimizer == "gd":
            self.G = (1 - eta * lam) ** 2 * G - 2 * eta * (1 - eta * lam) * E + eta**2 * (self.grad_sq @ self.P.T)
        elif self.optimizer == "momentum":
            C = extras["vv"] @ self.P.T
            self.G = G - 2 * eta * (beta * B + E + lam * G) + eta**2 * C
            self.B = beta * B + E + lam * G - eta * C
        elif self.optimizer == "nesterov":
            uu, uv = extras["uu"] @ self.P.T, extras["uv"] @ self.P.T
            self.G = G - 2 * eta * ((1 + beta) * (lam * G + E) + beta**2 * B) + eta**2 * uu
            self.B = beta * B + lam * G + E - eta * uv

    def _keep(self, keep: np.ndarray) -> None:
        """Drop the members not in ``keep`` (finished or diverged) from every stacked tensor and array."""
        if keep.all():
            return
        index = torch.from_numpy(np.flatnonzero(keep))
        sel = lambda t: t.detach().index_select(0, index)  # noqa: E731
        self.params = [sel(p) for p in self.params]
        self._layout()
        self.grads = [sel(g) for g in self.grads]
        self.flat_grads = [sel(g) for g in self.flat_grads]
        self.buffers = {k: [sel(b) for b in bs] for k, bs in self.buffers.items()}
        self.balance0 = [b[keep] for b in self.balance0]
        self.matrix0 = {h: D[keep] for h, D in self.matrix0.items()}
        if self.stacked:
            self.targets = sel(self.targets)
            if self.mf:
                self.factors, self.target_sq = tuple(sel(f) for f in self.factors), self.target_sq[keep]
            self.inputs = None if self.inputs is None else sel(self.inputs)
        self.members, self.base_lr, self.t = self.members[keep], self.base_lr[keep], self.t[keep]
        self.hyper = {k: v[keep] for k, v in self.hyper.items()}
        for name in ("loss", "loss0", "grad_sq", "gap0", "G", "B"):
            setattr(self, name, getattr(self, name)[keep])


def tune_allocator() -> bool:
    """Keep freed memory in glibc's heap (no mmap per large tensor, no trimming): stacked activations of a few MB
    are then reused instead of page-faulted in on every step (performance notes: 82k faults per step at K = 256).
    Process-wide and Linux-only; for worker processes and benchmarks. Returns whether it took effect."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 256 << 20) and libc.mallopt(-1, 512 << 20))  # M_MMAP_ / M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        return False


def _factors(M: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L [d1, r*], R [d2, r*] (or [K, ...]) with M = L R^T: the target's truncated SVD when M has rank r* (the
    lowrank data set is exactly rank r*, so the gradient GEMMs shrink by d2 / r*), else (M, I)."""
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    L, R = (U[..., :rank] * S[..., None, :rank]).contiguous(), Vh[..., :rank, :].mT.contiguous()
    if torch.linalg.vector_norm(L @ R.mT - M) <= 1e-13 * torch.linalg.vector_norm(M):
        return L, R
    return M, torch.eye(M.shape[-1], dtype=M.dtype)


def _sum_sq(x: np.ndarray) -> np.ndarray:
    """||x_k||^2 per member of a stacked [K, ...] array, summed in float64."""
    return np.einsum("kij,kij->k", x, x, dtype=np.float64)


def _inner(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> np.ndarray:
    """<a_p, b_p> per member and parameter, [K, n_params]."""
    return torch.stack([(x.double() * y.double()).reshape(len(x), -1).sum(1) for x, y in zip(a, b)], 1).numpy()


def train_batched(configs: Sequence[RunConfig], on_step: Callable[[int], None] | None = None) -> list[RunResult]:
    """Train ``configs`` (one ``batch_key``) together to the end; one ``RunResult`` per config, in order.

    ``on_step(k)`` is called after every batched step. The wall-time limit (the smallest ``max_seconds``) stops
    every member still running, as ``api.run`` stops one run.
    """
    trainer = BatchedTrainer(configs)
    rows: list[list[np.ndarray]] = [[] for _ in configs]
    while trainer.running:
        for member, new in trainer.step().items():
            rows[member].extend(new)
        if on_step is not None:
            on_step(trainer.step_index)
        if trainer.running and trainer.step_index % 64 == 0 and time.monotonic() > trainer.deadline:
            limit = min(c.max_seconds for c in configs)
            for member, new in trainer.stop(f"stopped at the wall-time limit of {limit:g} s").items():
                rows[member].extend(new)
    return [RunResult(frame(trainer.columns, np.stack(rs)), s) for rs, s in zip(rows, trainer.status)]  # type: ignore[arg-type]
