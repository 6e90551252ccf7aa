"""The dashboard in a real browser: press Start, see the charts update live, no exception; screenshots.

Screenshots go to tests/browser/artifacts/ (gitignored); with BALANCE_DOCS_SCREENSHOTS=1 also to docs/screenshots/,
the ones the README shows.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ARTIFACTS, Server, launch, save_screenshot, serve, wait_idle

from balance.config import RunConfig

pytestmark = pytest.mark.browser

SIZES = [(1280, 800), (1024, 768)]
# A run long enough to watch for a few seconds: the Figure 1 analogue, small init, many steps.
LONG_RUN = "/?model.init_scale=0.001&optim.lr=0.002&steps=3000000"  # minutes: still training when stopped
TRACES = """() => document.querySelector('div.balance-chart.js-plotly-plot')._fullData.length"""
OVERLAY_TRACES = """() => document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot')._fullData.length"""
ZOOM_IN = """() => {
    const plot = document.querySelector('div.balance-chart.js-plotly-plot');
    plot.__balanceMark = true;
    return Plotly.relayout(plot, {"xaxis.range": [0, 1]});
}"""
SAME_CHART_AND_ZOOM = """() => {
    const plot = document.querySelector('div.balance-chart.js-plotly-plot');
    const range = plot._fullLayout.xaxis.range;
    return plot.__balanceMark === true && range[0] === 0 && range[1] === 1;
}"""
LAST_X = """() => {
    const plot = document.querySelector('div.balance-chart.js-plotly-plot');
    if (!plot || !plot._fullData || !plot._fullData.length) return null;
    const x = plot._fullData[0].x;  // data[0].x is Plotly's base64 array spec; _fullData holds the decoded one
    return x && x.length ? Number(x[x.length - 1]) : null;
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tmp_path_factory.mktemp("balance-home"), "streamlit.log")


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[object]:
    yield from launch()


def shoot(page: object, name: str) -> None:
    save_screenshot(page, ARTIFACTS / f"{name}-{page.viewport_size['width']}.png")


def button(page: object, name: str) -> object:
    """A button of the page (not the header's Stop of Streamlit's own status widget)."""
    return page.get_by_test_id("stMainBlockContainer").get_by_role("button", name=name, exact=True)


def click(page: object, name: str) -> None:
    """Click a button, then move the mouse away so that no tooltip hides the page in a screenshot."""
    button(page, name).click()
    page.mouse.move(page.viewport_size["width"] - 5, page.viewport_size["height"] - 5)


def assert_no_exception(page: object) -> None:
    errors = page.locator('[data-testid="stException"]')
    assert errors.count() == 0, errors.first.inner_text()


def chart_updates(page: object, count: int, timeout: float = 60.0) -> list[float]:
    """Wait until the first chart's last x value has taken ``count`` different values (it redraws live)."""
    seen: list[float] = []
    deadline = time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < deadline:
        x = page.evaluate(LAST_X)
        if x is not None and (not seen or x != seen[-1]):
            seen.append(x)
        page.wait_for_timeout(100)
    return seen


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_start_watch_stop(server: Server, browser: object, size: tuple[int, int]) -> None:
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.goto(server.url + LONG_RUN)
    wait_idle(page)
    assert_no_exception(page)
    shoot(page, "explore-idle")
    click(page, "Start")
    seen = chart_updates(page, 2)
    # the charts update in place: the same element, and a zoom (Plotly's relayout, as a drag does) survives
    page.evaluate(ZOOM_IN)
    seen += chart_updates(page, 3)[1:]
    assert len(seen) >= 4, f"the charts updated {len(seen) - 1} times: {seen}"
    assert seen == sorted(seen)
    assert page.evaluate(SAME_CHART_AND_ZOOM), "a refresh remounted the chart or reset its zoom"
    page.wait_for_selector("text=steps/s")
    assert_no_exception(page)
    assert "run=" in page.url and "model.init_scale=0.001" in page.url and "optim.lr=0.002" in page.url
    # freeze: the charts stop redrawing (so a zoom survives) while the status line and training go on
    switch = page.get_by_role("switch", name="freeze charts")
    for _ in range(3):  # the switch lives in a fragment that reruns twice a second: a click can land mid-rerun
        switch.check(force=True)
        wait_idle(page)
        page.wait_for_timeout(1000)
        if switch.is_checked():
            break
    assert switch.is_checked()
    frozen, status = page.evaluate(LAST_X), page.get_by_text("steps/s").inner_text()
    page.wait_for_timeout(2000)
    assert page.evaluate(LAST_X) == frozen
    assert page.get_by_text("steps/s").inner_text() != status
    shoot(page, "explore-running")
    page.set_viewport_size({"width": size[0], "height": 2400})
    page.wait_for_timeout(1000)
    shoot(page, "explore-running-full")
    page.set_viewport_size({"width": size[0], "height": size[1]})
    click(page, "Stop")
    page.wait_for_selector("text=stopped at step", timeout=30_000)
    wait_idle(page)
    assert_no_exception(page)
    run_url = page.url
    page.get_by_text("Share this experiment").click()
    link = page.get_by_test_id("stCode").inner_text()
    assert link.startswith(server.url) and "model.init_scale=0.001" in link and "seed=0" in link
    assert "run=" not in link
    # a reload is a new session: it reattaches to the run in the URL
    page.goto(run_url)
    wait_idle(page)
    page.wait_for_selector("div.balance-chart.js-plotly-plot", timeout=30_000)
    assert page.get_by_text("stopped at step").count() >= 1
    assert_no_exception(page)
    page.close()


