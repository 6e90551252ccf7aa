"""Tests of balance.runs.store and balance.runs.archive: round trips, cursors, limits, faults, interrupted runs,
import checks."""

from __future__ import annotations

import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import balance
from balance.config import DataConfig, ModelConfig, OptimConfig, RunConfig
from balance.runs.stamp import code_hash, stamp
from balance.runs.store import NEURON_SNAPSHOTS, RunStore, StoreError, owner_alive, owner_token

TINY = RunConfig(
    data=DataConfig(name="lowrank", d1=6, d2=5, rank=2),
    model=ModelConfig(name="mf", init_scale=0.1),
    optim=OptimConfig(name="gd", lr=0.05),
    steps=40,
)
LIST_COLUMNS = [
    "id", "name", "state", "step", "message", "created", "updated", "model", "dataset", "optimizer", "lr",
    "init_scale", "steps", "sweep", "origin", "lr_history",
]  # fmt: skip


@pytest.fixture(scope="module")
def result() -> balance.RunResult:
    return balance.run(TINY)


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    with RunStore(tmp_path / "home") as s:
        yield s


def _recorded(store: RunStore, result: balance.RunResult, name: str = "") -> str:
    run_id = store.create_run(TINY, list(result.metrics.columns), name=name)
    store.claim_run(run_id, list(result.metrics.columns))
    store.append_rows(run_id, result.metrics.to_numpy().tolist())
    store.set_status(run_id, result.status.state, result.status.step, result.status.message)
    return run_id


# --- round trips --------------------------------------------------------------------------------------------


def test_metrics_round_trip_exactly_with_cursor_and_columns(store, result):
    run_id = _recorded(store, result, name="first")
    pd.testing.assert_frame_equal(store.metrics(run_id), result.metrics)
    tail = store.metrics(run_id, after=30)
    assert tail["step"].tolist() == list(range(31, 41))
    some = store.metrics(run_id, after=-1, columns=["loss", "gap_1"])
    assert list(some.columns) == ["step", "loss", "gap_1"]
    assert some["step"].dtype == np.int64 and some["loss"].dtype == np.float64
    assert store.metrics(run_id, after=40).empty
    with pytest.raises(KeyError, match="no column 'nope'"):
        store.metrics(run_id, columns=["nope"])


def test_records_list_status_and_events(store, result):
    run_id = _recorded(store, result, name="first")
    record = store.get_run(run_id)
    assert record.config == TINY and record.state == "finished" and record.step == 40 and record.name == "first"
    assert record.columns == list(result.metrics.columns)
    assert record.created <= record.updated
    runs = store.list_runs()
    assert list(runs.columns) == LIST_COLUMNS
    row = runs.iloc[0]
    assert (row.id, row.model, row.dataset, row.optimizer, row.lr, row.steps) == (
        run_id,
        "mf",
        "lowrank",
        "gd",
        0.05,
        40,
    )
    assert str(runs["created"].dtype) == "datetime64[ns, UTC]"
    store.record_event(run_id, 12, "lr", 0.02)
    store.record_event(run_id, 20, "note", "hello")
    events = store.events(run_id)
    assert events["step"].tolist() == [12, 20] and events["kind"].tolist() == ["lr", "note"]
    assert events["value"].iloc[0] == 0.02 and np.isnan(events["value"].iloc[1]) and events["text"].iloc[1] == "hello"
    assert store.last_row(run_id)["step"] == 40.0


def test_queued_run_has_no_columns_until_claimed(store):
    run_id = store.create_run(TINY, [])
    assert store.get_run(run_id).state == "queued"
    assert list(store.metrics(run_id).columns) == ["step"]
    assert store.last_row(run_id) == {}
    store.claim_run(run_id, ["step", "loss"])
    store.append_rows(run_id, [[0, 1.5], [1, 1.25]])
    assert store.get_run(run_id).state == "running"
    assert store.metrics(run_id)["loss"].tolist() == [1.5, 1.25]
    with pytest.raises(ValueError, match="expected 2"):
        store.append_rows(run_id, [[2, 1.0, 3.0]])


