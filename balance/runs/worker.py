"""A worker process of ``balance.runs.executor``: trains the jobs it is sent, one at a time, through the one loop
(``balance.runs.loop.drive``), and writes them to the store as they go (``balance.runs.sink.StoreSink``).

A job is K >= 1 configs trained on one engine (a page's run is K = 1; a sweep chunk is K of one shape), each
config one run of the store. Talks to the parent over two pipes. Commands come down (``job``; ``pause``,
``resume``, ``step``, ``stop``, ``lr`` for a run; ``exit``) and are read between steps, at least every
``POLL_SECONDS`` (``PipeControl``); pause, step and resume act on the whole job, stop and lr on their run.
``ready`` (once, after the imports and a warm-up step), ``status`` (the job's runs, after every save, about five a
second), ``ended`` (once per run, when its last rows and status are saved or given up on) and ``done`` (once per
job, last) go up.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

from balance.config import RunConfig
from balance.runs.sink import FLUSH_SECONDS, MAX_BACKOFF, RunStatusView, StoreSink
from balance.runs.store import RunStore, StoreError

__all__ = ["FLUSH_SECONDS", "MAX_BACKOFF", "POLL_SECONDS", "WORKER_NICENESS", "JobSpec", "PipeControl",
           "RunStatusView", "worker_main"]  # fmt: skip

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05  # a training worker looks for commands this often (pause, stop: within 50 ms)
WORKER_NICENESS = 10  # added to a worker process's nice value: training yields the CPU to the page
STORE_TIMEOUT = 0.25  # a save waits this long for another writer, then keeps its rows and retries later


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
