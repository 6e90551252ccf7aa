"""The Runs page under Streamlit's AppTest: selection by run id through filters, sorts and deletes; the overlay of
a signed metric; imports; a store or a run that cannot be read. Runs are written straight into a temporary store
(tiny MF runs), so only the delete needs the runner.

AppTest has no way to tick a table row; ``tick`` sends the widget state the browser sends for a tick (the rows
ticked, by position among the rows drawn), which runs the table's ``on_select`` callback as a click does.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from streamlit.proto.WidgetStates_pb2 import WidgetStates
from streamlit.testing.v1 import AppTest

from balance import run
from balance.app import common as ui
from balance.app import runs as ui_runs
from balance.config.presets import preset
from balance.runs.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "app_pages" / "runs.py")
TIMEOUT = 60


def store_runs(home: Path, count: int) -> list[str]:
    """``count`` finished MF runs named "run 1" .. at step sizes 0.01, 0.02, ...; ids in creation order."""
    ids = []
    with RunStore(home) as store:
        for i in range(count):
            lr = round(0.01 * (i + 1), 2)
            config = preset("fig1-small").replace(**{"optim.lr": lr, "steps": 30, "data.d1": 8, "data.d2": 6})
            metrics, status = run(config)
            run_id = store.create_run(config, list(metrics.columns), name=f"run {i + 1}")
            store.claim_run(run_id, list(metrics.columns))
            store.append_rows(run_id, metrics.to_numpy())
            store.set_status(run_id, status.state, status.step, status.message)
            ids.append(run_id)
            time.sleep(0.01)  # distinct creation times
    return ids


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh store per test (the process-wide store is opened anew for it)."""
    monkeypatch.setenv("BALANCE_HOME", str(tmp_path))
    ui._store.clear()
    yield tmp_path
    ui._store.clear()


@pytest.fixture
def with_runner(home: Path) -> Iterator[Path]:
    """For a test that deletes (through the runner): its workers are stopped afterwards."""
    yield home
    ui.runner().shutdown()
    ui._runner.clear()


def page() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()


def table(at: AppTest) -> pd.DataFrame:
    return next(d for d in at.dataframe if d.key == "runs.table").value


def tick(at: AppTest, rows: list[int]) -> AppTest:
    """The browser's message for a table whose ticked rows are now ``rows`` (positions among the rows drawn)."""
    proto = next(d for d in at.dataframe if d.key == "runs.table").proto
    states = at._tree.get_widget_states()
    state = states.widgets.add()
    state.id = proto.id
    state.string_value = json.dumps({"selection": {"rows": rows, "columns": [], "cells": []}})
    return at._run(widget_state=WidgetStates(widgets=states.widgets))


def shown(markdown: str) -> str:
    """What a reader sees of Markdown text escaped by ``ui_runs.literal``."""
    return re.sub(r"\\(.)", r"\1", markdown)


def ticked(at: AppTest) -> list[str]:
    """The ids of the rows the table shows as ticked."""
    rows = at.session_state["runs.table"]["selection"]["rows"]
    ids = table(at)["id"].tolist()
    return [ids[r] for r in rows]


def test_selection_follows_run_ids_through_filter_sort_and_delete(home: Path) -> None:
    ids = store_runs(home, 5)  # run 1 .. run 5
    at = page()
    assert not at.exception
    assert table(at)["id"].tolist() == ids[::-1]  # newest first
    tick(at, [0, 2])  # run 5 and run 3
    assert at.session_state["runs.selected"] == [ids[4], ids[2]]
    # sort by name ascending: the same two runs are ticked, now at rows 2 and 4
    at.selectbox(key="runs.sort").set_value("name").run()
    at.toggle(key="runs.descending").set_value(False).run()
    assert table(at)["name"].tolist() == [f"run {i}" for i in range(1, 6)]
    assert sorted(ticked(at)) == sorted([ids[2], ids[4]])
    assert at.session_state["runs.table"]["selection"]["rows"] == [2, 4]
    # filter to one run
    at.text_input(key="runs.filter").input("run 3").run()
    assert table(at)["id"].tolist() == [ids[2]]
    assert ticked(at) == [ids[2]]
    # a tick in the filtered table means the run drawn there, and keeps the selection the filter hides
    tick(at, [])  # untick run 3
    assert at.session_state["runs.selected"] == [ids[4]]
    at.text_input(key="runs.filter").input("").run()
    assert ticked(at) == [ids[4]]
    # a new run arriving moves the rows; the tick stays on run 5
    new = store_runs(home, 1)[0]
    at.run()
    assert new in table(at)["id"].tolist() and ticked(at) == [ids[4]]
    # pick in the multiselect: the table ticks follow
    at.multiselect(key="runs.selected").set_value([ids[4], ids[0]]).run()
    assert sorted(ticked(at)) == sorted([ids[4], ids[0]])
    assert not at.exception


