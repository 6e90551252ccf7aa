"""The Runs page in headless Chromium: ticks in the table follow runs (not row positions) through a delete, text
from imported files stays text (no request leaves for a Markdown image), and the page's screenshots.

The table is a canvas (glide-data-grid); a tick is a click on a row's checkbox, and its accessible DOM
(``tr[aria-selected]``) says which rows show as ticked.
"""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ARTIFACTS, Server, launch, save_screenshot, serve, wait_idle

from balance.views.overlay import overlay_option

pytestmark = pytest.mark.browser

HOSTILE = "![b](http://host/beacon.png)"
ROW_HEIGHT = 35  # Streamlit's default; the header row has the same height
TICKED_IDS = """() => Array.from(document.querySelectorAll(
    '[data-testid="stDataFrame"] tr[role="row"][aria-selected="true"]'))
    .map(tr => tr.querySelector('td[aria-colindex="1"]').innerText.trim())"""
# the rows ticked in the table and the tags in the multiselect agree (the server has answered the tick)
SETTLED = f"""before => {{
    const ticked = ({TICKED_IDS})().join();
    const tags = document.querySelectorAll('[data-testid="stMultiSelect"] [data-tag]').length;
    return ticked !== before && ({TICKED_IDS})().length === tags;
}}"""
IDS_JS = """() => Array.from(document.querySelectorAll(
    '[data-testid="stDataFrame"] tbody tr[role="row"] td[aria-colindex="1"]')).map(td => td.innerText.trim())"""
OVERLAY_TRACES = """() => document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot')._fullData.length"""


CONFIG = {"steps": 60, "data.d1": 8, "data.d2": 6}


def store_run(store: object, name: str, lr: float, change: tuple[int, float] | None = None) -> str:
    """A finished MF run at step size ``lr``; ``change`` = (step, new lr) changes it while it trains, as the
    dashboard's runner does (the trainer's step size, and an ``lr`` event in the store)."""
    import pandas as pd

    from balance.config.presets import preset
    from balance.engine.trainer import Trainer

    trainer = Trainer(preset("fig1-small").replace(**{"optim.lr": lr, **CONFIG}))
    rows = []
    while trainer.status.state == "running":
        if change and trainer.step_index == change[0]:
            trainer.learning_rate = change[1]
        rows += trainer.step()
    metrics = pd.DataFrame(rows, columns=trainer.columns)
    run_id = store.create_run(trainer.config, list(metrics.columns), name=name)
    store.claim_run(run_id, list(metrics.columns))
    store.append_rows(run_id, metrics.to_numpy())
    store.record_event(run_id, 0, "lr", lr)
    if change:
        store.record_event(run_id, change[0], "lr", change[1])
    store.set_status(run_id, trainer.status.state, trainer.status.step, trainer.status.message)
    time.sleep(0.01)  # distinct creation times: the order is well defined
    return run_id


def store_runs(home: Path, count: int) -> list[str]:
    """``count`` finished MF runs named "run 1" .. at step sizes 0.01, 0.02, ...; ids in creation order."""
    from balance.runs.store import RunStore

    with RunStore(home) as store:
        return [store_run(store, f"run {i + 1}", round(0.01 * (i + 1), 2)) for i in range(count)]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs-home")


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    yield from serve(home, "streamlit-runs.log")


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[object]:
    yield from launch()


def open_runs(browser: object, server: Server, size: tuple[int, int] = (1280, 800)) -> object:
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.goto(server.url + "/runs")
    wait_idle(page)
    page.wait_for_selector('[data-testid="stDataFrame"]')
    page.wait_for_timeout(500)  # the grid draws its rows after the element appears
    return page


def table_ids(page: object) -> list[str]:
    return page.evaluate(IDS_JS)


def tick(page: object, row: int) -> None:
    """Click the checkbox of table row ``row`` (0 = the first data row)."""
    before = ",".join(page.evaluate(TICKED_IDS))
    box = page.get_by_test_id("stDataFrame").bounding_box()
    page.mouse.click(box["x"] + 18, box["y"] + ROW_HEIGHT * (row + 1) + ROW_HEIGHT / 2)
    page.wait_for_function(SETTLED, arg=before)
    wait_idle(page)


def chosen(page: object) -> list[str]:
    """The labels in the "Selected runs" multiselect."""
    tags = page.get_by_test_id("stMultiSelect").last.locator("[data-tag]")
    return [t.strip() for t in tags.all_inner_texts()]


