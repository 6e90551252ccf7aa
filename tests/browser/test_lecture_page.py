"""The Lecture page in a real browser: walk every step with the keyboard, screenshot each, no exception; the
handout opens from disk with the network cut off and draws every chart and formula.

Screenshots go to the test's tmp dir and tests/browser/artifacts/; with BALANCE_DOCS_SCREENSHOTS=1 also to
docs/screenshots/lecture-step-N-1024.png (and lecture-step-N-1280.png for the wider pass).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ARTIFACTS, Server, launch, save_screenshot, serve, wait_idle

from balance.lecture import steps as lecture

pytestmark = pytest.mark.browser

N = len(lecture.STEPS)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tmp_path_factory.mktemp("balance-home"), "streamlit-lecture.log")


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[object]:
    yield from launch()


def shoot(page: object, tmp: Path, name: str) -> Path:
    path = save_screenshot(page, tmp / f"{name}-{page.viewport_size['width']}.png")
    shutil.copy(path, ARTIFACTS / path.name)
    return path


def assert_no_exception(page: object) -> None:
    errors = page.locator('[data-testid="stException"]')
    assert errors.count() == 0, errors.first.inner_text()


def wait_step(page: object, n: int, timeout: float = 60_000) -> None:
    """Step n is drawn: its title is there, the URL says so, the script has finished and its chart has drawn."""
    title = f"{n}. {lecture.STEPS[n - 1].title}"
    page.get_by_role("heading", name=title).wait_for(timeout=timeout)
    page.wait_for_url(re.compile(rf"step={n}(&|$)"), timeout=timeout)
    wait_idle(page, timeout)
    if lecture.STEPS[n - 1].figure != "summary":
        page.wait_for_selector('[data-testid="stPlotlyChart"] .js-plotly-plot .main-svg', timeout=timeout)


def open_step(browser: object, server: Server, n: int, size: tuple[int, int]) -> object:
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.goto(f"{server.url}/lecture?step={n}")
    wait_step(page, n)
    return page


def test_walk_every_step_with_the_keyboard(server: Server, browser: object, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{server.url}/lecture?step=1")
    wait_step(page, 1)
    assert_no_exception(page)
    assert (
        page.locator('[data-testid="stSidebar"]').count() == 0
        or not page.locator('[data-testid="stSidebar"]').is_visible()
    )
    seconds = {}
    for n in range(1, N + 1):
        if n > 1:
            start = time.monotonic()
            page.keyboard.press("ArrowRight")
            wait_step(page, n)
            seconds[n] = time.monotonic() - start
        assert_no_exception(page)
        assert page.get_by_text(lecture.STEPS[n - 1].title).count() >= 1
        shoot(page, tmp_path, f"lecture-step-{n}")
    print("seconds to open each step with the arrow key:", {k: round(v, 2) for k, v in seconds.items()})
    with page.expect_download(timeout=120_000) as download:  # the handout, from the summary step
        page.get_by_role("button", name="Handout (HTML, works offline)").click()
    handout = Path(download.value.path()).read_text(encoding="utf-8")
    assert len(handout) > 1_000_000 and handout.count("<math") == N
    page.keyboard.press("ArrowRight")  # the last step stays the last
    page.wait_for_timeout(500)
    wait_idle(page)
    assert f"step={N}" in page.url
    for n in range(N - 1, 0, -1):
        page.keyboard.press("ArrowLeft")
        wait_step(page, n)
    assert_no_exception(page)
    elsewhere = [u for u in requests if not u.startswith((server.url, "data:", "blob:"))]
    assert elsewhere == []  # nothing from a CDN or any other host (app.py's icon is an emoji: drawn locally)


def test_wide_screen_and_slider(server: Server, browser: object, tmp_path: Path) -> None:
    page = open_step(browser, server, 1, (1280, 800))
    slider = page.get_by_test_id("stSlider").get_by_role("slider")
    slider.focus()
    page.keyboard.press("End")  # c = 10
    page.get_by_text("change at c = 10").wait_for(timeout=30_000)
    wait_idle(page)
    assert_no_exception(page)
    shoot(page, tmp_path, "lecture-step-1-slider")
    page.goto(f"{server.url}/lecture?step=5")
    wait_step(page, 5)
    shoot(page, tmp_path, "lecture-step-5")


def test_bad_step_in_the_url_opens_step_one(server: Server, browser: object) -> None:
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    page.goto(f"{server.url}/lecture?step=99")
    wait_step(page, 1)
    assert page.get_by_text("no such step").count() == 1
    assert_no_exception(page)


def test_handout_opens_offline(browser: object, tmp_path: Path) -> None:
    from balance.lecture.handout import handout_html
    from balance.runs.store import RunStore

    path = tmp_path / "handout.html"
    with RunStore(tmp_path / "home") as store:
        path.write_text(handout_html(store), encoding="utf-8")
    context = browser.new_context(offline=True, viewport={"width": 1024, "height": 768})
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri())
    page.wait_for_function(
        f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {2 * (N - 1)}", timeout=60_000
    )
    assert [u for u in requests if not u.startswith(("file:", "data:", "blob:"))] == []
    assert page.locator("math").count() == N
    page.screenshot(path=str(ARTIFACTS / "lecture-handout-1024.png"))
    rail = page.locator("#step-1 .slider-rail-touch-rect")  # step 1's c, a Plotly slider here
    rail.scroll_into_view_if_needed()
    box = rail.bounding_box()
    page.mouse.click(box["x"] + box["width"] - 3, box["y"] + box["height"] / 2)
    page.wait_for_function("document.querySelector('#step-1').textContent.includes('change at c = 10:')")
    context.close()
