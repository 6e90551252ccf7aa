"""The ``sharpness`` metric: lambda_max of each member's full-batch objective, every ``sharpness_every``-th step.

GD's minima are linearly stable only where lambda_max <= 2 / eta (the ``stability_bound`` column): large steps can
end only at flat minima, and for homogeneous models the flat minima are the balanced ones (for rank-1 MF at a global
minimum lambda_max = ||x||^2 + ||y||^2, smallest when ||x|| = ||y||). Computed by Lanczos on Hessian-vector
products (``balance.engine.sharpness``, float64; exact once the iterations reach the number of parameters),
warm-started from the previous logged step's top eigenvector. Off by default: each value costs up to 60 Hessian-vector
products (a few forward and backward passes each).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch

from balance.engine.networks import objective
from balance.engine.sharpness import hessian_operator, top_eigenpair

if TYPE_CHECKING:
    from balance.engine.engine import Engine


class Sharpness:
    """lambda_max per member at logged steps k with k % every == 0 (and the last step); NaN elsewhere or when off."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.vectors: dict[int, torch.Tensor] = {}  # member -> last top eigenvector (the warm start)
        self._models: dict[int, torch.nn.Module] = {}

    def due(self, k: int, last: int) -> bool:
        return bool(self.every) and (k % self.every == 0 or k == last)

    def values(self, engine: Engine) -> np.ndarray:
        """[K] for the running members of ``engine`` at its current step."""
        out = np.full(len(engine.members), np.nan)
        if not self.due(engine.step_index, engine.steps):
            return out
        for i, member in enumerate(engine.members):
            out[i] = self.member(engine, int(member))
        return out

    def member(self, engine: Engine, member: int) -> float:
        model = self._models.get(member)
        if model is None:  # a float64 copy of the module, loaded with the member's weights at each call
            model = self._models[member] = copy.deepcopy(engine.model).double()
        task = engine.tasks[member]
        task64 = dataclasses.replace(
            task,
            inputs=None if task.inputs is None else task.inputs.double(),
            targets=task.targets if task.targets.dtype == torch.int64 else task.targets.double(),
        )
        with torch.no_grad():
            for p, w in zip(model.params, engine.weights(member)):
                p.copy_(w.reshape(p.shape))
        with torch.enable_grad():
            hvp, n = hessian_operator(objective(model, task64), model.params)
            lam, vector = top_eigenpair(hvp, n, self.vectors.get(member))
        self.vectors[member] = vector.detach()
        return lam
