"""Browser-test helpers: a `streamlit run app.py` on loopback, Chromium launch flags, Streamlit waits.

(Not a conftest.py: the other tests import `conftest` by name, and a second one on sys.path would shadow theirs.)

The system Chromium (never `playwright install`), launched headless with the flags that work as root and offline.
Wait for Streamlit, not for the page load: the app root's connection state, then its script state. The tests are
skipped (not failed) only where /usr/bin/chromium is absent; `make test` installs it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DOCS = ROOT / "docs" / "screenshots"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A Streamlit server for app.py, stopped by its own pid."""

    def __init__(self, home: Path, log: Path) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "BALANCE_HOME": str(home)}
        command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
        command += ["--server.address", "127.0.0.1", "--server.port", str(self.port)]
        command += ["--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
        self.log = log.open("w")
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=1) as r:
                    if r.read() == b"ok":
                        return
            except OSError:
                time.sleep(0.2)
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"streamlit did not start; see {log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def wait_idle(page: object, timeout: float = 30_000) -> None:
    """Connected to the server and no script running."""
    page.wait_for_selector('[data-testid="stApp"][data-test-connection-state="CONNECTED"]', timeout=timeout)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout)


def serve(home: Path, log_name: str) -> Iterator[Server]:
    """The body of a module's ``server`` fixture: skip without Chromium, else a server on ``home`` until done."""
    import pytest

    if not CHROMIUM.exists():
        pytest.skip("browser tests need /usr/bin/chromium (apt-get install chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    server = Server(home, ARTIFACTS / log_name)
    try:
        yield server
    finally:
        server.stop()


def launch() -> Iterator[object]:
    """The body of a module's ``browser`` fixture: headless system Chromium until done."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def save_screenshot(page: object, path: Path) -> Path:
    """Screenshot with the mouse out of the way (no tooltip); with BALANCE_DOCS_SCREENSHOTS=1 also into
    docs/screenshots/ under the same name (the README shows them)."""
    import shutil

    w, h = page.viewport_size["width"], page.viewport_size["height"]
    page.mouse.move(w - 5, h - 5)
    page.screenshot(path=str(path))
    if os.environ.get("BALANCE_DOCS_SCREENSHOTS"):
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS / path.name)
    return path
