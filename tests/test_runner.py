"""Tests of balance.runs.executor: background runs against the foreground, control, limits, faults, kills and leaks.

One module-wide runner with four warm worker processes serves most tests (starting a worker costs a Python start
and a torch import); the leak test and the process-kill test start their own.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
import types
from contextlib import contextmanager
from multiprocessing import resource_tracker
from pathlib import Path

import numpy as np
import pytest

import balance
import balance.runs.limits
import balance.runs.sink
from balance.config import ConfigError, DataConfig, ModelConfig, OptimConfig, RunConfig
from balance.engine.engine import Engine
from balance.engine.trainer import Trainer, should_log
from balance.runs.executor import WORKER_NICENESS, Runner, RunStatusView
from balance.runs.limits import GIB, Estimate, LimitError, Limits
from balance.runs.store import RunStore, StoreError

MF = RunConfig(
    data=DataConfig(name="lowrank", d1=6, d2=5, rank=2),
    model=ModelConfig(name="mf", init_scale=0.1),
    optim=OptimConfig(name="gd", lr=0.05),
    steps=300,
)
MLP = RunConfig(
    data=DataConfig(name="teacher", samples=32, input_dim=4),
    model=ModelConfig(name="mlp", depth=3, width=8, init_scale=0.3),
    optim=OptimConfig(name="gd", lr=0.05),
    steps=200,
)
FOREVER = MF.replace(steps=10**8)  # runs until stopped
WAIT = 60.0  # generous: the machine is shared; a healthy run takes a fraction of this


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    with RunStore(tmp_path_factory.mktemp("runner-store")) as s:
        yield s


@pytest.fixture(scope="module")
def runner(store: RunStore) -> Runner:
    r = Runner(store, max_workers=4)
    r.warm()
    yield r
    r.shutdown()


def _until(check, timeout: float = WAIT, every: float = 0.01):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)
    return value


def _running(runner: Runner, run_id: str) -> RunStatusView:
    view = runner.wait(run_id, WAIT, states=("running", "paused"))
    assert view.state in ("running", "paused"), view
    return view


# --- results --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [MF, MLP], ids=["mf", "mlp"])
def test_a_background_run_records_what_the_foreground_computes(runner, store, config):
    run_id = runner.start(config, name="bg")
    view = runner.wait(run_id, WAIT)
    assert view.state == "finished" and view.step == config.steps and view.steps_per_second == 0
    expected = balance.run(config)
    got = store.metrics(run_id)
    assert list(got.columns) == list(expected.metrics.columns)
    np.testing.assert_allclose(got.to_numpy(), expected.metrics.to_numpy(), rtol=1e-9, atol=1e-15)
    assert view.loss == pytest.approx(expected.metrics["loss"].iloc[-1], rel=1e-9)
    record = store.get_run(run_id)
    assert (record.state, record.step, record.name, record.config) == ("finished", config.steps, "bg", config)
    steps = store.neuron_steps(run_id)
    assert steps[0] == 0 and steps[-1] == config.steps and 100 <= len(steps) <= 202
    assert len(store.neurons(run_id)) == len(Trainer(config).neuron_table()["layer"])


def test_four_runs_at_once_and_the_fifth_waits(runner, store):
    ids = [runner.start(FOREVER.replace(seed=s)) for s in range(5)]
    _until(lambda: sum(runner.status(i).state == "running" for i in ids) == 4)
    assert runner.status(ids[4]).state == "queued"
    _until(lambda: all(len(store.metrics(i)) > 50 for i in ids[:4]))  # all four write at once
    runner.stop(ids[0])
    assert runner.wait(ids[0], WAIT).state == "stopped"
    _running(runner, ids[4])  # took the free worker
    for i in ids[1:]:
        runner.stop(i)
    views = [runner.wait(i, WAIT) for i in ids]
    assert [v.state for v in views] == ["stopped"] * 5
    for i, view in zip(ids, views):
        rows = store.metrics(i)
        assert rows["step"].iloc[-1] == view.step == store.get_run(i).step  # the state it stopped in is kept
        assert rows["step"].is_monotonic_increasing


def test_rows_stream_within_half_a_second_and_a_cursor_reads_only_new_rows(runner, store):
    run_id = runner.start(FOREVER)
    _until(lambda: len(store.metrics(run_id)) > 0)
    seen, cursor, arrivals = [], -1, []
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        new = store.metrics(run_id, after=cursor)
        if len(new):
            arrivals.append(time.monotonic())
            seen += new["step"].tolist()
            cursor = seen[-1]
        time.sleep(0.05)
    runner.stop(run_id)
    assert len(seen) == len(set(seen)) and seen == sorted(seen)  # nothing twice, nothing out of order
    assert max(np.diff(arrivals)) < 0.5  # new rows at least every half second
    view = runner.wait(run_id, WAIT)
    assert view.state == "stopped" and view.message == f"stopped at step {view.step}"


def test_pause_step_learning_rate_resume(runner, store):
    run_id = runner.start(FOREVER)
    _running(runner, run_id)
    assert runner.pause(run_id)
    view = runner.wait(run_id, WAIT, states=("paused",))
    k0 = view.step
    assert view.state == "paused" and store.metrics(run_id)["step"].iloc[-1] == k0  # shows where it stopped
    assert store.get_run(run_id).state == "paused"
    assert runner.step(run_id, 5)
    _until(lambda: runner.status(run_id).step == k0 + 5)
    time.sleep(0.2)
    assert runner.status(run_id).step == k0 + 5 and runner.status(run_id).state == "paused"
    assert store.metrics(run_id)["step"].iloc[-1] == k0 + 5
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        runner.set_learning_rate(run_id, -1.0)
    assert runner.set_learning_rate(run_id, 0.02)
    runner.step(run_id, 3)
    _until(lambda: runner.status(run_id).step == k0 + 8)
    rows = store.metrics(run_id, columns=["lr"])
    assert rows.set_index("step")["lr"].loc[k0 : k0 + 8].tolist() == [0.05] * 5 + [0.02] * 4
    events = store.events(run_id)
    assert events[["step", "kind", "value"]].values.tolist() == [[k0 + 5, "lr", 0.02]]
    assert runner.status(run_id).lr == 0.02
    runner.resume(run_id)
    _until(lambda: runner.status(run_id).step > k0 + 100)
    assert runner.status(run_id).state == "running" and runner.status(run_id).steps_per_second > 0
    runner.stop(run_id)
    assert runner.wait(run_id, WAIT).state == "stopped"
    assert not runner.pause(run_id)  # ended: commands are refused, not errors
    with pytest.raises(ValueError, match="n = 0"):
        runner.step(run_id, 0)


def test_limits_divergence_wall_time_and_bad_configs(runner, store):
    diverging = runner.start(MF.replace(**{"optim.lr": 50.0}))
    slow = runner.start(FOREVER.replace(max_seconds=0.3))
    broken = runner.start(MLP.replace(**{"data.name": "csv", "data.csv_path": "/nonexistent.csv"}))
    view = runner.wait(diverging, WAIT)
    assert view.state == "diverged" and "diverged at step" in view.message
    view = runner.wait(slow, WAIT)
    assert view.state == "stopped" and view.message == "stopped at the wall-time limit of 0.3 s"
    view = runner.wait(broken, WAIT)
    assert view.state == "failed" and view.message.startswith("failed to start:") and "nonexistent.csv" in view.message
    assert store.get_run(broken).message == view.message
    assert runner.wait(runner.start(MF), WAIT).state == "finished"  # and the runner carries on


def test_delete_a_running_run(runner, store):
    run_id = runner.start(FOREVER)
    _running(runner, run_id)
    runner.delete(run_id)
    with pytest.raises(StoreError, match="no run"):
        runner.status(run_id)
    assert run_id not in runner.active()
    assert run_id not in store.list_runs()["id"].tolist()
    time.sleep(0.3)  # the worker's next write finds the run gone
    assert run_id not in store.list_runs()["id"].tolist()
    assert runner.wait(runner.start(MF), WAIT).state == "finished"


def test_delete_a_run_whose_record_is_damaged(runner, store):
    """Nothing of a damaged run needs reading to delete it (the Runs page offers Delete for 'unreadable' rows)."""
    import sqlite3

    run_id = store.create_run(MF, [])
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE runs SET config = '{not json', state = 'finished' WHERE id = ?", (run_id,))
    assert store.list_runs().set_index("id").loc[run_id, "state"] == "unreadable"
    runner.delete(run_id)
    assert run_id not in store.list_runs()["id"].tolist()


def test_another_runner_sees_runs_it_does_not_drive(runner, store):
    run_id = runner.start(MF)
    runner.wait(run_id, WAIT)
    other = Runner(store, max_workers=1)  # e.g. the app after a restart; starts no worker until asked
    try:
        view = other.status(run_id)
        assert (view.state, view.step) == ("finished", MF.steps) and math.isfinite(view.loss)
        assert not other.stop(run_id)
        with pytest.raises(StoreError, match="no run"):
            other.status("feedbeef")
    finally:
        other.shutdown()


# --- jobs and priorities --------------------------------------------------------------------------------------


def test_a_job_of_several_configs_trains_on_one_engine_and_one_run_of_it_can_stop(runner, store):
    """A sweep chunk is a job like any run: K configs, one worker, each its own run, each equal to its foreground
    run; stopping one leaves the others to finish."""
    configs = [MF.replace(seed=s, **{"optim.lr": lr}) for s, lr in [(0, 0.05), (1, 0.02), (2, 0.08)]]
    ids = runner.submit(configs, ["a", "b", "c"], sweep="job", priority="sweep")
    views = [runner.wait(i, WAIT) for i in ids]
    assert [v.state for v in views] == ["finished"] * 3
    workers = {store._read("SELECT owner FROM runs WHERE id = ?", (i,))[0][0] for i in ids}
    assert len(workers) == 1  # one process trained all three
    for config, run_id in zip(configs, ids):
        np.testing.assert_allclose(store.metrics(run_id).to_numpy(), balance.run(config).metrics.to_numpy(), rtol=1e-10)
        assert len(store.neuron_steps(run_id)) > 100
    forever = [FOREVER.replace(seed=s) for s in range(3)]
    ids = runner.submit(forever, sweep="job2", priority="sweep")
    _until(lambda: all(len(store.metrics(i)) > 20 for i in ids))
    assert runner.stop(ids[1])
    view = runner.status(ids[1])
    assert view.state == "stopped" and view.message == f"stopped at step {view.step}"
    k = runner.status(ids[0]).step
    _until(lambda: runner.status(ids[0]).step > k + 100)  # the others go on
    assert runner.status(ids[2]).state == "running"
    for i in (ids[0], ids[2]):
        runner.stop(i)
    assert [runner.wait(i, WAIT).state for i in ids] == ["stopped"] * 3
    assert store.metrics(ids[1])["step"].iloc[-1] == store.get_run(ids[1]).step


def test_jobs_start_by_priority_then_in_order(tmp_path):
    """A page's run first, then the lecture's warm-up, the claims and sweeps, whatever order they came in."""
    with RunStore(tmp_path) as store:
        runner = Runner(store, max_workers=1)
        try:
            busy = runner.start(FOREVER)
            _running(runner, busy)
            sweep = runner.submit([MF, MF.replace(seed=1)], priority="sweep")
            claims = runner.start(MF, priority="claims")
            lecture = runner.start(MF, priority="lecture")
            page = runner.start(MF, session="s")
            page2 = runner.start(MF, priority="page")
            order = [page, page2, lecture, claims, *sweep]
            assert [runner.status(i).queue_position for i in order] == [1, 2, 3, 4, 5, 6]
            assert runner.status(sweep[0]).message == "queued: 4 runs ahead; the worker is busy"
            with pytest.raises(ValueError, match="priority 'urgent'"):
                runner.start(MF, priority="urgent")
            runner.stop(busy)
            for run_id in order:
                assert runner.wait(run_id, WAIT).state == "finished"
            firsts = [_first_write(store, i) for i in order]
            assert firsts == sorted(firsts)  # each wrote its first rows after the one before it had ended
        finally:
            runner.shutdown()


def _first_write(store: RunStore, run_id: str) -> int:
    """The order in which runs wrote their first rows (the rowid of their first metrics batch)."""
    return store._read("SELECT MIN(rowid) FROM metrics WHERE run_id = ?", (run_id,))[0][0]


# --- faults ---------------------------------------------------------------------------------------------------


def test_kill_9_of_a_worker_interrupts_its_run_and_keeps_its_rows(runner, store):
    run_id = runner.start(FOREVER)
    _until(lambda: len(store.metrics(run_id)) > 100)
    pid = runner._runs[run_id].worker.proc.pid
    os.kill(pid, signal.SIGKILL)
    view = runner.wait(run_id, WAIT)
    assert view.state == "interrupted" and "worker process died (signal 9)" in view.message
    kept = store.metrics(run_id)
    assert len(kept) > 100 and kept["step"].tolist() == list(range(len(kept)))
    with RunStore(store.home) as fresh:  # what a restarted app reads
        assert fresh.get_run(run_id).state == "interrupted"
    assert runner.wait(runner.start(MF), WAIT).state == "finished"


_APP = """
import sys, time
from balance.config import RunConfig
from balance.runs.executor import Runner
from balance.runs.store import RunStore
if __name__ == "__main__":
    runner = Runner(RunStore(sys.argv[1]), max_workers=1)
    config = RunConfig.from_toml(sys.stdin.read())
    print(runner.start(config), flush=True)
    time.sleep(600)
