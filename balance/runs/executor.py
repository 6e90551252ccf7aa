"""Background runs: one executor of worker processes trains every job and writes it to the store; callers never wait.

A job is K >= 1 configs trained on one engine by the one loop (``balance.runs.loop``): a page's run is a job of one;
a sweep's chunk, K configs of one shape. Every run in the background goes through here, with a priority
(``PRIORITIES``): a page's run first, then the lecture's demos (warm-up), the claims' experiments, and sweeps last;
within a priority, first come first served. At most ``max_workers`` jobs train at once.

- Each job trains in a worker *process* (``multiprocessing`` spawn context, ``torch.set_num_threads(1)``; see
  ``balance.runs.worker``), not a thread of the caller: measured on 2 cores (``benchmarks/bench_backends.py``), a
  training thread in the dashboard's process loses most of its speed to the GIL while the page renders, and slows
  the page down; a process keeps both near their solo speed. Workers are reused from job to job; a job goes to a
  worker only once the worker has said it is ready (imported torch, taken a warm-up step), so a job never waits
  inside a worker that is still starting, and a stop of a run that waits takes effect at once.
- A worker writes its job's rows, statuses and neuron snapshots to the store itself, one transaction every
  ``FLUSH_SECONDS`` (WAL: readers never wait); if the store is locked by another process it keeps the rows and
  retries (``balance.runs.sink``). The statuses the parent decides (a run stopped while queued, a run whose worker
  died) are written by a writer thread of its own, which retries the same way; nothing here waits for the store while
  holding the runner's lock, so status views never go stale behind a slow write.
- The parent talks to a worker over two pipes: commands down, status messages up. One monitor thread in the parent
  waits on those pipes and on the workers' process sentinels: it keeps the status views, starts queued jobs on free
  workers, marks a run ``interrupted`` if its worker dies, and pauses the runs of sessions no page has shown lately.

Limits (``balance.runs.limits``): ``start`` refuses a run whose estimated memory or time exceeds the per-run limits,
and a browser session's runs beyond its share (``LimitError``). Queued jobs start in order, skipping those of a
session that already has its share of runs training. Pages call ``touch(session)`` while they show a session's runs;
runs of a session no page has touched for ``limits.idle_seconds`` are paused (and resume when one does), and
stopped after ``limits.idle_stop_seconds``. Session "" (the command line, claims, the lecture) is exempt from both.

States: ``balance.engine.status.STATES`` (queued, running, paused, finished, diverged, stopped, failed with the
error, interrupted). Pause, step and resume act on a run's whole job; stop and the step size on the run alone.
"""

from __future__ import annotations

import atexit
import bisect
import contextlib
import itertools
import logging
import math
import multiprocessing
import multiprocessing.connection as mpc
import os
import sys
import threading
import time
import types
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from balance.config import RunConfig
from balance.engine.status import ACTIVE, ENDED
from balance.runs.limits import LimitError, Limits, check, duration
from balance.runs.store import RunStore, StoreError
from balance.runs.worker import FLUSH_SECONDS, MAX_BACKOFF, WORKER_NICENESS, JobSpec, RunStatusView, worker_main

__all__ = ["FLUSH_SECONDS", "PRIORITIES", "TERMINAL", "WORKER_NICENESS", "LimitError", "RunStatusView", "Runner",
           "neutral_main"]  # fmt: skip

log = logging.getLogger(__name__)

FINISHED_KEPT = 1000  # status views of ended runs kept in memory (older ones are read from the store)
TERMINAL = ENDED
START_FAILURES = 3  # workers that die before they are ready, in a row, before queued runs are failed
PRIORITIES = ("page", "lecture", "claims", "sweep")  # who is served first: a page's run, then the lecture's warm-up
NEURON_SNAPSHOTS = 200  # per run (as balance.runs.loop; not imported here: the loop imports torch)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --- the parent side --------------------------------------------------------------------------------------


