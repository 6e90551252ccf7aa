"""Run persistence: every run's config, status, metrics, events and neuron snapshots in one SQLite file.

The store is the single source of truth for the dashboard and the CLI. It lives in ``<home>/runs.db``, where home
is the argument, else ``$BALANCE_HOME``, else ``~/.balance``. WAL mode lets readers read while a run writes; each
run has one writer (the process training it), which commits in batches.

Tables (timestamps are Unix seconds). Metrics are stored a batch at a time: one blob per ``append_rows`` holds
its rows as little-endian float64 in the run's column order, so a run of any model fits one table, a writer pays
one insert per batch instead of one per row (3% of an MF step), and a read is one ``np.frombuffer``. A step
written again (a paused run logs its current state, which training logs again on resuming) reads as its newest
row::

    meta(key, value)                                  app = balance, schema = 3
    runs(id, name, sweep, config JSON, columns JSON, state, step, message, created, updated, owner, origin)
    metrics(run_id, first, last, n, data BLOB)        a batch of n rows, steps first .. last; rowid = write order
    events(run_id, step, time, kind, value, text)     e.g. kind = "lr": a step-size change applied from ``step``
    neurons(run_id, step, keys JSON, n, data BLOB)    per-neuron snapshot: len(keys) float64 arrays of n values

``owner`` names the process that drives an active run (``host:pid:start-time``); a run whose owner has died is
marked ``interrupted`` (one statement) the next time a store is opened for writing, keeping every row committed
before. Where that write is impossible (a full disk, a read-only store) reads show such a run as interrupted all the
same, and the marking waits for the next write.

``origin`` is ``trained`` (this installation ran it), ``watched`` (``balance.watch`` logged a training loop of the
user's own; its config is a stand-in) or ``imported`` (from a file); an archive cannot set it, so
whatever reuses results (``balance.runs.reuse``) can keep to runs trained here. Schema 2 stores (without ``origin``) are
migrated on the first writable open (every existing run was trained here); read-only they are read as they are.

Writes are atomic: each writing method, and each ``transaction()`` block, commits all of its rows or none (a
failure rolls back and leaves the store usable). Retrying a failed write is therefore safe, and retrying one whose
outcome is unknown is too: a metrics batch identical to one already stored for its steps is not stored again, a
step written again reads as its newest row, a snapshot at a stored step replaces it, and an event identical to the
run's latest event of that kind is not recorded twice.

No torch here. SQLite errors surface as ``StoreError`` with a plain message and a ``kind``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from balance.config import ConfigError, RunConfig
from balance.engine.status import ACTIVE, STATES
from balance.runs.record import LIVE_EVENTS, RunRecord, changes_from_events, lr_history

log = logging.getLogger(__name__)

SCHEMA = 3
ORIGINS = ("trained", "imported", "watched")
_ACTIVE_SQL = "('queued', 'running', 'paused')"
_LIVE_SQL = ", ".join(f"'{kind}'" for kind in LIVE_EVENTS)
NEURON_SNAPSHOTS = 200  # kept per run between the first and the last
NEURON_BYTES = 64 << 20  # and at most this many bytes of snapshots per run

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, sweep TEXT NOT NULL, config TEXT NOT NULL, columns TEXT NOT NULL,
    state TEXT NOT NULL, step INTEGER NOT NULL, message TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    owner TEXT NOT NULL, origin TEXT NOT NULL DEFAULT 'trained');
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
    (not a database, a damaged one, or one run's damaged row), ``foreign`` (an SQLite file that is not a balance
    store), ``missing`` (no such run), ``invalid`` (a file refused on import), ``duplicate`` (an imported file whose
    run is already stored), ``readonly`` (a write to a store opened read-only), ``io`` (anything else from the file
    system).
    """

    def __init__(self, message: str, kind: str = "io") -> None:
        super().__init__(message)
        self.kind = kind


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
    except (PermissionError, OverflowError):
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


def _owner_pid(token: str) -> str:
    return token.split(":")[-2] if token.count(":") >= 2 else "?"


def _interrupted(step: int, owner: str) -> str:
    return f"interrupted at step {step}: the process running it (pid {_owner_pid(owner)}) ended before it finished"


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
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return StoreError(f"{path} cannot be written (read-only) while {doing}", "readonly")
    return StoreError(f"{path}: {doing} failed: {text}", "io")


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