"""


def test_kill_9_of_the_app_leaves_no_orphan_and_the_run_interrupted(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(_APP))
    app = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        app.stdin.write(FOREVER.to_toml())
        app.stdin.close()
        run_id = app.stdout.readline().strip()
        with RunStore(tmp_path) as s:
            _until(lambda: len(s.metrics(run_id)) > 100, every=0.05)
            worker = int(s._read("SELECT owner FROM runs WHERE id = ?", (run_id,))[0][0].split(":")[-2])
    finally:
        app.kill()
        app.wait()
        app.stdout.close()
    _until(lambda: not _alive(worker))  # the worker saw its parent go, saved, and exited
    with RunStore(tmp_path) as s:
        record = s.get_run(run_id)
        assert record.state == "interrupted" and "the app that ran it stopped" in record.message
        kept = s.metrics(run_id)
        assert kept["step"].iloc[-1] == record.step and kept["step"].is_monotonic_increasing


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def test_a_run_that_raises_fails_and_the_runner_stays_up(tmp_path, monkeypatch):
    step = Engine.step

    def faulty(self: Engine) -> dict:
        if self.configs[0].seed == 7 and self.step_index == 5:
            raise FloatingPointError("boom")
        return step(self)

    monkeypatch.setattr(Engine, "step", faulty)  # the thread backend runs this very class
    with RunStore(tmp_path) as s:
        runner = Runner(s, max_workers=1, backend="thread")
        try:
            bad = runner.start(MF.replace(seed=7))
            view = runner.wait(bad, WAIT)
            assert view.state == "failed" and view.message == "failed at step 5: FloatingPointError: boom"
            assert s.get_run(bad).state == "failed" and s.metrics(bad)["step"].tolist() == list(range(5))
            assert runner.wait(runner.start(MF), WAIT).state == "finished"
        finally:
            runner.shutdown()


def test_a_full_disk_fails_the_run_not_the_runner(tmp_path):
    with RunStore(tmp_path, max_bytes=160 * 1024) as s:
        runner = Runner(s, max_workers=1, backend="thread")
        try:
            run_id = runner.start(FOREVER)
            view = runner.wait(run_id, WAIT)
            assert view.state == "failed" and "the disk is full" in view.message
            assert s.get_run(run_id).state == "failed"
            assert len(s.metrics(run_id)) > 0  # what fitted is kept
            assert runner.status(run_id).state == "failed"
        finally:
            runner.shutdown()


# --- no leaks -------------------------------------------------------------------------------------------------


def _resources() -> dict[str, int]:
    gc.collect()  # what earlier tests left in reference cycles (an SQLite file they closed) is not ours
    children = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            children |= set(f.read().split())
    return {
        "threads": len(os.listdir("/proc/self/task")),
        "fds": len(os.listdir("/proc/self/fd")),
        "children": len(children),
        "mp_children": len(multiprocessing.active_children()),
    }


def test_200_start_stop_cycles_leak_nothing_and_shutdown_cleans_up(tmp_path, monkeypatch):
    page = tmp_path / "page.py"  # as under Streamlit, __main__ is a page script that must not run in a worker
    page.write_text("open(__file__ + '.ran', 'w').close()\nraise SystemExit('a worker ran the page script')\n")
    main = types.ModuleType("__main__")
    main.__file__ = str(page)
    monkeypatch.setitem(sys.modules, "__main__", main)
    resource_tracker.ensure_running()  # started once per process by the first spawn; not a leak
    store = RunStore(tmp_path)
    before = _resources()
    runner = Runner(store, max_workers=1)
    runner.warm()
    runner.wait(runner.start(MF), WAIT)
    warm = _resources()
    assert warm["mp_children"] == before["mp_children"] + 1
    assert not Path(f"{page}.ran").exists()
    for i in range(200):
        run_id = runner.start(FOREVER)
        if i % 2:  # half stopped while training, half while queued or starting
            _running(runner, run_id)
        runner.stop(run_id)
        assert runner.wait(run_id, WAIT).state == "stopped"
    assert _resources() == warm
    assert runner.active() == []
    # shutting down interrupts what is going and waiting, and releases everything
    going, waiting = runner.start(FOREVER), runner.start(FOREVER)
    _running(runner, going)
    runner.shutdown()
    runner.shutdown()
    assert _resources() == before
    assert store.get_run(going).state == "interrupted" and "shut down at step" in store.get_run(going).message
    assert store.get_run(waiting).message == "the runner shut down before it started"
    with pytest.raises(RuntimeError, match="shut down"):
        runner.start(MF)
    store.close()


def test_thread_backend_shutdown_leaves_no_threads(tmp_path):
    before = _resources()
    with RunStore(tmp_path) as s:
        runner = Runner(s, max_workers=2, backend="thread")
        ids = [runner.start(FOREVER), runner.start(MF)]
        _running(runner, ids[0])
        runner.shutdown()
    assert _resources()["threads"] == before["threads"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="backend"):
        Runner(RunStore.__new__(RunStore), backend="fork")


def test_workers_train_below_the_page(runner):
    """Workers run at a higher nice value than the server, so a click answers while every core trains."""
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    _until(lambda: all(w.ready for w in runner._workers))  # each lowers its own priority as it starts
    pids = [w.proc.pid for w in runner._workers]
    assert pids
    assert all(os.getpriority(os.PRIO_PROCESS, pid) == min(ours + WORKER_NICENESS, 19) for pid in pids)


# --- stops under load -----------------------------------------------------------------------------------------


@contextmanager
def _cpu_load(n: int = 2):
    """``n`` busy processes at the server's priority (the workers run below it), ended by their own pids."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def _stop_and_check(runner: Runner, store: RunStore, run_id: str) -> RunStatusView:
    """Stop ``run_id``: within a second the runner says "stopped" and the store says the same state and step."""
    deadline = time.monotonic() + 1.0
    assert runner.stop(run_id)  # returns once the run has stopped: a page that reruns on the click shows it
    view = runner.status(run_id)
    assert view.state == "stopped" and time.monotonic() < deadline, view
    while (record := store.get_run(run_id)).state != view.state or record.step != view.step:
        assert time.monotonic() < deadline, f"the store says {record.state} at {record.step}; the runner {view}"
        time.sleep(0.002)
    return view


