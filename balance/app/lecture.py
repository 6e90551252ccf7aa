"""The Lecture page: one step at a time, for a projector, the step (and a reseeded demo's seed) in the URL
(``?step=3&seed=2``); and the presenter view (``balance.app.presenter``) with the speaker's notes and a timer.

Keys work from any focus (``assets/lecture_keys.js``): Right / PageDown / Space / Enter next, Left / PageUp /
Backspace previous, Home / End, F full screen; a clicker sends these. Each step fits the window with no scrolling:
the figure (``assets/lecture_figure.js``) takes the height left, and its modebar saves it for slides as SVG or PNG
(2x) named after the step. Each step's demo comes from the run store, trained ahead in the dashboard's executor at
the lecture's warm-up priority (``lecture.warm``: the step on screen first, then the next); the page never waits
for a run: a demo not trained yet shows a note and appears when its runs have ended.

Students: step 1 shows a QR code of the lecture's address; every "Open in Explore" has a short link
(``?demo=3``, forwarded to Explore with the demo's settings and only the control the step is about) and its QR code.

URL flags (for student links): ``step=N``; ``seed=S`` the demo's seed; ``c=2`` step 1's rescaling slider;
``demo=3`` (or ``6.2``) forwards to Explore; ``<control>_hide=1`` hides one of this page's controls: ``c`` (the
slider), ``nav`` (Previous / Next), ``seed`` (New seed), ``handout``.
"""

from __future__ import annotations

import functools
import math
import time

import streamlit as st

from balance.app import common as ui
from balance.lecture import steps as lecture
from balance.lecture import students
from balance.lecture.handout import handout_html

HIDEABLE = ("c", "nav", "seed", "handout")
MAX_SEED = 10**9

_KEYS = st.components.v2.component(
    "balance.lecture_keys", js=ui.asset("lecture_keys.js"), isolate_styles=False
)  # fmt: skip
_FIGURE = st.components.v2.component(
    "balance.lecture_figure", js=ui.asset("lecture_figure.js"), isolate_styles=False
)  # fmt: skip

