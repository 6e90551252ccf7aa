"""Registry of seeded tasks: what the network fits, and with which loss.

``lowrank`` is the paper's asymmetric matrix factorisation problem (7),
``min_{U, V} f(U, V) = 1/2 ||U V^T - M*||_F^2``; every other dataset is a sample set ``{(x_i, y_i)}, i = 1..N``
for the homogeneous networks of section 3. Nothing is downloaded: sets are generated from ``DataConfig.seed``
(or read from the user's CSV file), so the same config gives the same tensors bit for bit.

Adding a dataset is one entry in ``DATASETS``; the config, the CLI and the dashboard pick it up by name.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from balance.config import ConfigError, DataConfig
from balance.engine import laws
from balance.files import FileRefused, read_limited

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

LOSSES = ("squared", "logistic", "cross_entropy")  # config.LOSSES without 'auto', which make_task resolves
MAX_CSV_BYTES = 50 * 2**20
MAX_CSV_ROWS = 100_000
MAX_CSV_COLUMNS = 4097  # 4,096 features (config's largest input_dim) and the target
MAX_CSV_CELLS = 10_000_000  # rows x columns, counted before parsing: 80 MB as float64
IMAGE_CLASSES = 4
MAX_CLASSES = 256  # as config's output_dim
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


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Columns of ``x`` ``[N, D]`` to zero mean, unit (population) std; constant columns become 0."""
    # Tested by equality, not std == 0: the mean of equal floats can round, leaving a tiny nonzero std.
    constant = (x == x[:1]).all(dim=0)
    std = torch.where(constant, 1.0, x.std(dim=0, correction=0))
    return torch.where(constant, 0.0, (x - x.mean(dim=0)) / std)


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
    """``[N, 1, s, s]`` images of 4 shape classes at random positions plus pixel noise; labels ``[N]`` int64.

    Lit pixels are 1 on a 0 background, before ``noise * N(0, 1)`` is added to every pixel.
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
    x = x + cfg.noise * _randn(gen, n, s, s)
    return x[:, None], labels


# --- CSV --------------------------------------------------------------------------------------------------------
#
# The file may be anyone's (a dashboard upload): it is read only if it is a regular file under the size cap, its
# columns and rows are counted (and their product capped) before pandas parses anything, and no message ever quotes
# what is in it (column names, values, parser text): columns are named by position, values by line.


def _csv_error(path: Path, why: str) -> ConfigError:
    return ConfigError(f"data.csv_path = {str(path)!r}: {why}")


def _csv_bytes(path: Path) -> bytes:
    """The file's bytes, if it is a readable regular file of at most ``MAX_CSV_BYTES``. One message for every
    refusal, so it never tells whether a path exists, is a folder or is unreadable."""
    try:
        return read_limited(path, MAX_CSV_BYTES, "CSV file")
    except (FileRefused, RuntimeError, ValueError):  # also '~nobody/x' (no such user) and a NUL in the name
        why = f"cannot read it: it is missing, not a regular file, not readable or over {MAX_CSV_BYTES // 2**20} MB"
        raise _csv_error(path, why) from None


def _csv_shape(path: Path, raw: bytes) -> tuple[int, int]:
    """(columns of the header, an upper bound of the data rows), checked against the caps before parsing."""
    try:
        header = next(csv.reader(io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", newline="")), [])
    except UnicodeDecodeError:
        raise _csv_error(path, "not a readable CSV file (not UTF-8 text)") from None
    except csv.Error:  # a field over csv's 128 kB limit, a NUL byte
        raise _csv_error(path, "not a readable CSV file (its header line cannot be read)") from None
    columns = len(header)
    # lines after the header (an upper bound: quoted newlines count too); a file may end its lines with \r only
    rows = max(raw.count(b"\n"), raw.count(b"\r")) + (not raw.endswith((b"\n", b"\r"))) - 1
    if columns > MAX_CSV_COLUMNS:
        raise _csv_error(path, f"the file has {columns:,} columns; at most {MAX_CSV_COLUMNS:,} are read")
    if columns * min(rows, MAX_CSV_ROWS + 1) > MAX_CSV_CELLS:
        raise _csv_error(
            path, f"{columns:,} columns x {rows:,} rows: more than {MAX_CSV_CELLS:,} values, the limit of a CSV file"
        )
    return columns, rows


def _parse_reason(exc: Exception) -> str:
    """Why pandas could not parse the file, in words that quote nothing of it."""
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
    if found:
        return f"line {found[2]} has {found[3]} fields, the header {found[1]}"
    return "its rows do not parse as comma-separated values"


def _csv(cfg: DataConfig, gen: torch.Generator, loss: str, image_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised numeric features ``[N, D]`` and the target column (last unless ``cfg.target``), file order.

    Targets: squared ``[N, 1]`` raw values; logistic ``[N, 1]``, the two distinct values mapped (sorted) to
    -1 and +1; cross_entropy ``[N]`` int64, which must be integer labels 0..C-1. The seed is not used.
    """
    import pandas as pd  # only this dataset needs pandas, and importing it is slow

    path = Path(os.path.expanduser(cfg.csv_path))  # Path.expanduser raises for '~nobody/x'; this leaves it as is
    raw = _csv_bytes(path)
    if not raw.strip():
        raise _csv_error(path, "the file is empty")
    _csv_shape(path, raw)
    try:
        frame = pd.read_csv(io.BytesIO(raw), nrows=MAX_CSV_ROWS + 1)  # one row past the limit is enough to refuse
    except pd.errors.EmptyDataError:
        raise _csv_error(path, "the file is empty") from None
    except (ValueError, OSError) as exc:  # parser errors and undecodable bytes are ValueErrors
        raise _csv_error(path, f"not a readable CSV file ({_parse_reason(exc)})") from None
    if len(frame) < 2:
        raise _csv_error(path, f"the file has {len(frame)} data rows; at least 2 are needed")
    if len(frame) > MAX_CSV_ROWS:
        raise _csv_error(path, f"the file has more than {MAX_CSV_ROWS:,} rows, the limit")
    names = [str(c) for c in frame.columns]
    target = cfg.target or names[-1]
    if target not in names:  # cfg.target is the user's own text, not the file's: it may be quoted
        raise _csv_error(path, f"target column {target!r} not found among the file's {len(names)} columns")
    t = names.index(target)
    features = [i for i in range(len(names)) if i != t]
    if not features:
        raise _csv_error(path, "no feature columns besides the target: the file has one column")
    for i in features:
        column = frame.iloc[:, i]
        if not pd.api.types.is_numeric_dtype(column):
            bad = column.notna() & pd.to_numeric(column, errors="coerce").isna()
            line = f" (line {bad.argmax() + 2})" if bad.any() else ""
            raise _csv_error(path, f"column {i + 1} is not numeric{line}; features must be numbers")
    x = _finite(path, features, torch.tensor(frame.iloc[:, features].to_numpy(dtype="float64")))
    return _standardise(x), _csv_target(path, frame.iloc[:, t], t, loss)