def test_every_stop_takes_effect_within_a_second_under_load(tmp_path):
    """Fast start/stop cycles: while the workers are still starting (a run waits in the runner, not inside a worker
    that cannot read its commands yet), then on ready workers under CPU load, stopped at every stage of a start."""
    random.seed(0)
    with RunStore(tmp_path) as store:
        runner = Runner(store, max_workers=2)
        try:
            runner.warm()
            for i in range(10):  # the workers are importing torch meanwhile
                run_id = runner.start(FOREVER.replace(seed=i))
                time.sleep(random.choice([0, 0.01, 0.1]))
                assert _stop_and_check(runner, store, run_id).message == "stopped before it started"
            _until(lambda: all(w.ready for w in runner._workers))
            ran = 0
            with _cpu_load():
                for i in range(60):
                    run_id = runner.start(FOREVER.replace(seed=i))
                    time.sleep(random.choice([0, 0, 0.001, 0.005, 0.02, 0.05, 0.2]))
                    view = _stop_and_check(runner, store, run_id)
                    rows = store.metrics(run_id)
                    if len(rows):
                        ran += 1
                        assert rows["step"].iloc[-1] == view.step
            assert ran >= 10  # most stops above met a run that trained
            assert runner.active() == []
        finally:
            runner.shutdown()


