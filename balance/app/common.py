"""The dashboard's shared Streamlit layer: services, safe text, live charts, a run's charts and status, navigation.

The library modules that import streamlit are this one and ``ui_*.py`` (one per page, and the Explore page's
parts: ``sidebar``, ``links`` the URL, ``live`` the attached run, ``explore`` the page).
Pages call these functions and draw nothing of their own. Data flow: widgets (or the URL) -> ``RunConfig`` ->
``Runner.start`` in a worker process -> ``RunStore`` -> ``store.metrics(run, after=cursor)`` polled by a fragment
twice a second -> ``balance.views.figures`` -> ``live_chart`` (a chart that updates in place; ``assets/live_chart.js``).

Session state keys carry the page prefix: ``explore.model.width`` is a widget, ``explore.run`` the attached run.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from latex2mathml.converter import convert
from streamlit.runtime.scriptrunner import get_script_run_ctx

from balance.config import RunConfig
from balance.config import link_query as link_query  # the one link builder, for the pages that link into Explore
from balance.engine.laws import of_metric, why_no_law
from balance.runs.store import ACTIVE as STORE_ACTIVE
from balance.runs.store import RunStore, StoreError
from balance.views import figures as plots
from balance.views import style
from balance.views.mechanisms import SHARPNESS_CAPTION, sharpness_figure
from balance.views.neurons import neuron_figure

ASSETS = Path(__file__).resolve().parent.parent / "assets"
ACTIVE = frozenset(STORE_ACTIVE)  # queued, running, paused: the page polls while a run is in one of these


def chart_config(filename: str) -> dict[str, Any]:
    """Plotly's modebar: no logo; the camera button downloads a PNG at twice the size, named ``filename``."""
    return {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2, "filename": filename}}


STATIC = Path(__file__).resolve().parents[2] / "static"  # served at app/static/ (.streamlit/config.toml)


@functools.cache
def serve_plotly_js() -> None:
    """Put plotly.py's own plotly.min.js where Streamlit serves static files, for ``live_chart`` (no CDN)."""
    import plotly

    source = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    target = STATIC / "plotly.min.js"
    try:
        if target.exists() and target.stat().st_size == source.stat().st_size:
            return
        STATIC.mkdir(exist_ok=True)
        partial = target.with_name(f".plotly.min.js.{os.getpid()}")
        shutil.copyfile(source, partial)
        os.replace(partial, target)  # atomic: another process may be serving it
    except OSError as exc:  # a read-only install: the charts say they could not load plotly.js
        logging.getLogger(__name__).warning("cannot put plotly.js into %s: %s", STATIC, exc)


_LIVE_CHART = st.components.v2.component(
    "balance.live_chart", js=(ASSETS / "live_chart.js").read_text(encoding="utf-8"), isolate_styles=False
)


def live_chart(fig: go.Figure, key: str, config: dict[str, Any]) -> None:
    """Draw ``fig`` in a chart that keeps its element across reruns and updates in place (``Plotly.react``).

    ``st.plotly_chart`` remounts a chart whose figure changed: a full redraw per chart per refresh, and the user's
    zoom lost. Measured in Chromium: about 3x less drawing work per refresh for the Explore page's charts.
    """
    data = {"figure": fig.to_json(), "config": {**config, "responsive": True}}
    _LIVE_CHART(key=key, data=data, height=int(fig.layout.height or style.HEIGHT))


@st.cache_resource(show_spinner=False)
def _store(home: str) -> RunStore:
    return RunStore(home or None)


@st.cache_resource(show_spinner=False)
def _runner(home: str) -> Any:
    from balance.runs.executor import Runner  # imported late: the runner starts worker processes

    r = Runner(_store(home))
    # two workers import torch now (about 3 s each), so neither the first Start nor a second run started while
    # one trains, or just after one stopped, waits for a new process
    r.warm(2)
    return r


def store() -> RunStore:
    """The process-wide store (one per BALANCE_HOME): it outlives sessions and page reloads."""
    return _store(os.environ.get("BALANCE_HOME", ""))


def runner() -> Any:
    """The process-wide runner: runs keep training when a page is closed, and a reload reattaches to them."""
    return _runner(os.environ.get("BALANCE_HOME", ""))


