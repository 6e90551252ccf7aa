"""Run persistence: every run's config, status, metrics, events and neuron snapshots in one SQLite file.

The store is the single source of truth for the dashboard and the CLI. It lives in ``<home>/runs.db``, where home
is the argument, else ``$BALANCE_HOME``, else ``~/.balance``. WAL mode lets readers read while a run writes; each
run has one writer (the process training it), which commits in batches.

Tables (timestamps are Unix seconds). Metrics are stored a batch at a time: one blob per ``append_rows`` holds
its rows as little-endian float64 in the run's column order, so a run of any model fits one table, a writer pays
one insert per batch instead of one per row (3% of an MF step), and a read is one ``np.frombuffer``. A step
written again (a paused run logs its current state, which training logs again on resuming) reads as its newest
row::

    meta(key, value)                                  app = balance, schema = 2
    runs(id, name, sweep, config JSON, columns JSON, state, step, message, created, updated, owner)
    metrics(run_id, first, last, n, data BLOB)        a batch of n rows, steps first .. last; rowid = write order
    events(run_id, step, time, kind, value, text)     e.g. kind = "lr": a step-size change applied from ``step``
    neurons(run_id, step, keys JSON, n, data BLOB)    per-neuron snapshot: len(keys) float64 arrays of n values

``owner`` names the process that drives an active run (``host:pid:start-time``); a run whose owner has died is
marked ``interrupted`` the next time a store is opened, keeping every row committed before.

No torch here. SQLite errors surface as ``StoreError`` with a plain message and a ``kind``.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from balance.config import RunConfig

SCHEMA = 2
STATES = ("queued", "running", "paused", "finished", "diverged", "stopped", "failed", "interrupted")
ACTIVE = ("queued", "running", "paused")
NEURON_SNAPSHOTS = 200  # kept per run between the first and the last
NEURON_BYTES = 64 << 20  # and at most this many bytes of snapshots per run

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, sweep TEXT NOT NULL, config TEXT NOT NULL, columns TEXT NOT NULL,
    state TEXT NOT NULL, step INTEGER NOT NULL, message TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    owner TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS runs_state ON runs (state);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics (run_id, last);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, time REAL NOT NULL, kind TEXT NOT NULL, value REAL, text TEXT);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, step);
CREATE TABLE IF NOT EXISTS neurons (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, keys TEXT NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (run_id, step));
"""


class StoreError(RuntimeError):
    """A store that cannot be used, or a run that is not there. ``kind`` says which:

    ``locked`` (another process holds the write lock past the timeout), ``full`` (disk or size limit), ``corrupt``
    (not a database, or a damaged one), ``foreign`` (an SQLite file that is not a balance store), ``missing`` (no
    such run), ``invalid`` (a file refused on import), ``io`` (anything else from the file system).
    """

    def __init__(self, message: str, kind: str = "io") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class RunRecord:
    id: str
    config: RunConfig
    state: str
    step: int
    message: str
    created: datetime
    updated: datetime
    columns: list[str]
    name: str = ""
    sweep: str = ""


def default_home() -> Path:
    return Path(os.environ.get("BALANCE_HOME") or Path.home() / ".balance").expanduser()


