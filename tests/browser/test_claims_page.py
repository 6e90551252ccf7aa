"""The Claims page in a real browser: cold (an empty store), Run the experiments trains every claim (its time is
written to artifacts/claims-cold-seconds.txt); one claim opens, shows its verdict and figure, and its main run
opens in Explore; screenshots.

The page runs the full budget, as users get it. Screenshots go to tests/browser/artifacts/ (gitignored); with
BALANCE_DOCS_SCREENSHOTS=1 also to docs/screenshots/claims-*.png.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from harness import ARTIFACTS, Server, launch, save_screenshot, serve, wait_idle

from balance.claims import CLAIMS

pytestmark = pytest.mark.browser

# How long the cold run takes is a benchmark's number (benchmarks/run_all.py, issue 18's table: <= 20 s target), not
# a pass mark here: on a shared 2-core machine it varied 52-64 s with the same code. The test writes it down.
DONE = "text=Trained"  # the status box once every claim has its runs


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tmp_path_factory.mktemp("balance-home"), "streamlit-claims.log")


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[object]:
    yield from launch()


def shoot(page: object, name: str) -> None:
    save_screenshot(page, ARTIFACTS / f"{name}-{page.viewport_size['width']}.png")


def assert_no_exception(page: object) -> None:
    errors = page.locator('[data-testid="stException"]')
    assert errors.count() == 0, errors.first.inner_text()


def test_cold_page_runs_every_claim(server: Server, browser: object) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(server.url + "/claims")
    wait_idle(page)
    assert_no_exception(page)
    shoot(page, "claims-cold")
    began = time.monotonic()
    page.get_by_role("button", name="Run the experiments").click()
    page.wait_for_selector(DONE, timeout=180_000)
    took = time.monotonic() - began
    (ARTIFACTS / "claims-cold-seconds.txt").write_text(f"{took:.1f}\n")
    wait_idle(page)
    assert_no_exception(page)
    assert page.get_by_test_id("stExpander").count() == len(CLAIMS) + 1  # the status box and every claim
    page.close()


@pytest.mark.parametrize("size", [(1280, 800), (1024, 768)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_open_one_claim(server: Server, browser: object, size: tuple[int, int]) -> None:
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.goto(server.url + "/claims")
    wait_idle(page)
    run = page.get_by_role("button", name="Run the experiments")
    if run.count():  # this test alone: train first
        run.click()
        page.wait_for_selector(DONE, timeout=180_000)
        page.goto(server.url + "/claims")
        wait_idle(page)
    assert page.get_by_test_id("stExpander").count() == len(CLAIMS)  # the claims, nothing left to train
    shoot(page, "claims")
    summary = page.locator("summary").filter(has_text="3. Discrete steps")  # not the status box's progress bar
    claim = page.get_by_test_id("stExpander").filter(has=summary)
    summary.click()
    chart = claim.get_by_test_id("stPlotlyChart")
    try:
        chart.wait_for(state="visible", timeout=30_000)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "claims-failed.png"), full_page=True)
        raise
    wait_idle(page)
    assert claim.get_by_text("Verdict:").count() == 1
    assert claim.get_by_text("Tolerances:").count() == 1
    claim.get_by_text("Verdict:").evaluate("e => e.scrollIntoView({block: 'start'})")  # verdict and figure
    page.mouse.move(size[0] // 2, size[1] // 2)
    page.mouse.wheel(0, -120)  # clear of the sticky navigation bar
    page.wait_for_timeout(500)
    shoot(page, "claims-open")
    link = claim.get_by_role("link", name="Open in Explore")
    href = link.get_attribute("href")
    assert href.startswith(server.url + "/?") and "run=" in href and "data.d1=20" in href
    assert_no_exception(page)
    # the link opens Explore with that run's exact configuration and its charts
    explore = browser.new_page(viewport={"width": size[0], "height": size[1]})
    explore.goto(href)
    wait_idle(explore)
    explore.wait_for_selector(".js-plotly-plot", timeout=60_000)  # Explore's live charts (a component)
    explore.get_by_text("finished").first.wait_for(timeout=30_000)
    assert "data.d1=20" in explore.url and "run=" in explore.url
    assert_no_exception(explore)
    explore.close()
    page.close()
