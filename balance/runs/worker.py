"""A worker process of ``balance.runs.executor``: trains the jobs it is sent, one at a time, through the one loop
(``balance.runs.loop.drive``), and writes them to the store as they go.

A job is K >= 1 configs trained on one engine (a page's run is K = 1; a sweep chunk is K of one shape), each
config one run of the store. Talks to the parent over two pipes. Commands come down (``job``; ``pause``,
``resume``, ``step``, ``stop``, ``lr`` for a run; ``exit``) and are read between steps, at least every
``POLL_SECONDS`` (``PipeControl``); pause, step and resume act on the whole job, stop and lr on their run.
``ready`` (once, after the imports and a warm-up step), ``status`` (the job's runs, after every save, about five a
second), ``ended`` (once per run, when its last rows and status are saved or given up on) and ``done`` (once per
job, last) go up.

Saving never blocks training for long and never loses a row (``StoreSink``): each save is one transaction (claims,
events, statuses, rows, neuron snapshots of every run of the job) on a connection with a short busy timeout. If
another process holds the store's write lock (an import, a sweep), the rows stay in memory and the save is retried
with back-off for as long as the job lives; the status says so. Held rows are bounded (``PENDING_BYTES``, shared by
the job's runs): beyond that every other held row is dropped (never the latest), and an event ``rows_thinned``
records it. A job that ends while the store is locked keeps trying to save its last rows; only an ``exit`` (the
runner shutting down) makes it give up after a few seconds. A deleted run leaves the job quietly; any other
refusal (a full disk) fails the job's runs, keeping as many of their first rows as fit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
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

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.2  # rows reach the store at least this often while a run trains
POLL_SECONDS = 0.05  # a training worker looks for commands this often (pause, stop: within 50 ms)
WORKER_NICENESS = 10  # added to a worker process's nice value: training yields the CPU to the page
STORE_TIMEOUT = 0.25  # a save waits this long for another writer, then keeps its rows and retries later
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


@dataclass(frozen=True)
class JobSpec:
    """What the parent sends for a job: the configs (as dicts) and their run ids, step sizes changed while it was
    queued (None: unchanged), whether it starts paused (and after how many steps), the server's wall-time limit,
    and how many neuron snapshots each run keeps."""

    configs: tuple[dict, ...]
    ids: tuple[str, ...]
    lrs: tuple[float | None, ...]
    paused: bool = False
    steps: int = 0
    max_seconds: float = math.inf
    snapshots: int = 200


def worker_main(commands: Any, messages: Any, home: str, max_bytes: int | None, own: bool) -> None:
    """A worker's life: import, warm up, open the store, then train the jobs it is sent until told to exit."""
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
            kind, key, value = commands.recv()
            if kind == "exit":
                break
            if kind == "job" and store is None:
                for run_id in value.ids:
                    messages.send(("ended", RunStatusView(run_id, "failed", 0, f"failed to start: {broken}"), False))
                messages.send(("done", key, None))
            elif kind == "job" and _train(store, commands, messages, key, value) == "exit":
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
    """Pay the first-use costs (imports, the first engine, step, rows and snapshots) before the first job."""
    from balance.runs.loop import train

    train([RunConfig().replace(**{"data.d1": 4, "data.d2": 3, "data.rank": 1, "steps": 2})])


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


def _train(store: RunStore, commands: Any, messages: Any, key: str, spec: JobSpec) -> str:
    """Train one job; returns "exit" when the worker should exit too."""
    from balance.runs.loop import Advance, Limit, Pause, Set, drive

    control = PipeControl(commands, list(spec.ids))
    sink = StoreSink(store, messages, list(spec.ids))
    try:
        control.read(0.0)  # a stop sent right behind the job: do not build anything for it
        for member, lr in enumerate(spec.lrs):
            if lr is not None:
                control.pending.insert(0, Set(member, "optim.lr", lr))
        if spec.steps:
            control.pending.insert(0, Advance(spec.steps))
        elif spec.paused:
            control.pending.insert(0, Pause())
        engine = sink.build(spec.configs, control)
        if engine is not None:
            drive(engine, sink, control, Limit.of(engine.configs, spec.max_seconds), snapshots=spec.snapshots)
        sink.finish(control)
    except (EOFError, OSError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a bug in the bookkeeping must fail the job, not the worker
        log.exception("balance worker: job %s failed", key)
        sink.abandon(f"failed: {type(exc).__name__}: {exc}")
    with contextlib.suppress(OSError, ValueError):
        messages.send(("done", key, None))
    return "exit" if control.exiting else ""


class PipeControl:
    """The loop's control in a worker: the parent's commands, read from the pipe (see the module docstring)."""

    every = POLL_SECONDS

    def __init__(self, commands: Any, ids: list[str]) -> None:
        self.commands, self.ids = commands, ids
        self.pending: list[Any] = []  # commands read before the engine existed, or by the sink while it waited
        self.exiting = False

    def poll(self, step: int, wait: float) -> list[Any]:
        self.read(wait)
        out, self.pending = self.pending, []
        return out

    def read(self, wait: float) -> None:
        """Read what has arrived (waiting up to ``wait`` s for the first) into ``pending``."""
        from balance.runs.loop import Advance, Pause, Resume, Set, Stop

        try:
            ready = self.commands.poll(wait)
            while ready:
                kind, run_id, value = self.commands.recv()
                if kind == "exit":
                    self.exiting = True
                    self.pending.append(Stop(None, "interrupted", "the runner shut down at step {step}"))
                elif run_id in self.ids:  # else: meant for an earlier job
                    member = self.ids.index(run_id)
                    if kind == "stop":  # value: why, if not the user's stop
                        why = f": {value}" if value else ""
                        self.pending.append(Stop(member, "stopped", "stopped at step {step}" + why))
                    elif kind == "pause":
                        self.pending.append(Pause(value or ""))
                    elif kind == "resume":
                        self.pending.append(Resume())
                    elif kind == "step":
                        self.pending.append(Advance(value))
                    elif kind == "lr":
                        self.pending.append(Set(member, "optim.lr", value))
                ready = self.commands.poll()
        except (EOFError, OSError):
            self.exiting = True
            self.pending.append(Stop(None, "interrupted", "interrupted at step {step}: the app that ran it stopped"))

    def wait_exit(self, wait: float) -> bool:
        """Read commands, waiting up to ``wait`` s; True if the worker has been told to exit (or the parent has
        gone). Other commands are for runs that have ended: dropped."""
        self.read(wait)
        self.pending = []
        return self.exiting


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
