"""The Lecture page: one step at a time, presenter-sized, the step in the URL (``?step=3``).

Previous / Next are buttons with the keyboard's Left / Right arrows as shortcuts. Each step's demo comes from the
run store, trained ahead in the dashboard's executor at the lecture's warm-up priority (``lecture.warm``: the step
on screen first, then the next); the page never waits for a run: a demo not trained yet shows a note and appears
when its runs have ended. The page draws what the library returns and computes nothing itself.

URL flags (for student links): ``step=N``; ``c=2`` sets step 1's rescaling slider; ``<control>_hide=1`` hides one
of this page's controls: ``c`` (the slider), ``nav`` (Previous / Next), ``seed`` (New seed), ``handout``.
"""

from __future__ import annotations

import functools
import math
import time

import streamlit as st

from balance.app import common as ui
from balance.lecture import steps as lecture
from balance.lecture.handout import handout_html

HIDEABLE = ("c", "nav", "seed", "handout")
PLOTLY_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}

# Presenter view: no sidebar (the app's navigation is at the top), large type, little chrome, fits 1024 x 768.
CSS = """
<style>
[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"], [data-testid="stExpandSidebarButton"]
    { display: none !important; }
[data-testid="stMainBlockContainer"] { padding-top: 3.6rem; padding-bottom: 1rem; max-width: 1400px; }
[data-testid="stMainBlockContainer"] [data-testid="stMarkdownContainer"] p { font-size: 1.3rem; line-height: 1.45; }
[data-testid="stMainBlockContainer"] h2 { font-size: 1.9rem; padding: 0; }
[data-testid="stMainBlockContainer"] .katex { font-size: 1.45em; }
[data-testid="stMainBlockContainer"] [data-testid="stCaptionContainer"] p { font-size: 1rem; }
</style>
"""


WAIT_S = 1.0  # a demo still training is looked for again this often


def warm(prefix: str, number: int) -> None:
    """Once per session: every step's runs to the executor (warm-up priority), the step on screen first."""
    if not st.session_state.get(f"{prefix}.warmed"):
        st.session_state[f"{prefix}.warmed"] = True
        lecture.warm(lecture.warm_order(number), ui.store(), ui.runner())


def _flag(name: str) -> bool:
    return st.query_params.get(f"{name}_hide", "") in ("1", "true")


def _url_step() -> int | None:
    try:
        n = int(st.query_params.get("step", ""))
    except ValueError:
        return None
    return n if 1 <= n <= len(lecture.STEPS) else None


def _url_c() -> float:
    try:
        c = float(st.query_params.get("c", "1"))
    except ValueError:
        return 1.0
    if not math.isfinite(c) or c <= 0:
        return 1.0
    return min(lecture.C_GRID, key=lambda v: abs(math.log(v / c)))


def init_session(prefix: str) -> None:
    """Once per session: the step and the slider from the URL (a bad ``step`` opens step 1, with a note)."""
    key = f"{prefix}.step"
    url = _url_step()
    if key not in st.session_state:
        st.session_state[key] = url or 1
        if "step" in st.query_params and url is None:
            st.session_state[f"{prefix}.bad_step"] = st.query_params.get("step")
        st.session_state[f"{prefix}.c"] = _url_c()
    elif url is not None and url != st.session_state[key] and not st.session_state.get(f"{prefix}.moved"):
        st.session_state[key] = url  # the address bar was edited within the session
    st.session_state[f"{prefix}.moved"] = False


def sync_url(prefix: str, step: int) -> None:
    """The URL holds the step and this page's own flags (and nothing of another page's)."""
    wanted = {"step": str(step)}
    for name in HIDEABLE:
        if _flag(name):
            wanted[f"{name}_hide"] = "1"
    c = st.session_state.get(f"{prefix}.c", 1.0)
    if step == 1 and c != 1.0:
        wanted["c"] = ui.number_text(c)
    if st.query_params.to_dict() != wanted:
        st.query_params.from_dict(wanted)


def _go(prefix: str, delta: int) -> None:
    n = st.session_state[f"{prefix}.step"] + delta
    st.session_state[f"{prefix}.step"] = min(max(n, 1), len(lecture.STEPS))
    st.session_state[f"{prefix}.moved"] = True


def _new_seed(prefix: str, number: int) -> None:
    key = f"{prefix}.seed.{number}"
    st.session_state[key] = st.session_state.get(key, 0) + 1
    st.session_state[f"{prefix}.moved"] = True


