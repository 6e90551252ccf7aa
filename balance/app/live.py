"""The run attached to the Explore page: its status line (with divergence advice) and its live charts."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from balance.app.common import (
    ACTIVE,
    Status,
    chart_config,
    literal,
    live_chart,
    lr_marks,
    number_text,
    run_figures,
    run_status,
    store,
    touch,
)
from balance.config import RunConfig
from balance.runs.advice import divergence_advice, settings_key
from balance.runs.store import StoreError

REFRESH_S = 0.5  # live charts and the status line poll this often while a run trains
LIVE_POINTS = 150  # buckets per live chart: decimation keeps each bucket's extremes, so about 300 points a trace
WORKED_AFTER = 100  # a run stopped by hand after this many steps without diverging counts as one that worked


def remember_outcome(prefix: str, run_id: str, status: Status) -> None:
    """Note in the session which step sizes finished and which diverged for the run's settings (for the advice)."""
    ended = status.state in ("finished", "diverged") or (status.state == "stopped" and status.step >= WORKED_AFTER)
    if not ended or not math.isfinite(status.lr):
        return
    try:
        key = settings_key(run_config(prefix, run_id))
    except StoreError:
        return
    seen = st.session_state.setdefault(f"{prefix}.outcomes", {}).setdefault(key, ({}, {}))
    seen[status.state == "diverged"][status.lr] = True  # (worked, diverged): dicts as ordered sets


def session_advice(prefix: str, run_id: str, status: Status) -> tuple[str, float] | None:
    """For a diverged run: its message's explanation and a step size to try, checked against this session."""
    if status.state != "diverged" or not math.isfinite(status.lr):
        return None
    try:
        key = settings_key(run_config(prefix, run_id))
    except StoreError:
        return None
    worked, diverged = st.session_state.get(f"{prefix}.outcomes", {}).get(key, ({}, {}))
    return divergence_advice(status.message.partition(": ")[2], status.lr, worked, diverged)


def _use_lr(prefix: str, lr: float) -> None:
    st.session_state[f"{prefix}.optim.lr"] = lr
    st.session_state.setdefault(f"{prefix}.touched", set()).add("optim.lr")


def status_line(status: Status, prefix: str = "", advice: tuple[str, float] | None = None) -> None:
    """One line: state, step, t, loss, steps per second; a diverged or failed run says what to try.

    ``advice`` (``session_advice``): the explanation to show for a diverged run and a step size offered by a
    button that sets it in the sidebar.
    """
    colour = {"running": "blue", "paused": "orange", "finished": "green", "diverged": "red", "failed": "red"}
    state = status.state
    if (
        state in ACTIVE
        and prefix
        and st.session_state.get(f"{prefix}.stopping") == st.session_state.get(f"{prefix}.run")
    ):
        state = "stopping…"  # Stop was pressed; the worker has not answered yet
    parts = [
        f":{colour.get(state, 'gray')}-badge[{state}]",
        f"step **{status.step:,}**",
    ]
    if math.isfinite(status.t):
        parts.append(f"t = {status.t:.4g}")
    if math.isfinite(status.loss):
        parts.append(f"loss = {status.loss:.4g}")
    elif status.loss != status.loss and status.state == "diverged":
        parts.append("loss = nan")
    if status.steps_per_second:
        parts.append(f"{status.steps_per_second:,.0f} steps/s")
    if status.state == "queued" and status.queue_position:
        parts.append(f"number **{status.queue_position}** in the queue")
    st.markdown(" · ".join(parts))
    if status.state == "diverged":
        head, _, why = status.message.partition(": ")
        head = head[:1].upper() + head[1:] if head else "Diverged"
        if advice is not None:
            st.error(f"**{literal(head)}**: {literal(advice[0])}", icon=":material/error:")
            label = f"Use step size {number_text(advice[1])}"
            if st.button(label, key=f"{prefix}.use_lr", on_click=_use_lr, args=(prefix, advice[1])):
                st.rerun(scope="app")  # the sidebar shows the new value
            return
        tip = "" if "try" in why else "; try a smaller step size or a smaller init scale"
        st.error(f"**{literal(head)}**: {literal(why)}{tip}", icon=":material/error:")
    elif status.state in ("failed", "missing") and status.message:
        st.error(literal(status.message))
    elif status.message and status.state not in ACTIVE:
        st.info(literal(status.message))
    elif status.message:  # queued (what it waits for) or paused because no page showed it
        st.caption(literal(status.message))


def fetch_rows(prefix: str, run_id: str) -> pd.DataFrame:
    """The attached run's metrics: rows already seen plus those logged since (``store.metrics(after=cursor)``)."""
    frame = st.session_state.get(f"{prefix}.frame")
    cursor = st.session_state.get(f"{prefix}.cursor", -1)
    new = store().metrics(run_id, after=cursor)
    if len(new):
        frame = new if frame is None or frame.empty else pd.concat([frame, new], ignore_index=True)
        st.session_state[f"{prefix}.frame"] = frame
        st.session_state[f"{prefix}.cursor"] = int(new["step"].max())
    return frame if frame is not None else new


