"""The presenter view of the lecture: open it in a second window (the Lecture page's header links to it).

It follows the audience window's step live (the two windows talk through the browser: ``assets/presenter.js``)
and shows the speaker's notes, the next step and a timer; its keys move the audience window.
"""

from __future__ import annotations

import streamlit as st

from balance.app import common as ui
from balance.lecture import steps as lecture

_PRESENTER = st.components.v2.component(
    "balance.lecture_presenter",
    js=ui.asset("presenter.js"),
    css="""
.presenter { font-size: 1.6rem; line-height: 1.45; }
.presenter .bar { display: flex; gap: 1.5rem; align-items: center; font-size: 1.2rem; color: #52606d; }
.presenter .timer b { font-size: 2.4rem; color: #1f2933; font-variant-numeric: tabular-nums; margin-right: 0.5rem; }
.presenter .status { flex: 1; }
.presenter .title { font-size: 2.2rem; margin: 0.4em 0 0.3em; }
.presenter .notes { font-size: 1.7rem; max-width: 60em; }
.presenter .next { color: #52606d; font-size: 1.3rem; }
""",
    isolate_styles=False,
)

PRESENTER_CSS = """
<style>
[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"], [data-testid="stExpandSidebarButton"]
    { display: none !important; }
[data-testid="stMainBlockContainer"] { padding-top: 3.6rem; max-width: 1500px; }
</style>
"""


def presenter_page(prefix: str) -> None:
    """The presenter view: open it in a second window (the Lecture page's header links to it). It follows the
    audience window's step live and shows its speaker's notes, the next step and a timer; its keys move the audience
    window. Same browser only: the two windows talk through the browser, not the server."""
    st.html(PRESENTER_CSS)
    steps = [{"number": s.number, "title": s.title, "notes": s.notes} for s in lecture.STEPS]
    _PRESENTER(key=f"{prefix}.view", data={"steps": steps})
    st.caption("Keep the Lecture page open in another window of this browser (the projector's); this view follows "
               "it. Keys here move it too: → / PageDown / Space next, ← / PageUp back, Home / End.")  # fmt: skip
