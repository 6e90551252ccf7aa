"""The one loop: ``drive`` trains an engine of K >= 1 members to its end and writes what happens to a sink.

Every run trains here. ``run(config)`` (``balance.run``, ``balance run``) and ``train(configs)`` (a sweep chunk in this
process or a Ray task) keep the rows in memory (``MemorySink``); a worker process of ``balance.runs.executor`` writes
them to the store as it goes (``balance.runs.sink.StoreSink``, bounded and retried while the store is locked);
``replay(record)`` trains a stored run again from its config versions. What the loop does, the same for all:

- steps the engine until every member has ended: finished, diverged (the engine drops it, the others go on),
  failed, or stopped at the wall-time limit (the smallest ``max_seconds``, or the caller's ``Limit``);
- sends every logged row (the engine thins them: ``should_log``) and a neuron snapshot every ``steps / 200`` steps,
  at least every ``SNAPSHOT_SECONDS``, and at the first and last step, to the sink;
- between steps, asks its ``Control`` for commands: pause (take a row and a snapshot where it stands), resume,
  advance n steps then pause, stop (one member or all), and live changes (``Set``: the step size). A live change is
  a new config version from the step it applies to: the sink records it (``Change``), a row is taken at once with
  the new value, and ``replay`` applies it at the same step, so the same numbers come out.

No threads here: a control's ``poll`` may wait (a paused worker waits on its command pipe).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from balance.config import RunConfig
from balance.engine.engine import Engine
from balance.engine.status import RunStatus
from balance.runs.record import Change, RunRecord

__all__ = ["LIVE", "NEURON_SNAPSHOTS", "SNAPSHOT_SECONDS", "Advance", "Change", "Control", "Limit", "MemorySink",
           "Pause", "Resume", "RunResult", "Set", "Sink", "Stop", "drive", "frame", "replay", "run",
           "train"]  # fmt: skip

log = logging.getLogger(__name__)

NEURON_SNAPSHOTS = 200  # per run, at an even stride of steps (the store thins beyond its own limit)
SNAPSHOT_SECONDS = 2.0  # and one at least this often, for long runs stopped early

# What a live change does to the engine, by setting (``balance.runs.record.LIVE_EVENTS`` names how it is stored).
LIVE: dict[str, Callable[[Engine, int, float], None]] = {"optim.lr": lambda engine, m, lr: engine.set_lr(m, lr)}


# --- commands -----------------------------------------------------------------------------------------------------


class Pause(NamedTuple):
    note: str = ""  # why, when not its user (shown with the state)


class Resume(NamedTuple):
    pass


class Advance(NamedTuple):
    n: int  # steps to take, then pause


class Stop(NamedTuple):
    member: int | None  # config index, None: every member
    state: str  # "stopped" or "interrupted"
    message: str  # "{step}" is replaced by the step it stops at


class Set(NamedTuple):
    member: int
    key: str  # a setting of ``LIVE``
    value: float


Command = Pause | Resume | Advance | Stop | Set


class Control:
    """What steers a run between steps. This one steers nothing: the run goes to its end.

    ``poll(step, wait)`` returns the commands that have arrived, waiting up to ``wait`` seconds for the first (only
    while paused); it is called before the first step, then every ``every`` seconds (0: after every step).
    """

    every: float = math.inf

    def poll(self, step: int, wait: float) -> Sequence[Command]:
        if wait > 0:  # paused with nothing to resume it: cannot happen without commands; do not spin
            time.sleep(min(wait, 1.0))
        return ()


@dataclass(frozen=True)
class Limit:
    """The wall-time limit: after ``seconds`` every member still running stops with ``message``."""

    seconds: float
    message: str

    @classmethod
    def of(cls, configs: Sequence[RunConfig], server: float = math.inf) -> Limit:
        """The configs' limit (the smallest ``max_seconds``), or the server's if it is smaller."""
        own = min(c.max_seconds for c in configs)
        if own <= server:
            return cls(own, f"stopped at the wall-time limit of {own:g} s")
        return cls(server, f"stopped at the server's limit of {server:g} s per run (limits.toml)")


# --- sinks --------------------------------------------------------------------------------------------------------


class Sink:
    """Where a run's rows, snapshots, changes and ends go. Members are config indices of the engine.

    ``tick`` is called once ``next_save`` (monotonic seconds) has passed, after a command, and while paused: a sink
    that saves in batches saves when it is due (or at once with ``force``) and returns the members it can no longer
    take (a deleted run): the loop stops them.
    """

    next_save: float = math.inf

    def begin(self, engine: Engine) -> None:
        pass

    def rows(self, member: int, rows: Sequence[np.ndarray]) -> None:
        raise NotImplementedError

    def snapshot(self, member: int, step: int, table: dict[str, np.ndarray]) -> None:
        pass

    def change(self, member: int, change: Change) -> None:
        pass

    def ended(self, member: int, status: RunStatus) -> None:
        pass

    def tick(self, now: float, engine: Engine, state: str, note: str, force: bool = False) -> set[int]:
        return set()

    def due(self, now: float) -> float:
        """Seconds until the sink wants a ``tick`` (a paused run waits at most this long for commands)."""
        return math.inf


@dataclass
class RunResult:
    """One member trained in memory: its metrics (one row per logged step; ``frame``), final status, starting config,
    live changes and neuron snapshots (step, table). Reads as the pair ``(metrics, status)``: ``df, status = run(c)``,
    ``run(c)[0]``."""

    metrics: pd.DataFrame
    status: RunStatus
    config: RunConfig | None = None
    changes: tuple[Change, ...] = ()
    neurons: list[tuple[int, dict[str, np.ndarray]]] = field(default_factory=list)

    def __iter__(self) -> Any:
        return iter((self.metrics, self.status))

    def __getitem__(self, i: int) -> Any:
        return (self.metrics, self.status)[i]

    def __len__(self) -> int:
        return 2


class MemorySink(Sink):
    """Keeps everything in memory; ``results()`` gives one ``RunResult`` per member. A row logged again at its step
    (a pause, then a live change) replaces the earlier one, as the store reads it."""

    def __init__(self, snapshots: bool = True) -> None:
        self.snapshots = snapshots
        self.columns: list[str] = []
        self.configs: list[RunConfig] = []
        self._rows: list[list[np.ndarray]] = []
        self._neurons: list[list[tuple[int, dict]]] = []
        self._changes: list[list[Change]] = []
        self._status: list[RunStatus] = []

    def begin(self, engine: Engine) -> None:
        k = len(engine.configs)
        self.columns, self.configs = engine.columns, engine.configs
        self._rows = [[] for _ in range(k)]
        self._neurons, self._changes = [[] for _ in range(k)], [[] for _ in range(k)]
        self._status = list(engine.status)

    def rows(self, member: int, rows: Sequence[np.ndarray]) -> None:
        kept = self._rows[member]
        for row in rows:
            if kept and kept[-1][0] == row[0]:
                kept[-1] = row
            else:
                kept.append(row)

    def snapshot(self, member: int, step: int, table: dict[str, np.ndarray]) -> None:
        if self.snapshots:
            self._neurons[member].append((step, table))

    def change(self, member: int, change: Change) -> None:
        self._changes[member].append(change)

    def ended(self, member: int, status: RunStatus) -> None:
        self._status[member] = status

    def results(self) -> list[RunResult]:
        width = len(self.columns)
        return [
            RunResult(frame(self.columns, np.stack(rows) if rows else np.zeros((0, width))), status, config,
                      tuple(changes), neurons)
            for rows, status, config, changes, neurons in zip(
                self._rows, self._status, self.configs, self._changes, self._neurons
            )
        ]  # fmt: skip


def frame(columns: list[str], rows: list[list[float]] | np.ndarray) -> pd.DataFrame:
    """Rows as a float64 DataFrame; ``step`` as int64 (built column by column: ~8x faster than from rows)."""
    data = np.asarray(rows, dtype=np.float64).reshape(-1, len(columns))
    out = {c: data[:, i] for i, c in enumerate(columns)}
    if "step" in out:
        out["step"] = out["step"].astype(np.int64)
    return pd.DataFrame(out)


# --- the loop -----------------------------------------------------------------------------------------------------


class _Drive:
    """The loop's state: what is paused, what is logged and snapshotted, which members have ended."""

    def __init__(self, engine: Engine, sink: Sink, control: Control) -> None:
        self.engine, self.sink, self.control = engine, sink, control
        self.paused, self.budget, self.note = False, 0, ""
        self.logged = -1  # step of the latest rows sent
        self.snapped = -1
        self.open = {int(m) for m in engine.members}  # members whose end the sink has not been told
        self.stack = len(engine.members)

    def waiting(self) -> bool:
        return self.paused and self.budget == 0

    def state(self) -> str:
        return "paused" if self.waiting() else "running"

    def send(self, rows: dict[int, list[np.ndarray]]) -> None:
        for member, new in rows.items():
            self.sink.rows(member, new)
        if rows:  # every member logs the same steps
            self.logged = max(self.logged, int(next(iter(rows.values()))[-1][0]))

    def take_row(self, force: bool = False) -> None:
        """Rows of the current state (a pause, a stop, a live change), unless they were just sent."""
        engine = self.engine
        if engine.running and (force or self.logged != engine.step_index):
            rows = engine.rows()
            self.send({int(m): [rows[i]] for i, m in enumerate(engine.members)})

    def snapshot(self) -> None:
        """Neuron tables of the members in the stack whose end the sink has not been told yet."""
        engine = self.engine
        if self.snapped != engine.step_index and self.open & {int(m) for m in engine.members}:
            for member, table in engine.neuron_tables().items():
                if member in self.open:
                    self.sink.snapshot(member, engine.step_index, table)
            self.snapped = engine.step_index

    def fail(self, message: str) -> None:
        """Every running member failed here (no row: the state may be half updated)."""
        engine = self.engine
        for member in engine.members:
            if engine.status[member].state == "running":
                engine.status[member] = RunStatus("failed", engine.step_index, message)

    def report_ended(self) -> None:
        """Tell the sink of members that have ended (once each), with a snapshot of where they ended."""
        engine = self.engine
        if len(engine.members) == self.stack and engine.running:
            return
        self.stack = len(engine.members)
        if any(engine.status[m].state not in ("running", "failed") for m in engine.members):
            self.snapshot()  # where they ended (a member dropped from the stack, diverged, is gone already)
        for member in sorted(self.open):
            status = engine.status[member]
            if status.state != "running":
                self.open.discard(member)
                self.sink.ended(member, status)

    def tick(self, now: float, force: bool = False) -> None:
        gone = self.sink.tick(now, self.engine, self.state(), self.note if self.waiting() else "", force)
        for member in sorted(gone & self.open):  # deleted meanwhile: let it go, quietly
            self.engine.stop("deleted", member)
            self.open.discard(member)
        if gone:
            self.stack = len(self.engine.members)

    def pause_here(self) -> None:
        """Take a row and a snapshot of the current state, so a paused run shows where it is; save them."""
        self.take_row()
        self.snapshot()
        self.tick(time.monotonic(), force=True)

    def apply(self, command: Command) -> None:
        engine = self.engine
        if isinstance(command, Stop):
            message = command.message.replace("{step}", str(engine.step_index))
            self.snapshot()
            self.send(engine.stop(message, command.member, command.state))
            self.report_ended()
            self.tick(time.monotonic(), force=True)
        elif isinstance(command, Pause):
            self.paused, self.budget, self.note = True, 0, command.note
            self.pause_here()
        elif isinstance(command, Resume):
            self.paused, self.budget, self.note = False, 0, ""
            self.tick(time.monotonic(), force=True)  # the store says "running" at once
        elif isinstance(command, Advance):
            self.paused, self.note = True, ""
            self.budget += command.n
        elif isinstance(command, Set):
            if command.member not in self.open or engine.status[command.member].state != "running":
                return  # ended meanwhile
            LIVE[command.key](engine, command.member, command.value)
            self.sink.change(command.member, Change(engine.step_index, command.key, command.value))
            self.take_row(force=True)  # the row at this step shows the value its update uses
            self.tick(time.monotonic(), force=True)  # the change and the new value are saved and shown at once