def test_the_tables_echo_of_its_own_ticks_changes_nothing(home: Path) -> None:
    """After the page sets the table's ticks, the browser sends that selection back with its next message (a
    change, to Streamlit, so the table's callback runs). Read as a tick, it undid a pick made in the same message:
    picking two runs in the multiselect left one, picking one left none."""
    ids = store_runs(home, 3)
    at = page()
    shown = table(at)["id"].tolist()
    at.multiselect(key="runs.selected").set_value([ids[0]])
    tick(at, [])  # the browser's copy of the table: nothing ticked yet, as the page drew it
    assert at.session_state["runs.selected"] == [ids[0]]
    at.multiselect(key="runs.selected").set_value([ids[0], ids[1]])
    tick(at, [shown.index(ids[0])])  # the ticks the page drew last time, echoed
    assert at.session_state["runs.selected"] == [ids[0], ids[1]]
    assert sorted(ticked(at)) == sorted(ids[:2])
    tick(at, [shown.index(ids[0]), shown.index(ids[1]), shown.index(ids[2])])  # a real tick still counts
    assert at.session_state["runs.selected"] == [ids[0], ids[1], ids[2]]


def test_delete_lists_and_deletes_exactly_the_selected_ids(with_runner: Path) -> None:
    home = with_runner
    ids = store_runs(home, 5)
    at = page()
    tick(at, [0])  # run 5, the newest
    texts = [t.value for t in at.text]  # the popover's list (st.text: never Markdown)
    assert any(ids[4] in t and "run 5" in t for t in texts), texts
    assert at.button(key="runs.delete").label == "Delete 1 run(s)"
    at.button(key="runs.delete").click().run()
    assert not at.exception
    assert sorted(ui.store().list_runs()["id"]) == sorted(ids[:4])
    assert table(at)["id"].tolist() == ids[3::-1]
    assert ticked(at) == [] and at.session_state["runs.selected"] == []
    tick(at, [0])  # the run that moved into row 0 is selected alone
    assert at.session_state["runs.selected"] == [ids[3]] and ticked(at) == [ids[3]]


def test_two_runs_overlay_and_download(home: Path) -> None:
    """(Moved from test_app.py.) Two runs overlaid; downloads offered; a signed metric is drawn linear."""
    ids = store_runs(home, 2)
    at = page()
    at.multiselect(key="runs.selected").set_value(ids).run()
    assert not at.exception
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert len(spec["data"]) == 2 and spec["layout"]["yaxis"]["type"] == "log"  # loss: positive, log
    assert {b.key for b in at.get("download_button")} >= {"runs.csv", "runs.html"}
    at.selectbox(key="runs.metric").set_value("gap_drift_1").run()
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["yaxis"]["type"] != "log"
    assert at.toggle(key="runs.log_y_signed").disabled and not at.toggle(key="runs.log_y_signed").value
    at.selectbox(key="runs.metric").set_value("loss").run()  # back to a positive metric: log again
    assert json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["yaxis"]["type"] == "log"


def exported(home: Path, run_id: str) -> bytes:
    path = home / "export.zip"
    ui.store().export_run(run_id, path)
    return path.read_bytes()