# --- a store locked by another process ------------------------------------------------------------------------

_HOLD = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
"""


@contextmanager
def _locked(store: RunStore):
    """Another process holds the store's write lock until the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(store.path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.stdin.close()
        holder.wait(30)
        holder.stdout.close()


def _expected_steps(config: RunConfig, last: int) -> list[int]:
    return sorted({k for k in range(last + 1) if should_log(k, config.steps, config.log_every)} | {last})


def test_a_run_keeps_training_and_every_row_while_another_process_holds_the_store(tmp_path):
    config = MLP.replace(steps=10**8)
    with RunStore(tmp_path, timeout=1.0) as store:
        runner = Runner(store, max_workers=1)
        try:
            run_id = runner.start(config)
            _until(lambda: len(store.metrics(run_id)) > 20)
            with _locked(store):
                time.sleep(1.5 * store.timeout)  # longer than any writer waits for the lock
                view = runner.status(run_id)
                assert view.state == "running" and "the store is locked by another process" in view.message
                assert "rows kept in memory" in view.message
                k = view.step
                _until(lambda: runner.status(run_id).step > k)  # still training
                stopped = runner.status(run_id).step
                assert runner.stop(run_id)
                view = _until(lambda: (v := runner.status(run_id)).state == "stopped" and v)
                assert store.get_run(run_id).state == "running"  # the store cannot say more yet; the page can
                assert "locked" in view.message and view.step >= stopped
            view = runner.wait(run_id, WAIT)
            assert view.message == f"stopped at step {view.step}"
            record = store.get_run(run_id)
            assert (record.state, record.step, record.message) == ("stopped", view.step, view.message)
            assert store.metrics(run_id)["step"].tolist() == _expected_steps(config, view.step)  # nothing lost
        finally:
            runner.shutdown()