# Projector layout: no sidebar and no Streamlit menu (the app's navigation stays at the top, and goes in full
# screen), large type, little chrome, tight gaps: a step fits 1024 x 768.
CSS = """
<style>
[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"], [data-testid="stExpandSidebarButton"],
[data-testid="stMainMenu"], [data-testid="stToolbarActions"], [data-testid="stAppDeployButton"],
[data-testid="stStatusWidget"], [data-testid="stDecoration"], .st-key-lecture-keys
    { display: none !important; }
:root:fullscreen [data-testid="stHeader"] { display: none !important; }
:root:fullscreen [data-testid="stMainBlockContainer"] { padding-top: 1rem; }
[data-testid="stMainBlockContainer"] { padding-top: 3.9rem; padding-bottom: 0.6rem; max-width: 1500px; }
[data-testid="stMainBlockContainer"] > div > [data-testid="stVerticalBlock"] { gap: 0.45rem; }
[data-testid="stMainBlockContainer"] [data-testid="stMarkdownContainer"] p { font-size: 1.25rem; line-height: 1.4;
    margin-bottom: 0; }
[data-testid="stMainBlockContainer"] h2 { font-size: 1.75rem; padding: 0; }
[data-testid="stMainBlockContainer"] .katex { font-size: 1.35em; }
[data-testid="stMainBlockContainer"] .katex-display { margin: 0.1em 0; }
[data-testid="stMainBlockContainer"] [data-testid="stCaptionContainer"] p { font-size: 1.05rem; }
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


def _url_int(name: str, top: int) -> int | None:
    text = st.query_params.get(name, "")
    if not text.isdigit() or len(text) > 10:
        return None
    n = int(text)
    return n if 1 <= n <= top else None


def _url_c() -> float:
    try:
        c = float(st.query_params.get("c", "1"))
    except ValueError:
        return 1.0
    if not math.isfinite(c) or c <= 0:
        return 1.0
    return min(lecture.C_GRID, key=lambda v: abs(math.log(v / c)))


def init_session(prefix: str) -> None:
    """Once per session: the step, its demo's seed and the slider from the URL (a bad ``step`` opens step 1, with a
    note); later, an address bar edited within the session."""
    key = f"{prefix}.step"
    url = _url_int("step", len(lecture.STEPS))
    if key not in st.session_state:
        st.session_state[key] = url or 1
        if "step" in st.query_params and url is None:
            st.session_state[f"{prefix}.bad_step"] = st.query_params.get("step")
        st.session_state[f"{prefix}.c"] = _url_c()
        seed = _url_int("seed", MAX_SEED)
        if seed is not None:
            st.session_state[f"{prefix}.seed.{st.session_state[key]}"] = seed
    elif url is not None and url != st.session_state[key] and not st.session_state.get(f"{prefix}.moved"):
        st.session_state[key] = url  # the address bar was edited within the session
    st.session_state[f"{prefix}.moved"] = False


def seed_of(prefix: str, number: int) -> int:
    """The seed the page gave step ``number``'s demo (0: the presets' own)."""
    return st.session_state.get(f"{prefix}.seed.{number}", 0)


def sync_url(prefix: str, step: int) -> None:
    """The URL holds the step, a reseeded demo's seed and this page's own flags (and nothing of another page's)."""
    wanted = {"step": str(step)}
    if seed_of(prefix, step):
        wanted["seed"] = str(seed_of(prefix, step))
    for name in HIDEABLE:
        if _flag(name):
            wanted[f"{name}_hide"] = "1"
    c = st.session_state.get(f"{prefix}.c", 1.0)
    if step == 1 and c != 1.0:
        wanted["c"] = ui.number_text(c)
    if st.query_params.to_dict() != wanted:
        st.query_params.from_dict(wanted)


def _set_step(prefix: str, n: int) -> None:
    st.session_state[f"{prefix}.step"] = min(max(n, 1), len(lecture.STEPS))
    st.session_state[f"{prefix}.moved"] = True


def _go(prefix: str, delta: int) -> None:
    _set_step(prefix, st.session_state[f"{prefix}.step"] + delta)


def _keyed(prefix: str) -> None:
    """A key (or the presenter view) asked for a step: ``go`` is its number."""
    to = (st.session_state.get(f"{prefix}.keys") or {}).get("go")
    if isinstance(to, int) and not isinstance(to, bool):
        _set_step(prefix, to)


def keys(prefix: str, step: lecture.Step) -> None:
    """The page's keys, from any focus (``assets/lecture_keys.js``; hidden, it draws nothing)."""
    _KEYS(key=f"{prefix}.keys", data={"step": step.number, "total": len(lecture.STEPS)},
          on_go_change=functools.partial(_keyed, prefix), height=0)  # fmt: skip


def _new_seed(prefix: str, number: int) -> None:
    key = f"{prefix}.seed.{number}"
    st.session_state[key] = st.session_state.get(key, 0) + 1
    st.session_state[f"{prefix}.moved"] = True


def header(prefix: str, step: lecture.Step) -> None:
    """The step's title on the left, Previous / Next on the right (a long title wraps, the buttons stay put)."""
    total = len(lecture.STEPS)
    left, right = st.columns([0.7, 0.3], vertical_alignment="center")
    left.markdown(f"## {step.number}. {step.title}")
    if _flag("nav"):
        return
    with right.container(horizontal=True, horizontal_alignment="right", wrap=False):
        st.link_button(
            "",
            "presenter",
            icon=":material/co_present:",
            type="tertiary",
            help="the presenter view, in a new window: this step's notes, the next step, a timer",
        )
        st.button(
            "Prev",
            key=f"{prefix}.prev",
            icon=":material/arrow_back:",
            disabled=step.number == 1,
            on_click=_go,
            args=(prefix, -1),
            help="previous step (←, PageUp, Backspace; Home: the first)",
        )
        st.button("Next", key=f"{prefix}.next", icon=":material/arrow_forward:", icon_position="right",
                  type="primary", disabled=step.number == total, on_click=_go, args=(prefix, 1),
                  help="next step (→, PageDown, Space, Enter; End: the last). F: full screen")  # fmt: skip


def figure(prefix: str, step: lecture.Step, fig: object) -> None:
    """The step's figure, at the height left on the screen (``assets/lecture_figure.js``)."""
    _FIGURE(key=f"{prefix}.figure", data={"figure": fig.to_json(), "filename": step.figure_name})


def demo(prefix: str, step: lecture.Step) -> None:
    """The step's controls and figure: its runs from the store (trained ahead in the executor; on a cold start a
    note while they train, and the figure once they have ended). The page never trains and never waits."""
    seed = seed_of(prefix, step.number)
    seed_arg = None if seed == 0 else seed
    warm(prefix, step.number)
    start = time.perf_counter()
    runs = lecture.demo_runs(step, ui.store(), ui.runner(), seed_arg)
    shown = lecture.reseeded(step, seed_arg)
    if runs is None:
        waiting(step, seed_arg)
    else:
        fig = lecture.demo_figure(shown, ui.store(), runs, st.session_state.get(f"{prefix}.c", 1.0))
        if fig is not None:
            figure(prefix, step, fig)
    took = None if runs is None else time.perf_counter() - start
    footer(prefix, shown, took, seed_arg)


@st.fragment(run_every=WAIT_S)
def waiting(step: lecture.Step, seed: int | None) -> None:
    """While the step's runs train in the executor: a note, and the whole page again once they have ended."""
    if lecture.demo_runs(step, ui.store(), ui.runner(), seed) is not None:
        st.rerun()
    st.info("Training this demo in the background (once; later it opens at once)…", icon=":material/hourglass_top:")


def slider(prefix: str) -> None:
    """Step 1's rescaling factor c."""
    if _flag("c"):
        return
    st.select_slider("rescale layer 1 by c and layer 2 by 1/c", options=lecture.C_GRID, key=f"{prefix}.c",
                     format_func=lambda v: f"c = {v:g}", label_visibility="collapsed")  # fmt: skip


def _origin() -> str:
    return students.origin(st.context.url)


def qr(url: str, width: int) -> None:
    st.image(students.qr_png(url, 8), width=width, caption=None)


def student_links(step: lecture.Step, seed: int | None) -> None:
    """'Open in Explore': each link by its label, its short link to type and (in a popover) its QR code."""
    origin = _origin()
    short = [students.absolute(origin, lecture.short_link(step, i, seed)) for i in range(len(step.links))]
    parts = [f"[{d.label}]({lecture.explore_link(d.config, step.shows(d))})" for d in step.links]
    others = [lecture.demo_code(step, i) for i in range(1, len(short))]
    typed = f" · or type `{students.shown(short[0])}`" + (f" ({', '.join(others)})" if others else "")
    st.caption("Open in Explore: " + " · ".join(parts) + typed)
    with st.popover("QR", icon=":material/qr_code_2:", help="the students' links: a QR code and a short link each"):
        for d, url in zip(step.links, short):
            st.markdown(f"**{d.label}**: `{students.shown(url)}`")
            qr(url, 280 if len(short) == 1 else 180)
        if students.this_machine_only(short[0]):
            st.caption("This address is this computer's own. For a class, start the app on the network "
                       "(make run HOST=0.0.0.0) and open the lecture by that address.")  # fmt: skip


def footer(prefix: str, step: lecture.Step, took: float | None, seed: int | None) -> None:
    with st.container(horizontal=True, vertical_alignment="center"):
        if step.number == 1:
            slider(prefix)
        if step.links:
            student_links(step, seed)
        if step.figure != "summary" and not _flag("seed"):
            st.button("New seed", key=f"{prefix}.reseed", icon=":material/refresh:", type="tertiary",
                      on_click=_new_seed, args=(prefix, step.number),
                      help="train this demo again from another random start"
                      + ("" if took is None else f" (this one was drawn in {took:.1f} s)"))  # fmt: skip
            if seed:
                st.caption(f"seed {seed}")


def follow_along(step: lecture.Step) -> None:
    """Step 1: the lecture's own address as a QR code, for the room."""
    url = students.absolute(_origin(), "lecture")
    left, right = st.columns([0.86, 0.14], vertical_alignment="center")
    with left:
        st.markdown(step.text)
        st.caption(f"Students, follow along: scan the code or open **{ui.literal(students.shown(url))}**")
    with right:
        qr(url, 112)


def summary(prefix: str) -> None:
    """Step 8: every demo as a link into Explore, showing only the controls that step is about."""
    lines = []
    for s in lecture.STEPS:
        if s.links:
            items = ", ".join(f"[{d.label}]({lecture.explore_link(d.config, s.shows(d))})" for d in s.links)
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


def forward(prefix: str) -> bool:
    """``?demo=3``: open that demo in Explore (its settings, only its step's controls). False if there is none;
    a bad code leaves a note and shows the lecture."""
    code = st.query_params.get("demo")
    if code is None:
        return False
    found = lecture.resolve_demo(code, st.query_params.get("seed"))
    if found is None:
        codes = ", ".join(lecture.demo_code(s, i) for s in lecture.STEPS for i in range(len(s.links)))
        st.session_state[f"{prefix}.bad_demo"] = f"demo = {code!r}: no such demo; the lecture's demos are {codes}."
        del st.query_params["demo"]
        return False
    step, d = found
    st.switch_page(str(ui.PAGES / "explore.py"), query_params=lecture.explore_query(d.config, step.shows(d)))
    return True


def page(prefix: str) -> None:
    st.html(CSS)
    if forward(prefix):
        return
    init_session(prefix)
    step = lecture.step_at(st.session_state[f"{prefix}.step"])
    keys(prefix, step)
    sync_url(prefix, step.number)
    bad = st.session_state.pop(f"{prefix}.bad_step", None)
    if bad is not None:
        st.warning(f"step = {bad!r}: no such step; the lecture has steps 1 to {len(lecture.STEPS)}. Showing step 1.")
    bad_demo = st.session_state.pop(f"{prefix}.bad_demo", None)
    if bad_demo is not None:
        st.warning(bad_demo)
    header(prefix, step)
    if step.number == 1:
        follow_along(step)
    else:
        st.markdown(step.text)
    for formula in step.formulas:
        st.latex(formula)
    if step.figure == "summary":
        summary(prefix)
        handout_button(prefix)
        return
    demo(prefix, step)
