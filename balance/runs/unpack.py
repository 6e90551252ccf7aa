"""Reading a run archive's members without letting the file decide how much memory or time it takes.

``balance.runs.archive`` says what an archive holds and imports one; this module holds the checks (see its
docstring): the regular file, member names, methods and sizes before decompression, bounded copies spooled to
unnamed files, Parquet footers and schemas checked and the decoded size capped as a product before any column is
decoded, events and per-neuron snapshots validated. Every refusal is a ``StoreError`` made by ``Refuse``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from balance.config import ConfigError, RunConfig
from balance.engine.status import ACTIVE, STATES
from balance.files import FileRefused, check_regular
from balance.runs.record import changes_from_events, versions
from balance.runs.store import NEURON_BYTES, NEURON_SNAPSHOTS, StoreError, kept_steps

FORMAT, VERSION = "balance-run", 1
LIMITS = {
    "run.json": 1 << 20,
    "metrics.parquet": 256 << 20,
    "events.json": 16 << 20,
    "neurons.parquet": 256 << 20,
    "stamp.json": 64 << 10,  # who wrote it (balance.runs.stamp): for the reader, never read back
}
MAX_DECODED = {"metrics.parquet": 128 << 20, "neurons.parquet": 128 << 20}  # rows x columns x 8 bytes
MAX_FOOTER = 8 << 20  # a Parquet footer (schema and row-group metadata) of at most this many bytes
MAX_ROW_GROUPS = 10_000  # each is one read: a file of empty row groups must not take minutes
MAX_FILE = 600 << 20
MAX_ROWS = 2_000_000
MAX_COLUMNS = 2_000
MAX_EVENTS = 100_000
MAX_NEURON_COLUMNS = 16
FINITE = ("step", "t", "lr")  # metric columns that are never NaN or infinite (the others may be, as trained)
IMPORT_SECONDS = 120.0  # import_in_worker: time limit
IMPORT_MEMORY = 2 << 30  # import_in_worker: address space the import may add to the worker's after its imports
SPOOL_BYTES = 8 << 20  # a member larger than this is spooled to disk, not held in memory
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")


class Refuse:
    """Makes the errors of one import, each naming the file as the user knows it."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __call__(self, why: str) -> StoreError:
        return StoreError(f"{self.label}: refused: {' '.join(why.split())}", "invalid")  # one line, whatever it quotes

    def unpacking(self, exc: OSError, folder: Path) -> StoreError:
        kind = "full" if exc.errno == errno.ENOSPC else "io"
        return StoreError(f"{self.label}: cannot import it: no room to unpack it in {folder} ({exc.strerror})", kind)


def label(name: object) -> str:
    """A file's name for a message: one line, at most 200 characters."""
    text = "".join(c if c.isprintable() else "?" for c in str(name))
    return text if len(text) <= 200 else text[:199] + "…"