def test_rows_held_past_the_cap_are_thinned_and_said_so(tmp_path, monkeypatch):
    monkeypatch.setattr(balance.runs.sink, "PENDING_BYTES", 40_000)  # about 300 MLP rows (the thread backend sees it)
    config = MLP.replace(steps=10**8)
    with RunStore(tmp_path) as store:
        runner = Runner(store, max_workers=1, backend="thread")
        try:
            run_id = runner.start(config)
            _until(lambda: len(store.metrics(run_id)) > 0)
            with _locked(store):
                _until(lambda: "rows dropped to stay within memory" in runner.status(run_id).message)
                runner.stop(run_id)
                _until(lambda: runner.status(run_id).state == "stopped")
            view = runner.wait(run_id, WAIT)
            steps = store.metrics(run_id)["step"]
            assert steps.iloc[-1] == view.step and steps.is_monotonic_increasing
            assert len(steps) < len(_expected_steps(config, view.step))  # thinned ...
            events = store.events(run_id)
            thinned = events[events["kind"] == "rows_thinned"]
            assert len(thinned) == 1 and "every other row dropped while the store was locked" in thinned["text"].iloc[0]
        finally:
            runner.shutdown()


# --- limits ---------------------------------------------------------------------------------------------------


def test_a_run_over_the_limits_is_refused_before_anything_is_stored(tmp_path, monkeypatch):
    with RunStore(tmp_path) as store:
        runner = Runner(store, max_workers=1, limits=Limits(max_memory=GIB, max_seconds=2.0))
        try:
            huge = MLP.replace(**{"model.width": 4096, "model.depth": 8, "data.samples": 100_000})
            with pytest.raises(LimitError, match=r"the limit is 1\.0 GiB per run"):
                runner.start(huge)
            with pytest.raises(LimitError, match="set max_seconds to at most 2"):
                runner.start(FOREVER)
            assert store.list_runs().empty and runner._workers == []
            # the limit holds even where the estimate is wrong: the worker stops the run there
            monkeypatch.setattr(balance.runs.limits, "estimate", lambda config: Estimate(0, 0.0, 0, 0.0, ()))
            view = runner.wait(runner.start(FOREVER), WAIT)
            assert (
                view.state == "stopped" and view.message == "stopped at the server's limit of 2 s per run (limits.toml)"
            )
        finally:
            runner.shutdown()


