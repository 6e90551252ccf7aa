"""The loop's sink in a worker process (``balance.runs.worker``): a job's rows, neuron snapshots, live changes and
statuses to the store, as they train.

Saving never blocks training for long and never loses a row: each save is one transaction (claims, events,
statuses, rows, neuron snapshots of every run of the job) on a connection with a short busy timeout, at least every
``FLUSH_SECONDS``. If another process holds the store's write lock (an import, a sweep), the rows stay in memory and
the save is retried with back-off for as long as the job lives; the status says so. Held rows are bounded
(``PENDING_BYTES``, shared by the job's runs): beyond that every other held row is dropped (never the latest), and an
event ``rows_thinned`` records it. A job that ends while the store is locked keeps trying to save its last rows;
only an ``exit`` (the runner shutting down) makes it give up after a few seconds. A deleted run leaves the job
quietly; any other refusal (a full disk) fails the job's runs, keeping as many of their first rows as fit.

After every save the parent is told each run's ``RunStatusView`` (``status``), and once per run, when its last rows
and status are saved or given up on, ``ended``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from balance.config import RunConfig
from balance.engine.status import RunStatus
from balance.runs.limits import PENDING_BYTES
from balance.runs.record import Change
from balance.runs.store import RunStore, StoreError

if TYPE_CHECKING:
    from balance.engine.engine import Engine
    from balance.runs.worker import PipeControl

FLUSH_SECONDS = 0.2  # rows reach the store at least this often while a run trains
MAX_BACKOFF = 2.0  # the longest wait between two tries of a save the store refused as locked
HELD_SNAPSHOTS = 8  # neuron snapshots held per run while the store is locked (the first and the latest ones)
EXIT_SAVE_SECONDS = 3.0  # told to exit while its last rows wait for the store: keep trying this long


@dataclass(frozen=True)
class RunStatusView:
    """What a page shows about a run: its state (``balance.engine.status.STATES``) and progress, the latest t, loss
    and step size, and while it is queued its place in the queue (1 = next; 0 when not queued) and why it waits (in
    ``message``)."""

    id: str
    state: str
    step: int
    message: str = ""
    steps_per_second: float = 0.0
    t: float = math.nan
    loss: float = math.nan
    lr: float = math.nan
    queue_position: int = 0

    @property
    def status(self) -> RunStatus:
        return RunStatus(self.state, self.step, self.message)


class _Run:
    """One run of a job as the sink sees it: what waits to be saved, and whether it has ended."""

    def __init__(self, run_id: str) -> None:
        self.id = run_id
        self.rows: list[np.ndarray] = []  # taken since the last save
        self.held: np.ndarray | None = None  # rows a locked store refused, oldest first
        self.snaps: list[tuple[int, dict]] = []
        self.events: list[tuple[int, str, float | str]] = []
        self.ended: RunStatus | None = None  # its final status, once the loop has told
        self.done = False  # its final status is saved (or given up on): nothing more goes to the store
        self.dropped = 0  # held rows dropped to stay within PENDING_BYTES
        self.last = (math.nan, math.nan, math.nan)  # t, loss, lr at the latest report

    def data(self) -> np.ndarray:
        fresh = np.asarray(self.rows, dtype=np.float64)
        if self.held is None:
            return fresh
        return np.concatenate([self.held, fresh]) if len(fresh) else self.held


class StoreSink:
    """The loop's sink in a worker: batches of rows, snapshots, changes and statuses to the store, one transaction
    every ``FLUSH_SECONDS``; held and retried while another process holds the store (see the module docstring)."""

    def __init__(self, store: RunStore, messages: Any, ids: list[str]) -> None:
        self.store, self.messages = store, messages
        self.runs = [_Run(run_id) for run_id in ids]
        self.engine: Engine | None = None
        self.columns: list[str] = []
        self.claimed = False
        self.error: StoreError | None = None
        self.locked_since: float | None = None  # the store has refused saves as locked since then
        self.next_save, self.backoff = 0.0, FLUSH_SECONDS
        self.rate_mark = (time.monotonic(), 0)
        self.sps = 0.0
        self.state, self.note = "running", ""

    # --- the job's start ---------------------------------------------------------------------------------------

    def build(self, configs: Sequence[dict], control: PipeControl) -> Engine | None:
        """The job's engine, for the runs not stopped before it started (None: nothing left to train)."""
        from balance.engine.engine import Engine
        from balance.runs.loop import Stop

        for command in [c for c in control.pending if isinstance(c, Stop)]:
            if command.state == "interrupted":  # the runner shutting down, or the parent gone
                message = command.message.replace("{step}", "0")
            else:
                message = "stopped before it started" + command.message.partition("{step}")[2]
            for member in range(len(self.runs)) if command.member is None else [command.member]:
                self.runs[member].ended = self.runs[member].ended or RunStatus(command.state, 0, message)
            control.pending.remove(command)
        keep = [i for i, run in enumerate(self.runs) if run.ended is None]
        if not keep:
            return None
        if len(keep) < len(self.runs):  # train only the others, renumbered
            kept = {old: new for new, old in enumerate(keep)}
            control.pending = [_renumber(c, kept) for c in control.pending if _renumber(c, kept) is not None]
            control.ids = [self.runs[i].id for i in keep]
            self.finish_runs([r for r in self.runs if r.ended is not None])
            self.runs = [self.runs[i] for i in keep]
            configs = [configs[i] for i in keep]
        try:
            return Engine([RunConfig.from_dict(c) for c in configs])
        except Exception as exc:
            for run in self.runs:
                run.ended = RunStatus("failed", 0, f"failed to start: {type(exc).__name__}: {exc}")
            return None

    # --- the loop's sink -----------------------------------------------------------------------------------------

    def begin(self, engine: Engine) -> None:
        self.engine, self.columns = engine, engine.columns

    def rows(self, member: int, rows: Sequence[np.ndarray]) -> None:
        self.runs[member].rows.extend(rows)

    def snapshot(self, member: int, step: int, table: dict[str, np.ndarray]) -> None:
        self.runs[member].snaps.append((step, table))

    def change(self, member: int, change: Change) -> None:
        self.runs[member].events.append((change.step, change.event, change.value))

    def ended(self, member: int, status: RunStatus) -> None:
        self.runs[member].ended = status

    def due(self, now: float) -> float:
        return max(0.0, self.next_save - now) if self.locked_since is not None else math.inf

    def tick(self, now: float, engine: Engine, state: str, note: str, force: bool = False) -> set[int]:
        """Save if a save is due (or ``force``); returns the members the store can no longer take."""
        self.state, self.note = state, note
        if not force and now < self.next_save:
            return set()
        outcome = self._save()
        if outcome == "failed":
            gone = self._refused()
            self.next_save = time.monotonic()
            return gone
        self.next_save = time.monotonic() + (FLUSH_SECONDS if outcome == "saved" else self._retry_in())
        return set()

    # --- the job's end -------------------------------------------------------------------------------------------

    def finish(self, control: PipeControl) -> None:
        """Save the last rows, snapshots and statuses (retrying while the store is locked; once told to exit, for
        ``EXIT_SAVE_SECONDS`` at most) and tell the parent each run has ended."""
        give_up = time.monotonic() + EXIT_SAVE_SECONDS if control.exiting else math.inf
        for run in self.runs:
            if run.ended is None and not run.done:  # cannot happen: the loop ends every run; never leave one open
                run.ended = RunStatus("interrupted", self._step(), "interrupted: its job ended without it")
        while (outcome := self._save()) == "held":
            wait = self._retry_in()
            if time.monotonic() + wait > give_up:
                self._give_up()
                return
            if math.isinf(give_up):
                if control.wait_exit(wait):  # the runner shuts down meanwhile: try a little longer, then go
                    give_up = time.monotonic() + EXIT_SAVE_SECONDS
            else:
                time.sleep(wait)
        if outcome == "failed":
            self._refused()

    def abandon(self, message: str) -> None:
        """A bug in the bookkeeping: fail every run not yet ended, saving what can be saved without waiting."""
        for run in self.runs:
            if not run.done:
                run.ended = RunStatus("failed", self._step(), message)
        with contextlib.suppress(StoreError):
            self._save()
        self.finish_runs([r for r in self.runs if not r.done], saved=False)

    def finish_runs(self, runs: list[_Run], saved: bool | None = None) -> None:
        """Runs whose end is settled: save their statuses (unless ``saved`` says), tell the parent, forget them."""
        if saved is None:
            saved = True
            try:
                with self.store.transaction():
                    for run in runs:
                        assert run.ended is not None
                        self.store.set_status(run.id, run.ended.state, run.ended.step, run.ended.message)
            except StoreError:
                saved = False
        for run in runs:
            run.done = True
            self._send("ended", self._view(run, *_status(run.ended)), saved)

    # --- saving --------------------------------------------------------------------------------------------------

    def _step(self) -> int:
        return self.engine.step_index if self.engine is not None else 0

    def _save(self) -> str:
        """Claims, events, statuses, rows and snapshots of every open run in one transaction; tell the parent.

        Returns "saved"; "held" if the store is locked (everything stays in memory for the next try); "failed" if it
        refused for another reason (``self.error``).
        """
        open_runs = [run for run in self.runs if not run.done]
        data = [run.data() for run in open_runs]
        try:
            with self.store.transaction():
                for run, rows in zip(open_runs, data):
                    if not self.claimed and self.engine is not None:
                        self.store.claim_run(run.id, self.columns)
                    for step, kind, value in run.events:
                        self.store.record_event(run.id, step, kind, value)
                    state, step, message = _status(run.ended) if run.ended else (self.state, self._step(), self.note)
                    self.store.set_status(run.id, state, step, message)
                    self.store.append_rows(run.id, rows)
                    for k, table in run.snaps:
                        self.store.save_neurons(run.id, k, table)
        except StoreError as exc:
            if exc.kind != "locked":
                self.error = exc.with_traceback(None)  # its frames would hold this sink (and its store) in a cycle
                return "failed"
            for run, rows in zip(open_runs, data):
                self._hold(run, rows, len(open_runs))
            self._report(self._locked_note())
            return "held"
        self.claimed = self.claimed or self.engine is not None
        for run in open_runs:
            run.rows, run.held, run.snaps, run.events = [], None, [], []
        self.locked_since, self.backoff = None, FLUSH_SECONDS
        self._report()
        self.finish_runs([run for run in open_runs if run.ended is not None], saved=True)
        return "saved"

    def _retry_in(self) -> float:
        delay, self.backoff = self.backoff, min(2 * self.backoff, MAX_BACKOFF)
        return delay

    def _hold(self, run: _Run, rows: np.ndarray, runs: int) -> None:
        """Keep what the locked store refused, within the run's share of ``PENDING_BYTES`` (thinning: every other
        row, the last kept)."""
        if self.locked_since is None:
            self.locked_since = time.monotonic()
        run.rows = []
        if len(rows):
            while rows.nbytes > PENDING_BYTES // runs and len(rows) > 2:
                keep = np.zeros(len(rows), dtype=bool)
                keep[::2] = keep[-1] = True
                run.dropped += int(len(rows) - keep.sum())
                first, last = int(rows[0, 0]), int(rows[-1, 0])
                rows = rows[keep]
                note = f"steps {first} to {last}: every other row dropped while the store was locked"
                run.events = [e for e in run.events if e[1] != "rows_thinned"]
                run.events.append((last, "rows_thinned", f"{note} ({run.dropped:,} rows in all)"))
            run.held = rows
        if len(run.snaps) > HELD_SNAPSHOTS:  # the first and the latest ones
            run.snaps = [run.snaps[0], *run.snaps[-(HELD_SNAPSHOTS - 1) :]]

    def _locked_note(self) -> str:
        held = sum(0 if run.held is None else len(run.held) for run in self.runs)
        dropped = sum(run.dropped for run in self.runs)
        waited = time.monotonic() - (self.locked_since or time.monotonic())
        note = (
            f"the store is locked by another process (for {waited:.0f} s): {held:,} rows kept in memory, "
            "saved as soon as it is free"
        )
        return note + (f"; {dropped:,} rows dropped to stay within memory" if dropped else "")

    def _give_up(self) -> None:
        """Told to exit while the store stays locked: report what could not be saved."""
        for run in self.runs:
            if not run.done:
                held = 0 if run.held is None else len(run.held)
                state, step, message = _status(run.ended) if run.ended else ("interrupted", self._step(), "")
                note = f"{held:,} rows could not be saved: the store stayed locked"
                run.done = True
                self._send("ended", self._view(run, state, step, _join(message, note)), False)

    def _refused(self) -> set[int]:
        """The store refused a save: a deleted run leaves the job quietly; anything else (a full disk) fails every
        open run, keeping as many of its first rows as fit. Returns the members gone."""
        exc = self.error
        assert exc is not None
        open_runs = [(i, run) for i, run in enumerate(self.runs) if not run.done]
        if exc.kind == "missing":
            gone = set()
            for i, run in open_runs:
                try:
                    self.store.get_run(run.id)
                except StoreError as err:
                    if err.kind == "missing":
                        gone.add(i)
                        run.done = True
                        self._send("ended", self._view(run, "stopped", self._step(), "deleted"), True)
            if gone:
                return gone
        message = f"failed at step {self._step()}: {exc}"
        for _, run in open_runs:
            rows = run.data() if self.claimed else np.zeros((0, 1))
            saved = False
            while not saved:  # a full disk: keep as many of the first rows as fit, with the status
                try:
                    with self.store.transaction():
                        self.store.set_status(run.id, "failed", self._step(), message)
                        self.store.append_rows(run.id, rows)
                    saved = True
                except StoreError:
                    if len(rows) == 0:
                        break
                    rows = rows[: len(rows) // 2]
            run.done = True
            self._send("ended", self._view(run, "failed", self._step(), message), saved)
        return {i for i, _ in open_runs}

    # --- telling the parent --------------------------------------------------------------------------------------

    def _view(self, run: _Run, state: str, step: int, message: str) -> RunStatusView:
        engine = self.engine
        if engine is not None:
            where = np.flatnonzero(engine.members == self.runs.index(run))
            if len(where):
                i = int(where[0])
                run.last = (float(engine.t[i]), float(engine.loss[i]), float(engine.base_lr[i]))
        sps = self.sps if state == "running" else 0.0
        return RunStatusView(run.id, state, step, message, sps, *run.last)

    def _report(self, extra: str = "") -> None:
        now, step = time.monotonic(), self._step()
        then, step0 = self.rate_mark
        if now - then > 0.05:
            self.sps = (step - step0) / (now - then)
            self.rate_mark = (now, step)
        views = []
        for run in self.runs:
            if run.done:
                continue
            state, k, message = _status(run.ended) if run.ended else (self.state, step, self.note)
            views.append(self._view(run, state, k, _join(message, extra)))
        self._send("status", views)

    def _send(self, kind: str, *payload: Any) -> None:
        with contextlib.suppress(OSError, ValueError):  # the parent has gone; the next command read notices
            self.messages.send((kind, *payload))


def _status(status: RunStatus | None) -> tuple[str, int, str]:
    assert status is not None
    return status.state, status.step, status.message


def _renumber(command: Any, kept: dict[int, int]) -> Any:
    """A command for the members in ``kept`` (old index -> new), or None if its member is gone."""
    member = getattr(command, "member", None)
    if member is None:
        return command
    return command._replace(member=kept[member]) if member in kept else None


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)
