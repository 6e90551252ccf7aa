"""The Sweeps page: start a sweep, pick a stored one, see its heat maps and the step-size fit, open any member.

Widgets and layout only: the numbers come from ``balance.runs.sweep`` (summary at a fixed time or step, per-seed
fit), the form's spec, size and cap from ``balance.runs.sweep_start``, the figures from ``balance.views.sweeps``.
A larger sweep is started from the command line (``balance sweep``); the page says how.
"""

from __future__ import annotations

import functools
from typing import Any

import pandas as pd
import streamlit as st

from balance.app import common as ui
from balance.config import ConfigError
from balance.config.presets import PRESETS
from balance.runs import sweep_start
from balance.runs.stamp import stamp_text
from balance.runs.sweep import fit_slopes, summary
from balance.runs.sweep_stats import filter_axes
from balance.views import sweeps as sweep_plots

EXAMPLE = (
    "balance sweep --model mf --d1 50 --d2 50 --rank 5 --lr 0.005,0.01,0.02,0.04 "
    "--init-scale 0.01,0.1,0.3 --seeds 0-3 --steps 2000 --log-every 10"
)
ALL_SEEDS = "all seeds (median)"
READ_AT = ("the last step", "a fixed training time t", "a fixed step")


def page(prefix: str) -> None:
    st.markdown("#### Sweeps: many configurations at once")
    _open_pending(prefix)
    sweeps = ui.store().sweeps()
    _start_form(prefix, expanded=sweeps.empty)
    if sweeps.empty:
        st.info("No sweeps stored yet. Start one above, or from the command line; its runs appear here and on the "
                "Runs page:")  # fmt: skip
        st.code(EXAMPLE, language="bash")
        return
    ids = sweeps["sweep"].tolist()
    wanted = st.query_params.get("sweep", "")
    if f"{prefix}.sweep" not in st.session_state and wanted in ids:
        st.session_state[f"{prefix}.sweep"] = wanted
    info = sweeps.set_index("sweep")
    chosen = st.selectbox("Sweep", ids, key=f"{prefix}.sweep", format_func=functools.partial(_label, info))
    if st.query_params.get("sweep") != chosen:  # a shareable link to this sweep's view
        st.query_params["sweep"] = chosen
    at_time, at_step = _read_at(prefix)
    df = summary(ui.store(), chosen, at_time, at_step)
    if df.empty:
        return
    if at_time is not None or at_step is not None:
        missing = int(df["t"].isna().sum())
        if missing:
            st.caption(f"{missing} members did not reach this point (or have not yet): left out of the charts.")
        df = df[df["t"].notna()]
    row = info.loc[chosen]
    done = f"{row['finished']} finished, {row['diverged']} diverged, {row['failed']} failed"
    st.caption(f"{row['runs']} runs: {done}, {row['active']} not done yet. Each is also on the Runs page ({chosen}).")
    view = _filters(prefix, df)
    if view.empty:
        st.warning("No member matches these choices.")
        return
    where = ("at the last step" if at_time is None and at_step is None else
             f"at training time t = {at_time:g}" if at_time is not None else f"at step {at_step}")  # fmt: skip
    st.markdown(f"##### Values {where}, over step size × init scale")
    names = list(sweep_plots.METRICS)
    for pair in (names[:2], names[2:4], names[4:]):
        for col, column in zip(st.columns(2), pair):
            with col:
                _chart(prefix, f"heat.{column}", sweep_plots.heatmap_figure(view, column), f"sweep-{column}")
    st.caption(ui.plain(sweep_plots.CAPTIONS["heatmap"]))
    st.markdown("##### How the drift scales with the step size")
    fits = fit_slopes(view)
    _chart(prefix, "drift", sweep_plots.drift_figure(view, fits), "sweep-drift")
    st.caption(ui.plain(sweep_plots.CAPTIONS["drift"]))
    if not fits.empty:
        st.dataframe(
            fits.rename(columns={"model.init_scale": "init scale", "low": "95% low", "high": "95% high"}),
            hide_index=True,
            column_config={c: st.column_config.NumberColumn(format="%.4g") for c in ("slope", "95% low", "95% high")},
        )
    _members(prefix, view)
    st.caption(f"Made by {ui.plain(stamp_text())}.")


def _read_at(prefix: str) -> tuple[float | None, int | None]:
    """Where each member's metrics are read: its last step, a training time t (to compare step sizes at the same
    t) or a step."""
    c1, c2 = st.columns([2, 1], vertical_alignment="bottom")
    how = c1.radio("Read every metric at", READ_AT, key=f"{prefix}.read_at", horizontal=True)
    if how == READ_AT[1]:
        return c2.number_input("t", min_value=1e-6, value=1.0, format="%g", key=f"{prefix}.at_time"), None
    if how == READ_AT[2]:
        return None, int(c2.number_input("step", min_value=0, value=100, step=1, key=f"{prefix}.at_step"))
    return None, None