def choose(page: object, label: str, option: str) -> None:
    """Pick ``option`` in the sidebar's select box labelled ``label``.

    A rerun of the page (the URL's settings being written back) can replace the open list under the pointer ("element
    was detached from the DOM", seen once in a loaded run): the pick is tried again from a closed list, at most three
    times, and must then show in the box."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    box = page.get_by_test_id("stSidebar").get_by_role("combobox", name=label, exact=True)
    for _ in range(3):
        try:
            box.click(timeout=10_000)
            box.fill(option, timeout=10_000)  # a click alone does not always open the list; typing filters it and does
            page.get_by_role("option", name=option, exact=True).click(timeout=10_000)
            break
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
            wait_idle(page)
    wait_idle(page)
    assert box.input_value() == option, box.input_value()


CHANGES = [("", "model", "mlp"), ("", "model", "cnn"), ("&optim.name=momentum", "optimiser", "gd")]


@pytest.mark.parametrize(("query", "label", "option"), CHANGES)
def test_one_start_after_a_change_starts_a_run(
    server: Server, browser: object, query: str, label: str, option: str
) -> None:
    """The first Start after a model change used to be lost (no run, no message): press it exactly once."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(server.url + "/?steps=100000" + query)
    wait_idle(page)
    choose(page, label, option)
    click(page, "Start")
    page.wait_for_function("() => location.search.includes('run=')", timeout=15_000)
    page.wait_for_selector("text=/step \\d/", timeout=30_000)  # the status line of the new run
    assert_no_exception(page)
    assert page.get_by_test_id("stAppDeployButton").count() == 0  # .streamlit/config.toml: toolbarMode viewer
    page.get_by_test_id("stMainMenu").click()
    items = page.get_by_test_id("stMainMenuItemLabel").all_inner_texts()
    assert items and not {"Rerun", "Clear cache"} & set(items), items
    page.close()


def test_csv_data_come_from_an_upload_never_from_a_link(server: Server, browser: object, tmp_path) -> None:
    """A link's data.csv_path is refused; an upload is stored by its hash under BALANCE_HOME and trained on; the
    URL names it by that hash (csv=<key>), never by a path."""
    from balance.runs.store import RunStore

    data = tmp_path / "mine.csv"
    data.write_text("x1,x2,y\n" + "".join(f"{i % 7},{i % 3},{i % 2}\n" for i in range(40)))
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(server.url + "/?model.name=mlp&data.name=csv&data.csv_path=/etc/passwd&steps=20")
    wait_idle(page)
    page.get_by_text("data.csv_path: a link cannot set this").wait_for()
    page.get_by_test_id("stSidebar").get_by_text("Data", exact=True).click()
    choose(page, "dataset", "csv")
    page.get_by_test_id("stSidebar").locator("input[type=file]").set_input_files(str(data))
    page.wait_for_function("() => location.search.includes('csv=')", timeout=15_000)
    wait_idle(page)
    click(page, "Start")
    page.wait_for_selector("text=finished", timeout=60_000)
    assert_no_exception(page)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)
    assert "data.csv_path" not in query and not any("/" in v[0] for v in query.values()), query
    with RunStore(server.home) as store:
        used = Path(store.get_run(query["run"][0]).config.data.csv_path)
    assert used == server.home / "uploads" / f"{query['csv'][0]}.csv" and used.read_bytes() == data.read_bytes()
    page.close()


