"""The Sweeps page: pick a stored sweep, see its heat maps and the step-size fit, open any member in Explore.

Widgets and layout only: the numbers come from ``balance.runs.sweep`` (summary, fit) and the figures from
``balance.views.sweeps``. A sweep is started from the command line (``balance sweep``); the page says how.
"""

from __future__ import annotations

import functools
from typing import Any

import pandas as pd
import streamlit as st

from balance.app import common as ui
from balance.runs.sweep import fit_slopes, summary
from balance.views import sweeps as sweep_plots

EXAMPLE = (
    "balance sweep --model mf --d1 50 --d2 50 --rank 5 --lr 0.005,0.01,0.02,0.04 "
    "--init-scale 0.01,0.1,0.3 --seeds 0-3 --steps 2000 --log-every 10"
)
ALL_SEEDS = "all seeds (median)"


def page(prefix: str) -> None:
    st.markdown("#### Sweeps: many configurations at once")
    _open_pending(prefix)
    sweeps = ui.store().sweeps()
    if sweeps.empty:
        st.info("No sweeps stored yet. Start one from the command line; its runs appear here and on the Runs page:")
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
    df = summary(ui.store(), chosen)
    if df.empty:
        return
    row = info.loc[chosen]
    done = f"{row['finished']} finished, {row['diverged']} diverged, {row['failed']} failed"
    st.caption(f"{row['runs']} runs: {done}, {row['active']} not done yet. Each is also on the Runs page ({chosen}).")
    view = _filters(prefix, df)
    if view.empty:
        st.warning("No member matches these choices.")
        return
    st.markdown("##### Final values over step size × init scale")
    names = list(sweep_plots.METRICS)
    for pair in (names[:2], names[2:]):
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


def _label(info: pd.DataFrame, sweep: str) -> str:
    r = info.loc[sweep]
    return f"{sweep} ({r['runs']} runs, {r['created'].strftime('%Y-%m-%d %H:%M')} UTC)"


def _filters(prefix: str, df: pd.DataFrame) -> pd.DataFrame:
    """One choice per varied setting other than the two heat-map axes: the seed (or all) and e.g. the optimiser."""
    axes = [c for c in df.columns[4 : list(df.columns).index("loss")] if c not in (sweep_plots.X, sweep_plots.Y)]
    varied = [c for c in axes if df[c].astype(str).nunique() > 1]
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
