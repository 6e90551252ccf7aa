"""``w = balance.watch(model, optimizer, name=...)``: the conservation laws of your own training loop, live.

The watch attaches to the optimiser's step hooks (``register_step_pre_hook`` / ``register_step_post_hook``) and
to the model's first forward (which gives the audit its example input), so the loop needs no other change. Row k
is the state theta_k before step k (as the built-in trainer's): read in the pre-hook of step k, together with that
step's gradient and the loss the loop reported with ``w.loss(loss)`` (optional). The post-hook advances every
law's exact prediction (``balance.watch.predict``). Rows are kept at the engine's row budget (``should_log``: every
``every``-th step for the first 10^4 * every steps, then thinner, about 4,500 a decade) and written to the run
store about once a second, so the dashboard's Explore page shows the run live (``?run=<id>``, origin ``watched``).

Columns (``balance.engine.laws``): step, t (sum of the step sizes), lr, loss; per weight block h (``layers``):
sqnorm_h, grad_norm_h; per law j (``laws``): gap_j (the trace of its quantity, as the audit writes it), gap_drift_j,
pred_gap_drift_j (NaN where measured only), and for matrix laws matrix_inv_j, matrix_drift_j; neuron_drift_max and
neuron_drift_mean over the per-unit values of every law.
"""

from __future__ import annotations

import atexit
import logging
import math
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from balance.config import DataConfig, ModelConfig, OptimConfig, RunConfig
from balance.engine.engine import should_log
from balance.engine.laws import column
from balance.engine.symmetries import SYMMETRIES, TORCH_OPTIMIZERS
from balance.runs.loop import frame as rows_frame
from balance.runs.store import RunStore, StoreError
from balance.watch.check import Audit, audit
from balance.watch.predict import Predictor

log = logging.getLogger(__name__)

FLUSH_S = 1.0  # rows reach the store about this often (the dashboard polls twice a second)
NEURONS_S = 5.0  # a per-unit snapshot for Explore's neuron chart at most this often
PENDING_ROWS = 100_000  # rows kept while the store refuses them (locked, full); beyond, the oldest unsent go