_PUNCTUATION = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])|[!-\-/:-@\[-^`{-~]")  # ASCII punctuation but . and _
_LINKISH = re.compile(r"(?i)(?<=www)(?=\.)|(?<=[:@])(?=\S)")


def literal(text: str) -> str:
    """``text`` (from a file, a link, a stored run) as Markdown that shows it character for character.

    Every ASCII punctuation mark is backslash-escaped, so no link, image, HTML, formula, list or heading can
    start; '.' and an '_' inside a word start nothing and stay as they are (``optim.lr``, ``layer_scales``). GFM's
    autolinks and Streamlit's ``:emoji:`` and ``:material/icon:`` codes are found in the text after the escapes
    are resolved: an invisible zero-width space after ':' and '@' and inside 'www.' breaks them.
    """
    return _LINKISH.sub("\u200b", _PUNCTUATION.sub(lambda m: "\\" + m.group(0), str(text)))


def plain(text: str) -> str:
    """``text`` shown literally by Markdown: formulas such as ||W_h||_F^2 keep their underscores and stars."""
    return re.sub(r"([\\`*_\[\]<>#$~|])", r"\\\1", text)


def asset(name: str) -> str:
    """The text of ``assets/<name>``, or '' if it is missing (the page still works)."""
    path = ASSETS / name
    return path.read_text(encoding="utf-8") if path.exists() else ""


def number_text(v: Any) -> str:
    """Shortest text that reads back as the same number: 0.001, 1e-05, 0.17677669529663687."""
    if isinstance(v, float):
        short = f"{v:g}"
        return short if float(short) == v else repr(v)
    return str(v)


@dataclasses.dataclass
class Status:
    """What the status line shows, from the runner (live) or the store (a run of an earlier server)."""

    state: str
    step: int
    message: str = ""
    steps_per_second: float = 0.0
    t: float = float("nan")
    loss: float = float("nan")
    lr: float = float("nan")
    queue_position: int = 0  # 1 = next to start; 0 when not queued (the runner's message says why it waits)


def run_status(run_id: str) -> Status:
    try:
        v = runner().status(run_id)
    except (StoreError, ValueError):
        return Status("missing", 0, f"run {run_id} is not stored here")
    speed = v.steps_per_second or 0.0
    return Status(v.state, int(v.step), v.message or "", speed, v.t, v.loss, v.lr, v.queue_position)


# --- sessions: the runner's per-session limits, and the pause of runs no page shows ------------------------------

KEEPALIVE_S = 30.0  # an open Explore page tells the runner this often that its session's runs are watched


def session_id() -> str:
    """This browser session's id (a reload is a new one): the runner's ``session`` for limits and idle pauses."""
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else ""


@st.cache_resource(show_spinner=False)
def run_sessions() -> dict[str, str]:
    """Process-wide: the session that started each run, so a page reattached after a reload (a new session)
    keeps the run it shows watched."""
    return {}


def touch(run_id: str | None = None) -> None:
    """Tell the runner that a page shows this session's runs (and ``run_id``'s, whichever session started it)."""
    r, mine = runner(), session_id()
    for session in {mine, run_sessions().get(run_id or "", mine)}:
        r.touch(session)


def attach(prefix: str, run_id: str | None) -> None:
    """Make ``run_id`` the run the page shows (None: detach), and forget the rows drawn so far."""
    st.session_state[f"{prefix}.run"] = run_id
    st.session_state[f"{prefix}.frame"] = None
    st.session_state[f"{prefix}.cursor"] = -1
    st.session_state[f"{prefix}.initial"] = None


def run_figures(
    df: pd.DataFrame,
    config: RunConfig,
    neurons: tuple[pd.DataFrame | None, pd.DataFrame | None],
    log_x: bool,
    max_points: int = style.MAX_POINTS,
    marks: Sequence[tuple[float, str]] = (),
) -> list[tuple[str, go.Figure, str]]:
    """(name, figure, caption) in display order; the matrix chart only where there are linear layers, then a chart
    of each registered metric that none of these draws (``plots.more_metrics``).

    Where the layer-gap law does not apply (``why_no_law``) the balance chart draws no prediction and it and its
    caption say why; ``marks`` (step, label) are drawn on every step axis (a step size changed mid-run).
    """
    names = style.MF_LAYER_NAMES if config.model.name == "mf" else None
    no_law = why_no_law(config)
    out = []
    for name in ("loss", "norms", "balance", "grad_norms"):
        fn, caption = plots.FIGURES[name]
        extra = {"no_law": no_law} if name == "balance" else {}
        if extra and no_law:
            caption += f" **Here there is no prediction:** {no_law}."
        out.append((name, fn(df, layer_names=names, log_x=log_x, max_points=max_points, **extra), caption))
    now, initial = neurons
    if now is not None:
        figure = neuron_figure(now, initial=initial, max_points=max_points)
        out.insert(3, ("neurons", figure, plots.CAPTIONS["neurons"]))
    if of_metric(df.columns, "matrix_drift"):
        fn, caption = plots.FIGURES["matrix"]
        out.append(("matrix", fn(df, layer_names=names, log_x=log_x, max_points=max_points), caption))
    if "sharpness" in df.columns and df["sharpness"].notna().any():  # logged only when asked (it costs)
        out.append(("sharpness", sharpness_figure(df, log_x=log_x, max_points=max_points), SHARPNESS_CAPTION))
    for metric in plots.more_metrics(df.columns):  # a registered metric no chart above draws: one of its own
        figure = plots.metric_figure(df, metric, names, log_x=log_x, max_points=max_points)
        out.append((f"metric.{metric}", figure, plots.metric_caption(metric)))
    for name, fig, _ in out:
        style.mark_steps(fig, marks)
        style.fit_legend(fig, style.WIDE if name == "balance" else style.NARROW)
    return out


def lr_marks(s: RunStore, run_id: str) -> tuple[tuple[float, str], ...]:
    """Where the run's step size was changed while it trained: (step, 'η → new value') from its events."""
    events = s.events(run_id)
    changes = events[events["kind"] == "lr"]
    return tuple((float(step), f"η → {number_text(float(v))}") for step, v in zip(changes["step"], changes["value"]))


def metrics_csv(s: RunStore, run_ids: list[str]) -> str:
    """Every logged row of the runs, with a ``run`` column, as CSV."""
    return pd.concat([s.metrics(i).assign(run=i) for i in run_ids], ignore_index=True).to_csv(index=False)


def run_html(s: RunStore, run_id: str) -> str:
    """Every chart of a run at full resolution, as one HTML page."""
    neurons = s.neurons(run_id), s.neurons(run_id, step=0)
    tables = tuple(t if len(t) else None for t in neurons)
    marks = lr_marks(s, run_id)
    return figures_html(run_figures(s.metrics(run_id), s.get_run(run_id).config, tables, False, marks=marks))


def caption_html(caption: str) -> str:
    """A caption's Markdown as HTML for a file that opens offline: ``$...$`` as MathML (browsers draw it, no
    MathJax from a CDN), ``**bold**`` as <strong>, everything else escaped."""
    parts = re.split(r"\$([^$]+)\$", caption)  # odd parts are formulas
    out = [
        convert(part) if i % 2 else re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(part, quote=False))
        for i, part in enumerate(parts)
    ]
    return "".join(out)


def figures_html(figures: list[tuple[str, go.Figure, str]]) -> str:
    """One stand-alone HTML page with every chart and its caption (plotly.js included once)."""
    parts = []
    for i, (_, fig, caption) in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=i == 0) + f"<p>{caption_html(caption)}</p>")
    return "<html><head><meta charset='utf-8'></head><body>" + "".join(parts) + "</body></html>"


PAGES = Path(__file__).resolve().parents[2] / "app_pages"


def navigation() -> Any:
    """The app's pages, Explore first (the default); navigation at the top so the sidebar holds the settings."""
    serve_plotly_js()
    # Titles only: with an icon each, the six links were 11 px wider than the navigation bar at 1024 x 768 with
    # the sidebar open, and "About" was cut off.
    pages = [
        st.Page(PAGES / "explore.py", title="Explore", default=True),
        st.Page(PAGES / "runs.py", title="Runs"),
        st.Page(PAGES / "sweep.py", title="Sweeps"),
        st.Page(PAGES / "claims.py", title="Claims"),
        st.Page(PAGES / "lecture.py", title="Lecture"),
        st.Page(PAGES / "about.py", title="About"),
        st.Page(PAGES / "presenter.py", title="Presenter", visibility="hidden"),  # opened from the Lecture page
    ]
    return st.navigation(pages, position="top")


def about_page() -> None:
    st.markdown(asset("about.md"))
