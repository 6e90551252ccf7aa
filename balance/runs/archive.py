"""One run as one portable file: a zip of JSON and Parquet, read back with strict validation.

Members (nothing else is accepted; nothing is unpickled or evaluated)::

    run.json         {"format": "balance-run", "version": 1, "id", "name", "sweep", "state", "step", "message",
                      "created", "updated", "columns", "config"}; config is RunConfig.to_dict()
    metrics.parquet  one column per metric column (step int64, the rest float64), one row per logged step
    events.json      [{"step", "time", "kind", "value", "text"}, ...]                      (optional)
                     kind "lr": the step size from that step on, a config version (``balance.runs.record``)
    neurons.parquet  step, then the per-neuron columns; one block of rows per snapshot     (optional)

Reading never lets the file decide how much memory or time it takes:

- the path must name a regular file (``balance.files``: a FIFO, a device or a directory is refused unread);
- member names, compression methods and declared sizes are checked before anything is decompressed, and each
  member is copied out in bounded chunks (a lying size header is caught by its CRC) into a spooled temporary file
  in the store's folder (unnamed: nothing is left behind, even if the process is killed);
- a Parquet member's footer is checked before any column is decoded: its length, the column types (plain integers
  and floats only), and the decoded size as a product, rows x columns x 8 bytes, against ``MAX_DECODED``; then it
  is decoded one row group at a time into one float64 array;
- per-neuron snapshots are grouped in one pass (a sort, O(n log n)) and thinned like a live run's.

A file someone else chose is best imported with ``import_in_worker``: the same import in a separate process with
an address-space limit and a time limit, so that a hostile file cannot grow the dashboard's process.

Only ``run.json`` fields above are accepted: an archive cannot set a run's ``origin``; an imported run is always
marked ``imported`` (so ``balance.runs.reuse`` never reuses it as its own result). Importing a run that is stored
already (same content) is refused as a ``duplicate``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import multiprocessing
import os
import re
import stat
import struct
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from balance.config import ConfigError, RunConfig
from balance.engine.status import ACTIVE, STATES
from balance.files import FileRefused, check_regular, write_atomic
from balance.runs.record import changes_from_events, versions
from balance.runs.store import NEURON_BYTES, NEURON_SNAPSHOTS, StoreError, kept_steps

if TYPE_CHECKING:
    from balance.runs.store import RunStore

FORMAT, VERSION = "balance-run", 1
LIMITS = {"run.json": 1 << 20, "metrics.parquet": 256 << 20, "events.json": 16 << 20, "neurons.parquet": 256 << 20}
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


class _Refuse:
    """Makes the errors of one import, each naming the file as the user knows it."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __call__(self, why: str) -> StoreError:
        return StoreError(f"{self.label}: refused: {' '.join(why.split())}", "invalid")  # one line, whatever it quotes

    def unpacking(self, exc: OSError, folder: Path) -> StoreError:
        kind = "full" if exc.errno == errno.ENOSPC else "io"
        return StoreError(f"{self.label}: cannot import it: no room to unpack it in {folder} ({exc.strerror})", kind)


# --- writing ------------------------------------------------------------------------------------------------


