"""Runs computed once and reused: the claims' experiments and the lecture's demos look their runs up in the store.

A cached run is an ordinary run in the run store (it shows on the Runs page and opens in Explore) whose name ends
in ``#KEY``, where KEY hashes the full config and the source of the modules that produce the numbers. Change either
and the key changes, so a stale result is never reused. Only runs this installation trained are reused (the store's
``origin``, which no imported file can set: an archive with edited numbers and a matching name is never taken for
a result), only if their stored config is the one asked for and it never changed while it trained, and only runs
that ended on their own (finished or diverged); a run stopped at a wall-time limit, failed or interrupted is trained
again. A run of the config that is still training (another page, the lecture's warm-up, another process) is waited
for, not trained twice.

``submit`` finds or starts each config's run on the executor without waiting (the lecture page, the claims);
``cached_runs`` also waits and reads them back. Without an executor (the command line's handout, tests) the missing
runs train in this process, through the same loop, and are recorded whole.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from balance.config import RunConfig
from balance.engine.status import ACTIVE, ON_ITS_OWN
from balance.runs import stamp
from balance.runs.record import RunRecord
from balance.runs.store import RunStore, StoreError

CODE = stamp.CODE  # the code that decides a run's numbers: the config and engine layers and the loop
REUSABLE = ON_ITS_OWN
TRAINING = ("queued", "running")  # a run of the config under way: waited for rather than trained twice
POLL_SECONDS, WAIT_SECONDS = 0.2, 600.0


def code_version() -> str:
    """12 hex digits naming the source that computes the numbers: the reproducibility stamp's code hash
    (``balance.runs.stamp.code_hash``), so a stamped result and a reused run name the same code."""
    return stamp.code_hash()


def cache_key(config: RunConfig) -> str:
    """16 hex digits naming ``config`` trained by this code version."""
    text = json.dumps(config.to_dict(), sort_keys=True) + code_version()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_cached(store: RunStore, configs: Sequence[RunConfig], training: bool = False) -> list[str | None]:
    """The id of a reusable stored run of each config, or None. With ``training``, a run of the config that is
    still queued or training (in this process or another) counts too, when no ended one is there."""
    runs = store.list_runs()
    states = REUSABLE + (TRAINING if training else ())
    runs = runs[runs["state"].isin(states) & (runs["origin"] == "trained") & (runs["lr_history"] == "")]
    runs = runs.sort_values("state", key=lambda s: ~s.isin(REUSABLE), kind="stable")  # ended ones first
    candidates: dict[str, list[str]] = {}
    for run_id, name in zip(runs["id"], runs["name"]):
        if "#" in name:
            candidates.setdefault(name.rpartition("#")[2], []).append(run_id)
    return [_same_config(store, candidates.get(cache_key(c), []), c) for c in configs]


def _same_config(store: RunStore, run_ids: list[str], config: RunConfig) -> str | None:
    """The first of ``run_ids`` whose stored config is ``config`` and never changed (a name is only a hint)."""
    for run_id in run_ids:
        try:
            record = store.get_run(run_id)
        except StoreError:  # deleted meanwhile, or a damaged row: not a result to reuse
            continue
        if record.config == config and len(record.versions) == 1:
            return run_id
    return None


def submit(
    configs: Sequence[RunConfig], label: str, store: RunStore, runner: Any = None, priority: str = "lecture"
) -> list[str | None]:
    """Each config's run id, without waiting: a reusable stored run, a run of it training now (here or in another
    process), or one started now on ``runner`` (a ``balance.runs.executor.Runner``) at ``priority``; None for a
    missing run when there is no runner. Missing configs of one shape start as one job (one engine, stacked)."""
    found = find_cached(store, configs, training=True)
    missing = [i for i, run_id in enumerate(found) if run_id is None]
    if runner is None or not missing:
        return found
    for members in _shapes(configs, missing):
        started = runner.submit(
            [configs[i] for i in members], [f"{label} #{cache_key(configs[i])}" for i in members], label,
            priority=priority,
        )  # fmt: skip
        for i, run_id in zip(members, started):
            found[i] = run_id
    return found


def _shapes(configs: Sequence[RunConfig], indices: Sequence[int]) -> list[list[int]]:
    """``indices`` grouped by the engine's batch shape (in order); a config that cannot batch is a group alone."""
    if not indices:
        return []
    from balance.runs.batching import batch_key  # the engine's shapes: imports torch, only to train

    groups: dict[object, list[int]] = {}
    for i in indices:
        key = batch_key(configs[i])
        groups.setdefault(key if key is not None else ("single", i), []).append(i)
    return list(groups.values())


