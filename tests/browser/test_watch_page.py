"""A training loop of one's own, watched by balance.watch, shown live by the dashboard: the transformer example
runs as its own process (as `python examples/transformer_block.py` does), Explore attaches to it by `?run=<id>`
while it trains and draws its laws, measured against predicted; the Runs page lists it as watched. Screenshots in
tests/browser/artifacts/ (and docs/screenshots/ with BALANCE_DOCS_SCREENSHOTS=1)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ARTIFACTS, ROOT, Server, launch, save_screenshot, serve, wait_idle

pytestmark = pytest.mark.browser

CHART_POINTS = """() => {
    const charts = Array.from(document.querySelectorAll('.js-plotly-plot'));
    return charts.length >= 4 && charts.every(c => c._fullData && c._fullData.length > 0)
        && charts.some(c => c._fullData.some(t => (t.name || '').includes('predicted') && t.x.length > 20));
}"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("watch-home")


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    yield from serve(home, "watch-server.log")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    yield from launch()


def test_a_watched_transformer_run_shows_live_on_explore_and_as_watched_on_runs(
    server: Server, browser: object, home: Path
) -> None:
    from balance.runs.store import RunStore

    log = (ARTIFACTS / "watch-example.log").open("w")
    env = {**os.environ, "BALANCE_HOME": str(home)}
    command = [sys.executable, "examples/transformer_block.py", "--steps", "3000", "--every", "5"]
    example = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        run_id, deadline = "", time.monotonic() + 60
        while not run_id and time.monotonic() < deadline:
            with RunStore(home, read_only=True) as store:
                runs = store.list_runs()
            run_id = runs["id"].iloc[0] if len(runs) else ""
            time.sleep(0.2)
        assert run_id, "the example did not create its run"
        page = browser.new_page(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
        page.goto(f"{server.url}/?run={run_id}")
        wait_idle(page)
        try:
            page.wait_for_function(CHART_POINTS, timeout=60_000)
        finally:
            page.screenshot(path=str(ARTIFACTS / "explore-watched-last.png"))
        assert page.locator('[data-testid="stException"]').count() == 0
        status = page.get_by_text("watched: Block with SGD").first
        assert status.is_visible()
        assert example.poll() is None, "the charts should be drawn while the loop still trains"
        save_screenshot(page, ARTIFACTS / "explore-watched-transformer-1280.png")
        page.set_viewport_size({"width": 1280, "height": 2200})
        save_screenshot(page, ARTIFACTS / "explore-watched-transformer-full-1280.png")
        page.goto(f"{server.url}/runs")
        wait_idle(page)
        page.get_by_text("Block (watched)").first.wait_for(state="attached", timeout=30_000)  # a canvas grid
        page.set_viewport_size({"width": 1280, "height": 800})
        save_screenshot(page, ARTIFACTS / "runs-watched-1280.png")
        page.close()
    finally:
        if example.poll() is None:
            example.terminate()
            example.wait(10)
        log.close()
