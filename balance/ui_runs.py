"""The Runs page: every stored run in a table to filter, sort, select, overlay, export, import and delete.

Streamlit only here and in the other ``ui*`` modules; the store and the charts come from the library.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from balance import plots
from balance.config import ConfigError
from balance.store import RunStore, StoreError
from balance.ui import PAGES, attach, chart_config, metrics_csv, number_text, plain, runner, store

RUN_COLUMNS = ["id", "name", "state", "step", "steps", "model", "dataset", "optimizer", "lr", "init_scale", "sweep"]
RUN_COLUMNS += ["updated", "message"]


def runs_page(prefix: str) -> None:
    st.markdown("#### Stored runs")
    runs = store().list_runs()
    _import_box(prefix)
    if runs.empty:
        st.info("No runs stored yet: start one on the **Explore** page.")
        return
    view = filter_runs(prefix, runs)
    st.dataframe(
        view,
        key=f"{prefix}.table",
        hide_index=True,
        on_select=functools.partial(_table_selected, prefix, view["id"].tolist()),
        selection_mode="multi-row",
        column_order=RUN_COLUMNS,
        column_config={
            "lr": st.column_config.NumberColumn("step size", format="%g"),
            "init_scale": st.column_config.NumberColumn("init scale", format="%g"),
            "updated": st.column_config.DatetimeColumn("updated", format="YYYY-MM-DD HH:mm:ss"),
        },
        height=min(400, 38 + 35 * len(view)),
    )
    labels = {r.id: run_label(r) for r in runs.itertuples()}
    st.session_state.setdefault(f"{prefix}.selected", [])
    st.session_state[f"{prefix}.selected"] = [i for i in st.session_state[f"{prefix}.selected"] if i in labels]
    selected = st.multiselect(
        "Selected runs (click rows in the table, or pick here)",
        list(labels),
        format_func=labels.get,
        key=f"{prefix}.selected",
    )
    run_actions(prefix, selected)
    if selected:
        overlay(prefix, {labels[i]: store().metrics(i) for i in selected})


def run_label(r: Any) -> str:
    what = f"{r.model} · {r.optimizer} η={number_text(float(r.lr))} · σ={number_text(float(r.init_scale))}"
    return f"{r.name or r.id} ({what})"


def filter_runs(prefix: str, runs: pd.DataFrame) -> pd.DataFrame:
    """Text filter (any column), state filter and sort, as three controls above the table."""
    c1, c2, c3, c4 = st.columns([3, 2, 2, 1], vertical_alignment="bottom")
    text = c1.text_input("Filter", key=f"{prefix}.filter", placeholder="text in any column, e.g. mlp or 0.05")
    states = c2.multiselect("State", sorted(runs["state"].unique()), key=f"{prefix}.states")
    sort = c3.selectbox("Sort by", ["updated", "created", "name", "state", "model", "lr", "init_scale", "step"],
                        key=f"{prefix}.sort")  # fmt: skip
    descending = c4.toggle("descending", value=True, key=f"{prefix}.descending")
    view = runs
    if text:
        hay = runs.astype(str).apply(lambda row: " ".join(row).lower(), axis=1)
        view = view[hay.str.contains(text.lower(), regex=False)]
    if states:
        view = view[view["state"].isin(states)]
    return view.sort_values(sort, ascending=not descending, kind="stable").reset_index(drop=True)


def _table_selected(prefix: str, ids: list[str]) -> None:
    rows = st.session_state[f"{prefix}.table"].selection.rows
    st.session_state[f"{prefix}.selected"] = [ids[i] for i in rows if i < len(ids)]


def run_actions(prefix: str, selected: list[str]) -> None:
    with st.container(horizontal=True, vertical_alignment="bottom"):
        if st.button("Open in Explore", key=f"{prefix}.open", disabled=len(selected) != 1, help="select one run"):
            st.session_state["explore.open"] = selected[0]
            st.switch_page(PAGES / "explore.py")
        with st.popover("Delete", disabled=not selected):
            st.write(f"Delete {len(selected)} run(s) and their metrics? This cannot be undone.")
            st.button("Delete", type="primary", key=f"{prefix}.delete", on_click=_delete, args=(prefix, selected))
        if selected:
            csv = functools.partial(metrics_csv, store(), list(selected))
            st.download_button("Metrics (CSV)", csv, "metrics.csv", "text/csv", key=f"{prefix}.csv")
        if len(selected) == 1:
            st.download_button(
                "Export run (.zip)",
                functools.partial(export_bytes, store(), selected[0]),
                f"{selected[0]}.zip",
                "application/zip",
                key=f"{prefix}.export",
                help="one portable file: config, metrics, events, neuron snapshots; import it here or elsewhere",
            )


def _delete(prefix: str, ids: list[str]) -> None:
    for run_id in ids:
        runner().delete(run_id)
    st.session_state[f"{prefix}.selected"] = []
    if st.session_state.get("explore.run") in ids:
        attach("explore", None)
    st.toast(f"Deleted {len(ids)} run(s)")


def export_bytes(s: RunStore, run_id: str) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{run_id}.zip"
        s.export_run(run_id, path)
        return path.read_bytes()


def _import_box(prefix: str) -> None:
    with st.expander("Import a run"):
        upload = st.file_uploader("An exported run (.zip)", type=["zip"], key=f"{prefix}.upload")
        if upload is not None and st.session_state.get(f"{prefix}.imported") != upload.file_id:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "run.zip"
                path.write_bytes(upload.getvalue())
                try:
                    run_id = store().import_run(path)
                except (StoreError, ConfigError, ValueError) as exc:
                    st.error(f"Could not import {upload.name}: {exc}")
                    return
            st.session_state[f"{prefix}.imported"] = upload.file_id
            st.success(f"Imported {upload.name} as run {run_id}")


def overlay(prefix: str, frames: dict[str, pd.DataFrame]) -> None:
    """One metric of the selected runs in one chart, e.g. one config at four step sizes."""
    columns = list(dict.fromkeys(c for df in frames.values() for c in df.columns if c not in ("step", "t")))
    columns.sort(key=lambda c: (c != "loss", not c.startswith("gap_drift"), c))
    c1, c2, c3, c4 = st.columns([3, 1, 1, 1], vertical_alignment="bottom")
    column = c1.selectbox("Metric", columns, key=f"{prefix}.metric")
    x = c2.segmented_control("x axis", ["step", "t"], default="step", key=f"{prefix}.x", required=True)
    log_x = c3.toggle("log x", key=f"{prefix}.log_x")
    log_y = c4.toggle("log y", value=True, key=f"{prefix}.log_y")
    fig = plots.overlay_figure(frames, column, log_y=log_y, x=x or "step", log_x=log_x)
    st.plotly_chart(fig, key=f"{prefix}.overlay", config=chart_config(f"overlay-{column}"))
    st.caption(plain(plots.CAPTIONS["overlay"]))
    html = functools.partial(fig.to_html, include_plotlyjs=True, full_html=True)
    st.download_button("Chart (HTML)", html, f"overlay-{column}.html", "text/html", key=f"{prefix}.html")