def drive(
    engine: Engine,
    sink: Sink,
    control: Control | None = None,
    limit: Limit | None = None,
    on_step: Callable[[int], None] | None = None,
    snapshots: int = NEURON_SNAPSHOTS,
) -> list[RunStatus]:
    """Train ``engine`` until every member has ended; returns the members' final statuses (config order).

    ``control`` steers it between steps (default: nothing does); ``limit`` is the wall-time limit (default: the
    configs' own); ``on_step(k)`` is called after every step (a progress bar); ``snapshots``: neuron snapshots per
    run at an even stride (0: the first and the last only). An exception inside a step fails every running member
    with its message (the rows so far are kept).
    """
    control = control or Control()
    limit = limit or Limit.of(engine.configs)
    run = _Drive(engine, sink, control)
    stride = max(1, math.ceil(engine.steps / snapshots)) if snapshots else 0
    sink.begin(engine)
    run.snapshot()
    start = time.monotonic()
    deadline, next_snapshot, next_poll = start + limit.seconds, start + SNAPSHOT_SECONDS, start
    run.tick(start, force=True)  # the run is claimed at once, and its first step's rows follow at once:
    first = True  # a page's first chart
    going = engine.running
    while going:
        now = time.monotonic()
        if now >= deadline:
            run.apply(Stop(None, "stopped", limit.message))
            break
        if now >= next_poll or (run.paused and not run.budget):
            wait = min(1.0, deadline - now, sink.due(now)) if run.waiting() else 0.0
            for command in control.poll(engine.step_index, max(0.0, wait)):
                run.apply(command)
                if not engine.running:
                    break
            now = time.monotonic()
            next_poll = now + control.every
            going = engine.running
            if run.waiting() or not going:
                run.tick(now)
                continue
        try:
            rows = engine.step()
        except Exception as exc:  # a failing step fails its members, not the process that drives them
            log.exception("balance: a step failed")
            run.fail(f"failed at step {engine.step_index}: {type(exc).__name__}: {exc}")
            rows = {}
        if rows:
            run.send(rows)
        going = engine.running
        if not going or len(engine.members) != run.stack:
            run.report_ended()
        if on_step is not None:
            on_step(engine.step_index)
        if (stride and engine.step_index % stride == 0) or now >= next_snapshot:
            run.snapshot()
            next_snapshot = now + SNAPSHOT_SECONDS
        if run.budget:
            run.budget -= 1
            if run.budget == 0:
                run.pause_here()
        if now >= sink.next_save or first:
            run.tick(now, force=first)
            going, first = engine.running, False
    run.report_ended()
    return list(engine.status)


