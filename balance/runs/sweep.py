"""Sweeps: a grid or a list of configurations, trained in batches, every member stored as a run of its sweep.

A spec is a base ``RunConfig`` plus the settings to vary, as dotted names (``optim.lr``, ``model.init_scale``,
``seed``, ``optim.name``, ``model.width``, ...). From TOML::

    name = "lr-study"              # optional; the sweep id is the name and a random suffix
    preset = "fig1-small"          # optional starting point (else the defaults), then [base] on top

    [base]                         # a run config, exactly as 'balance config' prints one
    steps = 2000
    log_every = 10
    [base.data]
    d1 = 50
    d2 = 50

    [grid]                         # every combination of these values (Cartesian product)
    "optim.lr" = [0.01, 0.02, 0.05]
    "model.init_scale" = [0.01, 0.1]
    seed = "0-7"                   # a range (inclusive) or a list, as --seeds takes

    [[list]]                       # optional: members given one by one; the grid multiplies each of them
    "optim.name" = "gd"
    [[list]]
    "optim.name" = "momentum"
    "optim.momentum" = 0.5

Running (``run_sweep``): members that can batch (``batching.batch_key``) train in chunks of one shape (about 64 MF
or 8 network members each: larger chunks hit allocator page faults); the rest one per chunk. Each chunk is a job of
the executor (``balance.runs.executor``, priority ``sweep``): K configs on one engine, driven by the one loop, its
worker writing every member to the store as it trains. A diverged member is recorded as diverged and the others go
on. With ``ray_address`` each chunk is a Ray task and the results are collected into the same store; Ray is
imported only then.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from balance.config import ConfigError, RunConfig, loads_toml, parse_value, schema
from balance.runs import sweep_stats

log = logging.getLogger(__name__)

MAX_MEMBERS = 100_000  # counted (a product of axis lengths) before a single member is built
RAY_CONNECT_SECONDS = 20.0  # a Ray address that does not answer within this is refused (the CLI exits 2)
CHUNK = {"mf": 64}  # members per batched chunk by model family; others CHUNK_DEFAULT
CHUNK_DEFAULT = 8
# neuron snapshots per member between its first and last step (a page's run keeps 200): a sweep is read by its final
# values, and 200 snapshots of 64 stacked members cost ~25% of an MF chunk's training
SNAPSHOTS = 20
SPEC_KEYS = ("name", "preset", "base", "grid", "list")
SETTINGS = dict(schema())  # dotted name -> field
# The axes the Sweeps page knows by name (shown in this order where they vary).


def parse_seeds(text: str, limit: int = MAX_MEMBERS) -> tuple[int, ...]:
    """``"0-7"`` -> 0..7, ``"0,3,5"``, ``"0-3,8"``; each seed once, in the order given.

    The seeds are counted before any list is built: more than ``limit`` (``0-2147483647``) raise ``ConfigError``.
    """
    ranges: list[tuple[int, int]] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            lo, _, hi = part.partition("-") if "-" in part.lstrip("-") else (part, "", part)
            first, last = int(lo), int(hi)
        except ValueError:
            raise ConfigError(f"seeds {text!r}: expected seeds such as 0-7 or 0,3,5") from None
        if last < first:
            raise ConfigError(f"seeds {text!r}: the range {part} runs backwards")
        ranges.append((first, last))
    count = sum(last - first + 1 for first, last in ranges)
    if count > limit:
        raise ConfigError(f"seeds {text!r}: {count:,} seeds; a sweep has at most {limit:,} members")
    seeds = [seed for first, last in ranges for seed in range(first, last + 1)]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {text!r}: a seed is given twice")
    return tuple(seeds)


def count_members(axis_lengths: Sequence[int], listed: int = 0) -> int:
    """Members of a sweep: the product of the grid's axis lengths, times the ``[[list]]`` entries (if any)."""
    return math.prod(axis_lengths) * max(listed, 1)


def check_members(count: int, where: str = "sweep spec") -> None:
    """Refuse a sweep of more than ``MAX_MEMBERS`` members, before anything of it is built."""
    if count > MAX_MEMBERS:
        raise ConfigError(f"{where}: {count:,} members; a sweep has at most {MAX_MEMBERS:,}")


def _value(key: str, value: Any) -> Any:
    """One value of setting ``key`` as TOML or the command line gives it (text is parsed as the CLI does)."""
    return parse_value(key, value) if isinstance(value, str) and SETTINGS[key].type != "str" else value


def _check_key(key: str, where: str) -> None:
    if key not in SETTINGS:
        close = [k for k in SETTINGS if k.rpartition(".")[2] == key.rpartition(".")[2]]
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ConfigError(f"{where}: {key!r} is not a setting{hint}; settings are dotted names such as optim.lr")