def test_sessions_share_the_workers_and_are_refused_beyond_their_share(tmp_path):
    limits = Limits(running_per_session=1, queued_per_session=1)
    with RunStore(tmp_path) as store:
        runner = Runner(store, max_workers=2, limits=limits)
        try:
            a1 = runner.start(FOREVER, session="a")
            view = runner.status(a1)
            assert (view.state, view.queue_position) == ("queued", 1)
            assert view.message == "queued: next in line; a worker is starting (a few seconds)"
            _running(runner, a1)
            a2 = runner.start(FOREVER, session="a")
            with pytest.raises(LimitError, match="this session already has 1 run training and 1 waiting, the most"):
                runner.start(FOREVER, session="a")
            b1 = runner.start(FOREVER, session="b")  # queued after a2, starts before it: a has its share
            _running(runner, b1)
            view = runner.status(a2)
            assert (view.state, view.queue_position) == (
                "queued",
                1,
            ) and "this session already has 1 run training" in view.message
            free = [runner.start(MF.replace(steps=10**8, seed=s)) for s in range(3)]  # "" is not limited
            view = runner.status(free[1])
            assert view.queue_position == 3 and view.message == "queued: 2 runs ahead; both workers busy"
            assert runner.status(a1).queue_position == 0
            runner.stop(a1)
            _running(runner, a2)  # first in line once a has a free share
            assert runner.status(free[0]).queue_position == 1
            for run_id in [a2, b1, *free]:
                runner.stop(run_id)
            assert [runner.wait(i, WAIT).state for i in [a1, a2, b1, *free]] == ["stopped"] * 6
            assert runner.start(MF, session="a")  # its share is free again
        finally:
            runner.shutdown()