class Watch:
    """A watched training loop. ``frame()`` the metrics so far, ``show()`` live charts in Jupyter, ``close()``."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        name: str = "",
        *,
        every: int = 10,
        example_input: Any = None,
        report: Audit | None = None,
        store: RunStore | str | Path | bool | None = None,
        matrices: bool = False,
    ) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every = {every!r}: log every n-th step, n a whole number >= 1")
        self.model, self.optimizer, self.name, self.every = model, optimizer, name, every
        self.matrices = matrices
        self.audit: Audit | None = report
        self.predictor: Predictor | None = None
        self.step = 0
        self.t = 0.0
        self.rows: list[list[float]] = []
        self.columns: list[str] = []
        self.layers: list[str] = []
        self.run_id = ""
        self.closed = False
        self._loss: Any = None
        self._pending: list[list[float]] = []
        self._flushed = self._neurons_at = time.monotonic()  # the first flush a second in, not at step 1
        self._lr = math.nan
        self._warned = False
        self._owns_store = store is None or isinstance(store, (str, Path))
        self.store: RunStore | None = (
            None if store is False else store if isinstance(store, RunStore) else RunStore(store or None)
        )
        self._views: list[Any] = []  # notebook widgets fed by every flush (balance.watch.notebook)
        self._handles = [
            optimizer.register_step_pre_hook(_call(self, "_before")),
            optimizer.register_step_post_hook(_call(self, "_after")),
        ]
        if report is None and example_input is not None:
            self.audit = audit(model, example_input)
        if self.audit is None:
            self._handles.append(model.register_forward_pre_hook(_call(self, "_first_forward"), with_kwargs=True))
        else:
            self._start()
        atexit.register(_close_at_exit, weakref.ref(self))

    # --- set-up ---------------------------------------------------------------------------------------------------

    def _first_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.audit is not None:
            return
        if kwargs:  # the graph is traced from positional inputs only
            if not self._warned:
                self._warned = True
                log.warning("balance.watch: the model is called with keyword arguments; pass example_input= to watch")
            return
        with torch.enable_grad():
            self.audit = audit(module, args)
        self._start()

    def _start(self) -> None:
        assert self.audit is not None
        laws = [c.law for c in self.audit.laws]
        self.predictor = Predictor(laws, self.model, self.optimizer, matrices=self.matrices)
        self._units0 = self.predictor.units(self.predictor.measure())
        self.layers = list(dict.fromkeys(p for law in laws for p in law.params if not p.endswith("bias")))
        self.columns = self._columns()
        self._lr = self._current_lr()
        if self.store is not None:
            config = stand_in(self.optimizer, self.every)
            self.run_id = self.store.create_run(config, self.columns, name=self.name, origin="watched")
            self.store.claim_run(self.run_id, self.columns)
            self.store.record_event(self.run_id, 0, "model", type(self.model).__name__)
            self.store.set_status(self.run_id, "running", 0, self.describe())
            self.store.save_neurons(self.run_id, 0, self.neuron_table())  # Explore's starting points
        log.info("balance.watch: %s", self.describe())

    def _columns(self) -> list[str]:
        assert self.predictor is not None
        names = ["step", "t", "lr", "loss"]
        names += [column("sqnorm", h) for h in range(1, len(self.layers) + 1)]
        names += [column("grad_norm", h) for h in range(1, len(self.layers) + 1)]
        for metric in ("gap", "gap_drift", "pred_gap_drift"):
            names += [column(metric, j) for j in range(1, len(self.predictor.tracked) + 1)]
        matrix = [j for j, t in enumerate(self.predictor.tracked, 1) if t.law.matrix]
        for metric in ("matrix_inv", "matrix_drift"):
            names += [column(metric, j) for j in matrix]
        if self.predictor.tracked:
            names += ["neuron_drift_max", "neuron_drift_mean"]
        return names

    def describe(self) -> str:
        """A short paragraph: what is watched, each law (pair j) and layer h by its index; the dashboard's status
        line shows it, so the charts' "layers j-(j+1)" and "layer h" can be read."""
        assert self.predictor is not None
        opt = type(self.optimizer).__name__
        parts = [f"watched: {type(self.model).__name__} with {opt} (loss as the loop reported it)."]
        laws = [
            f"{j} = {t.law.name} [{t.law.kind}]" + ("" if t.rule else " (measured only)")
            for j, t in enumerate(self.predictor.tracked, 1)
        ]
        parts.append("Pairs are laws: " + "; ".join(laws) + "." if laws else "No law found (balance.audit says why).")
        if self.layers:
            parts.append("Layers: " + "; ".join(f"{h} = {n}" for h, n in enumerate(self.layers, 1)) + ".")
        reasons = sorted({t.reason for t in self.predictor.tracked if t.rule is None})
        if reasons:
            parts.append("Measured only: " + "; ".join(reasons) + ".")
        return " ".join(parts)

    def _current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # --- the hooks ------------------------------------------------------------------------------------------------

    def loss(self, value: Any) -> None:
        """The loss of the step about to be taken (a tensor or a number); read only when its row is logged."""
        self._loss = value

    def _before(self) -> None:
        if self.predictor is None or self.closed:
            return
        lr = self._current_lr()
        if lr != self._lr and self.store is not None:
            self._safe(self.store.record_event, self.run_id, self.step, "lr", lr)
        self._lr = lr
        if should_log(self.step, -1, self.every):
            self.rows.append(self._row(with_grads=True))
            self._pending.append(self.rows[-1])

    def _after(self) -> None:
        if self.predictor is None or self.closed:
            return
        self.predictor.advance(self.step)
        self.t += self._lr
        self.step += 1
        self._loss = None
        now = time.monotonic()
        if now - self._flushed >= FLUSH_S:
            self.flush(now)

    @torch.no_grad()
    def _row(self, with_grads: bool) -> list[float]:
        assert self.predictor is not None
        p = self.predictor
        params = p.params
        values: list[torch.Tensor] = []
        if self.layers:  # one fused norm each for the weights and the gradients
            weights = [params[name].detach() for name in self.layers]
            values += [n.double().square() for n in torch._foreach_norm(weights)]
            grads = [params[name].grad for name in self.layers] if with_grads else []
            if grads and all(g is not None for g in grads):
                values += [n.double() for n in torch._foreach_norm(grads)]  # type: ignore[arg-type]
            else:
                nan = torch.tensor(math.nan, dtype=torch.float64)
                values += [g.double().norm() if g is not None else nan for g in grads or [None] * len(weights)]
        now, gaps, drifts, inv, mdrift = p.measure(), [], [], [], []
        for t, Q in zip(p.tracked, now):
            assert t.Q0 is not None
            gaps.append(_trace(Q, t.law.matrix))
            drifts.append(_trace(Q - t.Q0, t.law.matrix))
            if t.law.matrix:
                inv.append(Q.norm())
                mdrift.append((Q - t.Q0).norm())
        preds = list(p.traces() - torch.stack([_trace(t.Q0, t.law.matrix) for t in p.tracked])) if p.tracked else []
        unit_stats = []
        if p.tracked:
            change = torch.cat([(u - u0).abs() for u, u0 in zip(p.units(now), self._units0)])
            unit_stats = [change.max(), change.mean()]
        flat = [*values, *gaps, *drifts, *preds, *inv, *mdrift, *unit_stats]
        numbers = torch.stack([v.reshape(()).double().cpu() for v in flat]).tolist() if flat else []
        loss = _number(self._loss)
        return [float(self.step), self.t, self._lr, loss, *numbers]

    # --- the store ------------------------------------------------------------------------------------------------

    def _safe(self, write: Any, *args: Any) -> bool:
        try:
            write(*args)
        except StoreError as exc:  # never stop the user's training for the dashboard: keep the rows, try later
            log.warning("balance.watch: the run store refused a write (%s); rows are kept and retried", exc)
            return False
        return True

    def flush(self, now: float | None = None) -> None:
        """Write the rows logged since the last flush (and, every few seconds, a per-unit snapshot) to the store,
        and update any live notebook view."""
        self._flushed = time.monotonic() if now is None else now
        if self.store is not None and self.run_id:
            if self._pending and self._safe(self.store.append_rows, self.run_id, self._pending):
                self._pending = []
            self._pending = self._pending[-PENDING_ROWS:]
            message = self.describe()
            if self.predictor is not None and self.predictor.problem:
                message += f" Note: {self.predictor.problem}."
            self._safe(self.store.set_status, self.run_id, "running", self.step, message)
            if self._flushed - self._neurons_at >= NEURONS_S:
                self._neurons_at = self._flushed
                self._safe(self.store.save_neurons, self.run_id, self.step, self.neuron_table())
        for view in self._views:
            view.update()

    def neuron_table(self) -> dict[str, np.ndarray]:
        """Per unit of every law: layer (the law's index j), neuron, in_sqnorm (incoming side), out_sqnorm (the
        outgoing side, times k for a unit of degree k), so in - out is the unit's conserved value."""
        assert self.predictor is not None
        layer, neuron, ins, outs = [], [], [], []
        with torch.no_grad():
            for j, t in enumerate(self.predictor.tracked, 1):
                sides = [0.0, 0.0]
                for term in t.law.terms:
                    rows = term.rowsq(self.predictor.params[term.param]).reshape(-1).double().cpu().numpy()
                    sides[term.coef < 0] = sides[term.coef < 0] + abs(term.coef) * rows
                n = t.law.groups * t.law.units
                ins.append(np.broadcast_to(sides[0], (n,)))
                outs.append(np.broadcast_to(sides[1], (n,)))
                layer.append(np.full(n, j))
                neuron.append(np.arange(n))
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
        return {"layer": cat(layer), "neuron": cat(neuron), "in_sqnorm": cat(ins), "out_sqnorm": cat(outs)}

    # --- reading and ending ---------------------------------------------------------------------------------------

    def frame(self) -> pd.DataFrame:
        """Every logged row as a DataFrame (``step`` int64, the rest float64), in the columns described above."""
        if not self.columns:
            return pd.DataFrame({"step": np.zeros(0, dtype=np.int64)})
        return rows_frame(self.columns, self.rows)

    def laws(self) -> pd.DataFrame:
        """One row per law j: its kind, where, what it conserves, whether it is predicted (or why not)."""
        tracked = self.predictor.tracked if self.predictor is not None else []
        return pd.DataFrame(
            [
                {"law": j, "kind": t.law.kind, "where": t.law.name, "conserved": SYMMETRIES[t.law.kind].quantity,
                 "prediction": t.rule or "", "measured_only": t.reason}
                for j, t in enumerate(tracked, 1)
            ],
            columns=["law", "kind", "where", "conserved", "prediction", "measured_only"],
        )  # fmt: skip

    def show(self) -> Any:
        """Live charts in Jupyter (plotly FigureWidgets updated in place while the loop runs); returns the widget."""
        from balance.watch.notebook import LiveView

        view = LiveView(self)
        self._views.append(view)
        return view.display()

    def url(self, base: str = "http://127.0.0.1:8501") -> str:
        """The Explore page's address of this run (the dashboard must use the same run store)."""
        return f"{base.rstrip('/')}/?run={self.run_id}" if self.run_id else ""

    def close(self, state: str = "finished", message: str = "") -> None:
        """Log the final state as a last row, write everything, mark the run ``state`` and detach the hooks."""
        if self.closed:
            return
        if self.predictor is not None and (not self.rows or self.rows[-1][0] != self.step):
            self._loss = None
            self.rows.append(self._row(with_grads=False))
            self._pending.append(self.rows[-1])
        self.flush()
        self.closed = True
        for handle in self._handles:
            handle.remove()
        if self.store is not None and self.run_id:
            if self.predictor is not None:
                self._safe(self.store.save_neurons, self.run_id, self.step, self.neuron_table())
            text = message or self.describe()
            self._safe(self.store.set_status, self.run_id, state, self.step, text)
        if self.store is not None and self._owns_store:
            self.store.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        failed = kind is not None and not issubclass(kind, KeyboardInterrupt)
        state = "failed" if failed else "stopped" if kind is not None else "finished"
        self.close(state, f"{type(exc).__name__}: {exc}" if failed else "")