def assert_no_exception(page: object) -> None:
    errors = page.locator('[data-testid="stException"]')
    assert errors.count() == 0, errors.first.inner_text()


def delete_selected(page: object) -> str:
    """Open the Delete popover, return what it lists, confirm."""
    main = page.get_by_test_id("stMainBlockContainer")
    main.get_by_role("button", name="Delete", exact=True).click()
    body = page.get_by_test_id("stPopoverBody")
    body.wait_for()
    wait_idle(page)
    listed = body.inner_text()
    body.get_by_role("button", name=re.compile(r"^Delete \d+ run")).click()
    wait_idle(page)
    page.wait_for_selector('[data-testid="stToast"]')
    return listed


def test_deleting_one_run_of_five_deletes_exactly_that_one(home: Path, server: Server, browser: object) -> None:
    from balance.runs.store import RunStore

    store_runs(home, 5)
    page = open_runs(browser, server)
    shown = table_ids(page)
    assert len(shown) == 5
    victim = shown[2]
    tick(page, 2)
    assert page.evaluate(TICKED_IDS) == [victim]
    assert len(chosen(page)) == 1
    listed = delete_selected(page)
    assert victim in listed and "Delete 1 run(s)" in listed
    rows = "n => document.querySelectorAll('[data-testid=\"stDataFrame\"] tbody tr').length === n"
    page.wait_for_function(rows, arg=4)
    with RunStore(home) as store:
        left = set(store.list_runs()["id"])
    assert left == set(shown) - {victim}
    assert table_ids(page) == [i for i in shown if i != victim]
    assert page.evaluate(TICKED_IDS) == [], "a row shows as ticked that nobody ticked"
    assert chosen(page) == []
    # the bug: ticking another row now selected it *and* the run that moved into the deleted one's position
    tick(page, 2)
    assert page.evaluate(TICKED_IDS) == [table_ids(page)[2]]
    assert len(chosen(page)) == 1
    tick(page, 2)  # untick: nothing is left selected
    assert page.evaluate(TICKED_IDS) == [] and chosen(page) == []
    assert_no_exception(page)
    page.close()


def test_picks_in_the_multiselect_and_ticks_in_the_table_agree(home: Path, server: Server, browser: object) -> None:
    """Two quick picks in the multiselect both stay (the table's echo of the ticks the page drew once undid them:
    one pick left nothing, two left one), the table ticks them, and a tick in the table adds a third."""
    if len(table_ids_of_store(home)) < 3:
        store_runs(home, 3)
    from balance.runs.store import RunStore

    with RunStore(home) as store:
        names = dict(zip(*store.list_runs()[["id", "name"]].to_dict("list").values()))
    page = open_runs(browser, server)
    shown = table_ids(page)
    picker = page.get_by_test_id("stMultiSelect").last
    for run_id in shown[1:3]:
        picker.click()
        page.get_by_role("option", name=re.compile(f"^{re.escape(names[run_id])} \\(")).click()
    page.keyboard.press("Escape")
    page.wait_for_function(f"ids => ({TICKED_IDS})().join() === ids", arg=",".join(shown[1:3]))
    wait_idle(page)
    page.wait_for_timeout(1000)  # time for an echo to come back and (wrongly) undo a pick
    assert len(chosen(page)) == 2 and page.evaluate(TICKED_IDS) == shown[1:3]
    tick(page, 0)
    assert len(chosen(page)) == 3 and page.evaluate(TICKED_IDS) == shown[:3]
    assert_no_exception(page)
    page.close()