@dataclass(frozen=True)
class SweepSpec:
    """A base config, a grid (every combination) and a list (members one by one); see the module docstring."""

    base: RunConfig = field(default_factory=RunConfig)
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    members: tuple[tuple[tuple[str, Any], ...], ...] = ()
    name: str = "sweep"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SweepSpec:
        """Strict: unknown keys, empty or repeated values and invalid members raise ``ConfigError`` naming them."""
        for key in raw:
            if key not in SPEC_KEYS:
                raise ConfigError(f"sweep spec: unknown key {key!r}; allowed: {', '.join(SPEC_KEYS)}")
        name = raw.get("name", "sweep")
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum() or len(name) > 64:
            raise ConfigError(f"sweep spec: name = {name!r}: use letters, digits, - and _ (at most 64)")
        base = RunConfig()
        if "preset" in raw:
            from balance.config.presets import PRESETS, preset

            if not isinstance(raw["preset"], str) or raw["preset"] not in PRESETS:
                raise ConfigError(f"sweep spec: preset {raw['preset']!r} is not one of {', '.join(PRESETS)}")
            base = preset(raw["preset"])
        if "base" in raw:
            if not isinstance(raw["base"], Mapping):
                raise ConfigError("sweep spec: [base] must be a table (a run config)")
            base = _merge(base, raw["base"])
        grid = raw.get("grid", {})
        if not isinstance(grid, Mapping):
            raise ConfigError("sweep spec: [grid] must be a table of setting = [values]")
        members = raw.get("list", [])
        if not isinstance(members, list) or not all(isinstance(m, Mapping) for m in members):
            raise ConfigError("sweep spec: [[list]] entries must be tables of setting = value")
        lists: dict[str, list[Any]] = {}
        for key, values in grid.items():  # the shapes first: the count comes before any value is parsed
            _check_key(key, "sweep spec: [grid]")
            if key == "seed" and isinstance(values, str):
                values = list(parse_seeds(values))
            if not isinstance(values, list) or not values:
                raise ConfigError(f"sweep spec: [grid] {key}: give a non-empty list of values")
            lists[key] = values
        check_members(count_members([len(v) for v in lists.values()], len(members)))
        axes = []
        for key, values in lists.items():
            parsed = tuple(_value(key, v) for v in values)
            if len({repr(v) for v in parsed}) != len(parsed):
                raise ConfigError(f"sweep spec: [grid] {key}: a value is given twice")
            axes.append((key, parsed))
        listed = []
        for i, m in enumerate(members):
            for key in m:
                _check_key(key, f"sweep spec: [[list]] entry {i + 1}")
                if key in grid:
                    raise ConfigError(f"sweep spec: {key} is both in [grid] and in [[list]] entry {i + 1}")
            listed.append(tuple((k, _value(k, v)) for k, v in m.items()))
        spec = cls(base, tuple(axes), tuple(listed), name)
        spec.configs()  # every member must be a valid config
        return spec

    @classmethod
    def from_toml(cls, text: str, where: str = "sweep spec") -> SweepSpec:
        raw = loads_toml(text, where)
        if not any(k in raw for k in ("grid", "list", "base", "preset", "name")):
            raw = {"base": raw}  # a plain run config: a sweep of one, to be widened by flags
        return cls.from_dict(raw)

    def size(self) -> int:
        """The number of members, counted without building them."""
        return count_members([len(v) for _, v in self.grid], len(self.members))

    def changes(self) -> list[dict[str, Any]]:
        """Each member's settings that differ from the base: list entries times grid combinations."""
        return [dict(c) for c in self._changes]

    def configs(self) -> list[RunConfig]:
        """The members' configs, in ``changes`` order; an invalid combination raises naming the member."""
        return list(self._configs)

    def varied(self) -> list[str]:
        """The settings that vary across members."""
        changes = self._changes
        keys = dict.fromkeys(k for c in changes for k in c)
        return [k for k in keys if len({repr(c.get(k)) for c in changes}) > 1]

    # Built once per spec (validating, counting and running all need them; 10^5 configs take seconds to build),
    # and only after the count is known to be within the limit.
    @functools.cached_property
    def _changes(self) -> tuple[dict[str, Any], ...]:
        check_members(self.size())
        keys = [k for k, _ in self.grid]
        combos = [dict(zip(keys, values)) for values in itertools.product(*(v for _, v in self.grid))]
        listed = [dict(m) for m in self.members] or [{}]
        return tuple({**m, **c} for m in listed for c in combos)

    @functools.cached_property
    def _configs(self) -> tuple[RunConfig, ...]:
        out = []
        for change in self._changes:
            try:
                out.append(self.base.replace(**change))
            except ConfigError as exc:
                shown = ", ".join(f"{k}={v}" for k, v in change.items())
                raise ConfigError(f"sweep member ({shown}): {exc}") from None
        return tuple(out)