def header(prefix: str, step: lecture.Step) -> None:
    """The step's title on the left, Previous / Next on the right (a long title wraps, the buttons stay put)."""
    total = len(lecture.STEPS)
    left, right = st.columns([0.68, 0.32], vertical_alignment="center")
    left.markdown(f"## {step.number}. {step.title}")
    if _flag("nav"):
        return
    with right.container(horizontal=True, horizontal_alignment="right", wrap=False):
        st.button(
            "Prev",
            key=f"{prefix}.prev",
            icon=":material/arrow_back:",
            disabled=step.number == 1,
            on_click=_go,
            args=(prefix, -1),
            shortcut="Left",
            help="previous step (left arrow key)",
        )
        st.button(
            "Next",
            key=f"{prefix}.next",
            icon=":material/arrow_forward:",
            icon_position="right",
            type="primary",
            disabled=step.number == total,
            on_click=_go,
            args=(prefix, 1),
            shortcut="Right",
            help="next step (right arrow key)",
        )


def demo(prefix: str, step: lecture.Step) -> None:
    """The step's controls and figure: its runs from the store (trained ahead; still training on a cold start: a
    note, and the figure once they have ended)."""
    seed = st.session_state.get(f"{prefix}.seed.{step.number}", 0)
    seed_arg = None if seed == 0 else seed
    warm(prefix, step.number)
    c = 1.0
    if step.figure == "rescale" and not _flag("c"):
        c = st.select_slider(
            "rescale layer 1 by c and layer 2 by 1/c",
            options=lecture.C_GRID,
            key=f"{prefix}.c",
            format_func=lambda v: f"c = {v:g}",
        )
    elif step.figure == "rescale":
        c = st.session_state.get(f"{prefix}.c", 1.0)
    start = time.perf_counter()
    runs = lecture.demo_runs(step, ui.store(), ui.runner(), seed_arg)
    shown = lecture.reseeded(step, seed_arg)
    if runs is None:
        waiting(step, seed_arg)
    else:
        fig = lecture.demo_figure(shown, ui.store(), runs, c)
        if fig is not None:
            st.plotly_chart(fig, key=f"{prefix}.chart.{step.number}", config=PLOTLY_CONFIG)
    took = None if runs is None else time.perf_counter() - start
    footer(prefix, shown, list(shown.links), took, seed)


@st.fragment(run_every=WAIT_S)
def waiting(step: lecture.Step, seed: int | None) -> None:
    """While the step's runs train in the executor: a note, and the whole page again once they have ended."""
    if lecture.demo_runs(step, ui.store(), ui.runner(), seed) is not None:
        st.rerun()
    st.info("Training this demo in the background (once; later it opens at once)…", icon=":material/hourglass_top:")


def footer(prefix: str, step: lecture.Step, links: list[lecture.Demo], took: float | None, seed: int) -> None:
    with st.container(horizontal=True, vertical_alignment="center"):
        if links:
            parts = [f"[{d.label}]({lecture.explore_link(d.config, step.show)})" for d in links]
            st.caption("Open in Explore: " + " · ".join(parts))
        if step.figure != "summary" and not _flag("seed"):
            st.button(
                "New seed",
                key=f"{prefix}.reseed",
                icon=":material/refresh:",
                type="tertiary",
                on_click=_new_seed,
                args=(prefix, step.number),
                help="train this demo again from another random start",
            )
            what = f"seed {seed}" if seed else "preset seed"
            st.caption(f"{what} · " + ("training" if took is None else f"ready in {took:.1f} s"))


def summary(prefix: str) -> None:
    """Step 8: every demo as a link into Explore, showing only the controls that step is about."""
    lines = []
    for s in lecture.STEPS:
        if s.links:
            items = ", ".join(f"[{d.label}]({lecture.explore_link(d.config, s.show)})" for d in s.links)
            lines.append(f"{s.number}. **{s.title}**: {items}")
    st.markdown("\n".join(lines))


def handout_button(prefix: str) -> None:
    if _flag("handout"):
        return
    st.download_button(
        "Handout (HTML, works offline)",
        functools.partial(handout_html, ui.store()),
        "balance-lecture.html",
        "text/html",
        key=f"{prefix}.handout",
        icon=":material/download:",
        help="the whole lecture in one file: text, formulas and interactive charts; no server or network needed",
    )


def page(prefix: str) -> None:
    st.html(CSS)
    init_session(prefix)
    step = lecture.step_at(st.session_state[f"{prefix}.step"])
    sync_url(prefix, step.number)
    bad = st.session_state.pop(f"{prefix}.bad_step", None)
    if bad is not None:
        st.warning(f"step = {bad!r}: no such step; the lecture has steps 1 to {len(lecture.STEPS)}. Showing step 1.")
    header(prefix, step)
    st.markdown(step.text)
    st.latex(step.formula)
    if step.figure == "summary":
        summary(prefix)
        handout_button(prefix)
        return
    demo(prefix, step)
