"""The Explore page: sidebar, address, run controls, the attached run, notes, share links and downloads."""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urlencode

import streamlit as st

from balance.app.common import (
    ACTIVE,
    KEEPALIVE_S,
    Status,
    asset,
    attach,
    literal,
    metrics_csv,
    number_text,
    run_html,
    run_sessions,
    run_status,
    runner,
    session_id,
    store,
    touch,
)
from balance.app.links import init_session, page_query, sync_url, url_warnings
from balance.app.live import live_section, lr_changes, run_config
from balance.app.sidebar import FIELDS, LABELS, build_config, config_sidebar, current_values
from balance.config import ConfigError, RunConfig
from balance.runs.store import StoreError


def _start(prefix: str) -> None:
    """Start's on_click: start a run of the sidebar's settings, or leave the reason why not for the page to show."""
    config, _, message = build_config(current_values(prefix))
    if config is None:
        st.session_state[f"{prefix}.start_error"] = f"Not started: {message}"
        return
    session = session_id()
    try:  # LimitError (a ConfigError): over a per-run or this session's limit, with the estimate and the limit
        run_id = runner().start(config, name=st.session_state.get(f"{prefix}.name") or "", session=session)
    except (ConfigError, StoreError) as exc:
        st.session_state[f"{prefix}.start_error"] = f"Not started: {exc}"
        return
    run_sessions()[run_id] = session
    attach(prefix, run_id)


def _act(prefix: str, action: str, *args: Any) -> None:
    run_id = st.session_state.get(f"{prefix}.run")
    if not run_id:
        return
    r = runner()
    if action == "reset":
        if run_status(run_id).state in ACTIVE:
            r.stop(run_id)
        attach(prefix, None)
        return
    try:
        reached = getattr(r, action)(run_id, *args)
    except (StoreError, ValueError) as exc:
        reached, why = False, str(exc)
    else:
        why = f"it is {run_status(run_id).state}"
    if not reached:  # every press is answered: it acts, or the page says why not
        st.session_state[f"{prefix}.start_error"] = f"{action.capitalize()} did not reach the run: {why}"
    elif action == "stop":
        st.session_state[f"{prefix}.stopping"] = run_id  # shown at once; the state follows within a tick


def run_controls(prefix: str, config: RunConfig | None, status: Status | None = None) -> None:
    """Start, Pause / Resume, Step 1 / 10 / 100, Stop, Reset, as one row of buttons, for the attached run's
    ``status`` (read here if not given)."""
    run_id = st.session_state.get(f"{prefix}.run")
    state = (status or run_status(run_id)).state if run_id else ""
    active = state in ACTIVE
    with st.container(horizontal=True, vertical_alignment="bottom"):
        st.button(
            "Start",
            type="primary",
            key=f"{prefix}.start",
            disabled=config is None,
            on_click=_start,
            args=(prefix,),
            help="train the settings in the sidebar in a new run (a run already training keeps going)",
        )
        if state == "paused":
            st.button("Resume", key=f"{prefix}.resume", on_click=_act, args=(prefix, "resume"))
        else:
            paused = state != "running"
            st.button("Pause", key=f"{prefix}.pause", disabled=paused, on_click=_act, args=(prefix, "pause"))
        for n in (1, 10, 100):
            st.button(
                f"Step {n}",
                key=f"{prefix}.step{n}",
                disabled=not active,
                on_click=_act,
                args=(prefix, "step", n),
                help=f"pause, then take {n} step{'s' * (n > 1)}",
            )
        st.button("Stop", key=f"{prefix}.stop", disabled=not active, on_click=_act, args=(prefix, "stop"))
        st.button(
            "Reset",
            key=f"{prefix}.reset",
            disabled=not run_id,
            on_click=_act,
            args=(prefix, "reset"),
            help="stop the run and clear the charts",
        )
        st.text_input(
            "run name",
            key=f"{prefix}.name",
            placeholder="run name (optional)",
            label_visibility="collapsed",
            width=200,
        )
    why = st.session_state.pop(f"{prefix}.start_error", "")
    if why:
        st.error(literal(why), icon=":material/block:")