@dataclass
class _Job:
    """K >= 1 runs trained on one engine; queued until a worker takes it."""

    key: str
    ids: list[str]  # its runs not stopped before it started
    priority: int  # index into PRIORITIES: lower is served first
    seq: int  # order of arrival
    session: str = ""
    snapshots: int = NEURON_SNAPSHOTS
    worker: _Worker | None = None
    paused: bool = False  # paused while queued: starts paused
    steps: int = 0  # step(n) while queued: n steps once it starts


@dataclass
class _Run:
    view: RunStatusView
    config: RunConfig | None
    job: _Job | None = None  # None once it has ended
    session: str = ""
    worker: _Worker | None = None  # while its job trains on a worker and it has not ended there
    lr: float | None = None  # set while queued: applied when it starts
    idle: bool = False  # paused because no page showed its session: resumes when one does


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
        args = (commands, messages, str(store.home), store.max_bytes, backend == "process")
        if backend == "process":
            self.proc: Any = ctx.Process(target=worker_main, args=args, name="balance-worker", daemon=True)
            with neutral_main():
                self.proc.start()
            commands.close()  # the child has its own copies; ours would hide its death from the other end
            messages.close()
            self.sentinel: Any = self.proc.sentinel
        else:
            self.proc = threading.Thread(target=worker_main, args=args, name="balance-worker", daemon=True)
            self.proc.start()
            self.sentinel = None
        self.job: _Job | None = None
        self.ready = False  # imported, warmed up, store open: jobs go only to ready workers
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


class _StatusWriter:
    """Saves the statuses the parent decides in a thread of its own, retrying with back-off while the store is
    locked by another process, so neither the monitor nor a page waits for a write.

    It writes through the runner's store (a second connection would leave SQLite holding one more file descriptor
    after it closes, while the first is open); a try waits for the store's own timeout.
    """

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.pending: dict[str, RunStatusView] = {}
        self.changed = threading.Condition()
        self.deadline = math.inf  # set by close: retry until then
        self.thread = threading.Thread(target=self._loop, name="balance-status-writer", daemon=True)
        self.thread.start()

    def save(self, view: RunStatusView) -> None:
        with self.changed:
            self.pending[view.id] = view
            self.changed.notify_all()

    def close(self, deadline: float) -> None:
        """Write what is pending (until ``deadline`` if the store stays locked), then end the thread."""
        with self.changed:
            self.deadline = deadline
            self.changed.notify_all()
        self.thread.join()

    def _loop(self) -> None:
        delay = FLUSH_SECONDS
        while True:
            with self.changed:
                while not self.pending and math.isinf(self.deadline):
                    self.changed.wait()
                if not self.pending or time.monotonic() >= self.deadline:
                    return
                batch = list(self.pending.values())
            if self._write(batch):
                delay = FLUSH_SECONDS
                continue
            with self.changed:  # locked: try again later
                self.changed.wait(max(0.0, min(delay, self.deadline - time.monotonic())))
            delay = min(2 * delay, MAX_BACKOFF)

    def _write(self, batch: list[RunStatusView]) -> bool:
        """Save ``batch``; False if the store was locked (what is not saved stays pending)."""
        for view in batch:
            try:
                self.store.set_status(view.id, view.state, view.step, view.message)
            except StoreError as exc:
                if exc.kind == "locked":
                    log.info("balance runner: status of run %s not saved yet: %s", view.id, exc)
                    return False
                if exc.kind != "missing":  # deleted meanwhile: nothing to save
                    log.warning("balance runner: could not save the status of run %s: %s", view.id, exc)
            with self.changed:
                if self.pending.get(view.id) is view:
                    del self.pending[view.id]
        return True


