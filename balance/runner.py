"""Background runs: a pool of worker processes trains runs and writes them to the store; callers never wait.

- Each run trains in a worker *process* (``multiprocessing`` spawn context, ``torch.set_num_threads(1)``), not a
  thread of the caller: measured on 2 cores (``benchmarks/bench_backends.py``), a training thread in the
  dashboard's process loses most of its speed to the GIL while the page renders, and slows the page down; a
  process keeps both near their solo speed. Workers are reused from run to run, so only the first run of a worker
  pays the ~2.5 s of starting Python and importing torch.
- A worker writes its run's rows, status and neuron snapshots to the store itself, one transaction every
  ``FLUSH_SECONDS`` (WAL: readers never wait), so rows are readable within half a second, the dashboard's process
  spends nothing on them, and everything committed survives if either process dies.
- The parent talks to a worker over two pipes: commands down (run, pause, resume, step n, stop, lr, exit) and
  status messages up (about five a second). One monitor thread in the parent waits on those pipes and on the
  workers' process sentinels: it keeps the status views, starts queued runs on free workers, and marks a run
  ``interrupted`` if its worker dies. A worker that loses its parent (the pipe closes) saves and exits.

States: queued, running, paused, finished, diverged, stopped, failed (with the error), interrupted.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import multiprocessing
import multiprocessing.connection as mpc
import os
import signal
import sys
import threading
import time
import types
from collections import OrderedDict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from balance.config import RunConfig
from balance.store import ACTIVE, RunStore, StoreError

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.2  # rows reach the store at least this often while a run trains
POLL_SECONDS = 0.05  # a training worker looks for commands this often (pause, stop: within 50 ms)
NEURON_SNAPSHOTS = 200  # snapshots per run at an even stride of steps (the store thins beyond its own limit)
SNAPSHOT_SECONDS = 2.0  # and one at least this often, for long runs stopped early
FINISHED_KEPT = 1000  # status views of ended runs kept in memory (older ones are read from the store)
WORKER_NICENESS = 10  # added to a worker process's nice value: training yields the CPU to the page
TERMINAL = ("finished", "diverged", "stopped", "failed", "interrupted")


@dataclass(frozen=True)
class RunStatusView:
    """What a page shows about a run: its state and progress, and the latest t, loss and step size."""

    id: str
    state: str
    step: int
    message: str = ""
    steps_per_second: float = 0.0
    t: float = math.nan
    loss: float = math.nan
    lr: float = math.nan


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --- the parent side --------------------------------------------------------------------------------------


@dataclass
class _Run:
    view: RunStatusView
    config: RunConfig | None
    worker: _Worker | None = None
    lr: float | None = None  # set while queued: applied when it starts
    paused: bool = False  # paused while queued: starts paused
    steps: int = 0  # step(n) while queued: n steps once it starts


_START = threading.Lock()


@contextmanager
def neutral_main() -> Iterator[None]:
    """Start a spawned child as if ``__main__`` were an empty module.

    A spawned child first re-imports the parent's ``__main__`` from its file. Under Streamlit that is the page
    script (the script runner installs each page as ``sys.modules["__main__"]``), which must never run in a
    worker; in any script it is wasted time. An empty module has no file, so the child imports nothing of it.
    """
    with _START:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


class _Worker:
    """One worker process (or thread, for comparison) and its two pipes, seen from the parent."""

    def __init__(self, ctx: Any, backend: str, store: RunStore) -> None:
        commands, self.commands = ctx.Pipe(duplex=False)
        self.messages, messages = ctx.Pipe(duplex=False)
        args = (commands, messages, str(store.home), store.timeout, store.max_bytes, backend == "process")
        if backend == "process":
            self.proc: Any = ctx.Process(target=_worker_main, args=args, name="balance-worker", daemon=True)
            with neutral_main():
                self.proc.start()
            commands.close()  # the child has its own copies; ours would hide its death from the other end
            messages.close()
            self.sentinel: Any = self.proc.sentinel
        else:
            self.proc = threading.Thread(target=_worker_main, args=args, name="balance-worker", daemon=True)
            self.proc.start()
            self.sentinel = None
        self.run_id: str | None = None
        self.lock = threading.Lock()

    def send(self, message: tuple) -> bool:
        with self.lock:
            try:
                self.commands.send(message)
                return True
            except (OSError, ValueError):  # the worker has gone; the monitor deals with it
                return False

    def close(self, timeout: float) -> None:
        self.proc.join(timeout)
        if isinstance(self.proc, multiprocessing.process.BaseProcess):
            if self.proc.is_alive():
                log.warning("balance worker %s did not exit; killing it", self.proc.pid)
                self.proc.kill()
                self.proc.join(5)
            self.proc.close()
        self.commands.close()
        self.messages.close()


class Runner:
    """Runs configs in the background, at most ``max_workers`` at once (default: the number of cores).

    ``start`` returns a run id at once; the run is queued until a worker is free. Commands on a run that has
    ended, or that another process drives, return False. ``backend="thread"`` trains in threads of this process
    instead (slower; kept for the measurements that chose processes).
    """

    def __init__(self, store: RunStore | None = None, max_workers: int | None = None, backend: str = "process"):
        if backend not in ("process", "thread"):
            raise ValueError(f"backend {backend!r}: use 'process' or 'thread'")
        self.store = store if store is not None else RunStore()
        self._own_store = store is None
        self.max_workers = max_workers or default_workers()
        self.backend = backend
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self._queue: deque[str] = deque()
        self._workers: list[_Worker] = []
        self._closed = False
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        self._monitor = threading.Thread(target=self._watch, name="balance-runner", daemon=True)
        self._monitor.start()
        atexit.register(self.shutdown)

    # --- commands ----------------------------------------------------------------------------------------

    def start(self, config: RunConfig, name: str = "", sweep: str = "") -> str:
        """Create the run in the store (queued) and start it as soon as a worker is free; returns its id."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this runner has been shut down")
            run_id = self.store.create_run(config, [], name=name, sweep=sweep)
            self._runs[run_id] = _Run(RunStatusView(run_id, "queued", 0, lr=config.optim.lr), config)
            self._queue.append(run_id)
            self._dispatch()
        return run_id

    def warm(self, n: int | None = None) -> None:
        """Start idle workers now (up to ``n``, default ``max_workers``) so the next runs start without delay."""
        with self._lock:
            while not self._closed and len(self._workers) < min(n or self.max_workers, self.max_workers):
                self._spawn()

    def pause(self, run_id: str) -> bool:
        return self._command(run_id, "pause")

    def resume(self, run_id: str) -> bool:
        return self._command(run_id, "resume")

    def step(self, run_id: str, n: int = 1) -> bool:
        """Advance exactly ``n`` steps, then stay paused (a running run pauses after them)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"step(n): n = {n!r}, expected a whole number >= 1")
        return self._command(run_id, "step", n)

    def stop(self, run_id: str) -> bool:
        return self._command(run_id, "stop")

    def set_learning_rate(self, run_id: str, lr: float) -> bool:
        """Change the base step size from the next step on; the change is recorded as an ``lr`` event."""
        with self._lock:
            run = self._runs.get(run_id)
        config = run.config if run is not None and run.config is not None else RunConfig()
        lr = config.replace(**{"optim.lr": float(lr)}).optim.lr  # validates: ConfigError names the range
        return self._command(run_id, "lr", lr)

    def delete(self, run_id: str) -> None:
        """Stop the run if it is going, then delete it and its data from the store."""
        self.stop(run_id)
        self.store.delete_run(run_id)  # the worker notices at its next write and lets the run go
        with self._lock:
            self._runs.pop(run_id, None)

    def _command(self, run_id: str, kind: str, value: Any = None) -> bool:
        ended = None
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                self.store.get_run(run_id)  # StoreError for an unknown id; else another process drives it
                return False
            if run.view.state in TERMINAL or self._closed:
                return False
            if run.worker is not None:
                return run.worker.send((kind, run_id, value))
            if kind == "stop":  # still queued: it never starts
                self._queue.remove(run_id)
                ended = run.view = replace(run.view, state="stopped", message="stopped before it started")
                self._changed.notify_all()
            elif kind == "lr":
                run.lr = value
                run.view = replace(run.view, lr=value)
            elif kind == "pause":
                run.paused = True
            elif kind == "resume":
                run.paused, run.steps = False, 0
            elif kind == "step":
                run.paused, run.steps = True, run.steps + value
        if ended is not None:
            self._save_status(ended)
        return True

    # --- status ------------------------------------------------------------------------------------------

    def status(self, run_id: str) -> RunStatusView:
        """The run's state and progress; for a run this runner does not drive, what the store says."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:
                return run.view
        record = self.store.get_run(run_id)
        last = self.store.last_row(run_id)
        nan = math.nan
        return RunStatusView(
            run_id, record.state, record.step, record.message, 0.0, last.get("t", nan), last.get("loss", nan),
            last.get("lr", record.config.optim.lr),
        )  # fmt: skip

    def active(self) -> list[str]:
        """Ids of this runner's runs that are queued, running or paused."""
        with self._lock:
            return [run_id for run_id, run in self._runs.items() if run.view.state in ACTIVE]

    def wait(self, run_id: str, timeout: float | None = None, states: tuple[str, ...] = TERMINAL) -> RunStatusView:
        """Block until the run's state is one of ``states`` (default: ended) or ``timeout``; returns its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while (run := self._runs.get(run_id)) is not None and run.view.state not in states:
                left = None if deadline is None else deadline - time.monotonic()
                if (left is not None and left <= 0) or self._closed:
                    break
                self._changed.wait(left)
        return self.status(run_id)

    # --- the pool ----------------------------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        worker = _Worker(self._ctx, self.backend, self.store)
        self._workers.append(worker)
        self._wake()  # the monitor starts watching the new pipes
        return worker

    def _dispatch(self) -> None:
        """Start queued runs on free workers, spawning workers up to ``max_workers``. Caller holds the lock."""
        while self._queue and not self._closed:
            worker = next((w for w in self._workers if w.run_id is None), None)
            if worker is None:
                if len(self._workers) >= self.max_workers:
                    return
                worker = self._spawn()
            run_id = self._queue.popleft()
            run = self._runs[run_id]
            assert run.config is not None
            worker.run_id, run.worker = run_id, worker
            worker.send(("run", run_id, (run.config.to_dict(), run.lr, run.paused, run.steps)))

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send_bytes(b"!")

    def _watch(self) -> None:
        """The monitor thread: status messages in, dead workers out, queued runs onto free workers."""
        while True:
            with self._lock:
                if self._closed:
                    return
                by_pipe = {w.messages: w for w in self._workers}
                by_sentinel = {w.sentinel: w for w in self._workers if w.sentinel is not None}
            for ready in mpc.wait([self._wake_r, *by_pipe, *by_sentinel]):
                try:
                    if ready is self._wake_r:
                        while self._wake_r.poll():
                            self._wake_r.recv_bytes()
                    elif ready in by_pipe:
                        self._receive(by_pipe[ready])
                    else:
                        self._lost(by_sentinel[ready])
                except Exception:  # the runner must outlive any one run's trouble
                    log.exception("balance runner: error while handling a worker")

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.messages.recv()
        except (EOFError, OSError):
            self._lost(worker)
            return
        self._handle(worker, message)

    def _handle(self, worker: _Worker, message: tuple) -> None:
        kind, view = message[0], message[1]
        saved = True
        with self._lock:
            run = self._runs.get(view.id)
            if run is not None and run.view.state not in TERMINAL:
                run.view = view
            if kind == "done":
                saved = message[2]
                worker.run_id = None
                if run is not None:
                    run.worker, run.config = None, None
                self._forget_old()
                self._dispatch()
            self._changed.notify_all()
        if not saved:  # the worker could not write its final status (e.g. a full disk): try from here
            self._save_status(view)

    def _lost(self, worker: _Worker) -> None:
        """A worker ended: take its last messages, mark its run interrupted, and replace it if runs wait."""
        with self._lock:
            if worker not in self._workers:
                return
            self._workers.remove(worker)
        while True:
            try:
                if not worker.messages.poll():
                    break
                self._handle(worker, worker.messages.recv())
            except (EOFError, OSError):
                break
        worker.proc.join(5)
        code = getattr(worker.proc, "exitcode", None)
        worker.close(timeout=0)
        ended = None
        with self._lock:
            run = self._runs.get(worker.run_id) if worker.run_id else None
            if run is not None and run.view.state not in TERMINAL:
                why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                message = f"interrupted at step {run.view.step}: its worker process died ({why})"
                ended = run.view = replace(run.view, state="interrupted", message=message, steps_per_second=0.0)
                run.worker, run.config = None, None
            self._dispatch()
            self._changed.notify_all()
        if ended is not None:
            self._save_status(ended)

    def _save_status(self, view: RunStatusView) -> None:
        try:
            self.store.set_status(view.id, view.state, view.step, view.message)
        except StoreError as exc:
            log.warning("balance runner: could not save the status of run %s: %s", view.id, exc)

    def _forget_old(self) -> None:
        ended = [run_id for run_id, run in self._runs.items() if run.view.state in TERMINAL]
        for run_id in ended[: max(0, len(ended) - FINISHED_KEPT)]:
            del self._runs[run_id]

    # --- shutting down -----------------------------------------------------------------------------------

    def shutdown(self, timeout: float = 10.0) -> None:
        """Interrupt every run (each saves what it has), end the workers and the monitor. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            queued, workers = list(self._queue), list(self._workers)
            self._queue.clear()
            self._workers.clear()
        atexit.unregister(self.shutdown)
        self._wake()
        self._monitor.join()
        for worker in workers:
            worker.send(("exit", None, None))
        self._collect(workers, time.monotonic() + timeout)
        with self._lock:
            left = [run.view for run_id, run in self._runs.items() if run.view.state in ACTIVE]
            for view in left:
                why = "before it started" if view.id in queued else f"at step {view.step}"
                self._runs[view.id].view = replace(view, state="interrupted", message=f"the runner shut down {why}")
            self._changed.notify_all()
        for view in left:
            self._save_status(self._runs[view.id].view)
        self._wake_r.close()
        self._wake_w.close()
        if self._own_store:
            self.store.close()

    def _collect(self, workers: list[_Worker], deadline: float) -> None:
        """Read the workers' last messages until each has exited (or the deadline), then close them."""
        pending = list(workers)
        while pending and time.monotonic() < deadline:
            pipes = {w.messages: w for w in pending}
            for ready in mpc.wait(list(pipes), timeout=max(0.0, deadline - time.monotonic())):
                worker = pipes[ready]
                try:
                    self._handle(worker, worker.messages.recv())
                except (EOFError, OSError):
                    pending.remove(worker)
        for worker in workers:
            worker.close(timeout=max(0.1, deadline - time.monotonic()))


