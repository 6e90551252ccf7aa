"""The lecture as one self-contained HTML file: every step's text, its formula and its interactive figure.

Opens offline with no server: formulas are MathML (``latex2mathml``; browsers render it natively, no MathJax),
plotly.js is inlined once, and nothing is loaded from anywhere (no ``src=`` or ``href=`` to another host, no CDN).
Explore links are printed as their query strings, since a handout has no app to link to. Its end says which code
made its numbers (``balance.runs.stamp``) and how to cite the paper and balance (BibTeX).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable

import plotly.graph_objects as go
from latex2mathml.converter import convert

from balance.lecture import steps as lecture
from balance.runs import stamp as stamps
from balance.runs.store import RunStore

C_SHOWN = 2.0  # where step 1's slider starts in the handout
HEIGHT = 480  # px of a figure in the handout (step 1's has its slider below)
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1f2933; line-height: 1.5; font-size: 18px; }
h1 { font-size: 2em; margin-bottom: 0.2em; }
h2 { font-size: 1.5em; margin-top: 2.2em; border-top: 1px solid #d9dee3; padding-top: 1em; }
.formula { font-size: 1.3em; margin: 0.8em 0; overflow-x: auto; }
.links { font-size: 0.85em; color: #52606d; }
.links code { word-break: break-all; }
nav ol { columns: 2; }
pre { background: #f5f7fa; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
.stamp { font-size: 0.85em; color: #52606d; }
"""

PAPER_BIBTEX = """@inproceedings{du2018algorithmic,
  title     = {Algorithmic Regularization in Learning Deep Homogeneous Models:
               Layers are Automatically Balanced},
  author    = {Du, Simon S. and Hu, Wei and Lee, Jason D.},
  booktitle = {Advances in Neural Information Processing Systems 31 (NeurIPS 2018)},
  pages     = {384--395},
  year      = {2018},
  eprint    = {1806.00900},
  archivePrefix = {arXiv}
}"""


def mathml(latex: str) -> str:
    """``latex`` as a block MathML element; the namespace attribute is dropped (HTML needs none)."""
    return re.sub(r'\s+xmlns="[^"]*"', "", convert(latex, display="block"), count=1)


def inline_markdown(text: str) -> str:
    """The steps' Markdown (``**bold**``, ``*italic*``) as HTML; everything else escaped."""
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"\*(.+?)\*", r"<em>\1</em>", out)


def balance_bibtex(values: dict[str, str | None]) -> str:
    """How to cite balance itself: its version, and the commit and code hash that made the numbers."""
    note = ", ".join(f"{k} {values[k]}" for k in ("commit", "code") if values.get(k))
    return (
        "@software{balance,\n"
        "  title   = {balance: see, teach and check how gradient descent balances the layers of deep homogeneous "
        "models},\n"
        f"  version = {{{values.get('balance') or 'unknown'}}},\n"
        + (f"  note    = {{{note}}},\n" if note else "")
        + "}"
    )


def colophon(values: dict[str, str | None] | None = None) -> str:
    """The handout's last section: the reproducibility stamp and how to cite (HTML)."""
    values = stamps.stamp() if values is None else values
    return (
        "<section id='colophon'><h2>Reproducibility and how to cite</h2>"
        f"<p class='stamp'>Made by {html.escape(stamps.stamp_text(values))}. The code hash names the source that "
        "computes the numbers (settings, engine, training loop): the same hash gives the same numbers.</p>"
        "<p>The paper:</p>"
        f"<pre>{html.escape(PAPER_BIBTEX)}</pre><p>balance:</p><pre>{html.escape(balance_bibtex(values))}</pre>"
        "</section>"
    )


def _links(step: lecture.Step, steps: tuple[lecture.Step, ...]) -> str:
    demos = [(s, d) for s in steps for d in s.links] if step.figure == "summary" else [(step, d) for d in step.links]
    if not demos:
        return ""
    items = "".join(
        f"<li>{html.escape(s.title if step.figure == 'summary' else '')}{' · ' if step.figure == 'summary' else ''}"
        f"{html.escape(d.label)}: <code>?{html.escape(lecture.explore_link(d.config, s.shows(d), base='')[1:])}</code>"
        "</li>"
        for s, d in demos
    )
    return f"<div class='links'>In the app's Explore page (append to its address):<ul>{items}</ul></div>"


def handout_html(
    store: RunStore, on_step: Callable[[int, int], None] | None = None, steps: tuple[lecture.Step, ...] = ()
) -> str:
    """The whole lecture as one HTML page. Demo runs come from ``store`` (trained there first if missing).

    ``on_step(done, total)`` reports progress, one call per step.
    """
    steps = steps or lecture.STEPS
    parts: list[str] = []
    plotly_included = False
    for i, step in enumerate(steps):
        fig: go.Figure | None = lecture.step_figure(step, store, c=C_SHOWN, slider=True)
        if fig is not None and step.figure != "rescale":
            fig.update_layout(height=HEIGHT)
        section = [
            f"<section id='step-{step.number}'><h2>{step.number}. {html.escape(step.title)}</h2>",
            f"<p>{inline_markdown(step.text)}</p>",
            *(f"<div class='formula'>{mathml(f)}</div>" for f in step.formulas),
        ]
        if fig is not None:
            section.append(fig.to_html(full_html=False, include_plotlyjs=not plotly_included, config=PLOTLY_CONFIG))
            plotly_included = True
        section.append(_links(step, steps) + "</section>")
        parts.append("".join(section))
        if on_step is not None:
            on_step(i + 1, len(steps))
    toc = "".join(f"<li><a href='#step-{s.number}'>{html.escape(s.title)}</a></li>" for s in steps)
    title = "Layers are automatically balanced: a lecture"
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{title}</title><style>{CSS}</style></head><body>"
        f"<h1>{title}</h1><p>After Du, Hu and Lee, <em>Algorithmic regularization in learning deep homogeneous "
        "models: layers are automatically balanced</em> (NeurIPS 2018). Made by balance; every chart is "
        f"interactive (hover, zoom, double-click to reset).</p><nav><ol>{toc}</ol></nav>"
        + "".join(parts)
        + colophon()
        + "</body></html>"
    )
