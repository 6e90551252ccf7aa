"""Fixtures for the browser tests: the app's server and a headless system Chromium (see harness.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import ARTIFACTS, CHROMIUM, LAUNCH_ARGS, Server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not CHROMIUM.exists():
        pytest.skip("browser tests need /usr/bin/chromium (apt-get install chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    home = tmp_path_factory.mktemp("balance-home")
    s = Server(home, ARTIFACTS / "streamlit.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield b
        b.close()