def _start_form(prefix: str, expanded: bool) -> None:
    """A sweep over step sizes x init scales x seeds of a preset, its size and cost shown before it starts, capped
    (``sweep_start.PAGE_CAP``); it trains in the dashboard's workers at the sweeps' priority."""
    with st.expander("Start a sweep", expanded=expanded, icon=":material/add:"), st.form(f"{prefix}.form"):
        c1, c2, c3 = st.columns(3)
        preset = c1.selectbox("Starting point (preset)", list(PRESETS), key=f"{prefix}.new.preset")
        lrs = c2.text_input("Step sizes η", "0.005, 0.01, 0.02, 0.04", key=f"{prefix}.new.lrs")
        scales = c3.text_input("Init scales σ", "0.01, 0.1", key=f"{prefix}.new.scales")
        c4, c5, c6 = st.columns(3)
        seeds = c4.text_input("Seeds", "0-3", key=f"{prefix}.new.seeds", help="a range such as 0-7, or 0,3,5")
        steps = c5.number_input("Steps (each)", 1, 1_000_000, 1000, key=f"{prefix}.new.steps")
        at_time = c6.number_input("Or a training time t (0: steps)", 0.0, 1e6, 0.0, format="%g",
                                  key=f"{prefix}.new.t", help="each step size trains K = t / η steps")  # fmt: skip
        checked = st.form_submit_button("Check the size")
        started = st.form_submit_button("Start the sweep", type="primary")
    if not (checked or started):
        return
    try:
        spec = sweep_start.form_spec(preset, lrs, scales, seeds, int(steps), at_time or None)
        cost = sweep_start.cost(spec)
        sweep_start.check_cap(cost)
    except ConfigError as exc:
        st.error(ui.plain(str(exc)))
        return
    st.caption(ui.plain(f"This sweep: {cost.describe()}."))
    if started:
        try:
            sweep, ids = sweep_start.start(spec, ui.store(), ui.runner())
        except ConfigError as exc:
            st.error(ui.plain(str(exc)))
            return
        st.session_state[f"{prefix}.sweep"] = sweep
        st.success(ui.plain(f"Started {sweep}: {len(ids)} runs queued. Their values appear below as they finish."))


def _label(info: pd.DataFrame, sweep: str) -> str:
    r = info.loc[sweep]
    return f"{sweep} ({r['runs']} runs, {r['created'].strftime('%Y-%m-%d %H:%M')} UTC)"


def _filters(prefix: str, df: pd.DataFrame) -> pd.DataFrame:
    """One choice per varied setting other than the two heat-map axes: the seed (or all) and e.g. the optimiser."""
    varied = filter_axes(df, list(df.columns[4 : list(df.columns).index("loss")]), (sweep_plots.X, sweep_plots.Y))
    if not varied:
        return df
    view = df
    for col, axis in zip(st.columns(len(varied)), varied):
        values = sorted(df[axis].unique(), key=str)
        options = [ALL_SEEDS, *values] if axis == "seed" else values
        label = sweep_plots.LABELS.get(axis, axis)
        choice = col.selectbox(label, options, key=f"{prefix}.filter.{axis}", format_func=str)
        if choice != ALL_SEEDS:
            view = view[view[axis] == choice]
    return view


def _chart(prefix: str, name: str, fig: Any, filename: str) -> None:
    key = f"{prefix}.{name}"
    st.plotly_chart(
        fig,
        key=key,
        on_select=functools.partial(_clicked, prefix, key),
        selection_mode="points",
        config=ui.chart_config(filename),
    )


def _clicked(prefix: str, key: str) -> None:
    """A click on a cell or a point: remember its run; the page opens it in Explore on this rerun."""
    points = st.session_state[key].selection.points
    for point in points:
        run = point.get("customdata")
        run = run[0] if isinstance(run, list) else run
        if run:
            st.session_state[f"{prefix}.open"] = run
            return


def _open_pending(prefix: str) -> None:
    run = st.session_state.pop(f"{prefix}.open", None)
    if run:
        open_in_explore(run)


def open_in_explore(run_id: str) -> None:
    """As the Runs page's "Open in Explore": Explore attaches the run and loads its config."""
    st.session_state["explore.open"] = run_id
    st.switch_page(ui.PAGES / "explore.py")


def _members(prefix: str, df: pd.DataFrame) -> None:
    with st.expander(f"Members ({len(df)})"):
        st.dataframe(df, hide_index=True, height=min(400, 38 + 35 * len(df)))
        labels = dict(zip(df["run"], df["name"] + " · " + df["state"]))
        c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
        run = c1.selectbox("Member", list(labels), format_func=labels.get, key=f"{prefix}.member")
        if c2.button("Open in Explore", key=f"{prefix}.open_member"):
            open_in_explore(run)