def _merge(base: RunConfig, table: Mapping[str, Any]) -> RunConfig:
    """``base`` with the fields of a run-config table on top (validated as a whole)."""
    raw = base.to_dict()
    for key, value in table.items():
        if isinstance(value, Mapping) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    try:
        return RunConfig.from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"sweep spec: [base] {exc}") from None


def member_name(change: Mapping[str, Any]) -> str:
    """A short run name from a member's varied settings, e.g. ``lr=0.01 init_scale=0.1 seed=3``."""
    return " ".join(f"{k.rpartition('.')[2]}={_short(v)}" for k, v in change.items()) or "base"


def _short(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else ",".join(map(_short, v)) if isinstance(v, tuple) else str(v)


# --- running ------------------------------------------------------------------------------------------------------


def train_chunk(configs: Sequence[RunConfig]) -> list[Any]:
    """Train ``configs`` (one batch shape, or a single config of any kind) in this process, through the one loop
    (``balance.runs.loop.train``); one ``RunResult`` per config.

    For ``workers=1`` and for a Ray task: it touches no store. A failure (an exception) is that chunk's outcome for
    every member, as state ``failed``.
    """
    import torch

    from balance.engine.status import RunStatus
    from balance.runs import loop
    from balance.runs.batching import tune_allocator

    torch.set_num_threads(1)  # one thread per worker: workers share the machine's cores
    tune_allocator()
    try:
        return loop.train(configs, snapshots=SNAPSHOTS)
    except Exception as exc:  # reported as the members' state: the sweep goes on
        log.exception("a sweep chunk failed")
        failed = RunStatus("failed", 0, f"failed: {type(exc).__name__}: {exc}")
        return [loop.RunResult(pd.DataFrame(), failed, c) for c in configs]


def plan(configs: Sequence[RunConfig], chunk: int | None = None) -> list[list[int]]:
    """Member indices grouped into work units: batches of one shape (at most ``chunk``), and singles."""
    from balance.runs.batching import batch_key

    groups: dict[str, list[int]] = {}
    units: list[list[int]] = []
    for i, c in enumerate(configs):
        key = batch_key(c)
        if key is None:
            units.append([i])
        else:
            groups.setdefault(key, []).append(i)
    for members in groups.values():
        size = chunk or CHUNK.get(configs[members[0]].model.name, CHUNK_DEFAULT)
        # equal chunks: 70 members in chunks of 64 become 35 + 35, not 64 + 6
        n = math.ceil(len(members) / size)
        units += [list(part) for part in np.array_split(members, n)]
    return [[int(i) for i in u] for u in units]


@dataclass
class SweepResult:
    sweep: str
    run_ids: list[str]
    states: list[str]

    def counts(self) -> dict[str, int]:
        return {s: self.states.count(s) for s in dict.fromkeys(self.states)}


def new_sweep_id(name: str) -> str:
    return f"{name}-{secrets.token_hex(3)}"


def run_sweep(
    spec: SweepSpec,
    store: Any,
    *,
    workers: int | None = None,
    chunk: int | None = None,
    ray_address: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> SweepResult:
    """Train every member of ``spec`` and record each as a run of one new sweep in ``store`` (a ``RunStore``).

    ``workers``: processes for the work units (default and at most: the usable cores); each unit is a job of the
    executor (``balance.runs.executor.Runner``, priority ``sweep``) and its worker writes its members to the store as
    they train; 1 trains in this process, one unit after another. ``chunk``: members per batch. ``ray_address``:
    send the units to that Ray cluster instead; one that does not answer within ``RAY_CONNECT_SECONDS`` raises
    ``ConfigError`` before anything is stored. ``on_progress(done, total)`` counts members. A member that diverges
    or fails is recorded as such; the others go on.
    """
    configs, changes = spec.configs(), spec.changes()
    if ray_address:
        check_ray(ray_address)  # before any member is stored: a dead address leaves nothing behind
    sweep = new_sweep_id(spec.name)
    with store.transaction():
        ids = [store.create_run(c, [], name=member_name(ch), sweep=sweep) for c, ch in zip(configs, changes)]
    units = plan(configs, chunk)
    states = [""] * len(configs)
    done = 0

    def collect(unit: list[int], results: list[Any] | None) -> None:
        """A unit has ended: record results trained here (None: its worker has recorded them) and count it."""
        nonlocal done
        if results is not None:
            with store.transaction():
                for i, result in zip(unit, results):
                    store.save_result(ids[i], result)
        for i in unit:
            states[i] = store.get_run(ids[i]).state
        done += len(unit)
        if on_progress is not None:
            on_progress(done, len(configs))

    if on_progress is not None:
        on_progress(0, len(configs))
    try:
        if ray_address:
            _run_ray(ray_address, configs, units, collect)
        else:
            _run_local(store, configs, ids, units, collect, workers)
    except BaseException:
        for i, state in enumerate(states):  # an interrupted sweep leaves no member "queued" forever
            if not state and store.get_run(ids[i]).state == "queued":
                store.set_status(ids[i], "stopped", 0, "the sweep was interrupted before this member ran")
        raise
    return SweepResult(sweep, ids, states)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _run_local(
    store: Any, configs: Sequence[RunConfig], ids: list[str], units: list[list[int]], collect: Callable,
    workers: int | None,
) -> None:  # fmt: skip
    # more processes than cores only add memory and contention (each worker runs one torch thread)
    workers = min(workers or usable_cores(), usable_cores(), len(units))
    if workers <= 1:
        for unit in units:
            collect(unit, train_chunk([configs[i] for i in unit]))
        return
    from balance.runs.executor import Runner
    from balance.runs.limits import Limits

    # the command line's own sweep: no per-run limits (as 'balance run'); Ctrl-C shuts the workers down
    runner = Runner(store, max_workers=workers, limits=Limits(max_memory=2**62, max_seconds=math.inf))
    try:
        for unit in units:
            runner.submit([configs[i] for i in unit], priority="sweep", ids=[ids[i] for i in unit], snapshots=SNAPSHOTS)
        for unit in units:  # jobs start in this order; report each as it ends
            for i in unit:
                runner.wait(ids[i])
            collect(unit, None)
    finally:
        runner.shutdown()


# Run in a child process: a Ray client that finds no cluster retries inside Ray's C++ core for minutes and cannot
# be interrupted from Python; a child can be killed at the deadline.
_RAY_PROBE = (
    "import logging, sys, ray; "
    "ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR); "
    "ray.shutdown()"
)


def check_ray(address: str, timeout: float | None = None) -> None:
    """Return when a Ray cluster answers at ``address`` (``host:port``, ``ray://host:port``, ``auto``); else
    ``ConfigError`` within ``timeout`` seconds (default ``RAY_CONNECT_SECONDS``) saying why.

    A ``host:port`` that refuses a TCP connection fails at once; one that accepts it is asked by a throwaway Ray
    client in a child process, killed at the deadline. Ray is never imported in this process here.
    """
    timeout = RAY_CONNECT_SECONDS if timeout is None else timeout
    deadline = time.monotonic() + timeout
    where = f"--ray-address {address}"
    hostport = address.removeprefix("ray://").rpartition(":")
    if hostport[1] and hostport[2].isdigit():
        host = hostport[0].strip("[]") or "127.0.0.1"
        try:
            socket.create_connection((host, int(hostport[2])), timeout=min(5.0, timeout)).close()
        except OSError as exc:
            raise ConfigError(
                f"{where}: nothing answers there ({exc.strerror or exc}); is the Ray head running?"
            ) from None
    try:
        done = subprocess.run(
            [sys.executable, "-c", _RAY_PROBE, address],
            capture_output=True,
            text=True,
            timeout=max(deadline - time.monotonic(), 1.0),
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{where}: no Ray cluster answered within {timeout:g} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit status {done.returncode}"
        raise ConfigError(f"{where}: no Ray cluster there ({why})")


def _run_ray(address: str, configs: Sequence[RunConfig], units: list[list[int]], collect: Callable) -> None:
    """One Ray task per unit on the cluster at ``address``; results are collected here as they complete."""
    import ray  # only on this path: without --ray-address nothing of Ray is imported

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        remote = ray.remote(num_cpus=1)(train_chunk)
        pending = {remote.remote([configs[i] for i in unit]): unit for unit in units}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                collect(pending.pop(ref), ray.get(ref))
    finally:
        if started:
            ray.shutdown()


# --- reading a sweep back (balance.runs.sweep_stats: at a fixed time, per-seed slopes) ------------------------------


def summary(store: Any, sweep: str, at_time: float | None = None, at_step: int | None = None) -> pd.DataFrame:
    """One row per member of ``sweep``, its metrics read at training time ``at_time`` or step ``at_step`` (the last
    row when neither): ``balance.runs.sweep_stats.summary``."""
    return sweep_stats.summary(store, sweep, at_time, at_step)


def fit_slopes(df: pd.DataFrame, by: str = "model.init_scale") -> pd.DataFrame:
    """The slope of log|gap drift| against log(step size) per seed, summarised across seeds per value of ``by``:
    ``balance.runs.sweep_stats.seed_slopes``."""
    return sweep_stats.seed_slopes(df, by)
