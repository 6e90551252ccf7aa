"""The Lecture page in a real browser, as a room sees it: every step fits 1024 x 768 with projector-grade figures
(measured as drawn), the figure grows on larger screens, a clicker walks the lecture from any focus, the presenter
view follows live, students' short links open Explore, the figures save for slides as SVG and PNG, and the handout
opens from disk with the network cut off.

Screenshots go to the test's tmp dir and tests/browser/artifacts/; with BALANCE_DOCS_SCREENSHOTS=1 also to
docs/screenshots/lecture-step-N-1024.png (and the 1280 / 1920 ones, the presenter view).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ARTIFACTS, Server, launch, save_screenshot, serve, wait_idle

from balance.lecture import steps as lecture

pytestmark = pytest.mark.browser

N = len(lecture.STEPS)
FIGURE = "div.balance-lecture-figure"

# what the room reads, as drawn: the smallest tick label, title (figure, panel and axis titles), legend entry; the
# thinnest line and the palest trace; and how far the page runs past the window
MEASURE = (
    """() => {
  const q = (s) => Array.from(document.querySelectorAll(s));
  const px = (els) => els.map((e) => parseFloat(getComputedStyle(e).fontSize));
  const least = (a) => (a.length ? Math.min(...a) : null);
  const chart = '.balance-lecture-figure ';
  const main = document.querySelector('[data-testid="stMain"]');
  const lines = q(chart + '.scatterlayer .js-line').filter((e) => e.getAttribute('d'));
  return {
    overflow: main.scrollHeight - main.clientHeight,
    ticks: least(px(q(chart + '.xtick text, ' + chart + '.ytick text'))),
    titles: least(px(q(chart + 'text.annotation-text, ' + chart + 'text.gtitle, ' + chart + 'text[class$="title"]'))),
    legend: least(px(q(chart + '.legendtext'))),
    width: least(lines.map((e) => parseFloat(getComputedStyle(e).strokeWidth))),
    opacity: least(q(chart + '.scatterlayer .trace').map((e) => parseFloat(getComputedStyle(e).opacity))),
    height: (document.querySelector('"""
    + FIGURE
    + """') || {}).offsetHeight || 0,
  };
}"""
)


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


def wait_step(page: object, n: int, timeout: float = 120_000) -> None:
    """Step n is drawn: its title is there, the URL says so, the script has finished, its figure is fitted."""
    title = f"{n}. {lecture.STEPS[n - 1].title}"
    page.get_by_role("heading", name=title).wait_for(timeout=timeout)
    page.wait_for_url(re.compile(rf"step={n}(&|$)"), timeout=timeout)
    wait_idle(page, timeout)
    if lecture.STEPS[n - 1].figure != "summary":
        page.wait_for_selector(f'{FIGURE}[data-fitted="1"] .main-svg', timeout=timeout)
        page.wait_for_timeout(300)  # a last re-fit after the footer drew


def open_step(browser: object, server: Server, n: int, size: tuple[int, int], query: str = "") -> object:
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.goto(f"{server.url}/lecture?step={n}{query}")
    wait_step(page, n)
    return page


def test_every_step_fits_1024x768_with_projector_grade_figures(server: Server, browser: object, tmp_path: Path) -> None:
    """Issue 15.1 and 15.2: at 1024 x 768 no step scrolls (text, formula, figure, controls), and every figure is
    drawn with ticks >= 18 px, titles and legends >= 20 px, lines >= 3 px at full opacity."""
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    measured = {}
    for n in range(1, N + 1):
        page.goto(f"{server.url}/lecture?step={n}")
        wait_step(page, n)
        assert_no_exception(page)
        m = page.evaluate(MEASURE)
        measured[n] = m
        assert m["overflow"] <= 0, (n, m)
        if lecture.STEPS[n - 1].figure == "summary":
            continue
        assert m["ticks"] >= 18 and m["titles"] >= 20 and m["legend"] >= 20, (n, m)
        assert m["width"] >= 3 and m["opacity"] == 1, (n, m)
        for name in ("New seed", "QR"):  # the controls are on the screen, not below it
            box = page.get_by_role("button", name=name).bounding_box()
            assert box is not None and box["y"] + box["height"] <= 768, (n, name, box)
        shoot(page, tmp_path, f"lecture-step-{n}")
    print("measured at 1024 x 768:", measured)


def test_the_figure_grows_on_larger_screens(server: Server, browser: object, tmp_path: Path) -> None:
    heights = {}
    for size in ((1024, 768), (1280, 800), (1920, 1080)):
        page = open_step(browser, server, 3, size)
        m = page.evaluate(MEASURE)
        assert m["overflow"] <= 0, (size, m)
        heights[size] = m["height"]
        if size != (1024, 768):
            shoot(page, tmp_path, "lecture-step-3")
        page.close()
    print("figure heights:", heights)
    assert heights[(1024, 768)] < heights[(1280, 800)] < heights[(1920, 1080)]
    assert heights[(1920, 1080)] - heights[(1024, 768)] > 200


def press(page: object, key: str, n: int) -> None:
    page.keyboard.press(key)
    wait_step(page, n)


def test_a_clicker_walks_the_lecture_from_any_focus(server: Server, browser: object) -> None:
    """Issue 15.4: PageDown / PageUp (what clickers send), Space, Enter, Backspace, arrows, Home / End, from the
    page, a focused button and a touched slider; the slider keeps its arrows only while it is dragged; F goes full
    screen."""
    page = open_step(browser, server, 1, (1024, 768))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    # the slider: dragged, it takes the arrows; let go (still focused), the arrows move the step
    thumb = page.get_by_test_id("stSlider").get_by_role("slider")
    box = thumb.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.keyboard.press("ArrowRight")
    page.mouse.up()
    page.wait_for_function("() => /c=/.test(location.search)", timeout=30_000)
    wait_idle(page)
    assert "step=1" in page.url
    thumb.focus()
    press(page, "ArrowRight", 2)  # the slider has focus, yet the step moves
    for n in range(3, N + 1):  # a clicker: PageDown all the way
        press(page, "PageDown", n)
        assert_no_exception(page)
    page.keyboard.press("PageDown")  # the last step stays the last
    page.wait_for_timeout(500)
    wait_idle(page)
    assert f"step={N}" in page.url
    press(page, "PageUp", N - 1)
    press(page, "Backspace", N - 2)
    press(page, "Home", 1)
    press(page, "End", N)
    press(page, "ArrowLeft", N - 1)
    page.get_by_role("button", name="New seed").focus()  # a focused button: Space and Enter still mean next
    press(page, "Space", N)
    press(page, "Home", 1)
    press(page, "Enter", 2)
    page.keyboard.press("f")
    page.wait_for_function("() => document.fullscreenElement !== null", timeout=10_000)
    assert not page.get_by_test_id("stHeader").is_visible()  # full screen: no app chrome
    page.keyboard.press("f")
    page.wait_for_function("() => document.fullscreenElement === null", timeout=10_000)
    assert_no_exception(page)
    elsewhere = [u for u in requests if not u.startswith((server.url, "data:", "blob:"))]
    assert elsewhere == []


def test_presenter_view_follows_the_audience_window_with_notes_and_a_timer(
    server: Server, browser: object, tmp_path: Path
) -> None:
    """Issue 15.5: a second window with the step's notes, following live; its keys move the audience window; the
    audience window shows no notes and no Streamlit menu."""
    context = browser.new_context(viewport={"width": 1024, "height": 768})
    audience = context.new_page()
    audience.goto(f"{server.url}/lecture?step=2")
    wait_step(audience, 2)
    presenter = context.new_page()
    presenter.goto(f"{server.url}/presenter")
    presenter.wait_for_selector('.presenter[data-following="1"][data-step="2"]', timeout=60_000)
    assert lecture.STEPS[1].notes[:60] in presenter.locator(".presenter .notes").inner_text()
    assert lecture.STEPS[2].title in presenter.locator(".presenter .next").inner_text()
    first = presenter.locator(".presenter .total").inner_text()
    presenter.wait_for_timeout(1300)
    assert presenter.locator(".presenter .total").inner_text() != first  # the timer runs
    audience.keyboard.press("PageDown")
    wait_step(audience, 3)
    presenter.wait_for_selector('.presenter[data-step="3"]', timeout=30_000)
    assert lecture.STEPS[2].notes[:60] in presenter.locator(".presenter .notes").inner_text()
    presenter.keyboard.press("PageDown")  # the presenter's clicker moves the audience window
    wait_step(audience, 4)
    presenter.wait_for_selector('.presenter[data-step="4"]', timeout=30_000)
    shoot(presenter, tmp_path, "lecture-presenter")
    assert audience.get_by_text(lecture.STEPS[3].notes[:40]).count() == 0
    assert not audience.get_by_test_id("stMainMenu").is_visible()
    context.close()


def test_students_short_links_qr_codes_and_the_seed_in_the_url(server: Server, browser: object) -> None:
    """Issue 15.6: a QR code on the title step; a short link opens the demo in Explore with only its control and
    enough steps; a reseeded demo's seed is in the URL and survives a reload."""
    page = open_step(browser, server, 1, (1024, 768))
    qr = page.get_by_test_id("stImage").first
    assert qr.is_visible() and qr.bounding_box()["width"] >= 100
    assert page.get_by_text(re.compile(r"lecture\?demo=1")).count() >= 1
    page.goto(f"{server.url}/lecture?demo=1")
    page.wait_for_url(re.compile(r"/\?|/$|explore"), timeout=60_000)
    wait_idle(page, 60_000)
    assert_no_exception(page)
    link = lecture.STEPS[0].links[0]
    assert f"steps={link.config.steps}" in page.url and "show=model.activation" in page.url
    assert link.config.steps >= 1000
    page.goto(f"{server.url}/lecture?step=5")
    wait_step(page, 5)
    page.get_by_role("button", name="New seed").click()
    page.wait_for_url(re.compile(r"seed=1"), timeout=120_000)
    wait_step(page, 5)
    page.reload()
    wait_step(page, 5)
    assert "seed=1" in page.url and page.get_by_text("seed 1", exact=True).count() == 1


def test_figures_save_for_slides_as_svg_and_png_and_the_svg_opens(
    server: Server, browser: object, tmp_path: Path
) -> None:
    """Issue 15.7 from the page: the modebar saves lecture-3-layer-gaps.svg and .png, and the SVG renders."""
    page = open_step(browser, server, 3, (1280, 800))
    page.hover(FIGURE)
    with page.expect_download(timeout=60_000) as svg:
        page.locator(f'{FIGURE} .modebar-btn[data-title="Download as SVG (for slides)"]').click()
    assert svg.value.suggested_filename == "lecture-3-layer-gaps.svg"
    page.hover(FIGURE)
    with page.expect_download(timeout=60_000) as png:
        page.locator(f'{FIGURE} .modebar-btn[data-title^="Download plot"]').first.click()
    assert png.value.suggested_filename == "lecture-3-layer-gaps.png"
    path = tmp_path / "lecture-3-layer-gaps.svg"
    svg.value.save_as(path)
    viewer = browser.new_page()
    viewer.goto(path.as_uri())
    drawn = viewer.locator("svg").first.bounding_box()
    assert drawn["width"] > 500 and viewer.locator("text").count() > 10  # axes, titles, legend drawn
    assert path.read_text(encoding="utf-8").startswith("<svg")
    viewer.screenshot(path=str(ARTIFACTS / "lecture-exported-svg.png"))


def test_bad_step_in_the_url_opens_step_one(server: Server, browser: object) -> None:
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    page.goto(f"{server.url}/lecture?step=99")
    wait_step(page, 1)
    assert page.get_by_text("no such step").count() == 1
    assert_no_exception(page)


def test_handout_opens_offline(browser: object, tmp_path: Path) -> None:
    """Issue 15.8: no request at all with the network cut off; every chart and formula drawn; the stamp is there."""
    from balance.lecture.handout import handout_html
    from balance.runs.stamp import code_hash
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
    assert page.locator("math").count() == sum(len(s.formulas) for s in lecture.STEPS)
    assert page.get_by_text(f"code {code_hash()}").count() >= 1 and page.locator("pre").count() == 2
    ticks = page.evaluate(
        "Math.min(...Array.from(document.querySelectorAll('.xtick text, .ytick text'))"
        ".map(e => parseFloat(getComputedStyle(e).fontSize)))"
    )
    assert ticks >= 18  # projector-grade in the handout too
    page.screenshot(path=str(ARTIFACTS / "lecture-handout-1024.png"))
    rail = page.locator("#step-1 .slider-rail-touch-rect")  # step 1's c, a Plotly slider here
    rail.scroll_into_view_if_needed()
    box = rail.bounding_box()
    page.mouse.click(box["x"] + box["width"] - 3, box["y"] + box["height"] / 2)
    page.wait_for_function("document.querySelector('#step-1').textContent.includes('= 10: ReLU')")
    context.close()