def _trace(Q: torch.Tensor, matrix: bool) -> torch.Tensor:
    return Q.diagonal(dim1=-2, dim2=-1).sum() if matrix else Q.sum()


def _number(value: Any) -> float:
    if value is None:
        return math.nan
    try:
        return float(value.detach()) if torch.is_tensor(value) else float(value)
    except (TypeError, ValueError, RuntimeError):
        return math.nan


def _call(watch: Watch, method: str) -> Any:
    """A hook that holds the watch weakly (a forgotten watch does not keep a model alive) and ignores its args."""
    ref = weakref.ref(watch)

    def hook(*args: Any, **kwargs: Any) -> None:
        w = ref()
        if w is not None:
            getattr(w, method)(*args) if method == "_first_forward" else getattr(w, method)()

    return hook


def _close_at_exit(ref: Any) -> None:
    w = ref()
    if w is not None and not w.closed:
        w.close("finished", "")


def stand_in(optimizer: torch.optim.Optimizer, every: int) -> RunConfig:
    """The run's config: a stand-in holding only what the optimiser's first param group says (its registry name,
    step size, momentum, weight decay); the model and data are the user's own and described in the run's status."""
    group = optimizer.param_groups[0]
    entry = TORCH_OPTIMIZERS.get(type(optimizer).__name__)
    beta = float(group.get("momentum", 0.0) or 0.0)
    if entry is not None and entry.law == "sgd":
        name = "nesterov" if group.get("nesterov") and beta else "momentum" if beta else "gd"
    elif type(optimizer).__name__ in ("Adam", "AdamW"):
        name, beta = "adam", float(group.get("betas", (0.9, 0.999))[0])
    else:
        name = "gd"
    clip = lambda v, lo, hi: min(max(float(v), lo), hi)  # noqa: E731
    optim = OptimConfig(
        name=name,
        lr=clip(group["lr"], 1e-8, 100.0),
        momentum=clip(beta or 0.9, 0.0, 0.9999),
        weight_decay=clip(group.get("weight_decay", 0.0) or 0.0, 0.0, 10.0),
    )
    # model and data: a generic ReLU MLP on teacher data, never matrix factorisation, whose two-layer names (V, U)
    # the dashboard would put on a watched run's many layers
    model, data = ModelConfig(name="mlp", activation="relu"), DataConfig(name="teacher")
    return RunConfig(data=data, model=model, optim=optim, steps=0, log_every=min(every, 10**6))


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    name: str = "",
    *,
    every: int = 10,
    example_input: Any = None,
    report: Audit | None = None,
    store: RunStore | str | Path | bool | None = None,
    matrices: bool = False,
) -> Watch:
    """Watch the conservation laws of ``model`` trained by ``optimizer`` (see ``Watch``): one line before the loop.

    ``every``: log every n-th step (then thinner past 10^4 * n steps); ``example_input``: audit now rather than at
    the first forward; ``report``: an ``Audit`` already made; ``store``: a ``RunStore``, a folder, or False to keep
    the rows in memory only (default: the run store of ``$BALANCE_HOME``); ``matrices``: also predict every matrix
    law (attention heads, linear pairs) as a whole matrix, not only its trace (``Watch.predictor.tracked[j].Qm``).
    """
    return Watch(
        model, optimizer, name, every=every, example_input=example_input, report=report, store=store, matrices=matrices
    )
