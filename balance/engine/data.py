"""Registry of seeded tasks: what the network fits, and with which loss.

``lowrank`` is the paper's asymmetric matrix factorisation problem (7),
``min_{U, V} f(U, V) = 1/2 ||U V^T - M*||_F^2``; every other dataset is a sample set ``{(x_i, y_i)}, i = 1..N``
for the homogeneous networks of section 3. Nothing is downloaded: sets are generated from ``DataConfig.seed``
(or read from the user's CSV file), so the same config gives the same tensors bit for bit.

Adding a dataset is one entry in ``DATASETS``; the config, the CLI and the dashboard pick it up by name.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from balance.config import ConfigError, DataConfig
from balance.engine import laws
from balance.engine.tabular import MAX_CSV_BYTES, _csv, _standardise

__all__ = ["DATASETS", "MAX_CSV_BYTES", "Dataset", "Task", "loss_value", "make_task"]

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

LOSSES = ("squared", "logistic", "cross_entropy")  # config.LOSSES without 'auto', which make_task resolves
IMAGE_CLASSES = 4
_F64 = torch.float64

# build(cfg, generator, resolved loss, image_input) -> (inputs or None, targets), all float64 or int64 on the CPU.
Builder = Callable[[DataConfig, torch.Generator, str, bool], tuple[torch.Tensor | None, torch.Tensor]]


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value, so compare tasks by identity
class Task:
    """A target and its loss, ready for a model.

    - ``inputs``: ``[N, *input_shape]``; ``None`` for lowrank, whose "model" is the product ``U V^T``.
    - ``targets``: lowrank ``M*`` ``[d1, d2]``; squared ``[N, out]`` float; logistic ``[N, 1]`` float in
      ``{-1, +1}``; cross_entropy ``[N]`` int64 class indices ``0..C-1``.
    - ``loss``: ``'squared' | 'logistic' | 'cross_entropy'``, never ``'auto'``.
    - ``input_shape``: per-sample shape, e.g. ``(2,)``, ``(10,)``, ``(1, 8, 8)``; lowrank ``(d2,)``.
    - ``output_dim``: lowrank ``d1``; squared ``out``; logistic 1; cross_entropy ``C``.
    """

    name: str
    inputs: torch.Tensor | None
    targets: torch.Tensor
    loss: str
    input_shape: tuple[int, ...]
    output_dim: int

    @property
    def samples(self) -> int:
        """N, the number of samples (lowrank: d2, the columns of M*)."""
        return int(self.targets.shape[1] if self.inputs is None else self.inputs.shape[0])


@dataclass(frozen=True)
class Dataset:
    """The torch side of a dataset: how to build it. Its help, losses and whether it gives images are
    ``balance.engine.laws.DATASETS``."""

    name: str
    build: Builder

    @property
    def info(self) -> laws.DataSet:
        return laws.DATASETS[self.name]

    @property
    def help(self) -> str:
        return self.info.help

    @property
    def default_loss(self) -> str:
        return self.info.default_loss

    @property
    def losses(self) -> tuple[str, ...]:
        return self.info.losses

    @property
    def images(self) -> bool:
        return self.info.images


def make_task(cfg: DataConfig, dtype: torch.dtype = torch.float64, image_input: bool = False) -> Task:
    """Build the task of ``cfg``; ``image_input=True`` asks for ``[N, 1, s, s]`` inputs (the CNN).

    All randomness comes from ``torch.Generator().manual_seed(cfg.seed)``, drawn in float64 and cast once to
    ``dtype`` at the end, so float32 and float64 runs of one config hold the same numbers up to rounding.
    Raises ``ConfigError`` for a loss the dataset does not support and for unusable CSV files.
    """
    dataset = DATASETS.get(cfg.name)
    if dataset is None:
        raise ConfigError(f"data.name = {cfg.name!r}: not one of {', '.join(DATASETS)}")
    loss = dataset.default_loss if cfg.loss == "auto" else cfg.loss
    if loss not in dataset.losses:
        raise ConfigError(f"data.loss = {cfg.loss!r}: the {cfg.name} dataset allows {' or '.join(dataset.losses)}")
    if image_input and not dataset.images:
        images = ", ".join(k for k, d in DATASETS.items() if d.images)
        raise ConfigError(f"data.name = {cfg.name!r}: a model taking images needs one of the datasets {images}")
    x, y = dataset.build(cfg, torch.Generator().manual_seed(cfg.seed), loss, image_input)
    x = None if x is None else x.to(dtype)
    y = y if y.dtype == torch.int64 else y.to(dtype)
    if x is None:
        input_shape, output_dim = (int(y.shape[1]),), int(y.shape[0])
    else:
        input_shape = tuple(int(n) for n in x.shape[1:])
        output_dim = int(y.max()) + 1 if loss == "cross_entropy" else int(y.shape[1])
    return Task(cfg.name, x, y, loss, input_shape, output_dim)


def loss_value(pred: torch.Tensor, targets: torch.Tensor, loss: str, task_name: str = "") -> torch.Tensor:
    """The scalar loss of predictions ``pred`` against ``targets`` (shapes as in ``Task``).

    - lowrank (``task_name == 'lowrank'``): ``1/2 ||pred - M*||_F^2``, a sum as in the paper's (7); pred = U V^T.
    - squared: ``1/(2N) sum_i ||f(x_i) - y_i||^2`` (mean over samples of the sum over outputs).
    - logistic: ``1/N sum_i log(1 + exp(-y_i f(x_i)))``, f ``[N, 1]``, y in {-1, +1}.
    - cross_entropy: ``1/N sum_i -log softmax(f(x_i))_{y_i}``, f ``[N, C]`` logits, y ``[N]`` int64.
    """
    if loss == "cross_entropy":
        if pred.ndim != 2 or targets.shape != pred.shape[:1]:
            raise ValueError(f"cross_entropy: logits {tuple(pred.shape)} do not match labels {tuple(targets.shape)}")
        return F.cross_entropy(pred, targets)
    # Checked rather than broadcast: [N, 1] against [N] would silently give an N x N loss.
    if pred.shape != targets.shape:
        raise ValueError(f"{loss}: prediction {tuple(pred.shape)} does not match target {tuple(targets.shape)}")
    if loss == "squared":
        r = pred - targets
        total = 0.5 * (r * r).sum()
        return total if task_name == "lowrank" else total / pred.shape[0]
    if loss == "logistic":
        # logaddexp(0, z) = log(1 + e^z) without overflow for large z nor log1p round-off for very negative z.
        return torch.logaddexp(torch.zeros_like(pred), -targets * pred).mean()
    raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")


# --- generators -------------------------------------------------------------------------------------------------


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=_F64)


def _rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=gen, dtype=_F64)


def _orthonormal(d: int, r: int, gen: torch.Generator) -> torch.Tensor:
    """``[d, r]`` with orthonormal columns, Haar distributed: Q of the QR of a Gaussian matrix.

    Columns are multiplied by sign(diag R) so Q does not depend on the LAPACK's sign convention.
    """
    Q, R = torch.linalg.qr(_randn(gen, d, r))
    sign = torch.sign(torch.diagonal(R))
    return Q * torch.where(sign == 0, 1.0, sign)


def _lowrank(cfg: DataConfig, gen: torch.Generator, loss: str, image_input: bool) -> tuple[None, torch.Tensor]:
    """``M* = A diag(s) B^T`` ``[d1, d2]``: A ``[d1, r]``, B ``[d2, r]`` orthonormal, s default (r, ..., 1)."""
    s = torch.tensor(cfg.singular_values or [float(k) for k in range(cfg.rank, 0, -1)], dtype=_F64)
    A = _orthonormal(cfg.d1, cfg.rank, gen)
    B = _orthonormal(cfg.d2, cfg.rank, gen)
    return None, (A * s) @ B.T


def _teacher(cfg: DataConfig, gen: torch.Generator, loss: str, image_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = W2 relu(W1 x) + noise e``: x ~ N(0, I) ``[N, D]``, W1 ``[h, D]`` ~ N(0, 1/D), W2 ``[out, h]`` ~ N(0, 1/h).

    With ``image_input`` x is ``[N, 1, s, s]`` and the teacher reads it flattened (D = s^2; input_dim unused).
    """
    shape = (1, cfg.image_size, cfg.image_size) if image_input else (cfg.input_dim,)
    D, h, n = math.prod(shape), cfg.teacher_width, cfg.samples
    # The teacher is drawn first so that it does not change when only the number of samples does.
    W1 = _randn(gen, h, D) / math.sqrt(D)
    W2 = _randn(gen, cfg.output_dim, h) / math.sqrt(h)
    x = _randn(gen, n, D)
    y = torch.relu(x @ W1.T) @ W2.T + cfg.noise * _randn(gen, n, cfg.output_dim)
    return x.reshape(n, *shape), y