def test_the_buttons_follow_every_pause_and_resume(server: Server, browser: object) -> None:
    """The buttons and the live status read the run's state separately: a run that paused between the two reads
    showed "paused" beside a "Pause" button for good (4th of 4 cycles, twice). 15 cycles, each within 5 s."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(server.url + "/?steps=10000000&data.d1=20&data.d2=10")
    wait_idle(page)
    click(page, "Start")
    page.wait_for_selector("text=steps/s", timeout=30_000)
    for _ in range(15):
        click(page, "Pause")
        button(page, "Resume").wait_for(timeout=5_000)
        click(page, "Resume")
        button(page, "Pause").wait_for(timeout=5_000)
        page.get_by_text("running", exact=True).wait_for(timeout=5_000)
    click(page, "Stop")
    page.wait_for_selector("text=stopped at step", timeout=10_000)
    assert_no_exception(page)
    page.close()


CHART_FACTS = """() => Array.from(document.querySelectorAll('div.balance-chart.js-plotly-plot')).map(gd => {
    const L = gd._fullLayout;
    const axes = Object.keys(L).filter(k => /^[xy]axis\\d*$/.test(k) && L[k]._vals && L[k].visible !== false);
    return {
        title: (L.title && L.title.text) || (gd.data[0] && gd.data[0].name) || '',
        plot: [L._size.w, L._size.h],
        axes: axes.map(k => ({
            name: k, type: L[k].type, title: (L[k].title && L[k].title.text) || '',
            ticks: L[k]._vals.filter(v => v.text !== '')
                .map(v => [L[k].type === 'log' ? Math.pow(10, v.x) : v.x, v.text]),
        })),
    };
})"""


def tick_value(label: str) -> float:
    """A tick label as the number it states: 1,000 · −0.5 · 2e−7 · 10<sup>−5</sup> · 2×10<sup>−7</sup>."""
    text = label.replace("−", "-").replace(",", "").replace("\u2009", "")
    text = re.sub(r"^(.*?)[×x]10<sup>(.+)</sup>$", r"\1e\2", text)
    text = re.sub(r"^10<sup>(.+)</sup>$", r"1e\1", text)
    return float(text)


def assert_readable(facts: list[dict], whole_steps: bool = False) -> None:
    """Every chart has a plot area of at least 150 x 150 px and every tick label states its tick's value."""
    assert facts
    for chart in facts:
        w, h = chart["plot"]
        assert w >= 150 and h >= 150, (chart["title"], w, h)
        for axis in chart["axes"]:
            for value, label in axis["ticks"]:
                stated = tick_value(label)
                assert stated == pytest.approx(value, rel=1e-6, abs=1e-12), (chart["title"], axis["name"], label)
                if whole_steps and axis["title"] == "step":
                    assert value == round(value), (chart["title"], axis["name"], label)


NAV_VISIBLE = """() => Array.from(document.querySelectorAll('[data-testid="stTopNav"] a')).map(a => {
    const r = a.getBoundingClientRect();
    return [a.textContent.trim(), a.contains(document.elementFromPoint(r.right - 2, r.top + r.height / 2))];
})"""
READABLE = [
    "model.init_scale=0.3&steps=2",  # ticks at whole steps
    "model.name=mlp&data.name=teacher&model.depth=6&model.width=12&steps=40",  # 6 layers: long legends
    "model.name=mlp&data.name=teacher&model.activation=tanh&optim.lr=0.05&steps=300",  # ratios across 1, no law
]


@pytest.mark.parametrize("query", READABLE)
def test_every_chart_is_readable_at_1024x768(server: Server, browser: object, query: str) -> None:
    """A legend at the side squeezed the per-neuron chart to about 60 px; minor log labels read "2" for 0.2 and for
    2; a two-step run had ticks at 0.5 and 1.5. Measured in the browser on the charts as drawn."""
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    page.goto(f"{server.url}/?{query}")
    wait_idle(page)
    click(page, "Start")
    page.wait_for_selector("text=finished", timeout=60_000)
    wait_idle(page)
    page.wait_for_function("() => document.querySelectorAll('div.balance-chart.js-plotly-plot').length >= 5")
    page.wait_for_timeout(500)
    facts = page.evaluate(CHART_FACTS)
    assert {"per-neuron balance", "squared norms", "loss"} <= {f["title"] for f in facts}
    assert_readable(facts, whole_steps=query.endswith("steps=2"))
    assert all(visible for _, visible in page.evaluate(NAV_VISIBLE)), page.evaluate(NAV_VISIBLE)  # About was cut
    captions = page.get_by_test_id("stCaptionContainer")
    assert page.locator('[data-testid="stCaptionContainer"] .katex').count() >= 5  # formulas drawn, not ||W_h||^2
    assert not [t for t in captions.all_inner_texts() if "$" in t or "||" in t or "\\" in t]
    assert_no_exception(page)
    page.close()


