"""A worker process of ``balance.runs.executor``: trains the runs it is sent, one at a time, and writes them to the
store.

Talks to the parent over two pipes. Commands come down (``run``, ``pause``, ``resume``, ``step``, ``stop``, ``lr``,
``exit``); ``ready`` (once, after the imports and a warm-up step), ``status`` (after every save, about five a second)
and ``done`` (once per run, last) go up. Commands are read between steps, at least every ``POLL_SECONDS``.

Saving never blocks training for long and never loses a row: each save is one transaction (claim, events,
status, rows, neuron snapshots) on a connection with a short busy timeout. If another process holds the store's
write lock (an import, a sweep), the rows stay in memory and the save is retried with back-off for as long as the
run lives; the status says so. Held rows are bounded (``PENDING_BYTES``): beyond that every other held row is
dropped (never the latest), and an event ``rows_thinned`` records it. A run that ends while the store is locked
keeps trying to save its last rows; only an ``exit`` (the runner shutting down) makes it give up after a few seconds.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from balance.config import RunConfig
from balance.runs.limits import PENDING_BYTES
from balance.runs.store import RunStore, StoreError

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.2  # rows reach the store at least this often while a run trains
POLL_SECONDS = 0.05  # a training worker looks for commands this often (pause, stop: within 50 ms)
NEURON_SNAPSHOTS = 200  # snapshots per run at an even stride of steps (the store thins beyond its own limit)
SNAPSHOT_SECONDS = 2.0  # and one at least this often, for long runs stopped early
WORKER_NICENESS = 10  # added to a worker process's nice value: training yields the CPU to the page
STORE_TIMEOUT = 0.25  # a save waits this long for another writer, then keeps its rows and retries later
MAX_BACKOFF = 2.0  # the longest wait between two tries of a save the store refused as locked
HELD_SNAPSHOTS = 8  # neuron snapshots held while the store is locked (the first and the latest ones)
EXIT_SAVE_SECONDS = 3.0  # told to exit while its last rows wait for the store: keep trying this long


@dataclass(frozen=True)
class RunStatusView:
    """What a page shows about a run: its state and progress, the latest t, loss and step size, and while it is
    queued its place in the queue (1 = next; 0 when not queued) and why it waits (in ``message``)."""

    id: str
    state: str
    step: int
    message: str = ""
    steps_per_second: float = 0.0
    t: float = math.nan
    loss: float = math.nan
    lr: float = math.nan
    queue_position: int = 0


def worker_main(commands: Any, messages: Any, home: str, max_bytes: int | None, own: bool) -> None:
    """A worker's life: import, warm up, open the store, then train the runs it is sent until told to exit."""
    store, broken, serve = None, None, True
    try:
        if own:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which shuts workers down
            # Below the server and the browser: on a machine whose cores all train, a click still answers at once,
            # and training loses only the time the page actually uses.
            os.nice(WORKER_NICENESS)
            import torch

            torch.set_num_threads(1)
        _warm_up()
        try:
            store = _open_store(home, max_bytes, commands)
        except StoreError as exc:
            broken = exc
        serve = store is not None or broken is not None  # else: told to exit while waiting for the store
        if serve:
            messages.send(("ready", os.getpid()))
        while serve:
            kind, run_id, value = commands.recv()
            if kind == "exit":
                break
            if kind == "run" and store is None:
                messages.send(("done", RunStatusView(run_id, "failed", 0, f"failed to start: {broken}"), False))
            elif kind == "run" and _train(_Session(store, commands, messages, run_id, *value)) == "exit":
                break
            # anything else is for a run that has already ended here
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the parent has gone
    finally:
        if store is not None:
            store.close()
        commands.close()
        messages.close()
    if own:  # everything is saved and closed: skip the second-long teardown of an interpreter holding torch
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _warm_up() -> None:
    """Pay the first-use costs (imports, the first trainer and step) before the first run, not during it."""
    from balance.engine.trainer import Trainer

    trainer = Trainer(RunConfig().replace(**{"data.d1": 4, "data.d2": 3, "data.rank": 1, "steps": 2}))
    trainer.step()
    trainer.row()
    trainer.neuron_table()


def _open_store(home: str, max_bytes: int | None, commands: Any) -> RunStore | None:
    """The worker's own connection; while another process holds the write lock, wait (None if told to exit)."""
    delay = FLUSH_SECONDS
    while True:
        try:
            return RunStore(home, timeout=STORE_TIMEOUT, max_bytes=max_bytes)
        except StoreError as exc:
            if exc.kind != "locked":
                raise
        if commands.poll(delay) and commands.recv()[0] == "exit":
            return None
        delay = min(2 * delay, MAX_BACKOFF)