@contextlib.contextmanager
def open_regular(path: Path, refuse: Refuse) -> Iterator[IO[bytes]]:
    """The archive opened for reading, if it is a regular file within ``MAX_FILE``; never blocks on a FIFO."""
    try:
        check_regular(path, MAX_FILE, "archive")
    except FileRefused as exc:
        why = str(exc).removeprefix(f"archive {path}: ")
        raise refuse("cannot read it (not found)" if why == "not found" else why) from None
    try:
        fd = os.open(Path(path).expanduser(), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise refuse(f"cannot read it ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())  # what is read is what was checked, even if the path changed since
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE:
            raise refuse(f"not a regular file of at most {MAX_FILE >> 20} MiB")
        yield f


@contextlib.contextmanager
def members(f: IO[bytes], refuse: Refuse, spool: Path) -> Iterator[dict[str, IO[bytes]]]:
    """Each member as a file positioned at its start, checked and copied out with bounded reads."""
    out: dict[str, IO[bytes]] = {}
    try:
        try:
            with zipfile.ZipFile(f) as zf:
                for info in _checked_infos(zf, refuse):
                    out[info.filename] = _copy(zf, info, refuse, spool)
        except (StoreError, MemoryError):
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError, OSError,
                RuntimeError, zlib.error, struct.error, OverflowError, KeyError, IndexError) as exc:  # fmt: skip
            raise refuse(f"not a valid zip archive ({str(exc)[:120]})") from None
        yield out
    finally:
        for member in out.values():
            member.close()


def _checked_infos(zf: zipfile.ZipFile, refuse: Refuse) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    names = [i.filename for i in infos]
    for name in names:
        if name not in LIMITS:
            raise refuse(f"unexpected member {label(name)[:80]!r}; a run file holds only {', '.join(LIMITS)}")
    if len(set(names)) != len(names):
        raise refuse("a member appears twice")
    if "run.json" not in names or "metrics.parquet" not in names:
        raise refuse("run.json or metrics.parquet is missing; is this a balance run file?")
    for info in infos:
        limit = LIMITS[info.filename]
        if info.flag_bits & 0x1:
            raise refuse(f"{info.filename} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise refuse(f"{info.filename} uses an unsupported compression method")
        if info.file_size > limit:
            raise refuse(f"{info.filename} would be {info.file_size} bytes; the limit is {limit}")
    return infos


def _copy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, refuse: Refuse, spool: Path) -> IO[bytes]:
    """A member copied out in 1 MiB reads, refused as soon as it passes its limit (whatever its header says)."""
    limit = LIMITS[info.filename]
    out = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, dir=spool)  # noqa: SIM115  (the caller closes it)
    try:
        with zf.open(info) as member:
            size = 0
            while chunk := member.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise refuse(f"{info.filename} is larger than its limit of {limit} bytes")
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise refuse.unpacking(exc, spool) from None
        out.seek(0)
        return out
    except BaseException:
        out.close()
        raise


def manifest(data: bytes, refuse: Refuse) -> tuple[dict[str, Any], list[str]]:
    """run.json checked field by field; returns it (config normalised, an active state made ``interrupted``)."""
    raw = _json(data, "run.json", refuse)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise refuse("run.json is not a balance run (format should be 'balance-run')")
    if raw.get("version") != VERSION:
        raise refuse(f"run.json has version {label(raw.get('version'))[:40]}; this balance reads version {VERSION}")
    expected = {"format", "version", "id", "name", "sweep", "state", "step", "message", "created", "updated"}
    unknown = set(raw) - expected - {"columns", "config"}
    if unknown:  # "origin" among them: where a run comes from is this store's to say, never the file's
        raise refuse(f"run.json has unknown keys {label(sorted(unknown))[:120]}")
    for key in ("id", "name", "sweep", "state", "message"):
        if not isinstance(raw.get(key), str) or len(raw[key]) > 4000:
            raise refuse(f"run.json: {key} should be text")
    if not re.fullmatch(r"[0-9a-f]{1,32}", raw["id"]):
        raise refuse(f"run.json: id {label(raw['id'])[:40]!r} is not a run id")
    if raw["state"] not in STATES:
        raise refuse(f"run.json: state {label(raw['state'])[:40]!r} is not one of {', '.join(STATES)}")
    if not _is_int(raw.get("step")):
        raise refuse("run.json: step should be a whole number >= 0")
    for key in ("created", "updated"):
        if not _is_num(raw.get(key)) or not 0 <= raw[key] < 1e11:
            raise refuse(f"run.json: {key} should be a time in seconds")
        raw[key] = float(raw[key])
    try:
        config = RunConfig.from_dict(raw.get("config"))  # type: ignore[arg-type]
    except (ConfigError, RecursionError) as exc:
        raise refuse(f"run.json: bad config: {str(exc)[:300]}") from None
    columns = raw.get("columns")
    if (
        not isinstance(columns, list)
        or not 1 <= len(columns) <= MAX_COLUMNS
        or not all(isinstance(c, str) and _NAME.match(c) for c in columns)
        or columns[0] != "step"
        or len(set(columns)) != len(columns)
    ):
        raise refuse("run.json: columns should be distinct names, 'step' first")
    if raw["state"] in ACTIVE:  # a snapshot of a run that was still going: it is not running here
        raw["message"] = f"imported while {raw['state']} at step {raw['step']}"
        raw["state"] = "interrupted"
    raw["config"] = config.to_dict()
    return raw, columns