def owner_token(pid: int | None = None) -> str:
    """``host:pid:start-time`` of a process (start time in clock ticks from /proc; 0 where unknown)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_proc_start(pid) or 0}"


def owner_alive(token: str) -> bool:
    """Whether the process named by ``owner_token`` still runs (a zombie counts as dead; other hosts as alive)."""
    parts = token.split(":")
    if len(parts) < 3 or not parts[-2].isdigit():
        return False
    host, pid, start = ":".join(parts[:-2]), int(parts[-2]), parts[-1]
    if host != socket.gethostname():
        return True  # cannot tell from here; never interrupt another machine's run
    now = _proc_start(pid)
    if now is not None:
        return start in ("0", now)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _proc_start(pid: int) -> str | None:
    """Start time of a live, non-zombie process from /proc/<pid>/stat (field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in (b"Z", b"X") else fields[19].decode()


def _error(exc: sqlite3.Error, path: Path, timeout: float, doing: str) -> StoreError:
    name, text = getattr(exc, "sqlite_errorname", ""), str(exc)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return StoreError(
            f"{path} is locked by another process (waited {timeout:g} s while {doing}); "
            "close the other program using it, or try again",
            "locked",
        )
    if name.startswith("SQLITE_FULL") or "full" in text:
        return StoreError(f"{path}: the disk is full (or the store reached its size limit) while {doing}", "full")
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text or "not a database" in text:
        return StoreError(f"{path} is corrupt or not a database ({text}); move it away to start a new store", "corrupt")
    return StoreError(f"{path}: {doing} failed: {text}", "io")


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


class RunStore:
    """One SQLite store, safe to share between threads (one connection behind a lock).

    ``timeout``: seconds to wait for another writer before ``StoreError(kind="locked")``. ``max_bytes``: a size
    limit; writes past it fail like a full disk.
    """

    def __init__(self, home: str | Path | None = None, timeout: float = 5.0, max_bytes: int | None = None) -> None:
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.path = self.home / "runs.db"
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._lock = threading.RLock()
        self._depth = 0
        self._columns: dict[str, list[str]] = {}
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}", "io") from exc
        try:
            self._open()
        except BaseException:
            self._conn.close()
            raise

    def _open(self) -> None:
        with self._guard("opening the store"):
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "meta" not in tables:
                raise StoreError(f"{self.path} is an SQLite database but not a balance store", "foreign")
            if self._conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across process crashes
            if not tables:
                with self._write("creating the store"):
                    for statement in _DDL.split(";"):
                        if statement.strip():
                            self._conn.execute(statement)
                    self._conn.executemany(
                        "INSERT OR IGNORE INTO meta VALUES (?, ?)", [("app", "balance"), ("schema", str(SCHEMA))]
                    )
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("app") != "balance":
                raise StoreError(f"{self.path} is an SQLite database but not a balance store", "foreign")
            if meta.get("schema") != str(SCHEMA):
                raise StoreError(
                    f"{self.path} has store schema {meta.get('schema')}, this balance reads schema {SCHEMA}; "
                    "move it away to start a new store",
                    "foreign",
                )
            if self.max_bytes:
                page = self._conn.execute("PRAGMA page_size").fetchone()[0]
                self._conn.execute(f"PRAGMA max_page_count = {max(16, int(self.max_bytes) // page)}")
        self.mark_interrupted()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ----------------------------------------------------------------------------------------

    @contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise _error(exc, self.path, self.timeout, doing) from exc

    @contextmanager
    def _write(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE takes the lock up front); nested uses join the outer one."""
        with self._lock, self._guard(doing):
            if self._depth == 0:
                self._conn.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self._conn
            except BaseException:
                self._depth -= 1
                if self._depth == 0 and self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            self._depth -= 1
            if self._depth == 0:
                self._conn.execute("COMMIT")

    def transaction(self) -> Any:
        """Group writes into one commit: ``with store.transaction(): store.append_rows(...); store.set_status(...)``."""
        return self._write("writing")

    def _read(self, sql: str, args: Sequence[Any] = (), doing: str = "reading") -> list[Any]:
        with self._lock, self._guard(doing):
            return self._conn.execute(sql, args).fetchall()

    def _touch(self, conn: sqlite3.Connection, run_id: str) -> None:
        if conn.execute("UPDATE runs SET updated = ? WHERE id = ?", (time.time(), run_id)).rowcount == 0:
            raise self._missing(run_id)

    def _missing(self, run_id: str) -> StoreError:
        return StoreError(f"no run {run_id!r} in {self.path}", "missing")

    def _run_columns(self, run_id: str) -> list[str]:
        if run_id in self._columns:
            return self._columns[run_id]
        found = self._read("SELECT columns FROM runs WHERE id = ?", (run_id,))
        if not found:
            raise self._missing(run_id)
        columns = json.loads(found[0][0])
        if columns:  # fixed once set; a queued run's are set when it starts
            self._columns[run_id] = columns
        return columns

    # --- writing -----------------------------------------------------------------------------------------

    def create_run(self, config: RunConfig, columns: list[str], name: str = "", sweep: str = "") -> str:
        """A new run, state ``queued``, owned by this process. ``columns`` may be empty until ``claim_run``."""
        _check_columns(columns, allow_empty=True)
        now, text = time.time(), json.dumps(config.to_dict())
        for _ in range(16):
            run_id = secrets.token_hex(4)
            with self._write("creating a run") as conn:
                if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                    continue
                conn.execute(
                    "INSERT INTO runs VALUES (?, ?, ?, ?, ?, 'queued', 0, '', ?, ?, ?)",
                    (run_id, name, sweep, text, json.dumps(columns), now, now, owner_token()),
                )
            return run_id
        raise StoreError(f"{self.path}: could not find a free run id", "io")  # pragma: no cover

    def claim_run(self, run_id: str, columns: list[str]) -> None:
        """The process that trains ``run_id`` takes it over: state ``running``, its owner, its metric columns."""
        _check_columns(columns)
        with self._write("starting a run") as conn:
            old = conn.execute("SELECT columns FROM runs WHERE id = ?", (run_id,)).fetchone()
            if old is None:
                raise self._missing(run_id)
            if json.loads(old[0]) not in ([], columns):
                raise ValueError(f"run {run_id}: columns differ from those it was created with")
            conn.execute(
                "UPDATE runs SET columns = ?, state = 'running', owner = ?, updated = ? WHERE id = ?",
                (json.dumps(columns), owner_token(), time.time(), run_id),
            )
        self._columns[run_id] = list(columns)

    def append_rows(self, run_id: str, rows: Sequence[Sequence[float]] | np.ndarray) -> None:
        """Add metric rows (in the run's column order; column 0 is the step), as one batch.

        A row for a step already stored supersedes it.
        """
        if len(rows) == 0:
            return
        columns = self._run_columns(run_id)
        data = np.asarray(rows, dtype="<f8")
        if data.ndim != 2 or data.shape[1] != len(columns):
            raise ValueError(f"run {run_id}: rows of {data.shape[-1]} values, expected {len(columns)} ({columns})")
        steps = data[:, 0]
        if not (np.all(np.isfinite(steps)) and steps.min() >= 0):
            raise ValueError(f"run {run_id}: steps must be finite and >= 0")
        with self._write("appending rows") as conn:
            self._touch(conn, run_id)
            values = (run_id, int(steps.min()), int(steps.max()), len(data), data.tobytes())
            conn.execute("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)", values)

    def set_status(self, run_id: str, state: str, step: int, message: str = "") -> None:
        if state not in STATES:
            raise ValueError(f"state {state!r}: not one of {', '.join(STATES)}")
        with self._write("saving the status") as conn:
            cursor = conn.execute(
                "UPDATE runs SET state = ?, step = ?, message = ?, updated = ? WHERE id = ?",
                (state, int(step), message, time.time(), run_id),
            )
            if cursor.rowcount == 0:
                raise self._missing(run_id)

    def record_event(self, run_id: str, step: int, kind: str, value: float | str) -> None:
        number, text = (None, value) if isinstance(value, str) else (float(value), "")
        with self._write("recording an event") as conn:
            self._touch(conn, run_id)
            conn.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", (run_id, int(step), time.time(), kind, number, text)
            )

    def save_neurons(self, run_id: str, step: int, table: dict[str, np.ndarray]) -> None:
        """Store a per-neuron snapshot (``Trainer.neuron_table()``: equal-length arrays).

        Keeps the first and the latest snapshot and at most ``NEURON_SNAPSHOTS`` (and ``NEURON_BYTES``) in between:
        those nearest to an even grid between the two.
        """
        keys = list(table)
        arrays = [np.asarray(table[k], dtype="<f8").ravel() for k in keys]
        n = len(arrays[0]) if arrays else 0
        if any(len(a) != n for a in arrays):
            raise ValueError(f"run {run_id}: neuron table columns differ in length")
        data = b"".join(a.tobytes() for a in arrays)
        limit = max(2, min(NEURON_SNAPSHOTS, NEURON_BYTES // max(1, len(data))))
        with self._write("saving neurons") as conn:
            self._touch(conn, run_id)
            conn.execute(
                "INSERT OR REPLACE INTO neurons VALUES (?, ?, ?, ?, ?)", (run_id, int(step), json.dumps(keys), n, data)
            )
            count = conn.execute("SELECT COUNT(*) FROM neurons WHERE run_id = ?", (run_id,)).fetchone()[0]
            if count > limit + 2:
                query = "SELECT step FROM neurons WHERE run_id = ? ORDER BY step"
                drop = _thin([r[0] for r in conn.execute(query, (run_id,))], limit)
                conn.executemany("DELETE FROM neurons WHERE run_id = ? AND step = ?", [(run_id, k) for k in drop])

    def delete_run(self, run_id: str) -> None:
        with self._write("deleting a run") as conn:
            if conn.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount == 0:
                raise self._missing(run_id)
            for table in ("metrics", "events", "neurons"):
                conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
        self._columns.pop(run_id, None)

    def mark_interrupted(self) -> list[str]:
        """Mark active runs whose owning process has died as ``interrupted``; returns their ids."""
        found = self._read("SELECT id, step, owner FROM runs WHERE state IN ('queued', 'running', 'paused')")
        dead = [(run_id, step, owner) for run_id, step, owner in found if not owner_alive(owner)]
        for run_id, step, owner in dead:
            pid = owner.split(":")[-2] if owner.count(":") >= 2 else "?"
            message = f"interrupted at step {step}: the process running it (pid {pid}) ended before it finished"
            with self._write("marking interrupted runs") as conn:
                conn.execute(
                    "UPDATE runs SET state = 'interrupted', message = ?, updated = ? "
                    "WHERE id = ? AND state IN ('queued', 'running', 'paused') AND owner = ?",
                    (message, time.time(), run_id, owner),
                )
        return [d[0] for d in dead]

    # --- reading -----------------------------------------------------------------------------------------

    def list_runs(self) -> pd.DataFrame:
        """One row per run, newest first: id, name, state, step, message, created, updated (UTC), model, dataset,
        optimizer, lr, init_scale, steps, sweep."""
        found = self._read(
            "SELECT id, name, state, step, message, created, updated, config, sweep FROM runs ORDER BY created DESC"
        )
        rows = []
        for run_id, name, state, step, message, created, updated, text, sweep in found:
            c = json.loads(text)
            m, d, o = c.get("model", {}), c.get("data", {}), c.get("optim", {})
            rows.append(
                (run_id, name, state, step, message, created, updated, m.get("name", ""), d.get("name", ""),
                 o.get("name", ""), o.get("lr", math.nan), m.get("init_scale", math.nan), c.get("steps", 0), sweep)
            )  # fmt: skip
        columns = "id name state step message created updated model dataset optimizer lr init_scale steps sweep"
        df = pd.DataFrame(rows, columns=columns.split())
        df = df.astype({"step": "int64", "steps": "int64", "lr": "float64", "init_scale": "float64"})
        for key in ("created", "updated"):
            df[key] = pd.to_datetime(df[key].astype("float64"), unit="s", utc=True)
        return df

    def get_run(self, run_id: str) -> RunRecord:
        found = self._read(
            "SELECT config, state, step, message, created, updated, columns, name, sweep FROM runs WHERE id = ?",
            (run_id,),
        )
        if not found:
            raise self._missing(run_id)
        text, state, step, message, created, updated, columns, name, sweep = found[0]
        config = RunConfig.from_dict(json.loads(text))
        return RunRecord(
            run_id, config, state, step, message, _utc(created), _utc(updated), json.loads(columns), name, sweep
        )

    def sweeps(self) -> pd.DataFrame:
        """One row per sweep, newest first: sweep (its id), runs, finished, diverged, failed, active, created."""
        found = self._read(
            "SELECT sweep, COUNT(*), SUM(state = 'finished'), SUM(state = 'diverged'), "
            "SUM(state NOT IN ('finished', 'diverged', 'queued', 'running', 'paused')), "
            "SUM(state IN ('queued', 'running', 'paused')), MIN(created) "
            "FROM runs WHERE sweep != '' GROUP BY sweep ORDER BY MIN(created) DESC"
        )
        columns = ["sweep", "runs", "finished", "diverged", "failed", "active", "created"]
        df = pd.DataFrame(found, columns=columns)
        df = df.astype({c: "int64" for c in columns[1:-1]} | {"created": "float64"})
        df["created"] = pd.to_datetime(df["created"], unit="s", utc=True)
        return df

    def sweep_runs(self, sweep: str) -> list[RunRecord]:
        """The runs of ``sweep`` in the order they were created (empty if there is no such sweep)."""
        found = self._read("SELECT id FROM runs WHERE sweep = ? ORDER BY created, rowid", (sweep,))
        return [self.get_run(r[0]) for r in found]

    def metrics(self, run_id: str, after: int = -1, columns: list[str] | None = None) -> pd.DataFrame:
        """Rows with step > ``after``, by step: ``step`` (int64) first, then ``columns`` (default all, float64)."""
        names = self._run_columns(run_id)
        wanted = ["step", *[c for c in (columns or names) if c != "step"]]
        unknown = [c for c in wanted if c not in names and names]
        if unknown:
            raise KeyError(f"run {run_id}: no column {', '.join(map(repr, unknown))}; it has {', '.join(names)}")
        query = "SELECT data FROM metrics WHERE run_id = ? AND last > ? ORDER BY rowid"
        blobs = self._read(query, (run_id, int(after)), "reading metrics")
        if not names:
            return pd.DataFrame({"step": np.zeros(0, dtype=np.int64)})
        data = _newest(np.frombuffer(b"".join(b[0] for b in blobs), dtype="<f8").reshape(-1, len(names)), after)
        data = data[:, [names.index(c) for c in wanted]]  # fancy indexing copies: the frame owns its memory
        df = pd.DataFrame(data, columns=wanted)
        df["step"] = df["step"].astype("int64")
        return df

    def last_row(self, run_id: str) -> dict[str, float]:
        """The latest metric row as {column: value} (empty if none yet)."""
        names = self._run_columns(run_id)
        found = self._read(
            "SELECT data FROM metrics WHERE run_id = ? ORDER BY last DESC, rowid DESC LIMIT 1", (run_id,)
        )
        if not found or not names:
            return {}
        rows = np.frombuffer(found[0][0], dtype="<f8").reshape(-1, len(names))
        return dict(zip(names, _newest(rows)[-1].tolist()))

    def neurons(self, run_id: str, step: int | None = None) -> pd.DataFrame:
        """The latest snapshot at or before ``step`` (default: the latest; before the first: the first).

        Columns: ``step`` of the snapshot, then the table's keys (``layer`` and ``neuron`` as int64).
        """
        base = "SELECT step, keys, n, data FROM neurons WHERE run_id = ?"
        found = self._read(f"{base} ORDER BY step DESC LIMIT 1", (run_id,)) if step is None else []
        if step is not None:
            found = self._read(f"{base} AND step <= ? ORDER BY step DESC LIMIT 1", (run_id, int(step)))
            found = found or self._read(f"{base} ORDER BY step LIMIT 1", (run_id,))
        if not found:
            self._run_columns(run_id)  # raises for an unknown run
            return pd.DataFrame({"step": np.zeros(0, dtype=np.int64)})
        k, keys, n, data = found[0]
        keys = json.loads(keys)
        values = np.frombuffer(data, dtype="<f8").reshape(len(keys), n)
        df = pd.DataFrame({"step": np.full(n, k, dtype=np.int64), **dict(zip(keys, values.copy()))})
        return df.astype({key: "int64" for key in ("layer", "neuron") if key in keys})

    def neuron_steps(self, run_id: str) -> list[int]:
        return [r[0] for r in self._read("SELECT step FROM neurons WHERE run_id = ? ORDER BY step", (run_id,))]

    def events(self, run_id: str) -> pd.DataFrame:
        """Columns: step, time (UTC), kind, value (float; NaN for text events), text."""
        found = self._read(
            "SELECT step, time, kind, value, text FROM events WHERE run_id = ? ORDER BY step, rowid", (run_id,)
        )
        if not found:
            self._run_columns(run_id)  # raises for an unknown run
        df = pd.DataFrame(found, columns=["step", "time", "kind", "value", "text"])
        df = df.astype({"step": "int64", "time": "float64", "value": "float64", "kind": "str", "text": "str"})
        df["time"] = pd.to_datetime(df["time"], unit="s", utc=True)
        return df

    # --- files -------------------------------------------------------------------------------------------

    def export_run(self, run_id: str, path: str | Path) -> None:
        from balance.archive import write_archive

        write_archive(self, run_id, Path(path))

    def import_run(self, path: str | Path) -> str:
        """Add the run in an exported file (validated strictly; see ``balance.archive``); returns its id here."""
        from balance.archive import read_archive

        return read_archive(self, Path(path))

    def _raw_run(self, run_id: str) -> dict[str, Any]:
        found = self._read(
            "SELECT id, name, sweep, config, columns, state, step, message, created, updated FROM runs WHERE id = ?",
            (run_id,),
        )
        if not found:
            raise self._missing(run_id)
        keys = ("id", "name", "sweep", "config", "columns", "state", "step", "message", "created", "updated")
        raw = dict(zip(keys, found[0]))
        raw["config"], raw["columns"] = json.loads(raw["config"]), json.loads(raw["columns"])
        return raw

    def _insert_run(self, raw: dict[str, Any], rows: np.ndarray, events: list[tuple], neurons: list[tuple]) -> str:
        """Insert a validated run (import); keeps its id when free."""
        with self._write("importing a run") as conn:
            run_id = raw["id"]
            while conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                run_id = secrets.token_hex(4)
            conn.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '')",
                (run_id, raw["name"], raw["sweep"], json.dumps(raw["config"]), json.dumps(raw["columns"]),
                 raw["state"], raw["step"], raw["message"], raw["created"], raw["updated"]),
            )  # fmt: skip
            batches = [rows[i : i + 4096] for i in range(0, len(rows), 4096)]
            conn.executemany(
                "INSERT INTO metrics VALUES (?, ?, ?, ?, ?)",
                [(run_id, int(b[0, 0]), int(b[-1, 0]), len(b), b.astype("<f8").tobytes()) for b in batches],
            )
            conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", [(run_id, *e) for e in events])
            conn.executemany("INSERT INTO neurons VALUES (?, ?, ?, ?, ?)", [(run_id, *s) for s in neurons])
        return run_id


def _newest(data: np.ndarray, after: float = -1) -> np.ndarray:
    """Rows (in write order) with step > ``after``, by step, keeping the last written row of each step."""
    data = data[data[:, 0] > after]
    steps = data[:, 0]
    if len(steps) < 2 or np.all(steps[1:] > steps[:-1]):  # the usual case: nothing to sort or replace
        return data
    _, last = np.unique(steps[::-1], return_index=True)  # first in reverse = last written; sorted by step
    return data[len(steps) - 1 - last]


def _thin(steps: list[int], limit: int) -> list[int]:
    """Steps to drop so that the first, the last and ``limit`` between them nearest an even grid remain."""
    middle = np.asarray(steps[1:-1])
    grid = np.linspace(steps[0], steps[-1], limit + 2)[1:-1]
    right = np.clip(np.searchsorted(middle, grid), 1, len(middle) - 1)
    left = right - 1
    nearest = np.where(grid - middle[left] <= middle[right] - grid, left, right)
    keep = set(middle[nearest].tolist())
    return [k for k in middle.tolist() if k not in keep]


def _check_columns(columns: Sequence[str], allow_empty: bool = False) -> None:
    if not columns and allow_empty:
        return
    if not columns or columns[0] != "step" or len(set(columns)) != len(columns):
        raise ValueError(f"metric columns must be unique and start with 'step', got {list(columns)[:5]}...")
