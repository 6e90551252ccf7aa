"""Networks (deep linear, MLP, CNN) of K members: losses and gradients by autograd on the one model definition.

K = 1 runs the model module itself (its parameters are the member's weights: ``params`` are [1, ...] views of them).
K > 1 runs the same model definition on stacked weights [K, ...]: an MLP's forward broadcasts over the member
dimension (``ModelEntry.stacks``), so a copy of the module holds the stacked tensors in place of its parameters (what
``torch.func.functional_call`` does on every call, without its ~0.1 ms a call); a CNN's forward is mapped over the
members with ``torch.vmap`` of ``functional_call``. The members' losses are summed and differentiated once (their
weights are disjoint, so each member's gradient is its own loss's). No backward pass is written by hand.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call

from balance.engine.data import Task
from balance.engine.models import MODELS, HomogeneousModel


def member_losses(f: Tensor, y: Tensor, kind: str) -> Tensor:
    """Each member's loss [K] of outputs f [K, N, out] against targets y (shared [N, ...] or [K, N, ...]), the
    definitions of ``balance.engine.data.loss_value`` (their oracle in the tests), per member:

    squared 1/(2N) sum_i ||f_i - y_i||^2; logistic 1/N sum_i log(1 + exp(-y_i f_i)); cross-entropy
    1/N sum_i -log softmax(f_i)_{y_i} (y int64 class indices)."""
    if kind == "squared":
        r = f - y
        return 0.5 * (r * r).sum((-2, -1)) / f.shape[-2]
    if kind == "logistic":
        return torch.logaddexp(torch.zeros_like(f), -y * f).mean((-2, -1))
    if kind == "cross_entropy":
        logp = torch.log_softmax(f, -1)
        return -logp.gather(-1, y.expand(f.shape[:-1]).unsqueeze(-1)).squeeze(-1).mean(-1)
    raise ValueError(f"unknown loss {kind!r}")


def sum_squares(tensors: Sequence[Tensor]) -> np.ndarray:
    """||x_p||^2 per member and tensor of stacked tensors [K, ...], [K, n], summed in float64 (in NumPy: for these
    sizes a NumPy reduction costs a fraction of a PyTorch op)."""
    K = len(tensors[0])
    out = np.empty((K, len(tensors)))
    for j, t in enumerate(tensors):
        v = t.detach().numpy().reshape(K, -1).astype(np.float64, copy=False)
        out[:, j] = v[0] @ v[0] if K == 1 else np.einsum("ki,ki->k", v, v)  # one run: BLAS's dot
    return out


def objective(model: HomogeneousModel, task: Task) -> Tensor:
    """The scalar training objective of one unstacked model on its task (what the steps descend; for sharpness)."""
    if task.inputs is None:
        R = model() - task.targets
        loss = 0.5 * (R * R).sum()
        return loss + model.penalty() if getattr(model, "regularizer", 0.0) else loss
    return member_losses(model(task.inputs)[None], task.targets, task.loss)[0]


class Batches:
    """Mini-batches of ``size`` sample indices per member, [K, size]: a fresh permutation per epoch from the member's
    generator (seeded with its run seed + 1); the remainder of an epoch starts the next one."""

    def __init__(self, seeds: Sequence[int], samples: int, size: int) -> None:
        self.generators = [torch.Generator().manual_seed(s + 1) for s in seeds]
        self.pending = [torch.empty(0, dtype=torch.long) for _ in seeds]
        self.samples, self.size = samples, size

    def draw(self) -> Tensor:
        out = []
        for i, gen in enumerate(self.generators):
            if self.pending[i].numel() < self.size:
                self.pending[i] = torch.cat([self.pending[i], torch.randperm(self.samples, generator=gen)])
            out.append(self.pending[i][: self.size])
            self.pending[i] = self.pending[i][self.size :]
        return torch.stack(out)

    def select(self, keep: np.ndarray) -> None:
        self.generators = [g for g, k in zip(self.generators, keep) if k]
        self.pending = [p for p, k in zip(self.pending, keep) if k]


class LabelNoise:
    """Fresh Gaussian label noise sigma_k xi, xi ~ N(0, 1), for every target at every evaluation, per member from its
    own generator (seeded with its run seed + 2): label-noise GD (Blanc et al. 2020; Ziyin et al. 2023)."""

    def __init__(self, seeds: Sequence[int], sigma: np.ndarray) -> None:
        self.generators = [torch.Generator().manual_seed(s + 2) for s in seeds]
        self.sigma = np.asarray(sigma, dtype=float)

    def add(self, y: Tensor) -> Tensor:
        """y [N, out] (shared) or [K, N, out] -> y + sigma xi, [K, N, out]."""
        shape = y.shape[-2:]
        xi = torch.stack([torch.randn(shape, generator=g, dtype=torch.float64) for g in self.generators]).to(y.dtype)
        return y + torch.tensor(self.sigma, dtype=y.dtype).reshape(-1, 1, 1) * xi

    def select(self, keep: np.ndarray) -> None:
        self.generators = [g for g, k in zip(self.generators, keep) if k]
        self.sigma = self.sigma[keep]


class Networks:
    """The members' weights (``params``, stacked [K, ...] in ``model.params`` order), data and loss."""

    def __init__(
        self,
        family: str,
        models: Sequence[HomogeneousModel],
        tasks: Sequence[Task],
        seeds: Sequence[int],
        batch: int,
        label_noise: np.ndarray | None = None,
    ) -> None:
        self.model = models[0]
        self.names = [name for name, _ in self.model.named_parameters()]
        self.stacks = MODELS[family].stacks
        self.kind = tasks[0].loss
        self.single = len(models) == 1
        if self.single:  # the module's own parameters: an update of params[i] [1, ...] updates it
            self.leaves = self.model.params  # (a property that walks the modules: read it once)
            self.params = [p.detach().unsqueeze(0) for p in self.leaves]
        else:
            self.params = [torch.stack([m.params[i].detach() for m in models]).requires_grad_(True)
                           for i in range(len(self.names))]  # fmt: skip
        self.arrays = [p.detach().numpy() for p in self.params]  # views of the weights' memory (updates are in place)
        self.stacked_model = self._holding(self.params) if self.stacks and not self.single else None
        flat = self.stacks  # an MLP takes flat samples [N, d]: flatten once, not every step
        prepare = (lambda x: x.reshape(len(x), -1)) if flat else (lambda x: x)
        self.shared = all(t is tasks[0] for t in tasks)
        if self.shared:
            self.inputs, self.targets = prepare(tasks[0].inputs), tasks[0].targets
        else:
            self.inputs = torch.stack([prepare(t.inputs) for t in tasks])
            self.targets = torch.stack([t.targets for t in tasks])
        self.batches = Batches(seeds, tasks[0].samples, batch) if batch else None
        self.noise = LabelNoise(seeds, label_noise) if label_noise is not None else None

    def _holding(self, params: list[Tensor]) -> HomogeneousModel:
        """A copy of the model whose parameters are the stacked tensors ``params`` (plain attributes)."""
        module = copy.deepcopy(self.model) if getattr(self, "stacked_model", None) is None else self.stacked_model
        owners = dict(module.named_modules())
        for name, tensor in zip(self.names, params):
            path, _, attr = name.rpartition(".")
            owner = owners[path]
            if attr in owner._parameters:
                del owner._parameters[attr]
            setattr(owner, attr, tensor)
        return module

    def _outputs(self, x: Tensor, stacked: bool) -> Tensor:
        """f [K, N, out] for inputs x: [N, ...] for every member, or per member [K, N, ...] (``stacked``)."""
        if self.single:  # f [1, N, out] as a view: member_losses reduces over the last two dims
            return self.model(x[0] if stacked else x).unsqueeze(0)
        if self.stacked_model is not None:
            return self.stacked_model(x)
        weights = dict(zip(self.names, self.params))
        call = lambda w, x: functional_call(self.model, w, (x,))  # noqa: E731
        return torch.vmap(call, in_dims=(0, 0 if stacked else None))(weights, x)

    def _data(self, index: Tensor | None) -> tuple[Tensor, Tensor, bool]:
        if index is None:
            return self.inputs, self.targets, not self.shared
        if self.shared:
            return self.inputs[index], self.targets[index], True
        rows = torch.arange(len(index))[:, None]
        return self.inputs[rows, index], self.targets[rows, index], True

    def evaluate(self) -> tuple[np.ndarray, list[Tensor], np.ndarray]:
        """Each member's loss [K] on this step's data (its mini-batch, if any), gradients in ``params`` order, and
        ||g_p||^2 [K, n_params] summed in float64."""
        x, y, stacked = self._data(None if self.batches is None else self.batches.draw())
        if self.noise is not None:  # this step's noisy labels; the logged loss is the clean one (``row_loss``)
            y = self.noise.add(y)
        with torch.enable_grad():
            losses = member_losses(self._outputs(x, stacked), y, self.kind)
            if self.single:
                grads = [g.unsqueeze(0) for g in torch.autograd.grad(losses.sum(), self.leaves)]
            else:  # z W^T's backward gives the stacked W's gradient as a transposed view: updates want it dense
                grads = [g.contiguous() for g in torch.autograd.grad(losses.sum(), self.params)]
        return losses.detach().numpy().astype(float), grads, sum_squares(grads)

    def gradient(self) -> list[Tensor]:
        return self.evaluate()[1]

    def row_loss(self, loss: np.ndarray) -> np.ndarray:
        """The loss on the whole training set (a mini-batch run's step loss is its batch's)."""
        if self.batches is None and self.noise is None:
            return loss
        x, y, stacked = self._data(None)
        with torch.no_grad():
            return member_losses(self._outputs(x, stacked), y, self.kind).numpy().astype(float)

    def weights(self, i: int) -> list[Tensor]:
        return [p[i].detach() for p in self.params]

    def full_grads(self, i: int, grads: list[Tensor]) -> list[Tensor]:
        return [g[i] for g in grads]

    def select(self, index: Tensor) -> None:
        keep = np.zeros(len(self.params[0]), dtype=bool)
        keep[index.numpy()] = True
        self.params = [p.detach().index_select(0, index).requires_grad_(True) for p in self.params]
        self.arrays = [p.detach().numpy() for p in self.params]
        if self.stacked_model is not None:
            self._holding(self.params)
        if not self.shared:
            self.inputs, self.targets = self.inputs.index_select(0, index), self.targets.index_select(0, index)
        if self.batches is not None:
            self.batches.select(keep)
        if self.noise is not None:
            self.noise.select(keep)