def wait(store: RunStore, run_id: str, runner: Any = None, timeout: float = WAIT_SECONDS) -> str:
    """Wait until the run has ended, whichever process trains it; returns its state (the last seen on timeout)."""
    if runner is not None and run_id in runner.active():
        return runner.wait(run_id, timeout).state
    deadline = time.monotonic() + timeout
    while (state := store.get_run(run_id).state) in ACTIVE and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    return state


def load(store: RunStore, run_id: str) -> RunRecord:
    """The run read back whole (``RunStore.load``: its record and metrics)."""
    return store.load(run_id)


def cached_runs(
    configs: Sequence[RunConfig],
    label: str,
    store: RunStore,
    runner: Any = None,
    on_done: Callable[[int, int], None] | None = None,
    priority: str = "lecture",
) -> list[RunRecord]:
    """Each config's run, from the store when a reusable one is there, else trained now and recorded.

    ``label`` names the runs (``"claim 3: eta=0.01 #KEY"`` style names come from the caller's label) and is their
    sweep, so the Runs page can show one experiment's runs together. With a ``balance.runs.executor.Runner`` the
    missing runs train in its worker processes (``submit``); without one, here, one after another, through the same
    loop. ``on_done(done, total)`` reports progress.
    """
    found = submit(configs, label, store, runner, priority)
    total = len(configs)
    done = sum(run_id is not None and store.get_run(run_id).state in REUSABLE for run_id in found)
    if on_done is not None:
        on_done(done, total)
    if runner is None:  # here: the missing configs of one shape train together (one engine, stacked)
        for group in _shapes(configs, [i for i, run_id in enumerate(found) if run_id is None]):
            for i, run_id in zip(group, _train_and_record_all(store, [configs[i] for i in group], label)):
                found[i] = run_id
            done += len(group)
            if on_done is not None:
                on_done(done, total)
    for i, run_id in enumerate(found):
        if run_id is not None and store.get_run(run_id).state in REUSABLE:
            continue
        if run_id is not None and wait(store, run_id, runner) in REUSABLE:
            pass
        elif runner is not None and run_id is not None:  # stopped or failed elsewhere: train it again
            found[i] = run_id = runner.start(configs[i], f"{label} #{cache_key(configs[i])}", label, priority=priority)
            wait(store, run_id, runner)
        else:
            found[i] = _train_and_record(store, configs[i], label)
        done += 1
        if on_done is not None:
            on_done(done, total)
    return [load(store, run_id) for run_id in found]  # type: ignore[arg-type]


def _train_and_record_all(store: RunStore, configs: Sequence[RunConfig], label: str) -> list[str]:
    """Train ``configs`` (one batch shape) here as one engine, through the one loop, each recorded whole in its own
    transaction: the numbers of each are its single run's (the executor's jobs stack the same way)."""
    from balance.runs.loop import train

    results = train(configs)
    return [store.record(r, name=f"{label} #{cache_key(c)}", sweep=label) for c, r in zip(configs, results)]


def _train_and_record(store: RunStore, config: RunConfig, label: str) -> str:
    """Train ``config`` here through the one loop and record it whole (rows, snapshots, status) in one transaction:
    a crash leaves no half-recorded run to be reused."""
    from balance.runs.loop import run

    return store.record(run(config), name=f"{label} #{cache_key(config)}", sweep=label)