def archive_named(source: bytes, name: str, message: str) -> bytes:
    """A copy of an exported run file with another name and message (and a fresh id)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(source)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "run.json":
                raw = json.loads(data)
                raw.update(name=name, message=message, id="c0ffee00")
                data = json.dumps(raw).encode()
            zout.writestr(info, data)
    return out.getvalue()


def hostile_member(source: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(source)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        zout.writestr(HOSTILE, b"x")
    return out.getvalue()


def upload(page: object, name: str, data: bytes) -> None:
    if not page.get_by_test_id("stFileUploaderDropzone").is_visible():
        page.get_by_text("Import a run").click()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
        files=[{"name": name, "mimeType": "application/zip", "buffer": data}]
    )
    wait_idle(page)


def test_text_from_an_imported_file_is_shown_as_text(home: Path, server: Server, browser: object) -> None:
    from balance.runs.store import RunStore

    if not table_ids_of_store(home):
        store_runs(home, 1)
    with RunStore(home) as store:
        first = store.list_runs()["id"].iloc[-1]
        path = home / "export.zip"
        store.export_run(first, path)
    source = path.read_bytes()
    page = open_runs(browser, server)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    hostile = archive_named(source, HOSTILE, HOSTILE)
    upload(page, f"{HOSTILE}.zip", hostile)
    page.wait_for_selector("text=as run c0ffee00", timeout=60_000)  # the import worker starts a process
    page.wait_for_function(f"() => ({IDS_JS})().includes('c0ffee00')", timeout=5000)  # listed at once
    assert page.get_by_text("imported", exact=True).count() == 1  # its origin cell, in the grid's DOM copy
    upload(page, "again.zip", hostile)
    page.wait_for_selector("text=again.zip: already stored as run c0ffee00; nothing imported", timeout=60_000)
    assert table_ids(page).count("c0ffee00") == 1 and len(table_ids(page)) == len(table_ids_of_store(home))
    tick(page, table_ids(page).index("c0ffee00"))
    assert any(HOSTILE in label for label in chosen(page)), chosen(page)
    legend = page.locator('[data-testid="stPlotlyChart"] .legendtext')
    legend.first.wait_for()
    assert any(t.startswith(HOSTILE) for t in legend.all_text_contents()), legend.all_text_contents()
    listed = delete_selected(page)  # the popover lists the name; the toast repeats it
    assert HOSTILE in listed
    toast = page.get_by_test_id("stToast").last.inner_text()
    assert HOSTILE in toast
    upload(page, "bad.zip", hostile_member(source))
    error = page.get_by_test_id("stAlertContentError")
    error.wait_for(timeout=60_000)
    assert HOSTILE in error.inner_text() and "bad.zip" in error.inner_text()
    assert "/tmp" not in error.inner_text()
    assert page.locator('img[src*="beacon"], a[href*="beacon"]').count() == 0
    assert not [u for u in requests if "beacon" in u or "//host" in u], requests
    assert_no_exception(page)
    page.close()


def table_ids_of_store(home: Path) -> list[str]:
    from balance.runs.store import RunStore

    with RunStore(home) as store:
        return store.list_runs()["id"].tolist()


@pytest.fixture(scope="module")
def changed(home: Path, server: Server) -> tuple[str, str]:
    """Two runs to overlay in the screenshots: 0.04 throughout, and 0.01 raised to 0.04 at step 30."""
    from balance.runs.store import RunStore

    with RunStore(home) as store:
        steady = store_run(store, "steady", 0.04)
        return steady, store_run(store, "raised mid-run", 0.01, change=(30, 0.04))


@pytest.mark.parametrize("size", [(1280, 800), (1024, 768)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_screenshots(server: Server, browser: object, changed: tuple[str, str], size: tuple[int, int]) -> None:
    """A run whose step size changed mid-run says so in the table; ticked with another, their gap drift (signed:
    a linear axis) overlaid."""
    page = open_runs(browser, server, size)
    page.get_by_role("switch", name="descending").uncheck(force=True)  # oldest first: these two come last
    page.wait_for_function(f"id => ({IDS_JS})().slice(-1)[0] === id", arg=changed[1])  # the grid redrawn
    wait_idle(page)
    for run_id in changed:
        tick(page, table_ids(page).index(run_id))
    assert page.get_by_text("0.01 → 0.04 at step 30", exact=True).count() == 1  # the grid's accessible copy of the cell
    page.wait_for_selector('[data-testid="stPlotlyChart"] .js-plotly-plot')
    page.get_by_test_id("stSelectbox").filter(has_text="Metric").click()
    page.keyboard.type("gap_drift_1")  # the list is long and drawn only in part: filter it to the one
    # an option names the column and its registry label: "gap_drift_1 · G₁(k) − G₁(0)"
    page.get_by_role("option", name=overlay_option("gap_drift_1"), exact=True).click()
    wait_idle(page)
    page.wait_for_timeout(500)
    assert page.evaluate(OVERLAY_TRACES) == 2
    assert_no_exception(page)
    # the chart at the bottom of the picture, the ticked rows (the table's last) above it
    page.evaluate("""() => document.querySelector('[data-testid="stPlotlyChart"]').scrollIntoView({block: "end"})""")
    page.wait_for_timeout(500)
    save_screenshot(page, ARTIFACTS / f"runs-{size[0]}.png")
    page.close()
