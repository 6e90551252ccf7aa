"""Cached runs: reused while the config and the code are the same, trained again otherwise; both paths agree."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from balance.config import RunConfig
from balance.runs import reuse as cache
from balance.runs.executor import Runner
from balance.runs.loop import run
from balance.runs.store import RunStore

TINY = RunConfig.from_dict(
    {"data": {"name": "lowrank", "d1": 6, "d2": 5, "rank": 2}, "model": {"name": "mf", "init_scale": 0.1},
     "optim": {"lr": 0.05}, "steps": 30, "dtype": "float64"}
)  # fmt: skip


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path)
    yield s
    s.close()


def test_first_call_trains_and_records_then_reuses(store: RunStore) -> None:
    calls = []
    first = cache.cached_runs([TINY], "test", store, on_done=lambda d, n: calls.append((d, n)))
    assert calls == [(0, 1), (1, 1)]
    pd.testing.assert_frame_equal(first[0].metrics, run(TINY).metrics)
    assert first[0].status.state == "finished"
    again = cache.cached_runs([TINY], "test", store, on_done=lambda d, n: calls.append((d, n)))
    assert calls[-1] == (1, 1)  # found at once, nothing trained
    assert again[0].run_id == first[0].run_id
    assert len(store.list_runs()) == 1


def test_another_config_or_code_version_is_not_reused(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    (a,) = cache.cached_runs([TINY], "test", store)
    (b,) = cache.cached_runs([TINY.replace(**{"optim.lr": 0.04})], "test", store)
    assert a.run_id != b.run_id
    monkeypatch.setattr(cache, "code_version", lambda: "edited")
    assert cache.find_cached(store, [TINY]) == [None]


def test_only_runs_that_ended_on_their_own_are_reused(store: RunStore) -> None:
    (a,) = cache.cached_runs([TINY], "test", store)
    store.set_status(a.run_id, "stopped", 10, "stopped at the wall-time limit")
    assert cache.find_cached(store, [TINY]) == [None]
    diverging = TINY.replace(**{"model.init_scale": 3.0, "optim.lr": 5.0})
    (d,) = cache.cached_runs([diverging], "test", store)
    assert d.status.state == "diverged"
    assert cache.find_cached(store, [diverging]) == [d.run_id]


def test_the_runner_path_gives_the_same_numbers(store: RunStore) -> None:
    configs = [TINY, TINY.replace(seed=1)]
    runner = Runner(store, max_workers=2)
    try:
        background = cache.cached_runs(configs, "test", store, runner=runner)
    finally:
        runner.shutdown()
    for config, got in zip(configs, background):
        want = run(config).metrics
        np.testing.assert_array_equal(got.metrics.to_numpy(), want.to_numpy())
    assert cache.find_cached(store, configs) == [r.run_id for r in background]


def test_missing_runs_start_on_the_executor_without_waiting_one_job_per_shape(store: RunStore) -> None:
    """``submit`` (the lecture page, the claims): found or started, never waited for; configs of one shape train as
    one job (one engine, stacked), each still its own run with its single run's numbers."""
    configs = [TINY, TINY.replace(seed=1), TINY.replace(**{"optim.lr": 0.04}), TINY.replace(**{"data.d1": 7})]
    runner = Runner(store, max_workers=1)
    try:
        ids = cache.submit(configs, "test", store, runner, priority="claims")
        assert all(store.get_run(i).state in ("queued", "running") for i in ids)  # returned before they trained
        jobs = [runner._runs[i].job for i in ids]
        assert jobs[0] is jobs[1] is jobs[2] and jobs[3] is not jobs[0]
        assert cache.submit(configs, "test", store, runner) == ids  # in flight: asked again, started once
        for config, run_id in zip(configs, ids):
            assert runner.wait(run_id, 60).state == "finished"
            np.testing.assert_allclose(store.metrics(run_id).to_numpy(), run(config).metrics.to_numpy(), rtol=1e-10)
        assert cache.submit(configs, "test", store, runner) == ids and len(store.list_runs()) == 4
    finally:
        runner.shutdown()
    assert cache.submit(configs, "test", store) == ids  # no executor: what the store has


def test_a_run_whose_step_size_changed_is_not_a_cached_result(store: RunStore) -> None:
    (a,) = cache.cached_runs([TINY], "test", store)
    store.record_event(a.run_id, 10, "lr", 0.01)  # e.g. changed on the Explore page while it trained
    assert len(store.get_run(a.run_id).versions) == 2
    assert cache.find_cached(store, [TINY]) == [None]


