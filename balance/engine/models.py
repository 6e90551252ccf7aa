"""Registry of the homogeneous models of Du, Hu and Lee (2018), plus the tanh control.

Every model is an ``nn.Module`` with one protocol:

- ``params``: its parameters in a fixed order (weights are laid out ``[n_out, n_in, *rest]``);
- ``layers``: the weight layers, input side first, each naming its weight and bias by index into ``params``;
- ``neurons``: for every hidden layer, the parameters whose dim 0 indexes its units (incoming: row of W_h,
  filter of conv h, b_h[i]; or BatchNorm's gamma_i, beta_i) and the next weight whose dim 1 indexes them
  (outgoing: column of W_{h+1}, input channel of the next conv, the head's block of a flattened channel).

So per-neuron quantities are reshapes and sums over whole tensors (see ``balance.engine.invariants``), never loops
over neurons. Matrix factorisation is the depth-2 linear case: layer 1 is V^T (r x d2), layer 2 is U (d1 x r),
prediction U V^T, so the hidden units are the r columns shared by U and V.

One definition serves one run and K stacked runs: with ``torch.func.functional_call`` the weights may be stacked
[K, ...]. The MLP's forward broadcasts over that leading dimension (``ModelEntry.stacks``); the CNN's is mapped over
it with ``torch.vmap`` by the engine. BatchNorm uses the batch's statistics and keeps no running ones (the models
only train), so it needs no buffers under ``vmap``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from balance.config import ModelConfig, RunConfig
from balance.engine import laws
from balance.engine.data import Task
from balance.engine.laws import ACTIVATIONS


@dataclass(frozen=True)
class Layer:
    name: str
    weight: int  # index into params; shape [n_out, n_in, *rest]
    bias: int | None  # index into params; shape [n_out]


@dataclass(frozen=True)
class Neurons:
    """The hidden units between weight layer ``layer`` and ``layer + 1`` (0-based)."""

    layer: int
    count: int
    incoming: tuple[int, ...]  # params whose dim 0 indexes the units
    outgoing: int  # the next weight; its dim 1 indexes the units
    linear: bool  # identity activation, no BatchNorm: the matrix invariant applies


class HomogeneousModel(nn.Module):
    """Base class: subclasses fill ``params``, ``layers``, ``neurons`` and implement ``forward``."""

    layers: tuple[Layer, ...]
    neurons: tuple[Neurons, ...]
    homogeneous: bool = True

    @property
    def params(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def weights(self) -> list[Tensor]:
        ps = self.params
        return [ps[layer.weight] for layer in self.layers]


# phi(z) by name (the names and their law-relevant facts are ``balance.engine.laws.ACTIVATIONS``); the argument is
# the negative slope, used by leaky_relu only.
ACTIVATION_FUNCTIONS: dict[str, Callable[[float], Callable[[Tensor], Tensor]]] = {
    "relu": lambda slope: F.relu,
    "leaky_relu": lambda slope: lambda z: F.leaky_relu(z, slope),
    "linear": lambda slope: lambda z: z,
    "tanh": lambda slope: torch.tanh,
}


# 2x2 pooling by the config's name (``model.pooling``): both positively homogeneous, so the laws hold.
POOLS: dict[str, Callable[[Tensor, int], Tensor]] = {"avg": F.avg_pool2d, "max": F.max_pool2d}


def _activation(name: str, slope: float) -> Callable[[Tensor], Tensor]:
    return ACTIVATION_FUNCTIONS[name](slope)


def _affine(z: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
    """z W^T + b: z [..., N, n_in], W [n_out, n_in] or stacked [K, n_out, n_in], b [(K,) n_out] -> [..., N, n_out]."""
    if W.ndim == 2:
        return F.linear(z, W, b)
    out = torch.matmul(z, W.mT)
    return out if b is None else out + b.unsqueeze(-2)


def _batch_norm(z: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> Tensor:
    """Per unit over the samples (dim -2), batch statistics (biased variance), no running statistics."""
    if gamma.ndim == 1 and z.ndim == 2:
        return F.batch_norm(z, None, None, gamma, beta, training=True, eps=eps)
    mean, var = z.mean(-2, keepdim=True), z.var(-2, correction=0, keepdim=True)
    return (z - mean) * torch.rsqrt(var + eps) * gamma.unsqueeze(-2) + beta.unsqueeze(-2)


class MatrixFactorisation(HomogeneousModel):
    """f(U, V) = U V^T with U [d1, r], V [d2, r]; stored as layer 1 = V^T [r, d2] and layer 2 = U [d1, r]."""

    def __init__(self, d1: int, d2: int, r: int, regularizer: float = 0.0) -> None:
        super().__init__()
        self.W1 = nn.Parameter(torch.zeros(r, d2))  # V^T
        self.W2 = nn.Parameter(torch.zeros(d1, r))  # U
        self.regularizer = regularizer
        self.layers = (Layer("V", 0, None), Layer("U", 1, None))
        self.neurons = (Neurons(0, r, (0,), 1, True),)

    @property
    def U(self) -> Tensor:
        return self.W2

    @property
    def V(self) -> Tensor:
        return self.W1.T

    def forward(self, x: Tensor | None = None) -> Tensor:
        """U V^T, shape [d1, d2] (the input is ignored: the target matrix is the whole data set). The engine trains
        it in closed form (``balance.engine.mf``), tested against autograd on this forward and ``penalty``."""
        return self.W2 @ self.W1

    def penalty(self) -> Tensor:
        """lambda/8 ||U^T U - V^T V||_F^2, the balancing regulariser of the paper's problem (9)."""
        D = self.W2.T @ self.W2 - self.W1 @ self.W1.T
        return self.regularizer / 8 * (D * D).sum()