def _json(data: bytes, name: str, refuse: Refuse) -> Any:
    def no_constant(text: str) -> None:
        raise ValueError(f"{text} is not allowed")

    try:
        return json.loads(data.decode("utf-8"), parse_constant=no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise refuse(f"{name} is not valid JSON ({str(exc)[:120]})") from None


def metrics(f: IO[bytes], columns: list[str], refuse: Refuse) -> np.ndarray:
    """Rows x columns float64 (a transposed view of the decoded columns), checked."""
    names, data = _decode(f, "metrics.parquet", refuse)
    if names != columns:
        raise refuse("metrics.parquet: its columns do not match run.json's columns")
    for name, column in zip(names, data):
        if name in FINITE and not np.all(np.isfinite(column)):
            raise refuse(f"metrics.parquet: column {name!r} has values that are not finite numbers (NaN or inf)")
    steps = data[0]
    if not (np.all(steps >= 0) and np.all(steps == np.round(steps))):
        raise refuse("metrics.parquet: steps should be whole numbers >= 0")
    if np.any(np.diff(steps) <= 0):
        raise refuse("metrics.parquet: steps should increase")
    return data.T


def events(data: bytes | None, refuse: Refuse) -> list[tuple]:
    if data is None:
        return []
    raw = _json(data, "events.json", refuse)
    if not isinstance(raw, list) or len(raw) > MAX_EVENTS:
        raise refuse(f"events.json should be a list of at most {MAX_EVENTS} events")
    out = []
    for e in raw:
        if (
            not isinstance(e, dict)
            or set(e) != {"step", "time", "kind", "value", "text"}
            or not _is_int(e["step"])
            or not _is_num(e["time"])
            or not (isinstance(e["kind"], str) and _NAME.match(e["kind"]))
            or not (e["value"] is None or _is_num(e["value"]))
            or not (isinstance(e["text"], str) and len(e["text"]) <= 4000)
        ):
            raise refuse("events.json: each event needs step, time, kind (a name), value (a number or null), text")
        value = None if e["value"] is None else float(e["value"])
        out.append((e["step"], float(e["time"]), e["kind"], value, e["text"]))
    return out


def check_versions(raw: dict[str, Any], events: list[tuple], refuse: Refuse) -> None:
    """Each live change (an ``lr`` event: the step size from that step on) must make a valid config version."""
    changes = changes_from_events([(step, kind, value) for step, _, kind, value, _ in events])
    try:
        versions(RunConfig.from_dict(raw["config"]), changes)
    except ConfigError as exc:
        raise refuse(f"events.json: a change of settings makes an invalid config: {str(exc)[:300]}") from None


def neurons(f: IO[bytes] | None, refuse: Refuse) -> list[tuple]:
    """Snapshots as (step, keys JSON, n, float64 bytes) rows for the store, by step, thinned like a live run's.

    One sort groups the rows by step (linear in the rows apart from it); each snapshot's bytes are one slice.
    """
    if f is None:
        return []
    names, data = _decode(f, "neurons.parquet", refuse)
    if names[0] != "step" or len(names) > MAX_NEURON_COLUMNS:
        raise refuse(f"neurons.parquet: columns should be step, then up to {MAX_NEURON_COLUMNS - 1} numeric columns")
    if not np.all(np.isfinite(data)):
        bad = names[int(np.flatnonzero(~np.all(np.isfinite(data), axis=1))[0])]
        raise refuse(f"neurons.parquet: column {bad!r} has values that are not finite numbers (NaN or inf)")
    for key in ("step", "layer", "neuron"):
        if key in names:
            column = data[names.index(key)]
            if not (np.all(column >= 0) and np.all(column == np.round(column)) and np.all(column < 2**53)):
                raise refuse(f"neurons.parquet: {key} should be whole numbers >= 0")
    if data.shape[1] == 0:
        return []
    if np.any(np.diff(data[0]) < 0):
        data = data[:, np.argsort(data[0], kind="stable")]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(data[0])) + 1])  # where each snapshot begins
    ends = np.append(starts[1:], data.shape[1])
    biggest = int(np.max(ends - starts)) * (len(names) - 1) * 8
    limit = max(2, min(NEURON_SNAPSHOTS, NEURON_BYTES // max(1, biggest)))
    kept = kept_steps(data[0, starts], limit)  # the same rule as a live run's snapshots
    keys = json.dumps(names[1:])
    return [(int(data[0, a]), keys, int(b - a), data[1:, a:b].tobytes()) for a, b in zip(starts[kept], ends[kept])]


def _decode(f: IO[bytes], name: str, refuse: Refuse) -> tuple[list[str], np.ndarray]:
    """A Parquet member as (column names, columns x rows float64), its size checked from the footer first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _check_footer(f, name, refuse)
    try:
        # pre_buffer=False: every read happens here, on this thread. With pre-buffering, pyarrow's I/O threads
        # may still hold Python buffers when the interpreter exits, and releasing them then aborts the process
        # ("terminate called without an active exception", issue 11.14).
        parquet = pq.ParquetFile(f, pre_buffer=False)
        names, rows = _check_schema(parquet, name, refuse)
        data = np.empty((len(names), rows), dtype="<f8")
        at = 0
        for group in range(parquet.metadata.num_row_groups):
            table = parquet.read_row_group(group, use_threads=False)
            n = table.num_rows
            if at + n > rows or table.column_names != names:
                raise refuse(f"{name}: its row groups do not match its footer")
            for j in range(len(names)):
                column = table.column(j)
                if column.null_count:
                    raise refuse(f"{name}: column {names[j]!r} has missing values")
                data[j, at : at + n] = column.to_numpy()
            at += n
        if at != rows:
            raise refuse(f"{name}: its row groups do not match its footer")
        return names, data
    except (StoreError, MemoryError):
        raise
    except (pa.ArrowException, OSError, ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise refuse(f"{name} is not a valid Parquet file ({str(exc)[:120]})") from None


def _check_footer(f: IO[bytes], name: str, refuse: Refuse) -> None:
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - 8))
    tail = f.read(8)
    f.seek(0)
    if size < 12 or tail[4:] != b"PAR1" or f.read(4) != b"PAR1":
        raise refuse(f"{name} is not a valid Parquet file (no Parquet header and footer)")
    footer = int.from_bytes(tail[:4], "little")
    if footer > MAX_FOOTER or footer + 12 > size:
        raise refuse(f"{name}: its footer says {footer} bytes; at most {min(MAX_FOOTER, size - 12)} are possible")
    f.seek(0)


def _check_schema(parquet: Any, name: str, refuse: Refuse) -> tuple[list[str], int]:
    """Column names and the row count, once the decoded size (a product) and the column types are known good."""
    import pyarrow as pa

    meta = parquet.metadata
    groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    rows, columns = max([meta.num_rows, sum(groups)]), meta.num_columns
    if rows < 0 or min(groups, default=0) < 0:
        raise refuse(f"{name}: its footer gives a negative number of rows")
    if len(groups) > MAX_ROW_GROUPS:
        raise refuse(f"{name} has {len(groups)} row groups; the limit is {MAX_ROW_GROUPS}")
    decoded, cap = rows * columns * 8, MAX_DECODED[name]
    if rows > MAX_ROWS or columns > MAX_COLUMNS or decoded > cap:
        raise refuse(
            f"{name} would decode to {rows} rows x {columns} columns ({decoded / 2**20:.0f} MiB); the limits are "
            f"{MAX_ROWS} rows, {MAX_COLUMNS} columns and {cap >> 20} MiB"
        )
    schema = parquet.schema_arrow
    names = [field.name for field in schema]
    if len(names) != columns or not names:
        raise refuse(f"{name}: columns should be plain numbers (no nested columns)")
    for field in schema:
        if not _NAME.match(field.name):
            raise refuse(f"{name}: column name {label(field.name)[:40]!r} is not a plain name")
        if not (pa.types.is_integer(field.type) or pa.types.is_floating(field.type)):
            raise refuse(f"{name}: column {field.name!r} is {label(field.type)[:40]}, not a number")
    if len(set(names)) != len(names):
        raise refuse(f"{name}: a column appears twice")
    return names, rows


def num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**62


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