# --- in memory: run, train, replay ----------------------------------------------------------------------------------


class _Foreground(Control):
    """``balance run``'s control: ``stop()`` is asked after every step (Ctrl-C); True interrupts the run."""

    every = 0.0

    def __init__(self, stop: Callable[[], bool], steps: int) -> None:
        self.stop, self.steps = stop, steps

    def poll(self, step: int, wait: float) -> Sequence[Command]:
        if self.stop():
            return [Stop(None, "interrupted", f"interrupted at step {{step}} of {self.steps}")]
        return ()


def run(
    config: RunConfig, on_step: Callable[[int], None] | None = None, stop: Callable[[], bool] | None = None
) -> RunResult:
    """Train ``config`` to its last step (or divergence, or its wall-time limit, or ``stop``), in this process.

    ``on_step(k)`` is called after every step (the CLI's progress bar). ``stop()`` is asked after every step: True
    ends the run as ``interrupted`` with the rows so far and the current state as its last row (the CLI's Ctrl-C).
    Returns a ``RunResult`` (unpacks as ``metrics, status``); a diverged run keeps its rows up to and including the
    step that went wrong.
    """
    engine = Engine([config])
    sink = MemorySink()
    drive(engine, sink, _Foreground(stop, config.steps) if stop is not None else None, on_step=on_step)
    return sink.results()[0]