def _record(store: RunStore, config: RunConfig, state: str) -> str:
    """A run of ``config`` as another process would leave it mid-way: created, claimed, in ``state``."""
    metrics = run(config).metrics
    run_id = store.create_run(config, list(metrics.columns), name=f"elsewhere #{cache.cache_key(config)}")
    store.claim_run(run_id, list(metrics.columns))
    store.append_rows(run_id, metrics.to_numpy(dtype="float64"))
    store.set_status(run_id, state, 10)
    return run_id


@pytest.mark.parametrize(("ends", "reused"), [("finished", True), ("stopped", False)])
def test_a_run_training_elsewhere_is_waited_for(
    store: RunStore, monkeypatch: pytest.MonkeyPatch, ends: str, reused: bool
) -> None:
    """Two pages (or the lecture's warm-up and a page) asking for one config train it once."""
    import threading

    monkeypatch.setattr(cache, "POLL_SECONDS", 0.01)
    run_id = _record(store, TINY, "running")
    threading.Timer(0.3, store.set_status, (run_id, ends, 30)).start()
    (got,) = cache.cached_runs([TINY], "test", store)
    assert (got.run_id == run_id) is reused
    assert len(store.list_runs()) == (1 if reused else 2)


def test_an_imported_archive_with_edited_numbers_is_never_reused(store: RunStore, tmp_path) -> None:
    """Before: a run is found by its name '#KEY', so a forged archive of a claim's run changed its verdict."""
    import zipfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    (trained,) = cache.cached_runs([TINY], "claim 1", store)
    store.export_run(trained.run_id, tmp_path / "real.zip")
    store.delete_run(trained.run_id)
    with zipfile.ZipFile(tmp_path / "real.zip") as zf, zipfile.ZipFile(tmp_path / "forged.zip", "w") as out:
        for info in zf.infolist():
            data = zf.read(info)
            if info.filename == "metrics.parquet":
                table = pq.read_table(pa.BufferReader(data))
                loss = table.column("loss").to_numpy() * 100  # the edited numbers
                table = table.set_column(table.column_names.index("loss"), "loss", pa.array(loss))
                sink = pa.BufferOutputStream()
                pq.write_table(table, sink)
                data = sink.getvalue().to_pybytes()
            out.writestr(info.filename, data)
    forged = store.import_run(tmp_path / "forged.zip")
    assert store.get_run(forged).name.endswith(f"#{cache.cache_key(TINY)}")  # the name matches, the origin does not
    assert store.get_run(forged).origin == "imported"
    assert cache.find_cached(store, [TINY]) == [None]
    (again,) = cache.cached_runs([TINY], "claim 1", store)
    assert again.run_id != forged
    pd.testing.assert_frame_equal(again.metrics, run(TINY).metrics)


def test_a_trained_run_is_reused_only_if_its_stored_config_is_the_one_asked_for(store: RunStore) -> None:
    (a,) = cache.cached_runs([TINY], "test", store)
    other = TINY.replace(seed=5)
    store._conn.execute("UPDATE runs SET config = ? WHERE id = ?", (json.dumps(other.to_dict()), a.run_id))
    assert cache.find_cached(store, [TINY]) == [None]  # the name says TINY, the config does not


def test_without_a_runner_missing_configs_of_one_shape_train_as_one_engine(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command line's claims and handout: before, each missing config trained alone, one after another; now
    one engine per shape (as the executor's jobs), each recorded whole with its single run's numbers."""
    import balance.runs.loop as loop

    sizes, real = [], loop.train
    monkeypatch.setattr(loop, "train", lambda configs, *a, **k: sizes.append(len(configs)) or real(configs, *a, **k))
    other = TINY.replace(**{"data.d1": 7})  # another shape: its own engine
    configs = [TINY, TINY.replace(seed=1), other, TINY.replace(**{"optim.lr": 0.04})]
    calls = []
    got = cache.cached_runs(configs, "test", store, on_done=lambda d, n: calls.append((d, n)))
    assert sorted(sizes) == [1, 3] and calls[0] == (0, 4) and calls[-1] == (4, 4)
    for config, record in zip(configs, got):
        assert record.config == config and record.status.state == "finished"
        np.testing.assert_array_equal(record.metrics.to_numpy(), run(config).metrics.to_numpy())
    assert cache.find_cached(store, configs) == [r.run_id for r in got]