def test_unwatched_runs_pause_resume_when_watched_and_stop_at_last(tmp_path):
    limits = Limits(idle_seconds=0.5, idle_stop_seconds=4.0)
    with RunStore(tmp_path) as store:
        runner = Runner(store, max_workers=2, limits=limits)
        try:
            runner.warm()
            _until(lambda: all(w.ready for w in runner._workers))
            watched, cli = runner.start(FOREVER, session="s"), runner.start(FOREVER)
            _running(runner, watched)
            view = runner.wait(watched, WAIT, states=("paused",))
            assert (
                view.state == "paused"
                and view.message == "paused: no page has shown it for 0.5 s; it resumes when one does"
            )
            assert store.get_run(watched).message == view.message
            runner.touch("s")
            view = runner.wait(watched, WAIT, states=("running",))
            assert view.state == "running" and view.message == ""
            assert runner.pause(watched)  # paused by its user: stays paused, and the session still needs a page
            runner.wait(watched, WAIT, states=("paused",))
            view = runner.wait(watched, WAIT)
            assert view.state == "stopped" and re.fullmatch(
                r"stopped at step \d+: no page has shown it for 4\.\d s", view.message
            )
            assert runner.status(cli).state == "running"  # session "" is never paused
            runner.stop(cli)
        finally:
            runner.shutdown()