class Runner:
    """Runs configs in the background, at most ``max_workers`` at once (default: the number of cores).

    ``start`` returns a run id at once; the run is queued until a worker is free. Commands on a run that has
    ended, or that another process drives, return False. ``limits`` default to ``Limits.load(store.home)``.
    ``backend="thread"`` trains in threads of this process instead (slower; kept for the measurements that chose
    processes).
    """

    def __init__(
        self, store: RunStore | None = None, max_workers: int | None = None, backend: str = "process",
        limits: Limits | None = None,
    ) -> None:  # fmt: skip
        if backend not in ("process", "thread"):
            raise ValueError(f"backend {backend!r}: use 'process' or 'thread'")
        self.store = store if store is not None else RunStore()
        self._own_store = store is None
        self.limits = limits if limits is not None else Limits.load(self.store.home)
        self.max_workers = max_workers or default_workers()
        self.backend = backend
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self._queue: list[_Job] = []  # by (priority, arrival)
        self._seq = itertools.count()
        self._workers: list[_Worker] = []
        self._seen: dict[str, float] = {}  # session -> when a page last showed its runs (monotonic)
        self._starting: Counter[str] = Counter()  # session -> starts between the limit check and the queue
        self._start_failures = 0
        self._closed = False
        self._writer = _StatusWriter(self.store)
        idle = [s for s in (self.limits.idle_seconds, self.limits.idle_stop_seconds) if s > 0]
        self._tick = max(0.05, min([1.0, *(s / 5 for s in idle)]))
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        self._monitor = threading.Thread(target=self._watch, name="balance-runner", daemon=True)
        self._monitor.start()
        atexit.register(self.shutdown)

    # --- commands ----------------------------------------------------------------------------------------

    def start(
        self, config: RunConfig, name: str = "", sweep: str = "", session: str = "", priority: str = "page"
    ) -> str:
        """Create the run in the store (queued) and start it as soon as a worker is free; returns its id.

        Raises ``LimitError`` if the run would exceed the per-run limits or, for a ``session`` other than "",
        that session's share of runs; ``StoreError`` if the store refuses the new run.
        """
        return self.submit([config], [name], sweep, session, priority)[0]

    def submit(
        self, configs: Sequence[RunConfig], names: Sequence[str] | None = None, sweep: str = "", session: str = "",
        priority: str = "page", ids: Sequence[str] | None = None, snapshots: int = NEURON_SNAPSHOTS,
    ) -> list[str]:  # fmt: skip
        """One job: ``configs`` (one ``engine_key`` when more than one) trained together on one engine, each its own
        run of the store; returns their ids. ``priority`` is one of ``PRIORITIES``. ``ids``: runs the caller has
        created already (queued, e.g. a sweep's members in the spec's order) instead of new ones. ``snapshots``:
        neuron snapshots per run. Raises as ``start``."""
        if priority not in PRIORITIES:
            raise ValueError(f"priority {priority!r}: use one of {', '.join(PRIORITIES)}")
        if not configs or (ids is not None and len(ids) != len(configs)):
            raise ValueError("a job needs at least one config (and one id per config, if ids are given)")
        for config in configs:
            check(config, self.limits)
        with self._lock:
            if self._closed:
                raise RuntimeError("this runner has been shut down")
            if session:
                self._check_session(session, len(configs))
                self._seen[session] = time.monotonic()  # starting a run counts as showing it
            self._starting[session] += len(configs)
        try:
            if ids is None:
                with self.store.transaction():  # not under the lock: may wait
                    names = names or [""] * len(configs)
                    ids = [self.store.create_run(c, [], name=n, sweep=sweep) for c, n in zip(configs, names)]
        finally:
            with self._lock:
                self._starting[session] -= len(configs)
                if not self._starting[session]:
                    del self._starting[session]
        ids = list(ids)
        with self._lock:
            if self._closed:
                for run_id in ids:
                    self._writer_save(RunStatusView(run_id, "interrupted", 0, "the runner shut down before it started"))
                raise RuntimeError("this runner has been shut down")
            job = _Job(ids[0], ids, PRIORITIES.index(priority), next(self._seq), session, snapshots)
            for run_id, config in zip(ids, configs):
                self._runs[run_id] = _Run(RunStatusView(run_id, "queued", 0, lr=config.optim.lr), config, job, session)
            bisect.insort(self._queue, job, key=lambda j: (j.priority, j.seq))
            self._dispatch()
        return ids

    def touch(self, session: str) -> None:
        """A page shows ``session``'s runs now (call it on every tick): they keep going, or resume if they were
        paused because no page showed them."""
        if not session:
            return
        with self._lock:
            idle = self._silent(session, time.monotonic())
            self._seen[session] = time.monotonic()
            if not idle:
                return
            for run_id, run in self._runs.items():
                if run.session == session and run.idle:
                    run.idle = False
                    self._send(run_id, run, "resume")
            self._dispatch()

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

    def stop(self, run_id: str, timeout: float = 1.0) -> bool:
        """Stop the run; returns once it has stopped (its worker reads commands every 50 ms), or after ``timeout``
        seconds (it stops soon after). So a page that reruns after the click shows "stopped" at once."""
        if not self._command(run_id, "stop"):
            return False
        deadline = time.monotonic() + timeout
        with self._lock:
            while (run := self._runs.get(run_id)) is not None and run.view.state not in TERMINAL:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    break
                self._changed.wait(left)
        return True

    def set_learning_rate(self, run_id: str, lr: float) -> bool:
        """Change the base step size from the next step on; the change is recorded as an ``lr`` event."""
        with self._lock:
            run = self._runs.get(run_id)
        config = run.config if run is not None and run.config is not None else RunConfig()
        lr = config.replace(**{"optim.lr": float(lr)}).optim.lr  # validates: ConfigError names the range
        return self._command(run_id, "lr", lr)

    def delete(self, run_id: str) -> None:
        """Stop the run if this runner drives it, then delete it and its data from the store (a run whose record
        is damaged too: nothing of it needs reading to go)."""
        with self._lock:
            driven = run_id in self._runs
        if driven:
            self.stop(run_id)
        self.store.delete_run(run_id)  # the worker notices at its next write and lets the run go
        with self._lock:
            self._runs.pop(run_id, None)

    def _command(self, run_id: str, kind: str, value: Any = None) -> bool:
        with self._lock:
            run = self._runs.get(run_id)
            known = run is not None
            if known and (run.view.state in TERMINAL or self._closed):
                return False
            if known:
                run.idle = False  # the user acts on it: it is theirs again
                return self._send(run_id, run, kind, value)
        self.store.get_run(run_id)  # StoreError for an unknown id; else another process drives it
        return False

    def _send(self, run_id: str, run: _Run, kind: str, value: Any = None) -> bool:
        """Send a command to the run's worker, or apply it to the queued run (and its job). Caller holds the lock."""
        if run.worker is not None:
            return run.worker.send((kind, run_id, value))
        job = run.job
        if job is None or job.worker is not None:  # ended, or its job's worker is about to report its end
            return False
        if kind == "stop":  # still queued: it never starts
            job.ids.remove(run_id)
            if not job.ids:
                self._queue.remove(job)
            message = "stopped before it started" + (f": {value}" if value else "")
            run.view = replace(run.view, state="stopped", message=message)
            run.config, run.job = None, None
            self._writer_save(run.view)
            self._changed.notify_all()
            self._dispatch()  # a run of the same session may now be eligible
        elif kind == "lr":
            run.lr = value
            run.view = replace(run.view, lr=value)
        elif kind == "pause":
            job.paused = True
        elif kind == "resume":
            job.paused, job.steps = False, 0
        elif kind == "step":
            job.paused, job.steps = True, job.steps + value
        return True

    def _writer_save(self, view: RunStatusView) -> None:
        self._writer.save(view)

    # --- status ------------------------------------------------------------------------------------------

    def status(self, run_id: str) -> RunStatusView:
        """The run's state and progress (while queued: its place and why it waits); for a run this runner does not
        drive, what the store says."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:
                return self._queued_view(run_id, run) if run.worker is None and run.view.state == "queued" else run.view
        record = self.store.get_run(run_id)
        last = self.store.last_row(run_id)
        nan = math.nan
        return RunStatusView(
            run_id, record.state, record.step, record.message, 0.0, last.get("t", nan), last.get("loss", nan),
            last.get("lr", record.config.optim.lr),
        )  # fmt: skip

    def _queued_view(self, run_id: str, run: _Run) -> RunStatusView:
        """The view of a queued run, with its place in the queue and why it waits. Caller holds the lock."""
        if run.job is None or run.job not in self._queue:  # pragma: no cover (a queued run's job is in the queue)
            return run.view
        ahead = self._queue[: self._queue.index(run.job)]
        position = sum(len(job.ids) for job in ahead) + run.job.ids.index(run_id) + 1
        before = position - 1
        waits = f"{before} run{'s' * (before != 1)} ahead" if before else "next in line"
        busy = sum(w.job is not None for w in self._workers)
        now = time.monotonic()
        if run.session and self._silent(run.session, now):
            why = "no page has shown this session's runs lately; it starts when one does"
        elif run.session and self._training()[run.session] >= self.limits.running_per_session:
            n = self.limits.running_per_session
            why = f"this session already has {n} run{'s' * (n > 1)} training, its share; it starts when one ends"
        elif busy >= self.max_workers:
            why = (
                f"{'both' if busy == 2 else 'all'} worker{'s' * (busy > 1)} busy" if busy > 1 else "the worker is busy"
            )
        else:
            why = "a worker is starting (a few seconds)"
        return replace(run.view, queue_position=position, message=f"queued: {waits}; {why}")

    def active(self) -> list[str]:
        """Ids of this runner's runs that are queued, running or paused."""
        with self._lock:
            return [run_id for run_id, run in self._runs.items() if run.view.state in ACTIVE]

    def wait(self, run_id: str, timeout: float | None = None, states: tuple[str, ...] = TERMINAL) -> RunStatusView:
        """Block until the run's state is one of ``states`` (default: ended) or ``timeout``; returns its status.

        An ended state counts once the run's worker is done with it (its last rows saved, or given up on).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while (run := self._runs.get(run_id)) is not None and (
                run.view.state not in states or (run.view.state in TERMINAL and run.worker is not None)
            ):
                left = None if deadline is None else deadline - time.monotonic()
                if (left is not None and left <= 0) or self._closed:
                    break
                self._changed.wait(left)
        return self.status(run_id)

    # --- sessions ----------------------------------------------------------------------------------------

    def _check_session(self, session: str, n: int = 1) -> None:
        """LimitError if ``session`` has no room for ``n`` more runs training and waiting. Caller holds the lock."""
        limits = self.limits
        mine = [run for run in self._runs.values() if run.session == session and run.view.state in ACTIVE]
        training = sum(run.worker is not None for run in mine)
        waiting = len(mine) - training + self._starting[session]
        if training + waiting + n > limits.running_per_session + limits.queued_per_session:
            raise LimitError(
                f"this session already has {training} run{'s' * (training != 1)} training and {waiting} waiting, "
                f"the most one session may have ({limits.running_per_session} training and "
                f"{limits.queued_per_session} waiting): stop one, or wait for one to end"
            )

    def _silent(self, session: str, now: float) -> bool:
        """No page has shown ``session``'s runs for ``limits.idle_seconds``. Caller holds the lock."""
        idle = self.limits.idle_seconds
        return idle > 0 and now - self._seen.get(session, now) >= idle

    def _training(self) -> Counter[str]:
        """Jobs on a worker (starting, running or paused), by session. Caller holds the lock."""
        return Counter(w.job.session for w in self._workers if w.job is not None)

    def _check_idle(self) -> None:
        """Pause the runs of sessions no page has shown for ``idle_seconds``; stop them after ``idle_stop_seconds``."""
        limits, now = self.limits, time.monotonic()
        with self._lock:
            for run_id, run in list(self._runs.items()):
                if not run.session or run.view.state not in ACTIVE:
                    continue
                silent = now - self._seen.get(run.session, now)
                if limits.idle_stop_seconds > 0 and silent >= limits.idle_stop_seconds:
                    self._send(
                        run_id, run, "stop", f"no page has shown it for {duration(silent).removeprefix('about ')}"
                    )
                elif run.view.state == "running" and not run.idle and self._silent(run.session, now):
                    run.idle = True  # a running view comes from its worker: the pause goes there
                    shown = duration(limits.idle_seconds).removeprefix("about ")
                    why = f"paused: no page has shown it for {shown}; it resumes when one does"
                    self._send(run_id, run, "pause", why)
            active = {run.session for run in self._runs.values() if run.view.state in ACTIVE}
            forget = max(limits.idle_seconds, limits.idle_stop_seconds, 60.0)
            for session in [s for s, seen in self._seen.items() if s not in active and now - seen > forget]:
                del self._seen[session]
            self._changed.notify_all()

    # --- the pool ----------------------------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        worker = _Worker(self._ctx, self.backend, self.store)
        self._workers.append(worker)
        self._wake()  # the monitor starts watching the new pipes
        return worker

    def _dispatch(self) -> None:
        """Start queued jobs on free ready workers, by priority then arrival, skipping jobs whose session has its
        share training; spawn workers (up to ``max_workers``) for the rest. Caller holds the lock."""
        if self._closed:
            return
        training, now = self._training(), time.monotonic()
        eligible = []
        for job in self._queue:
            if job.session and (
                self._silent(job.session, now) or training[job.session] >= self.limits.running_per_session
            ):
                continue
            training[job.session] += 1
            eligible.append(job)
        free = [w for w in self._workers if w.job is None]
        for job, worker in zip(eligible, [w for w in free if w.ready]):
            self._queue.remove(job)
            worker.job, job.worker = job, worker
            runs = [self._runs[run_id] for run_id in job.ids]
            for run in runs:
                run.worker = worker
                run.view = replace(run.view, message="starting", queue_position=0)
            spec = JobSpec(
                tuple(run.config.to_dict() for run in runs), tuple(job.ids), tuple(run.lr for run in runs),  # type: ignore[union-attr]
                job.paused, job.steps, self.limits.max_seconds, job.snapshots,
            )  # fmt: skip
            worker.send(("job", job.key, spec))
        starting = sum(not w.ready for w in free)
        wanted = len(eligible) - sum(w.ready for w in free) - starting
        for _ in range(min(wanted, self.max_workers - len(self._workers))):
            self._spawn()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send_bytes(b"!")

    def _watch(self) -> None:
        """The monitor thread: status messages in, dead workers out, queued runs onto free workers, idle sessions."""
        next_idle = time.monotonic() + self._tick
        while True:
            with self._lock:
                if self._closed:
                    return
                by_pipe = {w.messages: w for w in self._workers}
                by_sentinel = {w.sentinel: w for w in self._workers if w.sentinel is not None}
            timeout = max(0.0, next_idle - time.monotonic())
            for ready in mpc.wait([self._wake_r, *by_pipe, *by_sentinel], timeout):
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
            if time.monotonic() >= next_idle:
                next_idle = time.monotonic() + self._tick
                try:
                    self._check_idle()
                except Exception:
                    log.exception("balance runner: error while pausing idle runs")

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.messages.recv()
        except (EOFError, OSError):
            self._lost(worker)
            return
        self._handle(worker, message)

    def _handle(self, worker: _Worker, message: tuple) -> None:
        """A message from a worker: ready; status (its job's runs); ended (a run, saved or not); done (its job)."""
        kind = message[0]
        if kind == "ready":
            with self._lock:
                worker.ready, self._start_failures = True, 0
                self._dispatch()
            return
        unsaved = None
        with self._lock:
            if kind == "status":
                for view in message[1]:
                    run = self._runs.get(view.id)
                    if run is not None and run.worker is worker:  # not a run deleted (or forgotten) meanwhile
                        run.view = view
            elif kind == "ended":
                view, saved = message[1], message[2]
                run = self._runs.get(view.id)
                if run is not None and run.worker is worker:
                    run.view, run.worker, run.config, run.job, run.idle = view, None, None, None, False
                if not saved:  # the worker could not write its final status (e.g. a full disk): try from here
                    unsaved = view
            elif kind == "done":
                job, worker.job = worker.job, None
                if job is not None:
                    job.worker = None
                    for view in self._release(job, worker, "its job ended without it"):
                        self._writer_save(view)
                self._forget_old()
                self._dispatch()
            self._changed.notify_all()
        if unsaved is not None:
            self._writer_save(unsaved)

    def _release(self, job: _Job, worker: _Worker, why: str) -> list[RunStatusView]:
        """Mark the job's runs that have not ended on ``worker`` interrupted (``why``). Caller holds the lock."""
        ended = []
        for run_id in job.ids:
            run = self._runs.get(run_id)
            if run is not None and run.worker is worker:
                message = f"interrupted at step {run.view.step}: {why}"
                run.view = replace(run.view, state="interrupted", message=message, steps_per_second=0.0)
                run.worker, run.config, run.job = None, None, None
                ended.append(run.view)
        return ended

    def _lost(self, worker: _Worker) -> None:
        """A worker ended: take its last messages, mark its job's runs interrupted, and replace it if jobs wait."""
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
        why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        ended = []
        with self._lock:
            if worker.job is not None:
                ended += self._release(worker.job, worker, f"its worker process died ({why})")
                worker.job = None
            if not worker.ready:  # died while starting: after a few in a row, stop trying
                self._start_failures += 1
                if self._start_failures >= START_FAILURES:
                    ended += self._fail_queued(f"failed: worker processes could not start ({why})")
            self._dispatch()
            self._changed.notify_all()
        for view in ended:
            self._writer_save(view)

    def _fail_queued(self, message: str) -> list[RunStatusView]:
        """Fail every queued run (workers cannot start). Caller holds the lock."""
        ended = []
        for job in self._queue:
            for run_id in job.ids:
                run = self._runs[run_id]
                run.view, run.config, run.job = replace(run.view, state="failed", message=message), None, None
                ended.append(run.view)
        self._queue.clear()
        return ended

    def _forget_old(self) -> None:
        ended = [run_id for run_id, run in self._runs.items() if run.view.state in TERMINAL]
        for run_id in ended[: max(0, len(ended) - FINISHED_KEPT)]:
            del self._runs[run_id]

    # --- shutting down -----------------------------------------------------------------------------------

    def shutdown(self, timeout: float = 10.0) -> None:
        """Interrupt every run (each saves what it has), end the workers and the monitor. Idempotent."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closed:
                return
            self._closed = True
            queued = {run_id for job in self._queue for run_id in job.ids}
            workers = list(self._workers)
            self._queue.clear()
            self._workers.clear()
        atexit.unregister(self.shutdown)
        self._wake()
        self._monitor.join()
        for worker in workers:
            worker.send(("exit", None, None))
        self._collect(workers, deadline)
        with self._lock:
            left = [run.view for run in self._runs.values() if run.view.state in ACTIVE]
            for view in left:
                why = "before it started" if view.id in queued or view.message == "starting" else f"at step {view.step}"
                self._runs[view.id].view = replace(view, state="interrupted", message=f"the runner shut down {why}")
                self._writer_save(self._runs[view.id].view)
            self._changed.notify_all()
        self._writer.close(max(deadline, time.monotonic() + 1.0))
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