def _moons(y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    t = math.pi * _rand(gen, len(y))
    upper = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
    return torch.where(y[:, None] < 0, upper, lower)


def _circles(y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    theta = 2 * math.pi * _rand(gen, len(y))
    radius = torch.where(y < 0, 1.0, 0.5)  # class -1 outside, +1 inside
    return radius[:, None] * torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)


def _spiral(y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    u = _rand(gen, len(y))
    radius = 0.15 + 0.85 * u  # starting off the origin keeps the two arms apart at their centre
    theta = 3 * math.pi * u + math.pi * (y > 0)  # the second arm is the first turned by half a turn
    return radius[:, None] * torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)


def _xor(y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    magnitude = 0.1 + 0.9 * _rand(gen, len(y), 2)  # the margin keeps noise-free points off the axes
    first = torch.where(_rand(gen, len(y)) < 0.5, -1.0, 1.0)
    return magnitude * torch.stack([first, first * y], dim=1)  # sign(x1 x2) = y


def _planar(shape: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Builder:
    """Builder of a balanced 2-D set: labels y in {-1, +1} ``[N, 1]``, points x ``[N, 2]``.

    ``x = standardise(shape(y)) + noise * N(0, I)``: the jitter is added after standardising, so ``noise`` is a
    standard deviation in the same unit-scale coordinates for every set.
    """

    def build(cfg: DataConfig, gen: torch.Generator, loss: str, image_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
        n = cfg.samples
        y = torch.where(torch.arange(n) < n // 2, -1.0, 1.0).to(_F64)  # class sizes differ by at most one
        y = y[torch.randperm(n, generator=gen)]  # mixed order, so any prefix of the set holds both classes
        x = _standardise(shape(y, gen)) + cfg.noise * _randn(gen, n, 2)
        return x, y[:, None]

    return build


def _shape_pixels(L: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(rows, cols) of the lit pixels of each class in an ``L x L`` box: -, |, square outline, X."""
    r, c = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
    edge = (r == 0) | (r == L - 1) | (c == 0) | (c == L - 1)
    masks = [r == 0, c == 0, edge, (r == c) | (r + c == L - 1)]
    return [(r[m], c[m]) for m in masks]


def _images(cfg: DataConfig, gen: torch.Generator, loss: str, image_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, C, s, s]`` images (C = ``channels``) of 4 shape classes at random positions plus pixel noise; labels
    ``[N]`` int64.

    Lit pixels are 1 on a 0 background (C = 3: each image's shape has its own colour, every channel U(0.25, 1)),
    before ``noise * N(0, 1)`` is added to every pixel of every channel. C = 1 draws exactly the numbers it always did.
    """
    n, s = cfg.samples, cfg.image_size
    labels = (torch.arange(n) % IMAGE_CLASSES)[torch.randperm(n, generator=gen)]  # balanced, mixed order
    x = torch.zeros(n, s, s, dtype=_F64)
    for k, (rows, cols) in enumerate(_shape_pixels(max(3, s // 2))):
        idx = (labels == k).nonzero().squeeze(1)
        h, w = int(rows.max()) + 1, int(cols.max()) + 1  # a bar is one pixel thick, so it can sit on any line
        top = torch.randint(0, s - h + 1, (len(idx), 1), generator=gen)
        left = torch.randint(0, s - w + 1, (len(idx), 1), generator=gen)
        x[idx[:, None], top + rows, left + cols] = 1.0
    x = x[:, None]
    if cfg.channels > 1:  # a colour per image, drawn after the positions so grey sets keep their numbers
        x = x * (0.25 + 0.75 * _rand(gen, n, cfg.channels, 1, 1))
    return x + cfg.noise * _randn(gen, n, cfg.channels, s, s), labels


DATASETS: dict[str, Dataset] = {
    e.name: e
    for e in (
        Dataset("lowrank", _lowrank),
        Dataset("teacher", _teacher),
        Dataset("moons", _planar(_moons)),
        Dataset("circles", _planar(_circles)),
        Dataset("spiral", _planar(_spiral)),
        Dataset("xor", _planar(_xor)),
        Dataset("images", _images),
        Dataset("csv", _csv),
    )
}
