"""One run, step by step: a facade over ``balance.engine.Engine`` with one member (K = 1).

Row k describes the state theta_k *before* step k; a run of N steps gives rows 0 .. N (thinned, see
``should_log``). No threads, no I/O, no clock: the tests step it by hand; runs are driven by ``balance.runs.loop``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from balance.config import RunConfig
from balance.engine import laws
from balance.engine.data import Task
from balance.engine.engine import DENSE_STEPS, DIVERGENCE_FACTOR, DTYPES, Engine, RunStatus, layout_of, should_log
from balance.engine.models import HomogeneousModel
from balance.engine.networks import objective

__all__ = ["DENSE_STEPS", "DIVERGENCE_FACTOR", "DTYPES", "RunStatus", "Trainer", "metric_columns", "should_log"]


def metric_columns(model: HomogeneousModel) -> list[str]:
    """The row layout of ``model`` (``balance.engine.laws.columns``); layer h = 1 is the input side (mf: 1 = V)."""
    return laws.columns(layout_of(model))


class Trainer:
    """Trains ``config`` step by step. ``step()`` returns the rows it logged (0, 1 or 2)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.engine = Engine([config])
        self.columns: list[str] = self.engine.columns
        self.task: Task = self.engine.tasks[0]

    # --- the run's state -------------------------------------------------------------------------------------------

    @property
    def status(self) -> RunStatus:
        return self.engine.status[0]

    @status.setter
    def status(self, value: RunStatus) -> None:  # a driver ending the run (e.g. at its wall-time limit)
        self.engine.status[0] = value

    @property
    def step_index(self) -> int:
        return self.engine.step_index

    @property
    def t(self) -> float:
        return float(self.engine.t[0])

    @property
    def loss(self) -> float:
        """The loss of the last evaluation (a mini-batch run's: its batch's)."""
        return float(self.engine.loss[0])

    @property
    def learning_rate(self) -> float:
        """The base step size; setting it changes the step size from the next step on (the schedule multiplies it)."""
        return float(self.engine.base_lr[0])

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        self.engine.set_lr(0, value)

    def lr_at(self, k: int) -> float:
        return float(self.engine.lr_at(k)[0])

    @property
    def model(self) -> HomogeneousModel:
        """The model module holding the current weights (written back from the engine's coordinates for mf)."""
        module = self.engine.model
        if self.config.model.name == "mf":
            with torch.no_grad():
                for p, w in zip(module.params, self.engine.weights(0)):
                    p.copy_(w)
        return module

    @property
    def params(self) -> list[Tensor]:
        return self.model.params

    @property
    def grads(self) -> list[Tensor]:
        """The current gradient in ``model.params`` layout."""
        return self.engine.gradients(0)

    @property
    def gap0(self) -> np.ndarray:
        return self.engine.gap0[0]

    @property
    def balance0(self) -> list[np.ndarray]:
        return [b[0] for b in self.engine.balance0]

    def _objective(self) -> Tensor:
        """The full-batch objective of the current weights, a function of ``params`` (autograd can differentiate it)."""
        return objective(self.model, self.task)

    # --- stepping --------------------------------------------------------------------------------------------------

    def row(self) -> list[float]:
        """Every metric of the current state, in ``self.columns`` order."""
        return self.engine.rows()[0].tolist()

    def step(self) -> list[list[float]]:
        """Take one optimiser step; returns the rows logged (the state before it, and the final state)."""
        return [r.tolist() for r in self.engine.step().get(0, [])]

    def neuron_table(self) -> dict[str, np.ndarray]:
        """Per hidden unit: layer (1-based), index, incoming and outgoing squared norms, for the balance scatter."""
        return self.engine.neuron_table(0)
