"""The ``csv`` dataset: the user's file of numeric feature columns and a target column, read safely (caps checked
before anything is parsed; messages never quote the file's contents)."""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from balance.config import ConfigError, DataConfig
from balance.files import FileRefused, read_limited

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

MAX_CSV_BYTES = 50 * 2**20
MAX_CSV_ROWS = 100_000
MAX_CSV_COLUMNS = 4097  # 4,096 features (config's largest input_dim) and the target
MAX_CSV_CELLS = 10_000_000  # rows x columns, counted before parsing: 80 MB as float64
MAX_CLASSES = 256  # as config's output_dim
_F64 = torch.float64


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Columns of ``x`` ``[N, D]`` to zero mean, unit (population) std; constant columns become 0."""
    # Tested by equality, not std == 0: the mean of equal floats can round, leaving a tiny nonzero std.
    constant = (x == x[:1]).all(dim=0)
    std = torch.where(constant, 1.0, x.std(dim=0, correction=0))
    return torch.where(constant, 0.0, (x - x.mean(dim=0)) / std)


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