HOSTILE = (
    "![b](http://beacon.invalid/1.png) <img src=http://beacon.invalid/2.png> [l](http://beacon.invalid/3) "
    "www.beacon.invalid :smile: $x^2$ **bold** `code`"
)


def test_run_messages_and_link_values_are_shown_as_text(server: Server, browser: object) -> None:
    """An imported run's message (and a link's value) is text: nothing in it is fetched, linked or formatted."""
    from balance.runs.store import RunStore

    with RunStore(server.home) as store:
        run_id = store.create_run(RunConfig(), [], name="imported")
        store.set_status(run_id, "failed", 0, HOSTILE)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{server.url}/?run={run_id}")
    wait_idle(page)
    alert = page.get_by_test_id("stAlert").filter(has_text="beacon")
    alert.first.wait_for()
    assert HOSTILE in alert.first.inner_text().replace("\u200b", "")
    assert alert.first.locator("img, a, strong, code, .katex").count() == 0, alert.first.inner_html()
    page.goto(f"{server.url}/?run=" + urllib.parse.quote("![b](http://beacon.invalid/4.png)"))
    wait_idle(page)
    alert.first.wait_for()
    assert "![b](http://beacon.invalid/4.png)" in alert.first.inner_text().replace("\u200b", "")
    assert alert.first.locator("img, a").count() == 0, alert.first.inner_html()
    assert [u for u in requests if "beacon" in (urllib.parse.urlsplit(u).hostname or "")] == []
    assert_no_exception(page)
    page.close()


@pytest.fixture(scope="module")
def stored_runs(server: Server) -> list[str]:
    """Two finished runs of one config at two step sizes, written straight into the server's store."""
    from balance import run
    from balance.config.presets import preset
    from balance.runs.store import RunStore

    ids = []
    with RunStore(server.home) as store:
        for lr in (0.01, 0.02):
            config = preset("fig1-small").replace(**{"optim.lr": lr, "steps": 300, "data.d1": 30, "data.d2": 10})
            metrics, status = run(config)
            run_id = store.create_run(config, list(metrics.columns), name=f"fig1 small, lr {lr}")
            store.claim_run(run_id, list(metrics.columns))
            store.append_rows(run_id, metrics.to_numpy())
            store.set_status(run_id, status.state, status.step, status.message)
            ids.append(run_id)
    return ids


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_other_pages(server: Server, browser: object, stored_runs: list[str], size: tuple[int, int]) -> None:
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.goto(server.url + "/runs")
    wait_idle(page)
    page.wait_for_selector('[data-testid="stDataFrame"]')
    # pick the two stored runs in the multiselect: their loss curves overlay
    for name in ("lr 0.01", "lr 0.02"):
        page.get_by_test_id("stMultiSelect").last.click()
        page.keyboard.type(name)  # filters the list: the other tests of this module stored many more runs
        page.get_by_role("option", name=re.compile(name)).click()
    page.keyboard.press("Escape")
    page.wait_for_selector('[data-testid="stPlotlyChart"] .js-plotly-plot')  # a plain chart: it never changes
    wait_idle(page)
    assert page.evaluate(OVERLAY_TRACES) == 2
    assert_no_exception(page)
    shoot(page, "runs-overlay")  # docs/screenshots/runs-*.png come from test_runs_page.py
    page.goto(server.url + "/about")
    wait_idle(page)
    assert_no_exception(page)
    shoot(page, "about")
    page.goto(server.url + "/?optim.lr=10&steps=1000")
    wait_idle(page)
    click(page, "Start")
    page.wait_for_selector("text=Diverged at step", timeout=60_000)
    page.wait_for_selector("div.balance-chart.js-plotly-plot", timeout=30_000)
    wait_idle(page)
    assert_no_exception(page)
    shoot(page, "explore-diverged")
    page.goto(server.url + "/?optim.lr=abc&model.depth=999")
    wait_idle(page)
    page.wait_for_selector("text=could not be used")
    assert page.get_by_text("optim.lr = 'abc'").count() == 1
    assert_no_exception(page)
    shoot(page, "explore-bad-link")
    page.close()