def write_archive(store: RunStore, run_id: str, path: Path) -> None:
    """Write ``run_id`` to ``path`` (atomically, with the permissions a plain ``open`` gives: ``write_atomic``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = store._raw_run(run_id)
    manifest = {"format": FORMAT, "version": VERSION, **raw}
    columns = raw["columns"] or ["step"]
    df = store.metrics(run_id)
    metrics = pa.table({c: df[c].to_numpy() for c in columns if c in df})
    events = store.events(run_id)
    event_list = [
        {"step": int(e.step), "time": e.time.timestamp(), "kind": e.kind, "value": _num(e.value), "text": e.text}
        for e in events.itertuples()
    ]
    snapshots = [store.neurons(run_id, k) for k in store.neuron_steps(run_id)]
    members = {
        "run.json": json.dumps(manifest, indent=1, allow_nan=False).encode(),
        "metrics.parquet": _parquet_bytes(pq, metrics),
        "events.json": json.dumps(event_list, allow_nan=False).encode(),
    }
    if snapshots and len({tuple(s.columns) for s in snapshots}) == 1:
        keys = list(snapshots[0].columns)
        members["neurons.parquet"] = _parquet_bytes(
            pq, pa.table({k: np.concatenate([s[k].to_numpy() for s in snapshots]) for k in keys})
        )

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w") as zf:
            for name, data in members.items():
                method = zipfile.ZIP_STORED if name.endswith(".parquet") else zipfile.ZIP_DEFLATED
                zf.writestr(zipfile.ZipInfo(name, time.gmtime()[:6]), data, compress_type=method)

    write_atomic(path, write)


def _parquet_bytes(pq: Any, table: Any) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


# --- reading ------------------------------------------------------------------------------------------------


def read_archive(store: RunStore, path: Path, name: str | None = None) -> str:
    """Validate the file at ``path`` and add its run to ``store``; returns the new run's id.

    ``name`` is how messages call the file (default: ``path``). Every refusal is ``StoreError`` kind ``invalid``
    whose message starts with ``<name>: refused:``.
    """
    label = _label(path if name is None else name)
    refuse = _Refuse(label)
    if store.read_only:
        raise StoreError(f"{label}: cannot import into {store.path}: it was opened read-only", "readonly")
    try:
        with _open_regular(path, refuse) as f, _members(f, refuse, store.home) as members:
            raw, columns = _manifest(members["run.json"].read(), refuse)
            rows = _metrics(members["metrics.parquet"], columns, refuse)
            events = _events(members["events.json"].read() if "events.json" in members else None, refuse)
            _check_versions(raw, events, refuse)
            neurons = _neurons(members.get("neurons.parquet"), refuse)
    except MemoryError:
        raise refuse("reading it needs more memory than an import may use") from None
    return store._insert_run(raw, rows, events, neurons, label)


def _label(name: object) -> str:
    """A file's name for a message: one line, at most 200 characters."""
    text = "".join(c if c.isprintable() else "?" for c in str(name))
    return text if len(text) <= 200 else text[:199] + "…"


@contextlib.contextmanager
def _open_regular(path: Path, refuse: _Refuse) -> Iterator[IO[bytes]]:
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
def _members(f: IO[bytes], refuse: _Refuse, spool: Path) -> Iterator[dict[str, IO[bytes]]]:
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


def _checked_infos(zf: zipfile.ZipFile, refuse: _Refuse) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    names = [i.filename for i in infos]
    for name in names:
        if name not in LIMITS:
            raise refuse(f"unexpected member {_label(name)[:80]!r}; a run file holds only {', '.join(LIMITS)}")
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


def _copy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, refuse: _Refuse, spool: Path) -> IO[bytes]:
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


def _manifest(data: bytes, refuse: _Refuse) -> tuple[dict[str, Any], list[str]]:
    """run.json checked field by field; returns it (config normalised, an active state made ``interrupted``)."""
    raw = _json(data, "run.json", refuse)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise refuse("run.json is not a balance run (format should be 'balance-run')")
    if raw.get("version") != VERSION:
        raise refuse(f"run.json has version {_label(raw.get('version'))[:40]}; this balance reads version {VERSION}")
    expected = {"format", "version", "id", "name", "sweep", "state", "step", "message", "created", "updated"}
    unknown = set(raw) - expected - {"columns", "config"}
    if unknown:  # "origin" among them: where a run comes from is this store's to say, never the file's
        raise refuse(f"run.json has unknown keys {_label(sorted(unknown))[:120]}")
    for key in ("id", "name", "sweep", "state", "message"):
        if not isinstance(raw.get(key), str) or len(raw[key]) > 4000:
            raise refuse(f"run.json: {key} should be text")
    if not re.fullmatch(r"[0-9a-f]{1,32}", raw["id"]):
        raise refuse(f"run.json: id {_label(raw['id'])[:40]!r} is not a run id")
    if raw["state"] not in STATES:
        raise refuse(f"run.json: state {_label(raw['state'])[:40]!r} is not one of {', '.join(STATES)}")
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


