"""The engine: K >= 1 runs of one shape trained together on stacked weights [K, ...]; a single run is K = 1.

Members share what fixes the computation's shapes (data set and sizes, model family and sizes, activation, bias,
BatchNorm, optimiser, mini-batch size, steps, dtype, thinning: ``engine_key``) and each keeps its own step size,
schedule, momentum, Adam betas, weight decay, initialisation, MF regulariser, run seed and data seed
(``PER_MEMBER``). Member i starts from exactly the weights ``build_model`` draws from its own seed.

Row k describes the state theta_k *before* step k: its loss, norms, gradients g_k, and the predicted drift over steps
0 .. k-1; the columns are ``balance.engine.laws.columns`` of the model's layout, computed by
``balance.engine.metrics.COMPUTE``. A run of N steps gives rows 0 .. N (thinned, see ``should_log``). A member whose
loss explodes is dropped from the stack (its rows so far and its status are kept); the others go on.

No I/O, threads or clocks: a driver (``balance.runs.loop``) steps it, stops it or one member (``stop``) and changes
a member's step size between steps (``set_lr``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from balance.config import RunConfig
from balance.engine import laws
from balance.engine.curvature import Sharpness
from balance.engine.data import make_task
from balance.engine.grouping import PER_MEMBER, engine_key, layout_of, why_not_together
from balance.engine.identities import UnitLaw, unit_law_applies
from balance.engine.metrics import COMPUTE, Snapshot
from balance.engine.mf import Full, Subspace
from balance.engine.models import MODELS, HomogeneousModel, build_model
from balance.engine.networks import Networks
from balance.engine.optim import HYPER, RULES, Flow, Members, Optimizer, inner
from balance.engine.sharpness import step_advice
from balance.engine.status import DENSE_STEPS, RunStatus, should_log
from balance.engine.theory import GapLaw, pair_matrix, param_scale

__all__ = ["DENSE_STEPS", "DIVERGENCE_FACTOR", "DTYPES", "PER_MEMBER", "Engine", "RunStatus", "engine_key",
           "layout_of", "should_log", "why_not_together"]  # fmt: skip

DTYPES = {"float32": torch.float32, "float64": torch.float64}
DIVERGENCE_FACTOR = 1e8  # a loss this many times its start (or 1) counts as exploding


class Engine:
    """Trains ``configs`` (equal ``engine_key``) together; ``step()`` returns {config index: rows logged}."""

    def __init__(self, configs: Sequence[RunConfig]) -> None:
        why = why_not_together(configs)
        if why:
            raise ValueError(f"these configs cannot train together: {why}")
        self.configs = list(configs)
        first = configs[0]
        self.dtype = DTYPES[first.dtype]
        family = first.model.name
        tasks = {}
        for c in configs:
            if c.data not in tasks:
                tasks[c.data] = make_task(c.data, self.dtype, image_input=MODELS[family].image_input)
        self.tasks = [tasks[c.data] for c in configs]
        gen = torch.Generator
        models = [build_model(c, t, gen().manual_seed(c.seed), self.dtype) for c, t in zip(configs, self.tasks)]
        self.model: HomogeneousModel = models[0]  # the layout, and member 0's module when K = 1
        self.layout = layout_of(self.model)
        self.metrics = [name for name, m in laws.METRICS.items() if self.layout.indices(m)]
        self.columns = laws.columns(self.layout)
        self.P = pair_matrix(self.model)  # [L-1, n_params]
        self.scale = param_scale(self.model, first.optim.layer_lrs)  # [n_params] step-size multipliers m_p
        self.P_gap = self.P / self.scale  # the (eta-weighted) gap G = sq @ P_gap.T
        self.weight_index = np.array([layer.weight for layer in self.model.layers])
        self.bias_index = np.array([layer.bias for layer in self.model.layers if layer.bias is not None], dtype=int)
        self._slots = self._row_slots()
        o = [c.optim for c in configs]
        values = {name: np.array([float(getattr(x, name)) for x in o]) for name in HYPER}
        values["regularizer"] = np.array([c.model.regularizer for c in configs])
        self.hyper = Members(values)
        self.base_lr = np.array([x.lr for x in o])
        self.constant_lr = all(x.schedule == "constant" for x in o)
        self.name = first.optim.name
        rule = RULES[self.name]
        self.problem = self._problem(family, models, rule.linear)
        self.invariant = not self.hyper["regularizer"].any()
        if rule.update is None:
            flow = Flow(self.params, first.optim.rtol, self.problem.gradient, self.scale)
            self.optimizer: Optimizer | Flow = flow
        else:
            self.optimizer = Optimizer(self.name, self.params, self.hyper, self.scale)
        self.steps, self.log_every = first.steps, first.log_every
        self.members = np.arange(len(configs))  # stack row -> index into configs
        self.status = [RunStatus("running", 0) for _ in configs]
        self.step_index = 0
        self.t = np.zeros(len(configs))
        self._evaluate()
        self.loss0 = self.row_loss()
        self._limit = DIVERGENCE_FACTOR * np.maximum(self.loss0, 1.0)
        snap = Snapshot(self)
        self.gap0 = snap.gaps
        self.balance0, self.matrix0 = snap.balances, snap.matrices
        self.law = GapLaw(self.name, self.P, self.gap0, not laws.why_no_law(first), self.scale)
        self.curvature = Sharpness(first.sharpness_every)
        self.units = UnitLaw(self.model, self.balance0, unit_law_applies(first), self.name == "flow")

    def _problem(self, family: str, models: list[HomogeneousModel], linear: bool) -> Subspace | Full | Networks:
        first = self.configs[0]
        if family != "mf":
            seeds = [c.seed for c in self.configs]
            noise = self.hyper["label_noise"] if self.name == "label_noise" else None
            return Networks(family, models, self.tasks, seeds, first.optim.batch_size, noise)
        Vt, U = (torch.stack([m.params[i].detach() for m in models]) for i in range(2))
        shared = all(t is self.tasks[0] for t in self.tasks)
        targets = self.tasks[0].targets if shared else torch.stack([t.targets for t in self.tasks])
        kind = Subspace if linear else Full
        return kind(Vt, U, targets, first.data.rank, self.hyper)

    # --- state --------------------------------------------------------------------------------------------------

    @property
    def params(self) -> list[Tensor]:
        """The stacked weights [K, ...] in the engine's coordinates (MF under GD / momentum: the subspace's)."""
        return self.problem.params

    @property
    def running(self) -> bool:
        return any(self.status[m].state == "running" for m in self.members)

    def _evaluate(self) -> None:
        """Loss [K], gradients [K, ...] (this step's mini-batch, if any) and ||g_p||^2 [K, n_params]."""
        self.loss, self.grads, self.grad_sq = self.problem.evaluate()

    def row_loss(self) -> np.ndarray:
        return self.problem.row_loss(self.loss)

    def lr_at(self, k: int) -> np.ndarray:
        """eta_k of every running member, [K]."""
        if self.constant_lr:
            return self.base_lr
        cfgs = [self.configs[i].optim for i in self.members]
        return self.base_lr * np.array([laws.SCHEDULES[c.schedule](c, k) for c in cfgs])

    def set_lr(self, member: int, lr: float) -> None:
        """Change config ``member``'s base step size from the next step on (a live change; the schedule multiplies
        it)."""
        (where,) = np.flatnonzero(self.members == member)
        self.base_lr = self.base_lr.copy()  # a new array: the optimiser caches the old one's tensors by identity
        self.base_lr[where] = lr

    def position(self, member: int) -> int:
        """The stack row of config ``member``."""
        return int(np.flatnonzero(self.members == member)[0])

    def weights(self, member: int) -> list[Tensor]:
        """Config ``member``'s weights in the model's layout and coordinates (``model.params`` order)."""
        return self.problem.weights(self.position(member))

    def gradients(self, member: int) -> list[Tensor]:
        """Config ``member``'s current gradient in the model's layout and coordinates."""
        return self.problem.full_grads(self.position(member), self.grads)

    # --- rows -----------------------------------------------------------------------------------------------------

    def _row_slots(self) -> list[tuple[str, int | slice]]:
        """Where each metric's values go in a row: a column (scalars) or a slice of columns."""
        slots: list[tuple[str, int | slice]] = []
        start = 0
        for name in self.metrics:
            n = len(self.layout.indices(laws.METRICS[name]))
            slots.append((name, start if laws.METRICS[name].scope == "scalar" else slice(start, start + n)))
            start += n
        return slots

    def rows(self) -> np.ndarray:
        """Every metric of every running member's current state, [K, len(columns)] in ``columns`` order."""
        snap = Snapshot(self)
        out = np.empty((len(self.members), len(self.columns)))
        with np.errstate(all="ignore"):  # a diverging member's last row may hold inf / nan
            for name, slot in self._slots:
                out[:, slot] = COMPUTE[name](snap)
        return out

    def neuron_table(self, member: int = 0) -> dict[str, np.ndarray]:
        """Per hidden unit of config ``member``: layer (1-based), index, and every neuron-scope metric (incoming and
        outgoing squared norms), for the balance scatter."""
        return self.neuron_tables()[member]

    def neuron_tables(self) -> dict[int, dict[str, np.ndarray]]:
        """``neuron_table`` of every running member, {config index: table}, from one snapshot of the stack."""
        snap = Snapshot(self)
        counts = [g.count for g in self.model.neurons]
        layer = np.concatenate([np.full(n, g.layer + 1) for n, g in zip(counts, self.model.neurons)])
        neuron = np.concatenate([np.arange(n) for n in counts])
        scoped = {  # [K, sum n_h] each: every hidden layer's units side by side
            name: np.concatenate([np.asarray(a, dtype=float) for a in COMPUTE[name](snap)], axis=1)
            for name, m in laws.METRICS.items()
            if m.scope == "neuron"
        }
        return {
            int(member): {"layer": layer, "neuron": neuron, **{name: v[i] for name, v in scoped.items()}}
            for i, member in enumerate(self.members)
        }

    # --- stepping -------------------------------------------------------------------------------------------------

    def _diverged(self) -> list[str]:
        """Per member: a non-finite loss, or one above 10^8 max(loss_0, 1) ('' where healthy)."""
        with np.errstate(invalid="ignore"):
            if (self.loss <= self._limit).all():  # False for nan
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

    def step(self) -> dict[int, list[np.ndarray]]:
        """One step of every running member; returns {config index: rows logged} (the state before the step, and
        after the last step the final state)."""
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
        if k == last or all(why):
            return out
        if any(why):
            keep = np.array([not w for w in why])
            self._keep(keep)
            lr = lr[keep]
        self._update(k, lr)
        if self.step_index == last and self.running:
            for member, rows in self.step().items():
                out.setdefault(member, []).extend(rows)
        return out

    def _update(self, k: int, lr: np.ndarray) -> None:
        theta_grad = None
        if not self.invariant:  # Delta<theta, g> before the update moves theta; 0 where the objective is invariant
            theta_grad = inner(self.params, self.grads)
            theta_grad[self.hyper["regularizer"] == 0] = 0.0
        grads = [g.detach().numpy() for g in self.grads]
        next_logged = should_log(k + 1, self.steps, self.log_every)
        reg = self.hyper["regularizer"] != 0
        self.units.update(lr, self.hyper["weight_decay"], self.problem.arrays, grads, reg, next_logged)
        try:
            extras = self.optimizer.step(self.grads, lr, lambda: self.problem.evaluate()[1])
        except FloatingPointError as exc:  # the gradient-flow solver gave up (e.g. stuck on a ReLU kink)
            for i, member in enumerate(self.members):
                self.status[member] = RunStatus("failed", k, f"failed at step {k} (t = {self.t[i]:.4g}): {exc}")
            return
        self.law.update(lr, self.hyper, self.grad_sq, extras, theta_grad)
        self.step_index, self.t = k + 1, self.t + lr
        self._evaluate()

    def stop(self, message: str, member: int | None = None, state: str = "stopped") -> dict[int, list[np.ndarray]]:
        """Stop every running member here (e.g. at a wall-time limit), or only config ``member``: log its current
        state, status ``state`` ('stopped', or 'interrupted'). A member stopped alone leaves the stack; the others go
        on exactly as they would have."""
        if not self.running:
            return {}
        rows = self.rows()
        out = {}
        for i, m in enumerate(self.members):
            if self.status[m].state == "running" and member in (None, m):
                out[int(m)] = [rows[i]]
                self.status[m] = RunStatus(state, self.step_index, message)
        if member is not None and out and self.running:
            self._keep(self.members != member)
        return out

    def _keep(self, keep: np.ndarray) -> None:
        """Drop the members not in ``keep`` (diverged) from every stacked tensor and array."""
        index = torch.from_numpy(np.flatnonzero(keep))
        self.members, self.base_lr, self.t = self.members[keep], self.base_lr[keep], self.t[keep]
        self.loss, self.loss0, self.grad_sq = self.loss[keep], self.loss0[keep], self.grad_sq[keep]
        self.gap0, self._limit = self.gap0[keep], self._limit[keep]
        self.grads = [g.index_select(0, index) for g in self.grads]
        self.hyper = self.problem.hyper = self.hyper.select(keep)
        self.problem.select(index)
        self.optimizer.select(index, self.params, self.hyper)  # type: ignore[union-attr]
        self.law.select(keep)
        self.units.select(keep)
        self.balance0 = [b[keep] for b in self.balance0]
        self.matrix0 = {h: D[keep] for h, D in self.matrix0.items()}
