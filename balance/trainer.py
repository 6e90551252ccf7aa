"""The trainer: one optimiser step at a time, exact metrics on the logged steps; no threads, no I/O, no clock.

Row k describes the state theta_k *before* step k: its loss, norms, gradients g_k, and the predicted drift
accumulated over steps 0 .. k-1. A run of N steps gives rows 0 .. N (thinned, see ``should_log``).

Metrics are computed on NumPy views of the parameters (they share memory with the tensors, which the optimisers
update in place): for the small tensors of these models a NumPy reduction costs about 1 us against about 10 us
for a PyTorch op, which keeps "every metric at every step" close to a bare training loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from balance.config import RunConfig
from balance.data import Task, loss_value, make_task
from balance.invariants import gaps, matrix_invariant, neuron_balance, ratios
from balance.laws import why_no_law
from balance.models import MODELS, HomogeneousModel, build_model
from balance.optim import SCHEDULES, make_optimizer
from balance.sharpness import step_advice
from balance.theory import GapPredictor, pair_matrix

DTYPES = {"float32": torch.float32, "float64": torch.float64}
DENSE_STEPS = 10_000  # every step logged up to here; then about 4,500 rows per decade
DIVERGENCE_FACTOR = 1e8  # a loss this many times its start (or 1) counts as exploding


def _f64(t: torch.Tensor) -> np.ndarray:
    """A tensor as a float64 array (a view when it already is one)."""
    return t.numpy().astype(np.float64, copy=False)


def should_log(k: int, last: int, log_every: int = 1) -> bool:
    """Row budget: every ``log_every``-th step for the first 10^4 steps, then a stride of 2 * 10^(d-3) in the decade
    [10^d, 10^(d+1)), so 10^6 steps keep about 19,000 rows; the first and last step always."""
    if k == 0 or k == last:
        return True
    stride = log_every if k < DENSE_STEPS else log_every * 2 * 10 ** (int(math.log10(k)) - 3)
    return k % stride == 0


@dataclass
class RunStatus:
    state: str  # running | finished | diverged | stopped | failed
    step: int
    message: str = ""


def metric_columns(model: HomogeneousModel) -> list[str]:
    """The row layout; layer h = 1 is the input side (for mf: 1 = V, 2 = U)."""
    L = len(model.layers)
    layers, pairs = range(1, L + 1), range(1, L)
    cols = ["step", "t", "lr", "loss"]
    cols += [f"sqnorm_{h}" for h in layers]
    cols += [f"bias_sqnorm_{h}" for h in layers if model.layers[h - 1].bias is not None]
    cols += [f"grad_norm_{h}" for h in layers]
    for name in ("gap", "gap_drift", "pred_gap_drift", "ratio"):
        cols += [f"{name}_{h}" for h in pairs]
    cols += ["neuron_drift_max", "neuron_drift_mean"]
    for g in model.neurons:
        if g.linear:
            cols += [f"matrix_inv_{g.layer + 1}", f"matrix_drift_{g.layer + 1}"]
    return cols


class Trainer:
    """Trains ``config`` step by step. ``step()`` returns the rows it logged (0, 1 or 2)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        dtype = DTYPES[config.dtype]
        self.task: Task = make_task(config.data, dtype, image_input=MODELS[config.model.name].image_input)
        init_gen = torch.Generator().manual_seed(config.seed)
        self.batch_gen = torch.Generator().manual_seed(config.seed + 1)
        self.model = build_model(config, self.task, init_gen, dtype)
        self.params = self.model.params
        self.views = [p.detach().numpy() for p in self.params]  # share memory with the tensors
        self.optimizer = make_optimizer(config.optim, self.params, self._full_gradient)
        self.learning_rate = config.optim.lr  # base step size; may be changed between steps
        self.columns = metric_columns(self.model)
        self.step_index, self.t = 0, 0.0
        self.status = RunStatus("running", 0)
        self._order = torch.empty(0, dtype=torch.long)
        self._has_bias = any(layer.bias is not None for layer in self.model.layers)
        self._evaluate()
        self.loss0 = self.loss
        views = self._metric_views()
        self.balance0 = [neuron_balance(views, g) for g in self.model.neurons]
        self.matrix0 = {g.layer: matrix_invariant(views, g) for g in self.model.neurons if g.linear}
        self.gap0 = gaps(*self._layer_sqnorms())
        # MF's balancing regulariser is not rescaling-invariant: its first-order effect enters the prediction
        self._invariant = not getattr(self.model, "regularizer", 0.0)
        self.predictor = GapPredictor(config.optim, pair_matrix(self.model), self.gap0, not why_no_law(config))

    # --- evaluation ---------------------------------------------------------------------------------------

    def _objective(self, index: torch.Tensor | None = None) -> torch.Tensor:
        task, model = self.task, self.model
        if task.inputs is None:
            loss = loss_value(model(), task.targets, task.loss, task.name)
            return loss + model.penalty() if model.regularizer else loss
        x, y = (task.inputs, task.targets) if index is None else (task.inputs[index], task.targets[index])
        return loss_value(model(x), y, task.loss, task.name)

    def _loss_and_gradients(self, index: torch.Tensor | None = None) -> tuple[float, list[torch.Tensor]]:
        if self.task.inputs is None:  # matrix factorisation: closed form, tested against autograd
            return self.model.loss_and_gradients(self.task.targets)
        loss = self._objective(index)
        return float(loss.detach()), list(torch.autograd.grad(loss, self.params))

    def _full_gradient(self) -> list[torch.Tensor]:
        return self._loss_and_gradients()[1]

    def _next_batch(self) -> torch.Tensor | None:
        size = self.config.optim.batch_size
        if not size:
            return None
        if self._order.numel() < size:  # a fresh permutation each epoch; the remainder starts the next one
            perm = torch.randperm(self.task.samples, generator=self.batch_gen)
            self._order = torch.cat([self._order, perm])
        index, self._order = self._order[:size], self._order[size:]
        return index

    def _evaluate(self) -> None:
        """Loss and gradient at the current parameters (on this step's mini-batch, if any)."""
        self.batch_loss, self.grads = self._loss_and_gradients(self._next_batch())
        self.loss = self.batch_loss
        self.grad_sq = np.array([float(np.vdot(g, g)) for g in map(_f64, self.grads)])

    def _theta_grad(self) -> np.ndarray:
        """<theta_p, g_p> per parameter tensor."""
        return np.array([float(np.vdot(v, _f64(g))) for v, g in zip(self._metric_views(), self.grads)])

    def _metric_views(self) -> list[np.ndarray]:
        """The weights as float64 arrays: views of a float64 run's tensors, copies of a float32 run's, so every
        metric is summed in float64 whatever the training precision (a float32 sum of 10^4 squares loses ~1e-4)."""
        return self.views if self.views[0].dtype == np.float64 else [v.astype(np.float64) for v in self.views]

    def _layer_sqnorms(self) -> tuple[list[float], list[float]]:
        sq = [float(np.vdot(v, v)) for v in self._metric_views()]
        layers = self.model.layers
        return [sq[layer.weight] for layer in layers], [0.0 if b.bias is None else sq[b.bias] for b in layers]

    # --- stepping -----------------------------------------------------------------------------------------

    def lr_at(self, k: int) -> float:
        return self.learning_rate * SCHEDULES[self.config.optim.schedule](self.config.optim, k)

    def row(self) -> list[float]:
        """Every metric of the current state, in ``self.columns`` order."""
        k = self.step_index
        if self.config.optim.batch_size:  # report the full training loss, not the batch's
            with torch.no_grad():
                self.loss = float(self._objective())
        sq, bsq = self._layer_sqnorms()
        G = gaps(sq, bsq)
        row = [float(k), self.t, self.lr_at(k), self.loss, *sq]
        if self._has_bias:
            row += [b for b, layer in zip(bsq, self.model.layers) if layer.bias is not None]
        row += [math.sqrt(self.grad_sq[layer.weight]) for layer in self.model.layers]
        row += G
        row += [g - g0 for g, g0 in zip(G, self.gap0)]
        row += list(self.predictor.drift)
        row += ratios(sq)
        views = self._metric_views()
        drift = [np.abs(neuron_balance(views, g) - b0) for g, b0 in zip(self.model.neurons, self.balance0)]
        row += [max(float(d.max()) for d in drift), float(np.mean(np.concatenate(drift)))]
        for g in self.model.neurons:
            if g.linear:
                D = matrix_invariant(views, g)
                row += [float(np.linalg.norm(D)), float(np.linalg.norm(D - self.matrix0[g.layer]))]
        return row

    def _diverged(self) -> str:
        loss = self.batch_loss
        if not math.isfinite(loss):
            return f"the loss became {loss}"
        if loss > DIVERGENCE_FACTOR * max(self.loss0, 1.0):
            return f"the loss exploded to {loss:.3g} (from {self.loss0:.3g})"
        return ""

    def step(self) -> list[list[float]]:
        """Take one optimiser step; returns the rows logged (the state before it, and the final state)."""
        if self.status.state != "running":
            return []
        k, last = self.step_index, self.config.steps
        rows: list[list[float]] = []
        why = self._diverged()
        if why or should_log(k, last, self.config.log_every):
            rows.append(self.row())
        if why or k == last:
            self._finish(why)
            return rows
        lr = self.lr_at(k)
        theta_grad = None if self._invariant else self._theta_grad()  # before the step moves theta
        try:
            extras = self.optimizer.step(self.grads, lr)
        except FloatingPointError as exc:  # the gradient-flow solver gave up (e.g. stuck on a ReLU kink)
            self.status = RunStatus("failed", k, f"failed at step {k} (t = {self.t:.4g}): {exc}")
            return rows
        self.predictor.update(lr, self.grad_sq, extras, None if self._invariant else theta_grad)
        self.step_index, self.t = k + 1, self.t + lr
        self._evaluate()
        if self.step_index == last:
            rows += self.step()
        return rows

    def _finish(self, why: str) -> None:
        k = self.step_index
        if why:
            advice = step_advice(self.config, self.lr_at(k))[1]
            self.status = RunStatus("diverged", k, f"diverged at step {k} (t = {self.t:.4g}): {why}; {advice}")
        else:
            self.status = RunStatus("finished", k)

    def neuron_table(self) -> dict[str, np.ndarray]:
        """Per hidden unit: layer (1-based), index, incoming and outgoing squared norms, for the balance scatter."""
        from balance.invariants import incoming_sqnorms, outgoing_sqnorms

        views = self._metric_views()
        parts = [(g.layer + 1, incoming_sqnorms(views, g), outgoing_sqnorms(views, g)) for g in self.model.neurons]
        return {
            "layer": np.concatenate([np.full(len(i), h) for h, i, _ in parts]),
            "neuron": np.concatenate([np.arange(len(i)) for _, i, _ in parts]),
            "in_sqnorm": np.concatenate([np.asarray(i, dtype=float) for _, i, _ in parts]),
            "out_sqnorm": np.concatenate([np.asarray(o, dtype=float) for _, _, o in parts]),
        }
