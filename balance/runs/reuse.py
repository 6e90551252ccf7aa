"""Runs computed once and reused: the claims' experiments and the lecture's demos look their runs up in the store.

A cached run is an ordinary run in the run store (it shows on the Runs page and opens in Explore) whose name ends
in ``#KEY``, where KEY hashes the full config and the source of the modules that produce the numbers. Change either
and the key changes, so a stale result is never reused. Only runs this installation trained are reused (the store's
``origin``, which no imported file can set: an archive with edited numbers and a matching name is never taken for
a result), only if their stored config is the one asked for, and only runs that ended on their own (finished or
diverged); a run stopped at a wall-time limit, failed or interrupted is trained again. A run of the config that
is still training (another page, the lecture's warmer) is waited for, not trained twice.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from balance.config import RunConfig
from balance.engine.trainer import RunStatus
from balance.runs.loop import run as train
from balance.runs.store import RunStore, StoreError

# the modules whose code decides a run's numbers (not the UI, the store or the plots)
# the code that decides a run's numbers: the config and engine layers and the loop (not the UI, store or views)
CODE = ("config", "engine", "runs/loop.py")
REUSABLE = ("finished", "diverged")
TRAINING = ("queued", "running")  # a run of the config under way: waited for rather than trained twice
POLL_SECONDS, WAIT_SECONDS = 0.2, 600.0


class CachedRun(NamedTuple):
    run_id: str
    config: RunConfig
    metrics: pd.DataFrame
    status: RunStatus


@functools.cache
def code_version() -> str:
    """12 hex digits of the SHA-256 of the source that computes the numbers (``CODE``: every module, in order)."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for part in CODE:
        for path in sorted((root / part).rglob("*.py")) if (root / part).is_dir() else [root / part]:
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def cache_key(config: RunConfig) -> str:
    """16 hex digits naming ``config`` trained by this code version."""
    text = json.dumps(config.to_dict(), sort_keys=True) + code_version()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_cached(store: RunStore, configs: Sequence[RunConfig], training: bool = False) -> list[str | None]:
    """The id of a reusable stored run of each config, or None. With ``training``, a run of the config that is
    still queued or training (in this process or another) counts too, when no ended one is there."""
    runs = store.list_runs()
    states = REUSABLE + (TRAINING if training else ())
    runs = runs[runs["state"].isin(states) & (runs["origin"] == "trained")]
    runs = runs.sort_values("state", key=lambda s: ~s.isin(REUSABLE), kind="stable")  # ended ones first
    candidates: dict[str, list[str]] = {}
    for run_id, name in zip(runs["id"], runs["name"]):
        if "#" in name:
            candidates.setdefault(name.rpartition("#")[2], []).append(run_id)
    return [_same_config(store, candidates.get(cache_key(c), []), c) for c in configs]


def _same_config(store: RunStore, run_ids: list[str], config: RunConfig) -> str | None:
    """The first of ``run_ids`` whose stored config is ``config`` (a name is only a hint)."""
    for run_id in run_ids:
        try:
            if store.get_run(run_id).config == config:
                return run_id
        except StoreError:  # deleted meanwhile, or a damaged row: not a result to reuse
            continue
    return None


def _wait_stored(store: RunStore, run_id: str, timeout: float) -> str:
    """Wait until a run that another process trains has ended; returns its state (the last seen on timeout)."""
    deadline = time.monotonic() + timeout
    while (state := store.get_run(run_id).state) in TRAINING and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    return state


def load(store: RunStore, run_id: str) -> CachedRun:
    record = store.get_run(run_id)
    return CachedRun(run_id, record.config, store.metrics(run_id), RunStatus(record.state, record.step, record.message))


def cached_runs(
    configs: Sequence[RunConfig],
    label: str,
    store: RunStore,
    runner: object | None = None,
    on_done: Callable[[int, int], None] | None = None,
) -> list[CachedRun]:
    """Each config's run, from the store when a reusable one is there, else trained now and recorded.

    ``label`` names the runs (``"claim 3: eta=0.01 #KEY"`` style names come from the caller's label) and is their
    sweep, so the Runs page can show one experiment's runs together. With a ``balance.runs.executor.Runner`` the missing
    runs train in its worker processes, in parallel; without one, here, one after another. ``on_done(done, total)``
    reports progress.
    """
    found = find_cached(store, configs, training=True)
    states = {run_id: store.get_run(run_id).state for run_id in found if run_id is not None}
    for i, run_id in enumerate(found):  # trained elsewhere right now (another page, the lecture's warmer): wait
        if run_id is not None and states[run_id] in TRAINING:
            waited = runner.wait(run_id).state if runner is not None and run_id in runner.active() else None
            if (waited or _wait_stored(store, run_id, WAIT_SECONDS)) not in REUSABLE:
                found[i] = None  # stopped, failed or still going: train it here
    total, done = len(configs), sum(run_id is not None for run_id in found)
    if on_done is not None:
        on_done(done, total)
    missing = [i for i, run_id in enumerate(found) if run_id is None]
    if runner is not None:
        started = {i: runner.start(configs[i], name=f"{label} #{cache_key(configs[i])}", sweep=label) for i in missing}
        for i, run_id in started.items():
            runner.wait(run_id)
            found[i] = run_id
            done += 1
            if on_done is not None:
                on_done(done, total)
    else:
        for i in missing:
            found[i] = _train_and_record(store, configs[i], label)
            done += 1
            if on_done is not None:
                on_done(done, total)
    return [load(store, run_id) for run_id in found]  # type: ignore[arg-type]


def _train_and_record(store: RunStore, config: RunConfig, label: str) -> str:
    metrics, status = train(config)
    columns = list(metrics.columns)
    with store.transaction():  # all or nothing: a crash leaves no half-recorded run to be reused
        run_id = store.create_run(config, columns, name=f"{label} #{cache_key(config)}", sweep=label)
        store.claim_run(run_id, columns)
        store.append_rows(run_id, metrics.to_numpy(dtype="float64"))
        store.set_status(run_id, status.state, status.step, status.message)
    return run_id
