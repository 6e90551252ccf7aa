"""The lecture for slides and print: every figure as SVG and PNG (2x) named after its step, and a PDF of the whole
lecture, one page a step. Offline: kaleido draws the figures with the system's Chromium, and Chromium prints the PDF.

Files: ``lecture-3-layer-gaps.svg`` and ``lecture-3-layer-gaps.png`` (``Step.figure_name``), at a slide's 16:9 size.
"""

from __future__ import annotations

import base64
import html
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import plotly.graph_objects as go

from balance.lecture import steps as lecture
from balance.lecture.handout import C_SHOWN, colophon, inline_markdown, mathml
from balance.runs.store import RunStore

WIDTH, HEIGHT = 1280, 640  # px of an exported figure (the PNG has twice as many each way)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
CHROMIUM_ENV = "BALANCE_CHROMIUM"


class ExportError(RuntimeError):
    """No browser to draw or print with, or it failed: the message says which and what to do."""


def chromium() -> str:
    """The Chromium (or Chrome) to draw with: ``$BALANCE_CHROMIUM`` or the first on the PATH."""
    named = os.environ.get(CHROMIUM_ENV)
    found = named if named and Path(named).exists() else next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if not found:
        raise ExportError(f"no Chromium found (install one: apt-get install chromium, or set {CHROMIUM_ENV})")
    return found


@contextmanager
def _kaleido() -> Iterator[Callable[[go.Figure, str, float], bytes]]:
    """A function (figure, format, scale) -> bytes, drawn by one kaleido browser kept open for all the figures."""
    import kaleido

    os.environ.setdefault("BROWSER_PATH", chromium())  # kaleido's browser: the system's, never a download
    kaleido.start_sync_server(silence_warnings=True)
    try:

        def draw(fig: go.Figure, fmt: str, scale: float) -> bytes:
            opts = {"format": fmt, "width": WIDTH, "height": HEIGHT, "scale": scale}
            return kaleido.calc_fig_sync(fig, opts=opts)

        yield draw
    finally:
        kaleido.stop_sync_server(silence_warnings=True)


def slide_figures(
    store: RunStore, on_step: Callable[[int, int], None] | None = None
) -> Iterator[tuple[lecture.Step, go.Figure]]:
    """Every step's figure at a slide's size (demo runs from ``store``, trained there first if missing)."""
    shown = [s for s in lecture.STEPS if s.figure != "summary"]
    for i, step in enumerate(shown):
        fig = lecture.step_figure(step, store, c=C_SHOWN)
        if fig is not None:
            yield step, fig.update_layout(width=WIDTH, height=HEIGHT)
        if on_step is not None:
            on_step(i + 1, len(shown))


def export_figures(store: RunStore, directory: Path, on_step: Callable[[int, int], None] | None = None) -> list[Path]:
    """Write every figure as ``<figure_name>.svg`` and ``<figure_name>.png`` (2x) into ``directory`` (made if
    missing); returns the files written, in step order."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    with _kaleido() as draw:
        for step, fig in slide_figures(store, on_step):
            for fmt, scale in (("svg", 1), ("png", 2)):
                path = directory / f"{step.figure_name}.{fmt}"
                path.write_bytes(draw(fig, fmt, scale))
                written.append(path)
    return written


PRINT_CSS = """
@page { size: 297mm 167mm; margin: 9mm 12mm; }
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2933; margin: 0; font-size: 13pt;
       line-height: 1.35; }
section { page-break-after: always; break-after: page; }
section:last-child { page-break-after: auto; break-after: auto; }
h1 { font-size: 22pt; margin: 0 0 0.3em; } h2 { font-size: 20pt; margin: 0 0 0.3em; }
p { margin: 0 0 0.4em; } .formula { font-size: 15pt; margin: 0.2em 0; text-align: center; }
img { display: block; width: 100%; max-height: 88mm; object-fit: contain; }
pre { font-size: 8.5pt; background: #f5f7fa; padding: 0.5em; white-space: pre-wrap; }
.stamp { font-size: 9pt; color: #52606d; }
"""


def print_html(store: RunStore, svgs: dict[int, bytes]) -> str:
    """The lecture as a printable page, one ``<section>`` (one page) a step, each figure an SVG image, then the
    reproducibility stamp and how to cite."""
    parts = []
    for step in lecture.STEPS:
        section = [f"<section><h2>{step.number}. {html.escape(step.title)}</h2>",
                   f"<p>{inline_markdown(step.text)}</p>",
                   *(f"<div class='formula'>{mathml(f)}</div>" for f in step.formulas)]  # fmt: skip
        if step.number in svgs:
            data = base64.b64encode(svgs[step.number]).decode()
            section.append(f"<img alt='{html.escape(step.figure_name)}' src='data:image/svg+xml;base64,{data}'>")
        parts.append("".join(section) + "</section>")
    title = "Layers are automatically balanced: a lecture"
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{PRINT_CSS}</style></head><body>" + "".join(parts) + colophon() + "</body></html>"
    )


def lecture_pdf(store: RunStore, target: Path, on_step: Callable[[int, int], None] | None = None) -> Path:
    """Print the lecture to ``target`` (PDF, 16:9 pages, one a step, then one for the stamp and how to cite)."""
    with _kaleido() as draw:
        svgs = {step.number: draw(fig, "svg", 1) for step, fig in slide_figures(store, on_step)}
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "lecture.html"
        page.write_text(print_html(store, svgs), encoding="utf-8")
        out = Path(tmp) / "lecture.pdf"
        command = [chromium(), "--headless", "--disable-gpu", "--no-pdf-header-footer", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--print-to-pdf={out}", page.as_uri()]  # fmt: skip
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.insert(1, "--no-sandbox")  # Chromium refuses to start as root with its sandbox
        try:
            subprocess.run(command, capture_output=True, timeout=120, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ExportError(f"Chromium could not print the lecture ({exc})") from None
        if not out.exists() or out.stat().st_size == 0:
            raise ExportError("Chromium printed nothing")
        shutil.copyfile(out, target)
    return target