def train(
    configs: Sequence[RunConfig], on_step: Callable[[int], None] | None = None, snapshots: int = NEURON_SNAPSHOTS
) -> list[RunResult]:
    """Train ``configs`` (one ``engine_key``) together in this process, to the end; one ``RunResult`` each, in order.
    The wall-time limit (the smallest ``max_seconds``) stops every member still running."""
    if not configs:
        raise ValueError("a batch needs at least one config")
    engine = Engine(configs)
    sink = MemorySink()
    drive(engine, sink, on_step=on_step, snapshots=snapshots)
    return sink.results()


class _Script(Control):
    """Replays a record's live changes at their steps, and stops where the record stopped."""

    every = 0.0

    def __init__(self, changes: Sequence[Change], stop_at: int | None, status: RunStatus) -> None:
        self.changes = sorted(changes, key=lambda c: c.step)
        self.stop_at, self.status = stop_at, status

    def poll(self, step: int, wait: float) -> Sequence[Command]:
        out: list[Command] = []
        while self.changes and self.changes[0].step <= step:
            change = self.changes.pop(0)
            out.append(Set(0, change.key, change.value))
        if self.stop_at is not None and step >= self.stop_at:
            out.append(Stop(None, self.status.state, self.status.message))
        return out


def replay(record: RunRecord | RunResult) -> RunResult:
    """Train a run again from its record: its starting config, its live changes applied at the steps they applied
    from, and, for a run stopped or interrupted at step k, a stop there. A run is deterministic in its config (the
    seed is in it), so the result has the same numbers as the original at every step both logged (a live run also
    logs a row wherever it was paused; the replay only where the engine logs and where a change applied)."""
    config = record.config
    if config is None:
        raise ValueError("this result has no config to replay")
    status = record.status
    stop_at = status.step if status.state in ("stopped", "interrupted") else None
    engine = Engine([config])
    sink = MemorySink()
    drive(engine, sink, _Script(record.changes, stop_at, status), limit=Limit(math.inf, ""))
    return sink.results()[0]