def test_neuron_snapshots_stay_bounded_and_spread(store):
    run_id = store.create_run(TINY, ["step", "loss"])
    table = {"layer": np.array([1, 1]), "neuron": np.array([0, 1]), "in_sqnorm": np.ones(2), "out_sqnorm": np.ones(2)}
    for k in range(0, 1000):
        store.save_neurons(run_id, k, {**table, "in_sqnorm": np.full(2, float(k))})
    steps = store.neuron_steps(run_id)
    assert steps[0] == 0 and steps[-1] == 999 and len(steps) <= NEURON_SNAPSHOTS + 2
    assert max(np.diff(steps)) <= 3 * 999 / (NEURON_SNAPSHOTS + 1)  # evenly spread
    snap = store.neurons(run_id, 500)
    assert snap["step"].iloc[0] <= 500 and snap["in_sqnorm"].iloc[0] == snap["step"].iloc[0]
    assert snap["layer"].dtype == np.int64 and snap["neuron"].tolist() == [0, 1]
    assert store.neurons(run_id)["step"].iloc[0] == 999
    assert store.neurons(run_id, 0)["step"].iloc[0] == 0


def test_delete_and_unknown_ids(store, result):
    run_id = _recorded(store, result)
    store.record_event(run_id, 1, "lr", 0.1)
    store.delete_run(run_id)
    assert store.list_runs().empty
    for call in (store.get_run, store.metrics, store.events, store.delete_run, store.neurons):
        with pytest.raises(StoreError, match="no run") as info:
            call(run_id)
        assert info.value.kind == "missing"
    with pytest.raises(StoreError, match="no run"):
        store.set_status("nope", "running", 0)


def test_home_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BALANCE_HOME", str(tmp_path / "env-home"))
    with RunStore() as s:
        assert s.path == tmp_path / "env-home" / "runs.db"
        assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- faults -------------------------------------------------------------------------------------------------


def test_a_corrupt_file_is_a_clear_error_fast(tmp_path):
    (tmp_path / "runs.db").write_bytes(b"this is not a database" * 500)
    start = time.monotonic()
    with pytest.raises(StoreError, match="corrupt or not a database") as info:
        RunStore(tmp_path)
    assert info.value.kind == "corrupt" and time.monotonic() - start < 2


def test_a_damaged_database_is_a_clear_error(tmp_path, result):
    with RunStore(tmp_path) as s:
        run_id = _recorded(s, result)
        s._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray((tmp_path / "runs.db").read_bytes())
    data[4096:] = b"\xff" * (len(data) - 4096)  # keep the header, destroy every page after the first
    (tmp_path / "runs.db").write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt") as info:
        RunStore(tmp_path).metrics(run_id)
    assert info.value.kind == "corrupt"


def test_another_sqlite_file_is_refused(tmp_path):
    with sqlite3.connect(tmp_path / "runs.db") as conn:
        conn.execute("CREATE TABLE songs (title TEXT)")
    conn.close()
    with pytest.raises(StoreError, match="not a balance store"):
        RunStore(tmp_path)


def test_a_locked_store_fails_after_its_timeout_not_never(tmp_path):
    RunStore(tmp_path).close()
    holder = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with RunStore(tmp_path, timeout=0.2) as s:
            start = time.monotonic()
            with pytest.raises(StoreError, match="locked by another process") as info:
                s.create_run(TINY, [])
            assert info.value.kind == "locked" and time.monotonic() - start < 2
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_full_disk_is_a_clear_error_and_keeps_what_was_written(tmp_path, result):
    with RunStore(tmp_path, max_bytes=96 * 1024) as s:
        run_id = s.create_run(TINY, list(result.metrics.columns))
        rows = result.metrics.to_numpy()
        with pytest.raises(StoreError, match="disk is full") as info:
            for _ in range(200):
                s.append_rows(run_id, rows)
                rows = rows.copy()
                rows[:, 0] += len(rows)  # the next steps
        assert info.value.kind == "full"
        assert len(s.metrics(run_id)) > 0 and s.get_run(run_id).state == "queued"


def test_reads_during_writes_see_whole_batches_in_order(tmp_path):
    """A writer appends batches from another connection while a reader polls with a cursor."""
    with RunStore(tmp_path) as reader:
        run_id = reader.create_run(TINY, ["step", "x"])
        batches, size = 60, 50

        def write() -> None:
            with RunStore(tmp_path) as writer:
                for b in range(batches):
                    writer.append_rows(run_id, [[k, k * 0.5] for k in range(b * size, (b + 1) * size)])
                    time.sleep(0.002)

        thread = threading.Thread(target=write)
        thread.start()
        seen, cursor = [], -1
        while thread.is_alive() or cursor < batches * size - 1:
            new = reader.metrics(run_id, after=cursor)
            if len(new):
                assert len(new) % size == 0  # a batch is one transaction: never half of one
                seen += new["step"].tolist()
                cursor = seen[-1]
        thread.join()
    assert seen == list(range(batches * size))