def _json(data: bytes, name: str, refuse: _Refuse) -> Any:
    def no_constant(text: str) -> None:
        raise ValueError(f"{text} is not allowed")

    try:
        return json.loads(data.decode("utf-8"), parse_constant=no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise refuse(f"{name} is not valid JSON ({str(exc)[:120]})") from None


def _metrics(f: IO[bytes], columns: list[str], refuse: _Refuse) -> np.ndarray:
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


def _events(data: bytes | None, refuse: _Refuse) -> list[tuple]:
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


def _check_versions(raw: dict[str, Any], events: list[tuple], refuse: _Refuse) -> None:
    """Each live change (an ``lr`` event: the step size from that step on) must make a valid config version."""
    changes = changes_from_events([(step, kind, value) for step, _, kind, value, _ in events])
    try:
        versions(RunConfig.from_dict(raw["config"]), changes)
    except ConfigError as exc:
        raise refuse(f"events.json: a change of settings makes an invalid config: {str(exc)[:300]}") from None


def _neurons(f: IO[bytes] | None, refuse: _Refuse) -> list[tuple]:
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


def _decode(f: IO[bytes], name: str, refuse: _Refuse) -> tuple[list[str], np.ndarray]:
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


def _check_footer(f: IO[bytes], name: str, refuse: _Refuse) -> None:
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


def _check_schema(parquet: Any, name: str, refuse: _Refuse) -> tuple[list[str], int]:
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
            raise refuse(f"{name}: column name {_label(field.name)[:40]!r} is not a plain name")
        if not (pa.types.is_integer(field.type) or pa.types.is_floating(field.type)):
            raise refuse(f"{name}: column {field.name!r} is {_label(field.type)[:40]}, not a number")
    if len(set(names)) != len(names):
        raise refuse(f"{name}: a column appears twice")
    return names, rows


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**62


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# --- importing in a worker process --------------------------------------------------------------------------


def import_in_worker(
    home: str | Path | None,
    path: str | Path,
    name: str | None = None,
    timeout: float = IMPORT_SECONDS,
    memory: int = IMPORT_MEMORY,
) -> str:
    """``RunStore(home).import_run(path, name)`` in a separate, spawned process; returns the new run's id.

    The process may add at most ``memory`` bytes of address space (``RLIMIT_AS``, where the platform has it) and
    run ``timeout`` seconds; past either it is ended and the file refused. Whatever the file holds, this process
    grows by nothing. Raises ``StoreError`` with the same kinds and messages as ``import_run`` (``invalid``,
    ``duplicate``, ``locked``, ...).
    """
    from balance.runs.executor import neutral_main
    from balance.runs.store import default_home

    label = _label(path if name is None else name)
    home = Path(home).expanduser() if home is not None else default_home()
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    args = (send, str(home), str(path), label, memory)
    proc = ctx.Process(target=_import_main, args=args, name="balance-import", daemon=True)
    try:
        with neutral_main():
            proc.start()
    except OSError as exc:
        receive.close()
        raise StoreError(f"{label}: cannot start the import process ({exc.strerror or exc})", "io") from None
    finally:
        send.close()  # the child holds the only sending end now: its death ends our wait
    try:
        if not receive.poll(timeout):
            raise StoreError(f"{label}: refused: importing it took longer than {timeout:g} s", "invalid")
        try:
            kind, text = receive.recv()
        except (EOFError, OSError):
            proc.join(5)
            raise StoreError(
                f"{label}: refused: the import process ended without an answer (exit code {proc.exitcode}); "
                "the file may need more memory than an import may use",
                "invalid",
            ) from None
    finally:
        receive.close()
        if proc.is_alive():
            proc.kill()  # mid-write, SQLite rolls the transaction back; spooled members were never named
        proc.join(5)
    if kind == "ok":
        return text
    raise StoreError(text, kind)


def _import_main(send: Any, home: str, path: str, label: str, memory: int) -> None:
    """The import process: limit its memory, import, send ("ok", id) or (kind, message), exit at once."""
    try:
        import pyarrow.parquet  # noqa: F401  (imported before the limit: the limit is on what the file costs)

        from balance.runs.store import RunStore

        RunConfig.from_dict(RunConfig().to_dict())  # checking a config imports the model registry (torch): now
        _limit_memory(memory)
        try:
            with RunStore(home) as store:
                result = ("ok", store.import_run(path, label))
        except StoreError as exc:
            result = (exc.kind, str(exc))
        except MemoryError:
            result = ("invalid", f"{label}: refused: importing it needs more memory than an import may use")
        except Exception as exc:  # a bug, not the file: say what it was rather than lose it
            result = ("io", f"{label}: import failed: {type(exc).__name__}: {str(exc)[:300]}")
        with contextlib.suppress(OSError, ValueError):
            send.send(result)
    finally:
        # skip interpreter teardown: nothing is left to save, and native threads cannot abort an exit that is not run
        os._exit(0)


def _limit_memory(extra: int) -> None:
    """Cap this process's address space at its current size plus ``extra`` bytes (where ``resource`` exists)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows: the time limit still applies
        return
    current = 0
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/status") as f:
        current = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = current + int(extra)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