# --- the worker side --------------------------------------------------------------------------------------


def _worker_main(commands: Any, messages: Any, home: str, timeout: float, max_bytes: int | None, own: bool) -> None:
    """A worker's life: open the store, then train the runs it is sent, one at a time, until told to exit."""
    store, broken = None, None
    try:
        if own:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which shuts workers down
            # Below the server and the browser: on a machine whose cores all train, a click still answers at once,
            # and training loses only the time the page actually uses.
            os.nice(WORKER_NICENESS)
            import torch

            torch.set_num_threads(1)
        import balance.trainer  # noqa: F401  (pay the import before the first run, not during it)

        try:
            store = RunStore(home, timeout=timeout, max_bytes=max_bytes)
        except StoreError as exc:
            broken = exc
        while True:
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
    """One run inside a worker: steps, reads commands between steps, writes batches to the store."""

    def __init__(
        self, store: RunStore, commands: Any, messages: Any, run_id: str, config: dict, lr: float | None,
        paused: bool, steps: int,
    ) -> None:  # fmt: skip
        self.store, self.commands, self.messages, self.id = store, commands, messages, run_id
        self.raw, self.lr, self.paused, self.budget = config, lr, paused or steps > 0, steps
        self.rows: list[list[float]] = []
        self.snaps: list[tuple[int, dict]] = []
        self.logged = -1  # step of the latest row taken
        self.snapped = -1
        self.trainer: Any = None
        self.error: StoreError | None = None
        self.rate_mark = (time.monotonic(), 0)
        self.sps = 0.0

    def run(self) -> str:
        """Train until the run ends; returns "exit" when the worker should exit too."""
        from balance.trainer import Trainer

        try:
            config = RunConfig.from_dict(self.raw)
            self.trainer = trainer = Trainer(config)
            self.store.claim_run(self.id, trainer.columns)
            if self.lr is not None and self.lr != trainer.learning_rate:
                trainer.learning_rate = self.lr
                self.store.record_event(self.id, 0, "lr", self.lr)
        except StoreError as exc:
            self.error = exc
            return self._end_store()
        except Exception as exc:
            return self._end("failed", f"failed to start: {type(exc).__name__}: {exc}")
        stride = max(1, math.ceil(config.steps / NEURON_SNAPSHOTS))
        self._snapshot()
        deadline = time.monotonic() + config.max_seconds
        next_poll = next_flush = 0.0
        next_snapshot = time.monotonic() + SNAPSHOT_SECONDS
        if not self._flush():
            return self._end_store()
        while True:
            now = time.monotonic()
            if now >= deadline:
                return self._end("stopped", f"stopped at the wall-time limit of {config.max_seconds:g} s")
            waiting = self.paused and self.budget == 0
            if waiting or now >= next_poll:
                outcome = self._commands(min(1.0, deadline - now) if waiting else 0.0)
                if outcome:
                    return outcome
                next_poll = now + POLL_SECONDS
                if self.paused and self.budget == 0:
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
                if self.budget == 0 and not self._pause_here():
                    return self._end_store()
            if now >= next_flush:
                if not self._flush():
                    return self._end_store()
                next_flush = now + FLUSH_SECONDS

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
            self._end("interrupted", f"interrupted at step {self.trainer.step_index}: the app that ran it stopped")
            return "exit"
        return ""

    def _apply(self, kind: str, run_id: str, value: Any) -> str:
        trainer = self.trainer
        if kind == "exit":
            self._end("interrupted", f"the runner shut down at step {trainer.step_index}")
            return "exit"
        if run_id != self.id:
            return ""  # meant for an earlier run
        if kind == "stop":
            return self._end("stopped", f"stopped at step {trainer.step_index}") or "ended"
        if kind == "pause":
            self.paused, self.budget = True, 0
            if not self._pause_here():
                return self._end_store() or "ended"
        elif kind == "resume":
            self.paused, self.budget = False, 0
            self._report("running")
        elif kind == "step":
            self.paused = True
            self.budget += value
        elif kind == "lr":
            trainer.learning_rate = value
            try:
                self.store.record_event(self.id, trainer.step_index, "lr", value)
            except StoreError as exc:
                self.error = exc
                return self._end_store() or "ended"
            self._report(self._state())
        return ""

    def _pause_here(self) -> bool:
        """Take a row and a snapshot of the current state, so a paused run shows where it is; save them."""
        self._take_row()
        self._snapshot()
        return self._flush()

    # --- saving ------------------------------------------------------------------------------------------

    def _state(self) -> str:
        return "paused" if self.paused and self.budget == 0 else "running"

    def _take_row(self) -> None:
        if self.trainer is not None and self.logged != self.trainer.step_index:
            self.rows.append(self.trainer.row())
            self.logged = self.trainer.step_index

    def _snapshot(self) -> None:
        trainer = self.trainer
        if trainer is not None and self.snapped != trainer.step_index:
            self.snaps.append((trainer.step_index, trainer.neuron_table()))
            self.snapped = trainer.step_index

    def _flush(self, state: str = "", message: str = "") -> bool:
        """Write rows, snapshots and status in one transaction and tell the parent; False if the store refused."""
        state = state or self._state()
        step = self.trainer.step_index if self.trainer is not None else 0
        try:
            with self.store.transaction():
                self.store.set_status(self.id, state, step, message)
                self.store.append_rows(self.id, self.rows)
                for k, table in self.snaps:
                    self.store.save_neurons(self.id, k, table)
        except StoreError as exc:
            self.error = exc
            return False
        self.rows.clear()
        self.snaps.clear()
        self._report(state, message)
        return True

    def _report(self, state: str, message: str = "", kind: str = "status", saved: bool = True) -> None:
        trainer = self.trainer
        now, step = time.monotonic(), trainer.step_index if trainer is not None else 0
        then, step0 = self.rate_mark
        if now - then > 0.05:
            self.sps = (step - step0) / (now - then)
            self.rate_mark = (now, step)
        if state != "running":
            self.sps = 0.0
        view = RunStatusView(
            self.id, state, step, message, self.sps,
            trainer.t if trainer else math.nan, trainer.loss if trainer else math.nan,
            trainer.learning_rate if trainer else math.nan,
        )  # fmt: skip
        with contextlib.suppress(OSError, ValueError):  # the parent has gone; the next command read notices
            self.messages.send((kind, view, saved))

    def _end(self, state: str, message: str, saved: bool = True) -> str:
        """Save the final row, snapshot and status; tell the parent the run is over."""
        if saved:
            if state in ("stopped", "interrupted"):
                self._take_row()
            self._snapshot()
            if not self._flush(state, message):
                return self._end_store()
        else:
            self.rows.clear()
        self._report(state, message, kind="done", saved=saved)
        return ""

    def _end_store(self) -> str:
        """The store refused a write: a deleted run ends quietly, anything else fails the run (not the worker)."""
        exc = self.error
        assert exc is not None
        if exc.kind == "missing":
            self._report("stopped", "deleted", kind="done")
            return ""
        step = self.trainer.step_index if self.trainer is not None else 0
        message = f"failed at step {step}: {exc}"
        saved = True
        try:
            self.store.set_status(self.id, "failed", step, message)
        except StoreError:
            saved = False
        self._report("failed", message, kind="done", saved=saved)
        return ""