def _finite(path: Path, columns: list[int], x: torch.Tensor) -> torch.Tensor:
    """``x`` ``[N, D]`` unchanged, or a ConfigError naming (by position) the first column holding NaN or inf."""
    bad = ~torch.isfinite(x)
    if bad.any():
        k = int(bad.any(dim=0).nonzero()[0])
        line = int(bad[:, k].nonzero()[0]) + 2  # + header line, + counting from 1
        raise _csv_error(path, f"column {columns[k] + 1} has a missing (NaN) or infinite value at line {line}")
    return x


def _csv_target(path: Path, column: pd.Series, index: int, loss: str) -> torch.Tensor:
    """The target ``column`` (the file's column ``index``, from 0) as the tensor ``loss`` expects (see ``_csv``)."""
    import pandas as pd

    name = f"the target column ({index + 1})"
    if loss == "logistic":
        if column.isna().any():
            raise _csv_error(path, f"{name} has a missing (NaN) value at line {column.isna().argmax() + 2}")
        values = sorted(column.unique())
        if len(values) != 2:
            raise _csv_error(path, f"logistic loss needs exactly 2 distinct values in {name}, found {len(values)}")
        log.info("csv target: %r -> -1, %r -> +1", values[0], values[1])
        return torch.tensor((column == values[1]).to_numpy(dtype="float64") * 2 - 1)[:, None]
    if not pd.api.types.is_numeric_dtype(column):
        raise _csv_error(path, f"{name} is not numeric")
    y = _finite(path, [index], torch.tensor(column.to_numpy(dtype="float64"))[:, None])
    if loss == "squared":
        return y
    y = y[:, 0]
    if (y != y.round()).any() or (y < 0).any() or y.max() < 1:
        raise _csv_error(path, f"cross_entropy needs integer class labels 0..C-1 (C >= 2) in {name}")
    if y.max() >= MAX_CLASSES:  # one logit per class: a stray huge label would make a huge output layer
        raise _csv_error(path, f"cross_entropy allows at most {MAX_CLASSES} classes; {name} has a label of more")
    return y.long()


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