_WRITER = """
import sys, time
from balance.config import DataConfig, ModelConfig, OptimConfig, RunConfig
from balance.runs.store import RunStore
store = RunStore(sys.argv[1])
run_id = store.create_run(RunConfig(), ["step", "loss"])
store.claim_run(run_id, ["step", "loss"])
print(run_id, flush=True)
k = 0
while True:
    with store.transaction():
        store.append_rows(run_id, [[k + i, 1.0 / (k + i + 1)] for i in range(10)])
        store.set_status(run_id, "running", k + 9)
    k += 10
    time.sleep(0.01)
"""


def test_a_writer_killed_mid_run_is_interrupted_with_its_rows_kept(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        run_id = proc.stdout.readline().strip()
        with RunStore(tmp_path) as s:
            while len(s.metrics(run_id)) < 100:
                time.sleep(0.02)
            assert s.get_run(run_id).state == "running"
            assert s.mark_interrupted() == []  # alive: left alone
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    with RunStore(tmp_path) as s:  # the next start
        record = s.get_run(run_id)
        assert record.state == "interrupted" and f"pid {proc.pid}" in record.message
        rows = s.metrics(run_id)
        assert len(rows) >= 100 and len(rows) % 10 == 0 and rows["step"].tolist() == list(range(len(rows)))
        assert record.step == rows["step"].iloc[-1]


def test_owner_tokens():
    assert owner_alive(owner_token())
    assert not owner_alive("elsewhere-or-garbage")
    assert not owner_alive(f"{owner_token().rsplit(':', 2)[0]}:999999999:1")
    assert owner_alive("some-other-host:1:1")  # another machine's run is never touched


# --- export and import --------------------------------------------------------------------------------------


def test_export_import_round_trip(store, result, tmp_path):
    run_id = _recorded(store, result, name="exported")
    store.record_event(run_id, 5, "lr", 0.01)
    store.save_neurons(run_id, 0, {"layer": np.array([1]), "neuron": np.array([0]), "in_sqnorm": np.array([0.5])})
    store.save_neurons(run_id, 40, {"layer": np.array([1]), "neuron": np.array([0]), "in_sqnorm": np.array([0.7])})
    path = tmp_path / "run.zip"
    store.export_run(run_id, path)
    with zipfile.ZipFile(path) as zf:  # issue 14.7: every export says what wrote it
        written = json.loads(zf.read("stamp.json"))
    assert written == stamp() and written["code"] == code_hash() and written["torch"]
    with RunStore(tmp_path / "elsewhere") as other:
        new_id = other.import_run(path)
        assert new_id == run_id  # a free id is kept
        pd.testing.assert_frame_equal(other.metrics(new_id), store.metrics(run_id))
        pd.testing.assert_frame_equal(other.neurons(new_id, 40), store.neurons(run_id, 40))
        assert other.events(new_id)[["step", "kind", "value"]].equals(store.events(run_id)[["step", "kind", "value"]])
        record = other.get_run(new_id)
        assert (record.config, record.state, record.name) == (TINY, "finished", "exported")
    with pytest.raises(StoreError, match=f"already stored as run {run_id}") as refused:
        store.import_run(path)  # its own export, back into the store it came from: the same run (issue 12.4)
    assert refused.value.kind == "duplicate"


def test_an_exported_running_run_imports_as_interrupted(store, tmp_path):
    run_id = store.create_run(TINY, ["step", "loss"])
    store.claim_run(run_id, ["step", "loss"])
    store.append_rows(run_id, [[0, 1.0]])
    store.export_run(run_id, tmp_path / "r.zip")
    record = store.get_run(store.import_run(tmp_path / "r.zip"))
    assert record.state == "interrupted" and "imported while running" in record.message


def _manifest(**changes: object) -> dict:
    base = {
        "format": "balance-run", "version": 1, "id": "abcd1234", "name": "", "sweep": "", "state": "finished",
        "step": 2, "message": "", "created": 1.7e9, "updated": 1.7e9, "columns": ["step", "loss"],
        "config": TINY.to_dict(),
    }  # fmt: skip
    base.update(changes)
    return base


def _parquet(table: dict) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(table), sink)
    return sink.getvalue().to_pybytes()


GOOD_METRICS = {"step": np.array([0, 1, 2]), "loss": np.array([1.0, 0.5, 0.25])}


def _archive(path: Path, members: dict[str, bytes | str | dict]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, json.dumps(data) if isinstance(data, dict) else data)
    return path