def _train(session: _Session) -> str:
    try:
        return session.run()
    except (EOFError, OSError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a bug in the bookkeeping must fail the run, not the worker
        log.exception("balance worker: run %s failed", session.id)
        session._report("failed", f"failed: {type(exc).__name__}: {exc}", kind="done", saved=False)
        return ""


class _Session:
    """One run inside a worker: steps, reads commands between steps, saves batches to the store."""

    def __init__(
        self, store: RunStore, commands: Any, messages: Any, run_id: str, config: dict, lr: float | None,
        paused: bool, steps: int, max_seconds: float, note: str,
    ) -> None:  # fmt: skip
        self.store, self.commands, self.messages, self.id = store, commands, messages, run_id
        self.raw, self.lr, self.paused, self.budget = config, lr, paused or steps > 0, steps
        self.max_seconds, self.note = max_seconds, note if paused else ""
        self.trainer: Any = None
        self.claimed = False
        self.rows: list[list[float]] = []  # taken since the last save
        self.held: np.ndarray | None = None  # rows a locked store refused, oldest first
        self.snaps: list[tuple[int, dict]] = []
        self.events: list[tuple[int, str, float | str]] = []
        self.logged = -1  # step of the latest row taken
        self.snapped = -1
        self.error: StoreError | None = None
        self.locked_since: float | None = None  # the store has refused saves as locked since then
        self.dropped = 0  # held rows dropped to stay within PENDING_BYTES
        self.next_save, self.backoff = 0.0, FLUSH_SECONDS
        self.rate_mark = (time.monotonic(), 0)
        self.sps = 0.0

    def run(self) -> str:
        """Train until the run ends; returns "exit" when the worker should exit too."""
        from balance.engine.trainer import Trainer

        outcome = self._commands(0.0)  # a stop sent right behind the run: do not build anything for it
        if outcome:
            return outcome
        try:
            config = RunConfig.from_dict(self.raw)
            self.trainer = trainer = Trainer(config)
        except Exception as exc:
            return self._end("failed", f"failed to start: {type(exc).__name__}: {exc}")
        if self.lr is not None and self.lr != trainer.learning_rate:
            trainer.learning_rate = self.lr
            self.events.append((0, "lr", self.lr))
        stride = max(1, math.ceil(config.steps / NEURON_SNAPSHOTS))
        seconds = min(config.max_seconds, self.max_seconds)
        if config.max_seconds <= self.max_seconds:
            at_limit = f"stopped at the wall-time limit of {config.max_seconds:g} s"
        else:
            at_limit = f"stopped at the server's limit of {self.max_seconds:g} s per run (limits.toml)"
        self._snapshot()
        deadline = time.monotonic() + seconds
        next_poll = 0.0
        next_snapshot = time.monotonic() + SNAPSHOT_SECONDS
        if outcome := self._tick():
            return outcome
        self.next_save = 0.0  # and the first step's rows at once: the page's first chart
        while True:
            now = time.monotonic()
            if now >= deadline:
                return self._end("stopped", at_limit)
            if self._waiting() or now >= next_poll:
                wait = min(1.0, deadline - now, self._until_save(now)) if self._waiting() else 0.0
                if outcome := self._commands(wait):
                    return outcome
                now = time.monotonic()
                next_poll = now + POLL_SECONDS
                if self._waiting():
                    if self.locked_since is not None and (outcome := self._tick(now)):
                        return outcome
                    continue
            try:
                rows = trainer.step()
            except Exception as exc:
                return self._end("failed", f"failed at step {trainer.step_index}: {type(exc).__name__}: {exc}")
            if rows:
                self.rows += rows
                self.logged = int(rows[-1][0])
            if trainer.status.state != "running":
                return self._end(trainer.status.state, trainer.status.message)
            if trainer.step_index % stride == 0 or now >= next_snapshot:
                self._snapshot()
                next_snapshot = now + SNAPSHOT_SECONDS
            if self.budget:
                self.budget -= 1
                if self.budget == 0 and (outcome := self._pause_here()):
                    return outcome
            if outcome := self._tick(now):
                return outcome

    def _waiting(self) -> bool:
        return self.paused and self.budget == 0

    def _until_save(self, now: float) -> float:
        return max(0.0, self.next_save - now) if self.locked_since is not None else math.inf

    # --- commands ----------------------------------------------------------------------------------------

    def _commands(self, wait: float) -> str:
        """Apply waiting commands (waiting up to ``wait`` s for the first); returns "exit" or an ended-run marker."""
        try:
            ready = self.commands.poll(wait)
            while ready:
                kind, run_id, value = self.commands.recv()
                outcome = self._apply(kind, run_id, value)
                if outcome:
                    return outcome
                ready = self.commands.poll()
        except (EOFError, OSError):
            self._end("interrupted", f"interrupted at step {self._step()}: the app that ran it stopped", final=True)
            return "exit"
        return ""

    def _apply(self, kind: str, run_id: str, value: Any) -> str:
        trainer = self.trainer
        if kind == "exit":
            self._end("interrupted", f"the runner shut down at step {self._step()}", final=True)
            return "exit"
        if run_id != self.id:
            return ""  # meant for an earlier run
        if kind == "stop":  # value: why, if not the user's stop
            at = "before it started" if trainer is None else f"at step {trainer.step_index}"
            return self._end("stopped", f"stopped {at}" + (f": {value}" if value else "")) or "ended"
        if trainer is None:  # before the trainer exists: remember, apply once it does
            self._early(kind, value)
            return ""
        if kind == "pause":
            self.paused, self.budget, self.note = True, 0, value or ""
            return self._pause_here()
        if kind == "resume":
            self.paused, self.budget, self.note = False, 0, ""
            self.next_save = 0.0  # the store says "running" at once
        elif kind == "step":
            self.paused, self.note = True, ""
            self.budget += value
        elif kind == "lr":
            trainer.learning_rate = value
            self.events.append((trainer.step_index, "lr", value))
            return self._tick()  # the event and the new step size are saved and shown at once
        return ""

    def _early(self, kind: str, value: Any) -> None:
        if kind == "pause":
            self.paused, self.budget, self.note = True, 0, value or ""
        elif kind == "resume":
            self.paused, self.budget, self.note = False, 0, ""
        elif kind == "step":
            self.paused, self.budget = True, self.budget + value
        elif kind == "lr":
            self.lr = value

    def _pause_here(self) -> str:
        """Take a row and a snapshot of the current state, so a paused run shows where it is; save them."""
        self._take_row()
        self._snapshot()
        return self._tick()

    # --- saving ------------------------------------------------------------------------------------------

    def _step(self) -> int:
        return self.trainer.step_index if self.trainer is not None else 0

    def _state(self) -> str:
        return "paused" if self._waiting() else "running"

    def _take_row(self) -> None:
        if self.trainer is not None and self.logged != self.trainer.step_index:
            self.rows.append(self.trainer.row())
            self.logged = self.trainer.step_index

    def _snapshot(self) -> None:
        trainer = self.trainer
        if trainer is not None and self.snapped != trainer.step_index:
            self.snaps.append((trainer.step_index, trainer.neuron_table()))
            self.snapped = trainer.step_index

    def _tick(self, now: float | None = None) -> str:
        """Save if a save is due at ``now`` (None: save now); "" or, if the store refused for good, an ended marker."""
        if now is not None and now < self.next_save:
            return ""
        outcome = self._save()
        if outcome == "failed":
            return self._end_store() or "ended"
        self.next_save = time.monotonic() + (FLUSH_SECONDS if outcome == "saved" else self._retry_in())
        return ""

    def _retry_in(self) -> float:
        delay, self.backoff = self.backoff, min(2 * self.backoff, MAX_BACKOFF)
        return delay

    def _save(self, state: str = "", message: str = "") -> str:
        """Claim, events, status, rows and snapshots in one transaction; tell the parent.

        Returns "saved"; "held" if the store is locked (everything stays in memory for the next try); "failed"
        if it refused for another reason (``self.error``).
        """
        state = state or self._state()
        message = message or (self.note if state == "paused" else "")
        rows = self._rows()
        try:
            with self.store.transaction():
                if not self.claimed and self.trainer is not None:
                    self.store.claim_run(self.id, self.trainer.columns)
                for step, kind, value in self.events:
                    self.store.record_event(self.id, step, kind, value)
                self.store.set_status(self.id, state, self._step(), message)
                self.store.append_rows(self.id, rows)
                for k, table in self.snaps:
                    self.store.save_neurons(self.id, k, table)
        except StoreError as exc:
            if exc.kind != "locked":
                self.error = exc
                return "failed"
            self._hold(rows)
            self._report(state, _join(message, self._locked_note()))
            return "held"
        self.claimed = self.claimed or self.trainer is not None
        self.rows, self.held, self.snaps, self.events = [], None, [], []
        self.locked_since, self.backoff = None, FLUSH_SECONDS
        self._report(state, message)
        return "saved"

    def _rows(self) -> np.ndarray:
        fresh = np.asarray(self.rows, dtype=np.float64)
        if self.held is None:
            return fresh
        return np.concatenate([self.held, fresh]) if len(fresh) else self.held

    def _hold(self, rows: np.ndarray) -> None:
        """Keep what the locked store refused, within ``PENDING_BYTES`` (thinning: every other row, the last kept)."""
        if self.locked_since is None:
            self.locked_since = time.monotonic()
        self.rows = []
        if len(rows):
            while rows.nbytes > PENDING_BYTES and len(rows) > 2:
                keep = np.zeros(len(rows), dtype=bool)
                keep[::2] = keep[-1] = True
                self.dropped += int(len(rows) - keep.sum())
                first, last = int(rows[0, 0]), int(rows[-1, 0])
                rows = rows[keep]
                note = f"steps {first} to {last}: every other row dropped while the store was locked"
                self.events = [e for e in self.events if e[1] != "rows_thinned"]
                self.events.append((last, "rows_thinned", f"{note} ({self.dropped:,} rows in all)"))
            self.held = rows
        if len(self.snaps) > HELD_SNAPSHOTS:  # the first and the latest ones
            self.snaps = [self.snaps[0], *self.snaps[-(HELD_SNAPSHOTS - 1) :]]

    def _locked_note(self) -> str:
        held = 0 if self.held is None else len(self.held)
        waited = time.monotonic() - (self.locked_since or time.monotonic())
        note = (
            f"the store is locked by another process (for {waited:.0f} s): {held:,} rows kept in memory, "
            "saved as soon as it is free"
        )
        return note + (f"; {self.dropped:,} rows dropped to stay within memory" if self.dropped else "")

    def _report(self, state: str, message: str = "", kind: str = "status", saved: bool = True) -> None:
        trainer = self.trainer
        now, step = time.monotonic(), self._step()
        then, step0 = self.rate_mark
        if now - then > 0.05:
            self.sps = (step - step0) / (now - then)
            self.rate_mark = (now, step)
        if state != "running":
            self.sps = 0.0
        view = RunStatusView(
            self.id, state, step, message, self.sps,
            trainer.t if trainer else math.nan, trainer.loss if trainer else math.nan,
            trainer.learning_rate if trainer else (self.lr if self.lr is not None else math.nan),
        )  # fmt: skip
        with contextlib.suppress(OSError, ValueError):  # the parent has gone; the next command read notices
            self.messages.send((kind, view, saved))

    def _end(self, state: str, message: str, final: bool = False) -> str:
        """Save the final row, snapshot and status (retrying while the store is locked); tell the parent the run
        is over. ``final``: the worker exits next (give up on a locked store after ``EXIT_SAVE_SECONDS``).
        Returns "exit" if the worker was told to exit meanwhile."""
        if state in ("stopped", "interrupted"):
            self._take_row()
        self._snapshot()
        give_up = time.monotonic() + EXIT_SAVE_SECONDS if final else math.inf
        exit_after = False
        while (outcome := self._save(state, message)) == "held":
            wait = self._retry_in()
            if time.monotonic() + wait > give_up:
                held = 0 if self.held is None else len(self.held)
                note = f"{held:,} rows could not be saved: the store stayed locked"
                self._report(state, _join(message, note), kind="done", saved=False)
                return "exit" if exit_after else ""
            if math.isinf(give_up):
                try:
                    if self.commands.poll(wait) and self.commands.recv()[0] == "exit":
                        give_up, exit_after = time.monotonic() + EXIT_SAVE_SECONDS, True
                except (EOFError, OSError):
                    give_up, exit_after = time.monotonic() + EXIT_SAVE_SECONDS, True
            else:
                time.sleep(wait)
        if outcome == "failed":
            self._end_store()
        else:
            self._report(state, message, kind="done")
        return "exit" if exit_after else ""

    def _end_store(self) -> str:
        """The store refused a save: a deleted run ends quietly, anything else fails the run (not the worker)."""
        exc = self.error
        assert exc is not None
        if exc.kind == "missing":
            self._report("stopped", "deleted", kind="done")
            return ""
        message = f"failed at step {self._step()}: {exc}"
        rows = self._rows() if self.claimed else np.zeros((0, 1))
        saved = False
        while not saved:  # a full disk: keep as many of the first rows as fit, with the status
            try:
                with self.store.transaction():
                    self.store.set_status(self.id, "failed", self._step(), message)
                    self.store.append_rows(self.id, rows)
                saved = True
            except StoreError:
                if len(rows) == 0:
                    break
                rows = rows[: len(rows) // 2]
        self._report("failed", message, kind="done", saved=saved)
        return ""


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)
