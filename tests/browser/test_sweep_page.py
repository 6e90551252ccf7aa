"""The Sweeps page in headless Chromium: heat maps drawn, and a click on a cell opens that run in Explore.

AppTest cannot click a Plotly chart; this drives the real chart. A small MF sweep is stored first (in process).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from harness import ARTIFACTS, CHROMIUM, LAUNCH_ARGS, Server, save_screenshot, wait_idle

from balance.runs.store import RunStore
from balance.runs.sweep import SweepSpec, run_sweep

pytestmark = pytest.mark.browser

SPEC = """
name = "browser"
[base]
steps = 60
log_every = 10
[base.data]
d1 = 8
d2 = 6
rank = 2
[grid]
"optim.lr" = [0.01, 0.05, 40.0]
"model.init_scale" = [0.1, 0.5]
"""


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, list[str]]]:
    if not CHROMIUM.exists():
        pytest.skip("browser tests need /usr/bin/chromium (apt-get install chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    home = tmp_path_factory.mktemp("sweep-home")
    with RunStore(home) as store:
        result = run_sweep(SweepSpec.from_toml(SPEC), store, workers=1)
    server = Server(home, ARTIFACTS / "streamlit-sweep.log")
    yield server, result.run_ids
    server.stop()


def shoot(page: object, name: str) -> None:
    save_screenshot(page, ARTIFACTS / name)


def test_clicking_a_cell_opens_its_run_in_explore(stored: tuple[Server, list[str]]) -> None:
    from playwright.sync_api import sync_playwright

    server, run_ids = stored
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.goto(f"{server.url}/sweep")
        wait_idle(page, 60_000)
        page.wait_for_selector(".js-plotly-plot .scatterlayer .point", timeout=60_000)
        assert page.locator('[data-testid="stException"]').count() == 0
        assert page.locator(".js-plotly-plot").count() == 6  # 5 heat maps (|drift|, signed drift, ...) and the fit
        time.sleep(1)  # let Plotly finish laying out before the picture and the click
        page.screenshot(path=str(ARTIFACTS / "sweeps-full-1280.png"), full_page=True)
        for width, height in ((1024, 768), (1280, 800)):  # the README's sizes; the click below at 1280 x 800
            page.set_viewport_size({"width": width, "height": height})
            time.sleep(1)
            shoot(page, f"sweeps-{width}.png")
        # Cells run row by row from the smallest init scale: point 4 is (lr 0.05, init scale 0.5), member index 3.
        page.locator(".js-plotly-plot").first.locator(".scatterlayer .point").nth(4).click(force=True)
        page.wait_for_url(f"**run={run_ids[3]}**", timeout=60_000)
        wait_idle(page, 60_000)
        assert "optim.lr=0.05" in page.url and "model.init_scale=0.5" in page.url
        assert page.get_by_text("Watch gradient descent balance the layers").count() == 1
        browser.close()