def _good() -> dict:
    return {"run.json": _manifest(), "metrics.parquet": _parquet(GOOD_METRICS)}


def test_a_hand_made_good_archive_imports(store, tmp_path):
    run_id = store.import_run(_archive(tmp_path / "ok.zip", _good()))
    assert store.metrics(run_id)["loss"].tolist() == [1.0, 0.5, 0.25]


MALFORMED = {
    "path trick": ({"../../evil.sh": "echo"}, "unexpected member '../../evil.sh'"),
    "absolute path": ({"/etc/cron.d/x": "x"}, "unexpected member '/etc/cron.d/x'"),
    "extra member": ({"payload.pkl": b"\x80\x04K\x01."}, "unexpected member 'payload.pkl'"),
    "missing metrics": ({"metrics.parquet": None}, "metrics.parquet is missing"),
    "wrong format": ({"run.json": _manifest(format="other")}, "not a balance run"),
    "newer version": ({"run.json": _manifest(version=99)}, "version 99"),
    "unknown key": ({"run.json": _manifest(evil=1)}, "unknown keys"),
    "bad config": ({"run.json": _manifest(config={"model": {"width": -3}})}, "bad config: model.width = -3"),
    "config wrong type": ({"run.json": _manifest(config="rm -rf /")}, "bad config"),
    "bad state": ({"run.json": _manifest(state="hacked")}, "state 'hacked'"),
    "bad id": ({"run.json": _manifest(id="../x")}, "not a run id"),
    "columns mismatch": ({"run.json": _manifest(columns=["step", "gap"])}, "do not match"),
    "columns not step first": ({"run.json": _manifest(columns=["loss", "step"])}, "'step' first"),
    "text column": (
        {"metrics.parquet": _parquet({"step": [0, 1], "loss": ["a", "b"]})},
        "column 'loss' is string, not a number",
    ),
    "null values": ({"metrics.parquet": _parquet({"step": [0, 1], "loss": [1.0, None]})}, "missing values"),
    "steps go back": ({"metrics.parquet": _parquet({"step": [0, 2, 1], "loss": [1.0, 1.0, 1.0]})}, "increase"),
    "negative steps": ({"metrics.parquet": _parquet({"step": [-1, 0], "loss": [1.0, 1.0]})}, "whole numbers >= 0"),
    "not parquet": ({"metrics.parquet": b"PAR1 but not really"}, "not a valid Parquet file"),
    "not json": ({"run.json": "{'python': True}"}, "run.json is not valid JSON"),
    "nan in json": ({"run.json": '{"format": NaN}'}, "not valid JSON"),
    "huge json": ({"run.json": " " * (2 << 20)}, "the limit is 1048576"),
    "bad events": ({"events.json": json.dumps([{"step": "x"}])}, "each event needs"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_archives_are_refused_with_a_clear_message(store, tmp_path, case):
    changes, message = MALFORMED[case]
    members = {**_good(), **changes}
    members = {k: v for k, v in members.items() if v is not None}
    path = _archive(tmp_path / "bad.zip", members)
    with pytest.raises(StoreError, match="refused") as info:
        store.import_run(path)
    assert info.value.kind == "invalid"
    assert message in str(info.value)
    assert store.list_runs().empty  # nothing half-imported


def test_files_that_are_not_archives_are_refused(store, tmp_path):
    (tmp_path / "text.zip").write_text("hello")
    with pytest.raises(StoreError, match="not a valid zip archive"):
        store.import_run(tmp_path / "text.zip")
    with pytest.raises(StoreError, match="cannot read it"):
        store.import_run(tmp_path / "absent.zip")


def test_a_zip_bomb_is_refused_before_decompressing(store, tmp_path, monkeypatch):
    import balance.runs.archive as archive

    monkeypatch.setitem(archive.LIMITS, "metrics.parquet", 1 << 20)  # the same check as at 256 MiB, smaller
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("run.json", json.dumps(_manifest()))
        zf.writestr("metrics.parquet", bytes(16 << 20))  # 16 MiB of zeros, 16 KiB compressed
    assert path.stat().st_size < 64 << 10
    with pytest.raises(StoreError, match=r"metrics\.parquet would be 16777216 bytes; the limit is 1048576"):
        store.import_run(path)


def test_a_lying_size_header_is_refused(store, tmp_path, monkeypatch):
    import balance.runs.archive as archive

    monkeypatch.setitem(archive.LIMITS, "run.json", 100)
    path = _archive(tmp_path / "liar.zip", {"run.json": "x" * 50, "metrics.parquet": _parquet(GOOD_METRICS)})
    data = bytearray(path.read_bytes())  # patch the declared sizes of run.json down to 10 bytes
    for header, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(header)
        data[at + offset : at + offset + 4] = (10).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="refused"):
        store.import_run(path)


# --- the command line ---------------------------------------------------------------------------------------


def test_balance_run_records_unless_no_store_and_runs_subcommands(tmp_path, monkeypatch, capsys):
    from balance.cli import main

    monkeypatch.setenv("BALANCE_HOME", str(tmp_path))
    tiny = ["--dataset", "lowrank", "--d1", "6", "--d2", "5", "--rank", "2", "--steps", "5"]
    assert main(["run", *tiny]) == 0
    assert main(["run", *tiny, "--no-store"]) == 0
    with RunStore(tmp_path) as s:
        runs = s.list_runs()
        assert len(runs) == 1 and runs["state"][0] == "finished" and len(s.metrics(runs["id"][0])) == 6
    run_id = runs["id"][0]
    capsys.readouterr()

    def ok(*argv: str) -> str:
        assert main(list(argv)) == 0
        return capsys.readouterr().out

    def refused(*argv: str) -> str:
        assert main(list(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("balance: error: ") and "\n" not in err
        return err

    assert run_id in ok("runs", "list")
    assert "finished at step 5" in ok("runs", "show", run_id[:5])
    ok("runs", "export", run_id, str(tmp_path / "r.zip"))
    assert "already stored as run" in refused("runs", "import", str(tmp_path / "r.zip"))  # same id and content
    ok("runs", "delete", run_id)
    new_id = ok("runs", "import", str(tmp_path / "r.zip")).strip()
    assert new_id == run_id and new_id in ok("runs", "list")
    ok("runs", "delete", run_id)
    assert "is not a run" in refused("runs", "show", run_id)
    assert "is not a run" in refused("runs", "export", "zzzz", str(tmp_path / "x.zip"))
    assert "cannot read it" in refused("runs", "import", str(tmp_path / "absent.zip"))
    (tmp_path / "bad.zip").write_text("not a zip")
    assert "not a valid zip archive" in refused("runs", "import", str(tmp_path / "bad.zip"))
    assert "no runs" in ok("runs", "--home", str(tmp_path / "other"), "list")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "runs.db").write_bytes(b"garbage" * 1000)
    assert "corrupt" in refused("runs", "list", "--home", str(tmp_path / "broken"))


# --- reading without writing (issue 11, item 11) ------------------------------------------------------------


def _dead_run(home: Path) -> str:
    """A store in ``home`` holding one 'running' run whose owner (this host, a pid that is not running) is gone."""
    with RunStore(home) as s:
        run_id = s.create_run(TINY, ["step", "loss"])
        s.claim_run(run_id, ["step", "loss"])
        s.append_rows(run_id, [[0, 1.0], [1, 0.5]])
        host = owner_token().rsplit(":", 2)[0]
        s._conn.execute("UPDATE runs SET owner = ?", (f"{host}:999999999:1",))
    return run_id


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_read_only_reads_everything_and_writes_nothing(tmp_path, result):
    run_id = _dead_run(tmp_path)
    before = _snapshot(tmp_path)
    with RunStore(tmp_path, read_only=True) as s:
        runs = s.list_runs()
        assert runs["state"].tolist() == ["interrupted"] and "pid 999999999" in runs["message"][0]
        record = s.get_run(run_id)
        assert record.state == "interrupted" and "ended before it finished" in record.message
        assert s.metrics(run_id)["loss"].tolist() == [1.0, 0.5]
        s.export_run(run_id, tmp_path.parent / "exported.zip")
        for write in (lambda: s.create_run(TINY, []), lambda: s.set_status(run_id, "finished", 1)):
            with pytest.raises(StoreError, match="opened read-only") as info:
                write()
            assert info.value.kind == "readonly"
        assert s.mark_interrupted() == []
    after = _snapshot(tmp_path)
    assert after.pop("runs.db") == before["runs.db"]  # not a byte written
    assert after.pop("runs.db-wal", (0, 0))[0] == 0  # SQLite's own files to share reading, with nothing written
    assert set(after) <= {"runs.db-shm"}
    with RunStore(tmp_path) as s:  # the next writable open marks it for good
        assert s._read("SELECT state FROM runs") == [("interrupted",)]


def test_read_only_on_a_missing_store_is_empty_and_creates_nothing(tmp_path):
    with RunStore(tmp_path / "nothing", read_only=True) as s:
        assert s.list_runs().empty and list(s.list_runs().columns) == LIST_COLUMNS
        with pytest.raises(StoreError, match="no run"):
            s.get_run("abcd")
    assert not (tmp_path / "nothing").exists()


_LIMITED = """
import argparse, resource, signal, sys
from balance.cli import runs as cli_runs
parser = argparse.ArgumentParser()
cli_runs.register(parser.add_subparsers())  # 'balance runs' without the rest of the command (and its torch)
args = parser.parse_args(sys.argv[1:])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # no file may grow: a full disk, for root and everyone
sys.exit(args.handler(args))
"""


@pytest.mark.parametrize("held", [True, False], ids=["store open elsewhere", "store closed"])
@pytest.mark.parametrize("action", ["list", "show"])
def test_listing_and_showing_work_when_nothing_can_be_written(tmp_path, action, held):
    """Before: 'balance runs list' failed with "... marking interrupted runs failed" (or "opening the store
    failed: disk I/O error" when no other program had the store open) on a full disk."""
    run_id = _dead_run(tmp_path)
    holder = sqlite3.connect(tmp_path / "runs.db")  # e.g. a dashboard: SQLite's shared-memory file exists
    try:
        if held:
            holder.execute("SELECT COUNT(*) FROM runs").fetchall()
        else:
            holder.close()
        argv = ["runs", "--home", str(tmp_path), action, *([run_id] if action == "show" else [])]
        done = subprocess.run([sys.executable, "-c", _LIMITED, *argv], capture_output=True, text=True, timeout=120)
    finally:
        holder.close()
    assert done.returncode == 0, done.stderr
    assert "interrupted" in done.stdout and done.stderr == ""


def test_a_store_that_cannot_take_the_marking_opens_and_reads_marking_later(tmp_path, monkeypatch):
    run_id = _dead_run(tmp_path)
    real = RunStore.mark_interrupted
    calls = []

    def full_once(self):
        calls.append(1)
        if len(calls) == 1:
            raise StoreError("the disk is full", "full")
        return real(self)

    monkeypatch.setattr(RunStore, "mark_interrupted", full_once)
    with RunStore(tmp_path) as s:
        assert s.get_run(run_id).state == "interrupted"  # shown as it is, though not written yet
        assert s.list_runs()["state"].tolist() == ["interrupted"]
        assert s._read("SELECT state FROM runs") == [("running",)]
        other = s.create_run(TINY, [])  # the next write marks it first
        assert s._read("SELECT state FROM runs WHERE id = ?", (run_id,)) == [("interrupted",)]
        assert s.get_run(other).state == "queued"


def test_a_store_locked_at_opening_still_shows_dead_runs_as_interrupted(tmp_path):
    run_id = _dead_run(tmp_path)
    holder = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with RunStore(tmp_path, timeout=0.1) as s:
            assert s.get_run(run_id).state == "interrupted"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with RunStore(tmp_path) as s:
        assert s._read("SELECT state FROM runs") == [("interrupted",)]


def test_marking_interrupted_runs_is_one_statement(tmp_path):
    """Before: one UPDATE (and one transaction) per run: 56,353 runs took 24 s."""
    with RunStore(tmp_path) as s:
        host = owner_token().rsplit(":", 2)[0]
        text = json.dumps(TINY.to_dict())
        with s.transaction():
            s._conn.executemany(
                "INSERT INTO runs (id, name, sweep, config, columns, state, step, message, created, updated, owner) "
                "VALUES (?, '', '', ?, '[]', 'running', ?, '', 1.7e9, 1.7e9, ?)",
                [(f"{i:08x}", text, i, f"{host}:{900000000 + i % 500}:1") for i in range(3000)],
            )
        statements: list[str] = []
        s._conn.set_trace_callback(statements.append)
        marked = s.mark_interrupted()
        s._conn.set_trace_callback(None)
        assert len(marked) == 3000
        assert sum(q.lstrip().upper().startswith(("UPDATE", "WITH")) for q in statements) == 1
        assert sum(q.strip() == "BEGIN IMMEDIATE" for q in statements) == 1
        record = s.get_run("00000007")
        assert record.state == "interrupted"
        assert (
            record.message == "interrupted at step 7: the process running it (pid 900000007) ended before it finished"
        )


# --- schema 2 -> 3 and origin (issue 11, item 9) ------------------------------------------------------------

_SCHEMA_2 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT NOT NULL, sweep TEXT NOT NULL, config TEXT NOT NULL,
    columns TEXT NOT NULL, state TEXT NOT NULL, step INTEGER NOT NULL, message TEXT NOT NULL, created REAL NOT NULL,
    updated REAL NOT NULL, owner TEXT NOT NULL);
CREATE TABLE metrics (run_id TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL, n INTEGER NOT NULL,
    data BLOB NOT NULL);
CREATE TABLE events (run_id TEXT NOT NULL, step INTEGER NOT NULL, time REAL NOT NULL, kind TEXT NOT NULL,
    value REAL, text TEXT);
CREATE TABLE neurons (run_id TEXT NOT NULL, step INTEGER NOT NULL, keys TEXT NOT NULL, n INTEGER NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (run_id, step));
INSERT INTO meta VALUES ('app', 'balance'), ('schema', '2');
"""


def _schema_2_store(home: Path) -> None:
    home.mkdir(parents=True)
    conn = sqlite3.connect(home / "runs.db")
    conn.executescript(_SCHEMA_2)
    conn.execute(
        "INSERT INTO runs VALUES ('aaaa0001', 'old #key', '', ?, '[\"step\", \"loss\"]', 'finished', 2, '', 1.7e9, "
        "1.7e9, '')",
        (json.dumps(TINY.to_dict()),),
    )
    conn.execute("INSERT INTO metrics VALUES ('aaaa0001', 0, 1, 2, ?)", (np.array([0, 1.0, 1, 0.5]).tobytes(),))
    conn.commit()
    conn.close()


def test_a_schema_2_store_is_read_as_it_is_and_migrated_when_writable(tmp_path):
    tmp_path = tmp_path / "home"
    _schema_2_store(tmp_path)
    before = _snapshot(tmp_path)
    with RunStore(tmp_path, read_only=True) as s:
        assert s.list_runs()[["id", "origin"]].values.tolist() == [["aaaa0001", "trained"]]
        assert s.get_run("aaaa0001").origin == "trained"
    assert _snapshot(tmp_path)["runs.db"] == before["runs.db"]
    with RunStore(tmp_path) as s:
        assert s._read("SELECT value FROM meta WHERE key = 'schema'") == [("3",)]
        assert s.get_run("aaaa0001").origin == "trained" and s.metrics("aaaa0001")["loss"].tolist() == [1.0, 0.5]
        new = s.create_run(TINY, ["step", "loss"])
        assert s.list_runs().set_index("id").loc[new, "origin"] == "trained"


def test_imported_runs_are_marked_and_an_archive_cannot_say_otherwise(store, tmp_path):
    run_id = store.import_run(_archive(tmp_path / "ok.zip", _good()))
    assert store.get_run(run_id).origin == "imported"
    assert store.list_runs().set_index("id").loc[run_id, "origin"] == "imported"
    forged = _archive(tmp_path / "forged.zip", {**_good(), "run.json": _manifest(id="abcd9999", origin="trained")})
    with pytest.raises(StoreError, match="unknown keys") as info:
        store.import_run(forged)
    assert info.value.kind == "invalid"


# --- damaged rows (issue 11, item 13) -----------------------------------------------------------------------

DAMAGE = {
    "config not json": ("config", "{not json"),
    "config a list": ("config", "[1, 2]"),
    "config sections not tables": ("config", '{"model": 3}'),
    "lr not a number": ("config", '{"optim": {"lr": "fast"}}'),
    "config fails validation": ("config", '{"model": {"width": -3}}'),
    "columns not json": ("columns", "[step"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_one_damaged_row_is_reported_and_the_others_still_read(store, result, case):
    good = _recorded(store, result, name="good")
    bad = _recorded(store, result, name="bad")
    column, value = DAMAGE[case]
    store._conn.execute(f"UPDATE runs SET {column} = ? WHERE id = ?", (value, bad))
    store = RunStore(store.home)  # one that has not read the run before the damage
    runs = store.list_runs().set_index("id")
    assert runs.loc[good, "state"] == "finished"
    if column == "config" and case != "config fails validation":  # a listing reads what it shows, no more
        assert runs.loc[bad, "state"] == "unreadable" and "damaged" in runs.loc[bad, "message"]
    export = functools.partial(store.export_run, path=store.home / "x.zip")
    readers = [store.get_run] if column == "config" else [store.metrics, export]
    for read in readers:
        with pytest.raises(StoreError, match=f"run {bad} .* is unreadable") as info:
            read(bad)
        assert info.value.kind == "corrupt"
    assert store.get_run(good).state == "finished" and len(store.metrics(good)) == 41
    store.close()


def test_a_sweep_leaves_out_a_damaged_run(store):
    a, b = (store.create_run(TINY, [], sweep="s1") for _ in range(2))
    store._conn.execute("UPDATE runs SET config = '{' WHERE id = ?", (b,))
    assert [r.id for r in store.sweep_runs("s1")] == [a]


# --- writes that fail leave nothing; retries do not duplicate (issue 11, item 10) ---------------------------


def test_a_write_that_fails_under_a_lock_leaves_nothing_and_its_retry_stores_it_once(tmp_path):
    with RunStore(tmp_path, timeout=0.1) as s:
        run_id = s.create_run(TINY, ["step", "loss"])
        s.claim_run(run_id, ["step", "loss"])
        rows = [[0, 1.0], [1, 0.5]]
        holder = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError) as info, s.transaction():
            s.append_rows(run_id, rows)
            s.record_event(run_id, 1, "lr", 0.1)
            s.set_status(run_id, "running", 1)
        assert info.value.kind == "locked"
        holder.execute("ROLLBACK")
        holder.close()
        assert s._read("SELECT COUNT(*) FROM metrics") == [(0,)] and s.events(run_id).empty
        for _ in range(2):  # the retry, and a retry of a write whose outcome was not known
            with s.transaction():
                s.append_rows(run_id, rows)
                s.record_event(run_id, 1, "lr", 0.1)
                s.set_status(run_id, "running", 1)
        assert s._read("SELECT COUNT(*) FROM metrics") == [(1,)]
        assert s.events(run_id)["value"].tolist() == [0.1]
        assert s.metrics(run_id)["loss"].tolist() == [1.0, 0.5]


def test_a_failed_commit_leaves_the_store_usable(tmp_path, monkeypatch):
    with RunStore(tmp_path) as s:
        run_id = s.create_run(TINY, ["step", "loss"])
        real = s._conn

        class CommitFails:  # the connection, except that COMMIT fails once as on a full disk
            def __getattr__(self, name):
                return getattr(real, name)

            def execute(self, sql, *args):
                if sql == "COMMIT":
                    monkeypatch.setattr(s, "_conn", real)
                    raise sqlite3.OperationalError("database or disk is full")
                return real.execute(sql, *args)

        monkeypatch.setattr(s, "_conn", CommitFails())
        with pytest.raises(StoreError, match="disk is full"):
            s.append_rows(run_id, [[0, 1.0]])
        assert not real.in_transaction and s.metrics(run_id).empty
        s.append_rows(run_id, [[0, 2.0]])  # before: "cannot start a transaction within a transaction"
        assert s.metrics(run_id)["loss"].tolist() == [2.0]


def test_the_same_event_again_is_kept_only_when_it_changes_something(store):
    run_id = store.create_run(TINY, [])
    for value in (0.1, 0.1, 0.2, 0.1):
        store.record_event(run_id, 5, "lr", value)
    assert store.events(run_id)["value"].tolist() == [0.1, 0.2, 0.1]


# --- step-size changes (issue 12, item 3) -------------------------------------------------------------------


def test_lr_history_in_the_list_and_the_record(store, result):
    changed, same, plain = (_recorded(store, result) for _ in range(3))
    store.record_event(changed, 30, "lr", 0.1)
    store.record_event(changed, 35, "lr", 0.02)
    store.record_event(same, 10, "lr", 0.05)  # the step size it already had: no change
    store.record_event(plain, 3, "note", "hello")
    runs = store.list_runs().set_index("id")
    assert runs.loc[changed, "lr_history"] == "0.05 → 0.1 at step 30 → 0.02 at step 35"
    assert runs.loc[same, "lr_history"] == "" and runs.loc[plain, "lr_history"] == ""
    assert runs.loc[changed, "lr"] == 0.05  # the starting step size, as in the config
    assert store.lr_history(changed) == runs.loc[changed, "lr_history"]


def test_damaged_metric_and_snapshot_data_are_a_clear_error(store, result):
    run_id = _recorded(store, result)
    store.save_neurons(run_id, 0, {"layer": np.array([1]), "neuron": np.array([0]), "in_sqnorm": np.array([0.5])})
    store._conn.execute("UPDATE metrics SET data = X'0102030405'")
    store._conn.execute("UPDATE neurons SET data = X'01'")
    for read in (store.metrics, store.last_row, store.neurons):
        with pytest.raises(StoreError, match=f"run {run_id} .* is unreadable") as info:
            read(run_id)
        assert info.value.kind == "corrupt"