def downloads(prefix: str) -> None:
    """The attached run's metrics as CSV and its charts as stand-alone HTML (PNG: the camera in each chart).

    The files are made when the button is pressed (a callable ``data``, run on another thread), not on every rerun.
    """
    run_id = st.session_state.get(f"{prefix}.run")
    if not run_id or st.session_state.get(f"{prefix}.frame") is None:
        return
    s = store()
    with st.expander("Download"):
        csv, html = functools.partial(metrics_csv, s, [run_id]), functools.partial(run_html, s, run_id)
        st.download_button("metrics (CSV)", csv, f"{run_id}.csv", "text/csv", key=f"{prefix}.csv")
        st.download_button("charts (HTML)", html, f"{run_id}.html", "text/html", key=f"{prefix}.html")
        st.caption("PNG: the camera button at the top right of each chart.")


def explore_page(prefix: str) -> None:
    init_session(prefix)
    config, error = config_sidebar(prefix)
    sync_url(prefix, config)
    st.markdown("#### Watch gradient descent balance the layers")
    url_warnings(prefix)
    with st.expander("What am I looking at?"):
        st.markdown(asset("explore.md"))
    if error:
        st.error(f"Cannot start yet: {literal(error)}", icon=":material/warning:")
    run_id = st.session_state.get(f"{prefix}.run")
    keepalive(run_id)
    # One reading of the run's state for the buttons and the live section: read twice, a run that paused in
    # between drew "Pause" while the live section, already seeing "paused", never reran the page to say "Resume".
    status = run_status(run_id) if run_id else None
    run_controls(prefix, config, status)
    changed_note(prefix, config)
    live_section(prefix, status)
    share(prefix, config)
    downloads(prefix)


def keepalive(run_id: str | None) -> None:
    """While this page is open, its session's runs (and the run it shows) are watched: the runner pauses a
    session's runs only when no page has shown them for a while. The live section also touches on every tick."""

    @st.fragment(run_every=KEEPALIVE_S)
    def tick() -> None:
        touch(run_id)

    tick()


def changed_note(prefix: str, config: RunConfig | None) -> None:
    """Say so when the sidebar no longer matches the run on screen (a new run needs Start)."""
    run_id = st.session_state.get(f"{prefix}.run")
    if not run_id or config is None:
        return
    try:
        shown = run_config(prefix, run_id)
    except StoreError:
        return
    differ = sorted(k for k in set(config.to_query()) ^ set(shown.to_query()) | _changed(config, shown))
    if "optim.lr" in differ and run_status(run_id).state in ACTIVE:
        differ.remove("optim.lr")  # applied to the running run already
    if differ:
        st.caption(f"The sidebar differs from the run shown ({', '.join(differ)}): press **Start** to train it.")
    try:
        imported = store().get_run(run_id).origin == "imported"
    except StoreError:
        imported = False
    if imported:
        st.caption("This run was **imported** from a file: its numbers were not computed on this server.")
    changes = lr_changes(prefix, run_id)
    if changes:
        st.caption(
            f"The run shown changed its step size while it trained ({changes}; dotted lines on the charts). "
            "**Start** trains the sidebar's settings from step 0 with one step size: it does not replay those "
            "changes."
        )


def _changed(a: RunConfig, b: RunConfig) -> set[str]:
    qa, qb = a.to_query(), b.to_query()
    return {k for k in qa.keys() & qb.keys() if qa[k] != qb[k]}


def share(prefix: str, config: RunConfig | None) -> None:
    if config is None:
        return
    base = (st.context.url or "").split("?")[0]
    run_id = st.session_state.get(f"{prefix}.run")
    changes = lr_changes(prefix, run_id) if run_id else ""
    with st.expander("Share this experiment"):
        st.caption("The link holds every setting, the seed included: opening it sets up the same run.")
        st.code(f"{base}?{urlencode(page_query(config), safe=',')}", language=None)
        if changes:
            start = run_config(prefix, run_id)
            st.warning(
                f"The run shown changed its step size while it trained ({changes}). A link sets up a run from "
                f"step 0 with one step size: the link above uses the sidebar's (η = {number_text(config.optim.lr)}), "
                f"and none replays the changes. The run's starting settings (η = {number_text(start.optim.lr)}):",
                icon=":material/info:",
            )
            st.code(f"{base}?{urlencode(page_query(start), safe=',')}", language=None)
        shown = st.multiselect(
            "Classroom link: show students only these settings",
            list(FIELDS),
            format_func=lambda name: LABELS.get(name) or name,
            key=f"{prefix}.classroom",
            placeholder="e.g. step size η",
        )
        if shown:
            query = {**page_query(config), "show": ",".join(shown)}
            st.code(f"{base}?{urlencode(query, safe=',')}", language=None)