class MLP(HomogeneousModel):
    """x -> W_L phi(BN(W_{L-1} ... phi(BN(W_1 x + b_1)) ...)) (+ b_L); inputs flattened to [N, d]."""

    def __init__(
        self,
        input_dim: int,
        widths: tuple[int, ...],
        output_dim: int,
        activation: str = "relu",
        negative_slope: float = 0.1,
        bias: bool = False,
        batch_norm: bool = False,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        dims = (input_dim, *widths, output_dim)
        self.bn_eps = bn_eps
        self.input_dim = input_dim
        self.homogeneous = ACTIVATIONS[activation].homogeneous
        self.phi = _activation(activation, negative_slope)
        self.linears = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in itertools.pairwise(dims))
        norms = (nn.BatchNorm1d(w, eps=bn_eps, track_running_stats=False) for w in widths)
        self.norms = nn.ModuleList(norms) if batch_norm else None
        index = {id(p): i for i, p in enumerate(self.parameters())}
        self.layers = tuple(
            Layer(f"W{h + 1}", index[id(lin.weight)], index[id(lin.bias)] if bias else None)
            for h, lin in enumerate(self.linears)
        )
        neurons = []
        for h, width in enumerate(widths):
            if batch_norm:
                incoming = (index[id(self.norms[h].weight)], index[id(self.norms[h].bias)])
            else:
                incoming = tuple(i for i in (self.layers[h].weight, self.layers[h].bias) if i is not None)
            linear = activation == "linear" and not batch_norm
            neurons.append(Neurons(h, width, incoming, self.layers[h + 1].weight, linear))
        self.neurons = tuple(neurons)

    def forward(self, x: Tensor) -> Tensor:
        """x [N, *input_shape] -> [N, output_dim]; flat inputs [..., N, input_dim] and stacked weights [K, ...]
        broadcast: [K, N, input_dim] or [N, input_dim] against [K, ...] weights give [K, N, output_dim]."""
        z = x if x.shape[-1] == self.input_dim else x.reshape(x.shape[0], -1)
        *hidden, last = self.linears  # (slicing a ModuleList builds a new module: ~25 us a step)
        norms = [None] * len(hidden) if self.norms is None else list(self.norms)
        for lin, bn in zip(hidden, norms):
            z = _affine(z, lin.weight, lin.bias)
            if bn is not None:
                z = _batch_norm(z, bn.weight, bn.bias, self.bn_eps)
            z = self.phi(z)
        return _affine(z, last.weight, last.bias)