def neuron_tables(prefix: str, run_id: str) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The latest per-neuron table and the one at step 0 (read once per run)."""
    now = store().neurons(run_id)
    initial = st.session_state.get(f"{prefix}.initial")
    if initial is None or initial.empty:
        initial = store().neurons(run_id, step=0)
        st.session_state[f"{prefix}.initial"] = initial
    return (now if len(now) else None), (initial if len(initial) else None)


def show_figures(prefix: str, figures: list[tuple[str, go.Figure, str]]) -> None:
    """Two charts a row; the gap / ratio pair (one figure of two panels) takes a whole row."""
    row: list[tuple[str, go.Figure, str]] = []
    for item in figures:
        if item[0] == "balance":
            _row(prefix, row)
            _row(prefix, [item])
            row = []
        else:
            row.append(item)
            if len(row) == 2:
                _row(prefix, row)
                row = []
    _row(prefix, row)


def _row(prefix: str, items: list[tuple[str, go.Figure, str]]) -> None:
    if not items:
        return
    for column, (name, fig, caption) in zip(st.columns(1 if items[0][0] == "balance" else 2), items):
        with column:
            live_chart(fig, key=f"{prefix}.chart.{name}", config=chart_config(name))
            st.caption(caption)  # Markdown with LaTeX: assets/captions.toml and balance.engine.laws, no outside text


def live_section(prefix: str, first: Status | None = None) -> None:
    """Status line and charts of the attached run, refreshed every ``REFRESH_S`` while it is active.

    One fragment ticks: the status line and, unless "freeze charts" is on, the charts, which update in place
    (``live_chart``: a zoom survives). Frozen charts are drawn once by the page and not touched again. A change of
    state from ``first`` (the state the page's buttons were drawn for; read here if not given) reruns the page,
    so the buttons follow.
    """
    run_id = st.session_state.get(f"{prefix}.run")
    if not run_id:
        st.info("Choose settings in the sidebar (or a preset) and press **Start**.")
        return
    first = first or run_status(run_id)
    with st.container(horizontal=True, vertical_alignment="center"):
        st.toggle(
            "freeze charts",
            key=f"{prefix}.freeze",
            help="stop redrawing the charts (training goes on); a zoom survives the live refresh too",
        )
        st.toggle("log x", key=f"{prefix}.log_x", help="logarithmic step axis")
    # A paused run's charts change only by Step n, which reruns the page (below): no need to redraw them per tick.
    still = st.session_state.get(f"{prefix}.freeze", False) or first.state == "paused"

    @st.fragment(run_every=REFRESH_S if first.state in ACTIVE else None)
    def live() -> None:
        touch(run_id)  # a page shows this run: the runner keeps its session's runs going
        status = run_status(run_id)
        remember_outcome(prefix, run_id, status)
        status_line(status, prefix, session_advice(prefix, run_id, status))
        if status.state != first.state or (first.state == "paused" and status.step != first.step):
            st.rerun(scope="app")
        if not still:
            render_charts(prefix, run_id)

    live()
    if still:
        render_charts(prefix, run_id)


def render_charts(prefix: str, run_id: str) -> None:
    """The run's charts; rebuilt only when rows, the neuron snapshot or the axis changed since the last tick."""
    try:
        df = fetch_rows(prefix, run_id)
        neurons = neuron_tables(prefix, run_id)
        config = run_config(prefix, run_id)
        marks = lr_marks(store(), run_id)
    except StoreError as exc:  # e.g. deleted on the Runs page by another session
        st.info(f"No charts: {literal(exc)}")
        return
    if df is None or df.empty:
        st.caption("waiting for the first rows…")
        return
    log_x = st.session_state.get(f"{prefix}.log_x", False)
    snapshot = -1 if neurons[0] is None else int(neurons[0]["step"].iloc[0])
    key = (run_id, len(df), int(df["step"].iloc[-1]), snapshot, log_x, marks)
    cached = st.session_state.get(f"{prefix}.figures")
    if cached is None or cached[0] != key:
        cached = (key, run_figures(df, config, neurons, log_x, LIVE_POINTS, marks))
        st.session_state[f"{prefix}.figures"] = cached
    show_figures(prefix, cached[1])


def run_config(prefix: str, run_id: str) -> RunConfig:
    cached = st.session_state.get(f"{prefix}.run_config")
    if cached is None or cached[0] != run_id:
        cached = (run_id, store().get_run(run_id).config)
        st.session_state[f"{prefix}.run_config"] = cached
    return cached[1]


def lr_changes(prefix: str, run_id: str) -> str:
    """'at step 120: η → 0.02; ...' for the attached run's step-size changes, '' if there were none."""
    try:
        marks = lr_marks(store(), run_id)
    except StoreError:
        return ""
    return "; ".join(f"at step {step:,.0f}: {label}" for step, label in marks)