class RunStore:
    """One SQLite store, safe to share between threads (one connection behind a lock).

    ``timeout``: seconds to wait for another writer before ``StoreError(kind="locked")``. ``max_bytes``: a size
    limit; writes past it fail like a full disk. ``read_only``: open without ever writing (no folder or file is
    created, nothing is migrated or marked; a missing store reads as an empty one): what listing and exporting
    need, and all a full disk or a read-only folder allows.
    """

    def __init__(
        self,
        home: str | Path | None = None,
        timeout: float = 5.0,
        max_bytes: int | None = None,
        read_only: bool = False,
    ) -> None:
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.path = self.home / "runs.db"
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.read_only = read_only
        self._lock = threading.RLock()
        self._depth = 0
        self._columns: dict[str, list[str]] = {}
        self._origin = "origin"  # the SQL that reads a run's origin ("'trained'" in an unmigrated schema 2 store)
        self._unmarked = read_only  # runs of dead owners may still read as active: show them as interrupted
        self._mark_later = False  # marking them failed (a full disk): try again before the next write
        self._memory = False  # a read-only view of a store that does not exist yet
        self._conn = self._connect()
        try:
            self._open()
        except BaseException:
            self._conn.close()
            raise

    def _connect(self, immutable: bool = False) -> sqlite3.Connection:
        try:
            if not self.read_only:
                self.home.mkdir(parents=True, exist_ok=True)
                return sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            if not self.path.exists():
                self._memory = True
                return sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            uri = self.path.absolute().as_uri() + ("?mode=ro&immutable=1" if immutable else "?mode=ro")
            return sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}", "io") from exc

    def _open(self) -> None:
        try:
            tables = self._tables()
        except StoreError as exc:
            if not (self.read_only and exc.kind == "io" and self._wal_empty()):
                raise
            # a read-only folder or a full disk where SQLite cannot make its shared-memory file: with nothing in
            # the write-ahead log the database file alone is the whole store, and can be read as it is
            self._conn.close()
            self._conn = self._connect(immutable=True)
            tables = self._tables()
        with self._guard("opening the store"):
            if tables and "meta" not in tables:
                raise StoreError(f"{self.path} is an SQLite database but not a balance store", "foreign")
            if not tables:
                self._create()
            if not self.read_only:
                if self._conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across process crashes
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("app") != "balance":
                raise StoreError(f"{self.path} is an SQLite database but not a balance store", "foreign")
            if meta.get("schema") not in ("2", str(SCHEMA)):
                raise StoreError(
                    f"{self.path} has store schema {meta.get('schema')}, this balance reads schema {SCHEMA}; "
                    "move it away to start a new store",
                    "foreign",
                )
            if self.max_bytes:
                page = self._conn.execute("PRAGMA page_size").fetchone()[0]
                self._conn.execute(f"PRAGMA max_page_count = {max(16, int(self.max_bytes) // page)}")
        if meta["schema"] == "2":
            self._origin = "'trained'"
            if not self.read_only:
                self._deferred(self._migrate, "upgrading the store")
        if not self.read_only:
            self._try_marking()

    def _tables(self) -> set[str]:
        with self._lock, self._guard("opening the store"):
            return {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _wal_empty(self) -> bool:
        wal = self.path.with_name(self.path.name + "-wal")
        return not wal.exists() or wal.stat().st_size == 0

    def _create(self) -> None:
        with self._write("creating the store"):
            for statement in _DDL.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            self._conn.executemany(
                "INSERT OR IGNORE INTO meta VALUES (?, ?)", [("app", "balance"), ("schema", str(SCHEMA))]
            )

    def _migrate(self) -> None:
        """Schema 2 -> 3: add ``origin``; every run already there was trained by this installation."""
        with self._write("upgrading the store to schema 3") as conn:
            if conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == "2":
                conn.execute("ALTER TABLE runs ADD COLUMN origin TEXT NOT NULL DEFAULT 'trained'")
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA),))
        self._origin = "origin"

    def _deferred(self, write: Any, what: str, quiet: bool = False) -> str:
        """Do ``write`` now if the store takes writes; if it cannot (full, locked, read-only), leave it for later
        (reading never depends on it) and return the kind of failure ("" when done)."""
        try:
            write()
        except StoreError as exc:
            if exc.kind not in ("full", "locked", "readonly", "io"):
                raise
            (log.debug if quiet else log.warning)("balance store: %s deferred: %s", what, exc)
            return exc.kind
        return ""

    def _try_marking(self, quiet: bool = False) -> None:
        failed = self._deferred(self.mark_interrupted, "marking interrupted runs", quiet)
        self._unmarked = bool(failed)
        # a full disk may have room again at the next write; under another writer's lock, waiting twice per write
        # would only slow that write down: the next store opened marks them
        self._mark_later = failed not in ("", "locked")

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
        """One write transaction (BEGIN IMMEDIATE takes the lock up front); nested uses join the outer one.

        All or nothing: if anything inside fails, or the commit itself does, the transaction is rolled back and the
        store is left as it was, ready for a retry.
        """
        if self.read_only and not self._memory:
            raise StoreError(f"{self.path} was opened read-only; {doing} needs a writable store", "readonly")
        with self._lock:
            if self._depth == 0 and self._mark_later:
                self._mark_later = False  # a write may be possible again: first mark what could not be marked
                self._try_marking(quiet=True)
            with self._guard(doing):
                if self._depth == 0:
                    self._conn.execute("BEGIN IMMEDIATE")
                self._depth += 1
                try:
                    yield self._conn
                except BaseException:
                    self._depth -= 1
                    if self._depth == 0:
                        self._rollback()
                    raise
                self._depth -= 1
                if self._depth == 0:
                    try:
                        self._conn.execute("COMMIT")
                    except BaseException:
                        self._rollback()  # a failed COMMIT can leave the transaction open: end it
                        raise

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:  # pragma: no cover - SQLite has rolled back on its own already
                log.warning("balance store: rollback failed after a failed write", exc_info=True)

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
        try:
            columns = _column_list(found[0][0])
        except (ValueError, TypeError) as exc:
            raise self._corrupt(run_id, exc) from None
        if columns:  # fixed once set; a queued run's are set when it starts
            self._columns[run_id] = columns
        return columns

    # --- writing -----------------------------------------------------------------------------------------

    def create_run(
        self, config: RunConfig, columns: list[str], name: str = "", sweep: str = "", origin: str = "trained"
    ) -> str:
        """A new run, state ``queued``, owned by this process. ``columns`` may be empty until ``claim_run``.

        ``origin``: ``trained`` (by this installation's engine) or ``watched`` (a training loop of the user's own,
        ``balance.watch``: its config is only a stand-in for the optimiser's settings); ``imported`` is set by
        ``import_run`` alone."""
        if origin not in ("trained", "watched"):
            raise ValueError(f"origin {origin!r}: a new run is 'trained' or 'watched' ('imported' comes from a file)")
        _check_columns(columns, allow_empty=True)
        if origin != "trained" and self._origin != "origin":
            self._migrate()  # a watched run must never read as trained (reuse takes trained runs as cached results)
        now, text = time.time(), json.dumps(config.to_dict())
        for _ in range(16):
            run_id = secrets.token_hex(4)
            with self._write("creating a run") as conn:
                if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                    continue
                conn.execute(
                    "INSERT INTO runs (id, name, sweep, config, columns, state, step, message, created, updated, owner,"
                    " origin) VALUES (?, ?, ?, ?, ?, 'queued', 0, '', ?, ?, ?, ?)",
                    (run_id, name, sweep, text, json.dumps(columns), now, now, owner_token(), origin),
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

        A row for a step already stored supersedes it; a batch identical to one already stored is not stored again
        (so a writer may retry a batch whose outcome it does not know).
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
        values = (run_id, int(steps.min()), int(steps.max()), len(data), data.tobytes())
        with self._write("appending rows") as conn:
            self._touch(conn, run_id)
            same = conn.execute(
                "SELECT 1 FROM metrics WHERE run_id = ? AND first = ? AND last = ? AND n = ? AND data = ?", values
            ).fetchone()
            if same is None:
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
        """Record an event (``kind = "lr"``: the step size ``value`` applies from ``step`` on). The same event as
        the run's latest of its kind (a retried write) is not recorded twice."""
        number, text = (None, value) if isinstance(value, str) else (float(value), "")
        with self._write("recording an event") as conn:
            self._touch(conn, run_id)
            latest = conn.execute(
                "SELECT step, value, text FROM events WHERE run_id = ? AND kind = ? ORDER BY rowid DESC LIMIT 1",
                (run_id, kind),
            ).fetchone()
            if latest != (int(step), number, text):
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

    def save_result(self, run_id: str, result: Any) -> None:
        """Record a run trained in memory (``balance.runs.loop.RunResult``: metrics, status, live changes, neuron
        snapshots) as ``run_id``, created queued by this store: all or nothing, one transaction."""
        columns = [str(c) for c in result.metrics.columns]
        with self.transaction():
            if columns:
                self.claim_run(run_id, columns)
                self.append_rows(run_id, result.metrics.to_numpy(dtype="float64"))
            for change in result.changes:
                self.record_event(run_id, change.step, change.event, change.value)
            for step, table in result.neurons:
                self.save_neurons(run_id, step, table)
            status = result.status
            self.set_status(run_id, status.state, status.step, status.message)

    def record(self, result: Any, name: str = "", sweep: str = "") -> str:
        """A new run holding ``result`` (a ``RunResult`` with its config), all or nothing; returns its id."""
        with self.transaction():
            run_id = self.create_run(result.config, [], name=name, sweep=sweep)
            self.save_result(run_id, result)
        return run_id

    def delete_run(self, run_id: str) -> None:
        with self._write("deleting a run") as conn:
            if conn.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount == 0:
                raise self._missing(run_id)
            for table in ("metrics", "events", "neurons"):
                conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
        self._columns.pop(run_id, None)

    def mark_interrupted(self) -> list[str]:
        """Mark active runs whose owning process has died as ``interrupted`` (one UPDATE); returns their ids.

        Each distinct owner is looked up once; the dead ones go to a temporary table (keyed by owner) that the one
        UPDATE joins, so marking 56,353 runs is one statement rather than 56,353 transactions.
        """
        if self.read_only:
            return []
        owners = [r[0] for r in self._read(f"SELECT DISTINCT owner FROM runs WHERE state IN {_ACTIVE_SQL}")]
        dead = [(owner, _owner_pid(owner)) for owner in owners if not owner_alive(owner)]
        if not dead:
            return []
        where = f"state IN {_ACTIVE_SQL} AND owner IN (SELECT owner FROM temp.dead_owners)"
        with self._write("marking interrupted runs") as conn:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS dead_owners (owner TEXT PRIMARY KEY, pid TEXT NOT NULL)")
            conn.execute("DELETE FROM temp.dead_owners")
            conn.executemany("INSERT OR IGNORE INTO temp.dead_owners VALUES (?, ?)", dead)
            ids = [r[0] for r in conn.execute(f"SELECT id FROM runs WHERE {where}")]
            conn.execute(
                "UPDATE runs SET state = 'interrupted', updated = ?, message = 'interrupted at step ' || step || "
                "': the process running it (pid ' || (SELECT pid FROM temp.dead_owners d WHERE d.owner = runs.owner)"
                f" || ') ended before it finished' WHERE {where}",
                (time.time(),),
            )
            conn.execute("DELETE FROM temp.dead_owners")
        return ids

    # --- reading -----------------------------------------------------------------------------------------

    def list_runs(self) -> pd.DataFrame:
        """One row per run, newest first: id, name, state, step, message, created, updated (UTC), model, dataset,
        optimizer, lr, init_scale, steps, sweep, origin ("trained" or "imported"), lr_history ("" if the step size
        never changed, else e.g. "0.01 → 0.05 at step 300").

        A run whose row is damaged is listed with state ``unreadable`` and the reason as its message; the others
        are unaffected.
        """
        found = self._read(
            "SELECT id, name, state, step, message, created, updated, config, sweep, owner, "
            f"{self._origin} FROM runs ORDER BY created DESC"
        )
        changes = self._lr_changes()
        alive: dict[str, bool] = {}
        rows = []
        for run_id, name, state, step, message, created, updated, text, sweep, owner, origin in found:
            try:
                c = _config_dict(text)
                m, d, o = c.get("model", {}), c.get("data", {}), c.get("optim", {})
                lr, history = float(o.get("lr", math.nan)), lr_history(o.get("lr", math.nan), changes.get(run_id, []))
                row = [run_id, str(name), str(state), int(step), str(message), float(created), float(updated),
                       str(m.get("name", "")), str(d.get("name", "")), str(o.get("name", "")), lr,
                       float(m.get("init_scale", math.nan)), int(c.get("steps", 0)), str(sweep), str(origin),
                       history]  # fmt: skip
            except (ValueError, TypeError, AttributeError, OverflowError) as exc:
                log.warning("balance store: run %s is unreadable: %s", run_id, exc)
                row = [str(run_id), str(name), "unreadable", 0, f"this run's record is damaged ({str(exc)[:200]})",
                       _number(created), _number(updated), "", "", "", math.nan, math.nan, 0, str(sweep), str(origin),
                       ""]  # fmt: skip
            if self._unmarked and row[2] in ACTIVE and not alive.setdefault(owner, owner_alive(owner)):
                row[2], row[4] = "interrupted", _interrupted(row[3], owner)
            rows.append(row)
        columns = "id name state step message created updated model dataset optimizer lr init_scale steps sweep"
        df = pd.DataFrame(rows, columns=[*columns.split(), "origin", "lr_history"])
        df = df.astype({"step": "int64", "steps": "int64", "lr": "float64", "init_scale": "float64"})
        for key in ("created", "updated"):
            df[key] = pd.to_datetime(df[key].astype("float64"), unit="s", utc=True)
        return df

    def _lr_changes(self, run_id: str | None = None) -> dict[str, list[tuple[int, float]]]:
        """Each run's step-size events as (step, lr) in the order they apply."""
        where, args = ("AND run_id = ?", (run_id,)) if run_id else ("", ())
        found = self._read(
            f"SELECT run_id, step, value FROM events WHERE kind = 'lr' {where} ORDER BY step, rowid", args
        )
        out: dict[str, list[tuple[int, float]]] = {}
        for rid, step, value in found:
            if isinstance(value, (int, float)):
                out.setdefault(rid, []).append((int(step), float(value)))
        return out

    def lr_history(self, run_id: str) -> str:
        """``lr_history`` of one run (see ``list_runs``); "" if its step size never changed."""
        return lr_history(self.get_run(run_id).config.optim.lr, self._lr_changes(run_id).get(run_id, []))

    def get_run(self, run_id: str) -> RunRecord:
        """The run's record; ``StoreError`` kind ``missing`` if there is none, ``corrupt`` if its row is damaged."""
        found = self._read(
            "SELECT config, state, step, message, created, updated, columns, name, sweep, owner, "
            f"{self._origin} FROM runs WHERE id = ?",
            (run_id,),
        )
        if not found:
            raise self._missing(run_id)
        text, state, step, message, created, updated, columns, name, sweep, owner, origin = found[0]
        events = self._read(
            f"SELECT step, kind, value FROM events WHERE run_id = ? AND kind IN ({_LIVE_SQL}) ORDER BY step, rowid",
            (run_id,),
        )
        try:
            config = RunConfig.from_dict(_config_dict(text))
            record = RunRecord(
                run_id, config, str(state), int(step), str(message), _utc(float(created)), _utc(float(updated)),
                _column_list(columns), str(name), str(sweep), str(origin), changes_from_events(events),
            )  # fmt: skip
            record.versions  # noqa: B018  (each version must be a valid config: else the record is damaged)
        except (ConfigError, ValueError, TypeError, AttributeError, OverflowError, OSError) as exc:
            raise self._corrupt(run_id, exc) from None
        if self._unmarked and record.state in ACTIVE and not owner_alive(owner):
            record = replace(record, state="interrupted", message=_interrupted(record.step, owner))
        return record

    def load(self, run_id: str) -> RunRecord:
        """``get_run`` with its metrics (``RunRecord.metrics``): a run read back whole, for an analysis."""
        return replace(self.get_run(run_id), metrics=self.metrics(run_id))

    def _matrix(self, run_id: str, data: bytes, width: int) -> np.ndarray:
        """Stored float64 rows of ``width`` values (``corrupt`` if the bytes cannot be such rows)."""
        try:
            return np.frombuffer(data, dtype="<f8").reshape(-1, width)
        except (ValueError, TypeError) as exc:
            raise self._corrupt(run_id, exc) from None

    def _corrupt(self, run_id: str, exc: BaseException) -> StoreError:
        return StoreError(
            f"run {run_id} in {self.path} is unreadable: its record is damaged ({str(exc)[:200]}); "
            "delete it (balance runs delete) or export the others",
            "corrupt",
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
        records = []
        for (run_id,) in found:
            try:
                records.append(self.get_run(run_id))
            except StoreError as exc:
                if exc.kind != "corrupt":
                    raise
                log.warning("balance store: %s (left out of sweep %s)", exc, sweep)
        return records

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
        data = _newest(self._matrix(run_id, b"".join(b[0] for b in blobs), len(names)), after)
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
        rows = self._matrix(run_id, found[0][0], len(names))
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
        try:
            keys = _column_list(keys)
            values = np.frombuffer(data, dtype="<f8").reshape(len(keys), n)
        except (ValueError, TypeError) as exc:
            raise self._corrupt(run_id, exc) from None
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
        """Write ``run_id`` to one portable file at ``path`` (see ``balance.runs.archive``); works read-only."""
        from balance.runs.archive import write_archive

        write_archive(self, run_id, Path(path))

    def import_run(self, path: str | Path, name: str | None = None) -> str:
        """Add the run in an exported file (validated strictly; see ``balance.runs.archive``); returns its id here.

        ``name`` is what messages call the file (an upload's name rather than the temporary file holding it).
        ``StoreError`` kind ``invalid`` for a refused file, ``duplicate`` if the same run is stored already.
        The run is marked ``origin = "imported"``. For a file from someone else,
        ``balance.runs.archive.import_in_worker``
        does the same in a separate, memory-limited process.
        """
        from balance.runs.archive import read_archive

        return read_archive(self, Path(path), name)

    def _raw_run(self, run_id: str) -> dict[str, Any]:
        found = self._read(
            "SELECT id, name, sweep, config, columns, state, step, message, created, updated FROM runs WHERE id = ?",
            (run_id,),
        )
        if not found:
            raise self._missing(run_id)
        keys = ("id", "name", "sweep", "config", "columns", "state", "step", "message", "created", "updated")
        raw = dict(zip(keys, found[0]))
        try:
            raw["config"], raw["columns"] = _config_dict(raw["config"]), _column_list(raw["columns"])
        except (ValueError, TypeError) as exc:
            raise self._corrupt(run_id, exc) from None
        return raw

    def _stored_digest(self, run_id: str) -> str:
        """``content_digest`` of a stored run, as an export of it would read back."""
        raw = self._raw_run(run_id)
        blobs = self._read("SELECT data FROM metrics WHERE run_id = ? ORDER BY rowid", (run_id,))
        width = len(raw["columns"])
        rows = _newest(self._matrix(run_id, b"".join(b[0] for b in blobs), width)) if width else np.zeros((0, 0))
        events = self._read(
            "SELECT step, time, kind, value, text FROM events WHERE run_id = ? ORDER BY step, rowid", (run_id,)
        )
        neurons = self._read("SELECT step, keys, n, data FROM neurons WHERE run_id = ? ORDER BY step", (run_id,))
        return content_digest(raw, rows, events, neurons)

    def _insert_run(
        self, raw: dict[str, Any], rows: np.ndarray, events: list[tuple], neurons: list[tuple], label: str
    ) -> str:
        """Insert a validated run (import) as ``origin = "imported"``; keeps its id when free.

        ``StoreError`` kind ``duplicate`` (its message starts with ``label``) if this file was imported already: an
        imported run with the same content and the same id, or the same name and creation time (a file imported
        once under a new id), or a run trained here whose export this is (same id and content: issue 12.4).
        """
        digest = content_digest(raw, rows, events, neurons)
        if self._origin != "origin":
            self._migrate()  # never store an imported run where it could not be told from a trained one
        with self._write("importing a run") as conn:
            same = conn.execute(
                "SELECT id FROM runs WHERE id = ? OR (origin = 'imported' AND created = ? AND name = ?)",
                (raw["id"], raw["created"], raw["name"]),
            ).fetchall()
            for (other,) in same:
                try:
                    if self._stored_digest(other) == digest:
                        raise StoreError(f"{label}: already stored as run {other}; nothing imported", "duplicate")
                except StoreError as exc:
                    if exc.kind != "corrupt":
                        raise
            run_id = raw["id"]
            while conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                run_id = secrets.token_hex(4)
            conn.execute(
                "INSERT INTO runs (id, name, sweep, config, columns, state, step, message, created, updated, owner, "
                "origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', 'imported')",
                (run_id, raw["name"], raw["sweep"], json.dumps(raw["config"]), json.dumps(raw["columns"]),
                 raw["state"], raw["step"], raw["message"], raw["created"], raw["updated"]),
            )  # fmt: skip
            batches = (rows[i : i + 4096] for i in range(0, len(rows), 4096))  # one batch in memory at a time
            conn.executemany(
                "INSERT INTO metrics VALUES (?, ?, ?, ?, ?)",
                ((run_id, int(b[0, 0]), int(b[-1, 0]), len(b), b.astype("<f8").tobytes()) for b in batches),
            )
            conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", [(run_id, *e) for e in events])
            conn.executemany("INSERT INTO neurons VALUES (?, ?, ?, ?, ?)", ((run_id, *s) for s in neurons))
        return run_id


def content_digest(raw: dict[str, Any], rows: np.ndarray, events: Sequence[tuple], neurons: Sequence[tuple]) -> str:
    """SHA-256 of a run's content as stored: its record (not its id or origin), metric rows, events (step, time,
    kind, value, text; stably by step) and neuron snapshots (step, keys JSON, n, data; by step)."""
    head = [raw["name"], raw["sweep"], raw["config"], raw["columns"], raw["state"], int(raw["step"]), raw["message"],
            float(raw["created"]), float(raw["updated"])]  # fmt: skip
    digest = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(rows, dtype="<f8").tobytes())
    ordered = sorted(events, key=lambda e: e[0])
    plain = [
        [int(k), round(float(t), 3), kind, None if v is None else float(v), text] for k, t, kind, v, text in ordered
    ]
    digest.update(json.dumps(plain).encode())
    for step, keys, n, data in sorted(neurons, key=lambda s: s[0]):
        digest.update(json.dumps([int(step), keys, int(n), len(data)]).encode())
        digest.update(data)
    return digest.hexdigest()


def _config_dict(text: Any) -> dict[str, Any]:
    """A stored config's JSON as a dict whose model, data and optim sections are dicts (else ``ValueError``)."""
    try:
        c = json.loads(text)
    except RecursionError:
        raise ValueError("its config is nested too deeply") from None
    if not isinstance(c, dict) or not all(isinstance(c.get(k, {}), dict) for k in ("model", "data", "optim")):
        raise ValueError("its config is not a table of settings")
    return c


def _column_list(text: Any) -> list[str]:
    columns = json.loads(text)
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise ValueError("its metric columns are not a list of names")
    return columns


def _number(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


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
    values = np.asarray(steps)
    kept = set(values[kept_steps(values, limit)].tolist())
    return [k for k in steps if k not in kept]


def kept_steps(steps: np.ndarray, limit: int) -> np.ndarray:
    """Positions in the increasing ``steps`` of the first, the last and those nearest ``limit`` points of an even
    grid between them (all of them if there are at most ``limit + 2``); vectorised, for millions of steps."""
    if len(steps) <= limit + 2:
        return np.arange(len(steps))
    middle = steps[1:-1]
    grid = np.linspace(steps[0], steps[-1], limit + 2)[1:-1]
    right = np.clip(np.searchsorted(middle, grid), 1, len(middle) - 1)
    left = right - 1
    nearest = np.where(grid - middle[left] <= middle[right] - grid, left, right)
    return np.unique(np.concatenate([[0], nearest + 1, [len(steps) - 1]]))


def _check_columns(columns: Sequence[str], allow_empty: bool = False) -> None:
    if not columns and allow_empty:
        return
    if not columns or columns[0] != "step" or len(set(columns)) != len(columns):
        raise ValueError(f"metric columns must be unique and start with 'step', got {list(columns)[:5]}...")