class CNN(HomogeneousModel):
    """x [N, C, s, s] -> (conv 3x3 -> phi -> pool 2) x (depth-1) -> flatten -> linear head -> [N, out].

    Average pooling is linear and max pooling positively homogeneous, so neither breaks the invariant.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        channels: tuple[int, ...],
        output_dim: int,
        activation: str = "relu",
        negative_slope: float = 0.1,
        bias: bool = False,
        pooling: str = "avg",
    ) -> None:
        super().__init__()
        c_in, side = input_shape[0], input_shape[-1]
        self.pool = POOLS[pooling]
        self.homogeneous = ACTIVATIONS[activation].homogeneous
        self.phi = _activation(activation, negative_slope)
        self.convs = nn.ModuleList()
        self.pools: list[bool] = []
        for c_out in channels:
            self.convs.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias))
            self.pools.append(side >= 2)
            side = side // 2 if side >= 2 else side
            c_in = c_out
        self.head = nn.Linear(c_in * side * side, output_dim, bias=bias)
        index = {id(p): i for i, p in enumerate(self.parameters())}
        modules = [*self.convs, self.head]
        self.layers = tuple(
            Layer(name, index[id(m.weight)], index[id(m.bias)] if bias else None)
            for name, m in zip([*(f"conv{i + 1}" for i in range(len(channels))), "head"], modules)
        )
        self.neurons = tuple(
            Neurons(
                h,
                c,
                tuple(i for i in (self.layers[h].weight, self.layers[h].bias) if i is not None),
                self.layers[h + 1].weight,
                False,
            )
            for h, c in enumerate(channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        z = x
        for conv, pool in zip(self.convs, self.pools):
            z = self.phi(conv(z))
            if pool:
                z = self.pool(z, 2)
        return self.head(z.flatten(1))  # channel-major flatten: the head's columns group by channel


def _mf(cfg: ModelConfig, task: Task) -> HomogeneousModel:
    d1, d2 = task.targets.shape
    return MatrixFactorisation(d1, d2, cfg.rank, cfg.regularizer)


def _linear(cfg: ModelConfig, task: Task) -> HomogeneousModel:
    dim = math.prod(task.input_shape)
    return MLP(dim, cfg.hidden_widths(), task.output_dim, "linear", bias=cfg.bias)


def _mlp(cfg: ModelConfig, task: Task) -> HomogeneousModel:
    dim = math.prod(task.input_shape)
    widths = cfg.hidden_widths()
    return MLP(dim, widths, task.output_dim, cfg.activation, cfg.negative_slope, cfg.bias, cfg.batch_norm, cfg.bn_eps)


def _cnn(cfg: ModelConfig, task: Task) -> HomogeneousModel:
    shape = task.input_shape if len(task.input_shape) == 3 else (1, *task.input_shape)
    return CNN(shape, cfg.hidden_widths(), task.output_dim, cfg.activation, cfg.negative_slope, cfg.bias, cfg.pooling)


@dataclass(frozen=True)
class ModelEntry:
    """The torch side of a model family; its help and the inputs it needs are ``balance.engine.laws.MODELS``."""

    name: str
    build: Callable[[ModelConfig, Task], HomogeneousModel]
    stacks: bool = False  # the forward takes stacked weights [K, ...] itself (else the engine maps it with vmap)

    @property
    def help(self) -> str:
        return laws.MODELS[self.name].help

    @property
    def image_input(self) -> bool:
        """Asks the data for [N, C, s, s] inputs."""
        return laws.MODELS[self.name].image_input


MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in (
        ModelEntry("mf", _mf, stacks=True),
        ModelEntry("linear", _linear, stacks=True),
        ModelEntry("mlp", _mlp, stacks=True),
        ModelEntry("cnn", _cnn),
    )
}


def build_model(config: RunConfig, task: Task, generator: torch.Generator, dtype: torch.dtype) -> HomogeneousModel:
    """Build ``config.model.name`` for ``task`` and initialise it (see ``initialise``)."""
    cfg = config.model
    if cfg.name == "mf" and cfg.rank == 0:  # 0 means: factors of the target's rank
        cfg = dataclasses.replace(cfg, rank=config.data.rank)
    model = MODELS[cfg.name].build(cfg, task).to(dtype)
    initialise(model, cfg, generator)
    return model


@torch.no_grad()
def initialise(model: HomogeneousModel, cfg: ModelConfig, generator: torch.Generator) -> None:
    """Weights of layer h: entries with standard deviation sigma_h = init_scale * layer_scales[h].

    gaussian: N(0, sigma_h^2); uniform: U(-sqrt(3) sigma_h, sqrt(3) sigma_h) (same variance); orthogonal: a
    (semi-)orthogonal matrix times sigma_h sqrt(max(n_out, fan_in)), whose entries then have variance sigma_h^2.
    Biases start at 0 (``bias_init`` 'zero') or are drawn like their layer's weights, N(0, sigma_h^2) or
    U(-sqrt(3) sigma_h, sqrt(3) sigma_h) (orthogonal: Gaussian), after every weight ('weights'); BatchNorm starts at
    gamma = 1, beta = 0. Drawn in float64 so float32 runs start from the same numbers rounded.
    """
    params = model.params
    for h, layer in enumerate(model.layers):
        W = params[layer.weight]
        sigma = cfg.init_scale * (cfg.layer_scales[h] if cfg.layer_scales else 1.0)
        rows, cols = W.shape[0], W[0].numel()
        if cfg.init == "gaussian":
            values = torch.randn(rows, cols, generator=generator, dtype=torch.float64) * sigma
        elif cfg.init == "uniform":
            values = (torch.rand(rows, cols, generator=generator, dtype=torch.float64) * 2 - 1) * (sigma * math.sqrt(3))
        else:
            big, small = max(rows, cols), min(rows, cols)
            A = torch.randn(big, small, generator=generator, dtype=torch.float64)
            Q, R = torch.linalg.qr(A)
            Q = Q * torch.sign(torch.diagonal(R))  # unique, seed-determined factor
            values = (Q if rows >= cols else Q.T) * (sigma * math.sqrt(big))
        W.copy_(values.reshape(W.shape))
        if layer.bias is not None:
            params[layer.bias].zero_()
    if cfg.bias_init == "weights":  # after the weights, so a zero-bias run and this one share their weights
        for h, layer in enumerate(model.layers):
            if layer.bias is not None:
                params[layer.bias].copy_(_draw(cfg, params[layer.bias].shape, h, generator))


def _draw(cfg: ModelConfig, shape: torch.Size, h: int, generator: torch.Generator) -> Tensor:
    """Entries of standard deviation sigma_h from the weights' distribution (orthogonal: Gaussian), float64."""
    sigma = cfg.init_scale * (cfg.layer_scales[h] if cfg.layer_scales else 1.0)
    if cfg.init == "uniform":
        return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * (sigma * math.sqrt(3))
    return torch.randn(shape, generator=generator, dtype=torch.float64) * sigma