def with_member(source: bytes, name: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(source)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        zout.writestr(name, b"x")
    return out.getvalue()


def test_imports_are_listed_at_once_marked_imported_and_never_duplicated(home: Path) -> None:
    """Through the import worker (a separate process): listed in the same rerun, marked as imported; the same
    file again is refused as already there; errors name the user's file, never the temporary copy."""
    (first,) = store_runs(home, 1)
    source = exported(home, first)
    ui.store().delete_run(first)
    at = page()
    assert not at.dataframe  # no runs
    at.file_uploader[0].set_value(("my run.zip", source, "application/zip")).run()
    assert not at.exception
    assert [s.value for s in at.success] == [ui_runs.literal(f"Imported my run.zip as run {first}")]
    listed = table(at)
    assert listed["id"].tolist() == [first] and listed["origin"].tolist() == ["imported"]
    assert at.file_uploader[0].value is None  # emptied for the next file
    assert at.multiselect(key="runs.selected").options[0].endswith("· imported")
    at.file_uploader[0].set_value(("again.zip", source, "application/zip")).run()
    assert [shown(i.value) for i in at.info] == [f"again.zip: already stored as run {first}; nothing imported"]
    assert len(ui.store().list_runs()) == 1
    at.file_uploader[0].set_value(("bad.zip", with_member(source, "![b](http://host/beacon.png)"), "x")).run()
    (error,) = [e.value for e in at.error]
    assert error.startswith(ui_runs.literal("Could not import bad.zip: refused: unexpected member"))
    assert "tmp" not in error.replace("\\", "") and "run.zip" not in error.replace("\\", "")
    assert "![b](" not in error  # escaped: shown as the characters typed, not an image


def test_text_from_files_is_escaped_for_markdown() -> None:
    hostile = "![b](http://host/beacon.png) :red[x] $x$ <img src=x> **bold**"
    escaped = ui_runs.literal(hostile)
    assert all(f"\\{c}" in escaped for c in "![]():$<>*")
    assert escaped.replace("\\", "") == hostile


def test_a_corrupt_store_shows_one_message_and_no_traceback(home: Path) -> None:
    ui._store.clear()
    (home / "runs.db").write_bytes(b"this is not a database" * 500)
    at = page()
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert "cannot be read" in error and "corrupt" in error


def test_a_damaged_run_is_listed_as_unreadable_and_the_others_still_list_and_draw(with_runner: Path) -> None:
    home = with_runner
    ids = store_runs(home, 3)
    with sqlite3.connect(home / "runs.db") as conn:
        conn.execute("UPDATE runs SET config = '{broken' WHERE id = ?", (ids[0],))
        conn.execute("UPDATE runs SET columns = '{broken' WHERE id = ?", (ids[1],))
    ui._store.clear()
    at = page()
    assert not at.exception
    listed = table(at).set_index("id")
    assert sorted(listed.index) == sorted(ids) and listed.loc[ids[0], "state"] == "unreadable"
    (error,) = [shown(e.value) for e in at.error]
    assert "1 run(s) could not be read" in error and ids[0] in error
    at.multiselect(key="runs.selected").set_value(ids).run()
    assert not at.exception
    (warning,) = [shown(w.value) for w in at.warning]  # run 2 (no column list) cannot be drawn
    # run 1's metrics are intact, only its config is not (a word match: a random id "run 1a2b..." is not run 1)
    assert "run 2" in warning and not re.search(r"\brun 1\b", warning)
    assert len(json.loads(at.get("plotly_chart")[0].proto.spec)["data"]) == 2
    at.button(key="runs.delete").click().run()  # the damaged ones can be deleted too
    assert not at.exception and ui.store().list_runs().empty


def test_a_step_size_changed_mid_run_shows_in_the_table(home: Path) -> None:
    ids = store_runs(home, 2)
    with RunStore(home) as store:
        store.record_event(ids[1], 10, "lr", 0.05)
    at = page()
    sizes = dict(zip(table(at)["id"], table(at)["step_size"]))
    assert sizes == {ids[0]: "0.01", ids[1]: "0.02 → 0.05 at step 10"}


def test_lr_text_shows_a_change_mid_run() -> None:
    assert ui_runs.lr_text(0.01) == "0.01"
    assert ui_runs.lr_text(0.01, "") == "0.01"
    assert ui_runs.lr_text(0.01, "0.01 → 0.05 at step 300") == "0.01 → 0.05 at step 300"
    assert ui_runs.lr_text(float("nan")) == ""


def test_selection_helpers() -> None:
    view = ["a", "b", "c"]
    assert ui_runs.ticked_rows(view, ["c", "x", "a"]) == [0, 2]
    # "x" is filtered out: kept; "a" unticked: dropped; "b" newly ticked: appended
    assert ui_runs.selection_after_ticks(["x", "a", "c"], view, [1, 2]) == ["x", "c", "b"]
    assert ui_runs.selection_after_ticks([], view, [5]) == []  # a stale position is ignored
