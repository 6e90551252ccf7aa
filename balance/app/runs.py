"""The Runs page: every stored run in a table to filter, sort, select, overlay, export, import and delete.

Streamlit only here and in the other ``ui*`` modules; the store and the charts come from the library.

Selection follows run ids, never row positions: ``<prefix>.selected`` (the multiselect's list of ids) is the one
truth. The table's ticks are written from it before every draw (Streamlit keeps a table's selection by position,
so after a delete, a filter, a sort or a new run the same positions would tick other runs), and a tick in the
table is read back through the ids of the rows as they were drawn. Text that comes from files (run names,
messages, imported configs, the uploaded file's name) is shown as text, never as Markdown or HTML (``literal``).
"""

from __future__ import annotations

import functools
import math
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from balance.app.common import PAGES, attach, chart_config, metrics_csv, number_text, plain, runner, store
from balance.config import ConfigError
from balance.runs.archive import import_in_worker
from balance.runs.store import RunStore, StoreError
from balance.views import figures as plots
from balance.views import overlay as overlays

RUN_COLUMNS = ["id", "name", "state", "step_size", "init_scale", "model", "dataset", "optimizer", "step", "steps"]
RUN_COLUMNS += ["origin", "sweep", "updated", "message"]
SORTS = ["updated", "created", "name", "state", "model", "lr", "init_scale", "step"]
READ_ERRORS = (StoreError, ConfigError, ValueError, KeyError, OSError)  # a run or a store that cannot be read


def literal(text: object) -> str:
    """``text`` for a Markdown element (errors, toasts) shown as itself: every ASCII punctuation mark escaped, so
    ``![b](http://host/x.png)`` is neither an image nor a link, and ``:red[x]``, ``$x$``, ``<b>`` stay as typed."""
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", str(text))


def runs_page(prefix: str) -> None:
    st.markdown("#### Stored runs")
    _import_box(prefix)
    runs, problem = load_runs()
    if problem:
        st.error(literal(problem), icon=":material/error:")
    if runs is None:
        return
    if runs.empty:
        st.info("No runs stored yet: start one on the **Explore** page.")
        return
    selected = current_selection(prefix, runs["id"])
    view = filter_runs(prefix, runs)
    run_table(prefix, view, selected)
    labels = run_labels(runs)
    selected = st.multiselect(
        "Selected runs (tick rows in the table, or pick here)",
        list(labels),
        format_func=labels.get,
        key=f"{prefix}.selected",
    )
    frames = load_metrics(selected, labels)
    run_actions(prefix, runs, selected, [i for i in selected if i in frames])
    if frames:
        overlay(prefix, {labels[i]: df for i, df in frames.items()})


# --- the list -----------------------------------------------------------------------------------------------------


def load_runs() -> tuple[pd.DataFrame | None, str]:
    """(runs, '') or (None, why the store cannot be read); runs the store could not read are reported, not fatal."""
    try:
        runs = store().list_runs()
    except READ_ERRORS as exc:
        return None, f"The run store cannot be read, so no runs are listed: {exc}"
    runs = runs.assign(step_size=[lr_text(lr, h) for lr, h in zip(runs["lr"], runs["lr_history"])])
    runs = watched_models(runs)
    bad = runs[runs["state"] == "unreadable"]
    if len(bad):
        return runs, f"{len(bad)} run(s) could not be read and are listed as 'unreadable': {', '.join(bad['id'])}"
    return runs, ""


def watched_models(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that ``balance.watch`` logged from a training loop of their own (origin ``watched``): their config is a
    stand-in for the optimiser's settings, so the model column names the model's class (its ``model`` event) and
    the dataset and init scale columns stay empty."""
    watched = runs["origin"] == "watched"
    if not watched.any():
        return runs
    runs = runs.copy()
    for i in runs.index[watched]:
        try:
            events = store().events(runs.at[i, "id"])
        except READ_ERRORS:
            continue
        model = events.loc[events["kind"] == "model", "text"]
        runs.at[i, "model"] = f"{model.iloc[0] if len(model) else 'your model'} (watched)"
    runs.loc[watched, "dataset"] = "your data"
    runs.loc[watched, "init_scale"] = math.nan
    return runs


def lr_text(lr: float, history: object = None) -> str:
    """The step size as the table shows it: the store's ``lr_history`` (``0.01 → 0.05 at step 300``) where it was
    changed while the run trained, else the configured one (``0.01``)."""
    if isinstance(history, str) and history:
        return history
    return "" if lr is None or math.isnan(float(lr)) else number_text(float(lr))


def run_labels(runs: pd.DataFrame) -> dict[str, str]:
    """A label for each run id (name, model, optimiser, step size, init scale), unique: the overlay's legend."""
    labels: dict[str, str] = {}
    seen: set[str] = set()
    for r in runs.itertuples():
        what = f"{r.model} · {r.optimizer} η={r.step_size} · σ={number_text(float(r.init_scale))}"
        what = "unreadable" if r.state == "unreadable" else what
        label = f"{r.name or r.id} ({what})" + (f" · {r.origin}" if r.origin in ("imported", "watched") else "")
        labels[r.id] = f"{label} [{r.id}]" if label in seen else label
        seen.add(label)
    return labels


def filter_runs(prefix: str, runs: pd.DataFrame) -> pd.DataFrame:
    """Text filter (any column), state filter and sort, as four controls above the table."""
    c1, c2, c3, c4 = st.columns([3, 2, 2, 1.3], vertical_alignment="bottom")
    text = c1.text_input("Filter", key=f"{prefix}.filter", placeholder="text in any column, e.g. mlp or 0.05")
    states = c2.multiselect("State", sorted(runs["state"].unique()), key=f"{prefix}.states")
    sort = c3.selectbox("Sort by", SORTS, key=f"{prefix}.sort")
    descending = c4.toggle("descending", value=True, key=f"{prefix}.descending")
    view = runs
    if text:
        hay = runs.astype(str).apply(lambda row: " ".join(row).lower(), axis=1)
        view = view[hay.str.contains(text.lower(), regex=False)]
    if states:
        view = view[view["state"].isin(states)]
    return view.sort_values(sort, ascending=not descending, kind="stable").reset_index(drop=True)


# --- selection by id ------------------------------------------------------------------------------------------------


def current_selection(prefix: str, ids: pd.Series) -> list[str]:
    """The selected ids still stored (a run deleted elsewhere drops out), kept in ``<prefix>.selected``."""
    known = set(ids)
    before = st.session_state.get(f"{prefix}.selected", [])
    selected = [i for i in before if i in known]
    if selected != before:
        st.session_state[f"{prefix}.selected"] = selected
    return selected


def ticked_rows(view_ids: Sequence[str], selected: Sequence[str]) -> list[int]:
    """Positions of the selected runs among the rows drawn."""
    chosen = set(selected)
    return [i for i, run_id in enumerate(view_ids) if run_id in chosen]


def selection_after_ticks(selected: Sequence[str], view_ids: Sequence[str], rows: Sequence[int]) -> list[str]:
    """The selection once the table reports ``rows`` ticked among ``view_ids``: runs the table does not show
    (filtered out) keep their state, the rows drawn are selected exactly when ticked; order of choice kept."""
    ticked = [view_ids[r] for r in sorted(rows) if 0 <= r < len(view_ids)]
    shown = set(view_ids)
    kept = [i for i in selected if i not in shown or i in ticked]
    return kept + [i for i in ticked if i not in kept]


def run_table(prefix: str, view: pd.DataFrame, selected: list[str]) -> None:
    key, ids = f"{prefix}.table", view["id"].tolist()
    rows = ticked_rows(ids, selected)
    state = st.session_state.get(key)
    if list(state["selection"]["rows"] if state is not None else []) != rows:
        st.session_state[key] = {"selection": {"rows": rows}}  # the ticks follow the ids, not the positions
    st.session_state[f"{prefix}.table_drawn"] = (ids, rows)
    st.dataframe(
        view,
        key=key,
        hide_index=True,
        on_select=functools.partial(_table_ticked, prefix, ids),
        selection_mode="multi-row",
        column_order=RUN_COLUMNS,
        column_config={
            "step_size": st.column_config.TextColumn(
                "step size", help="→ marks a change while it trained", width="medium"
            ),
            "init_scale": st.column_config.NumberColumn("init scale", format="%g"),
            "origin": st.column_config.TextColumn(
                "origin",
                help="imported: from a file, not trained here; watched: your own training loop (balance.watch)",
            ),
            "updated": st.column_config.DatetimeColumn("updated", format="YYYY-MM-DD HH:mm:ss"),
        },
        height=min(400, 38 + 35 * len(view)),
    )


def _table_ticked(prefix: str, ids: list[str], *_: Any) -> None:
    """``ids``: the runs in the order the table drew them, bound when it was drawn.

    After the page sets the ticks, the browser sends them back with its next message, which Streamlit reports as
    a change: the ticks the page drew are no tick of the user's (read as one, they undid a multiselect pick made
    in that same message).
    """
    rows = list(st.session_state[f"{prefix}.table"]["selection"]["rows"])
    if st.session_state.get(f"{prefix}.table_drawn") == (ids, rows):
        return
    selected = st.session_state.get(f"{prefix}.selected", [])
    st.session_state[f"{prefix}.selected"] = selection_after_ticks(selected, ids, rows)


# --- actions ---------------------------------------------------------------------------------------------------------


def load_metrics(selected: Sequence[str], labels: dict[str, str]) -> dict[str, pd.DataFrame]:
    """The metrics of each selected run that can be read; one warning names those that cannot."""
    frames, failed = {}, []
    for run_id in selected:
        try:
            frames[run_id] = store().metrics(run_id)
        except READ_ERRORS as exc:
            failed.append(f"{labels.get(run_id, run_id)}: {exc}")
    if failed:
        st.warning(literal("Could not read " + "; ".join(failed)), icon=":material/warning:")
    return frames


def run_actions(prefix: str, runs: pd.DataFrame, selected: list[str], readable: list[str]) -> None:
    one = readable[0] if len(selected) == 1 and readable else None
    with st.container(horizontal=True, vertical_alignment="bottom"):
        if st.button("Open in Explore", key=f"{prefix}.open", disabled=one is None, help="select one run"):
            st.session_state["explore.open"] = one
            st.switch_page(PAGES / "explore.py")
        # rerun on open (the list is then the current selection); closed again after a delete
        with st.popover("Delete", disabled=not selected, key=f"{prefix}.delete_open", on_change="rerun"):
            delete_confirmation(prefix, runs, selected)
        if readable:
            csv = functools.partial(metrics_csv, store(), list(readable))
            st.download_button("Metrics (CSV)", csv, "metrics.csv", "text/csv", key=f"{prefix}.csv")
        if one is not None:
            st.download_button(
                "Export run (.zip)",
                functools.partial(export_bytes, store(), one),
                f"{one}.zip",
                "application/zip",
                key=f"{prefix}.export",
                help="one portable file: config, metrics, events, neuron snapshots; import it here or elsewhere",
            )


def delete_confirmation(prefix: str, runs: pd.DataFrame, selected: list[str]) -> None:
    """What the Delete button will delete, by name and id; the button deletes exactly those ids."""
    names = dict(zip(runs["id"], runs["name"]))
    st.text(f"Delete {len(selected)} run(s) and their metrics? This cannot be undone.")
    st.text("\n".join(f"{names.get(i) or '(no name)'}  ·  {i}" for i in selected))
    st.button(
        f"Delete {len(selected)} run(s)",
        type="primary",
        key=f"{prefix}.delete",
        disabled=not selected,
        on_click=_delete,
        args=(prefix, tuple(selected), tuple(names.get(i) or i for i in selected)),
    )


def _delete(prefix: str, ids: tuple[str, ...], names: tuple[str, ...]) -> None:
    done, failed = [], []
    for run_id, name in zip(ids, names):
        try:
            _delete_run(run_id)
            done.append(name)
        except StoreError as exc:
            failed.append(f"{name}: {exc}")
    st.session_state[f"{prefix}.selected"] = [i for i in st.session_state.get(f"{prefix}.selected", []) if i not in ids]
    st.session_state[f"{prefix}.delete_open"] = False
    if st.session_state.get("explore.run") in ids:
        attach("explore", None)
    if done:
        st.toast(literal(f"Deleted {len(done)} run(s): {', '.join(done)}"))
    if failed:
        st.toast(literal("Not deleted: " + "; ".join(failed)), icon=":material/error:")


def _delete_run(run_id: str) -> None:
    """Through the runner (it stops a run in training first); a run whose record is damaged cannot be training
    (no worker can read it either), and the runner refuses it for want of a record: the store deletes it."""
    try:
        runner().delete(run_id)
    except StoreError as exc:
        if exc.kind != "corrupt":
            raise
        store().delete_run(run_id)


def export_bytes(s: RunStore, run_id: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{run_id}.zip"
        s.export_run(run_id, path)
        return path.read_bytes()


# --- import ----------------------------------------------------------------------------------------------------------


def _import_box(prefix: str) -> None:
    """An uploader that imports what it is given (before the list is read, so a new run is listed at once), then
    is emptied for the next file; the outcome stays below it until the next import."""
    generation = st.session_state.setdefault(f"{prefix}.upload_generation", 0)
    with st.expander("Import a run"):
        upload = st.file_uploader("An exported run (.zip)", type=["zip"], key=f"{prefix}.upload.{generation}")
        if upload is not None:
            with st.spinner(literal(f"Importing {upload.name}"), show_time=True):
                st.session_state[f"{prefix}.import_note"] = import_upload(upload, upload.name)
            st.session_state[f"{prefix}.upload_generation"] = generation + 1  # a fresh, empty uploader
            st.rerun()
        kind, text = st.session_state.get(f"{prefix}.import_note", ("", ""))
        if kind:
            {"success": st.success, "info": st.info, "error": st.error}[kind](literal(text))


def import_upload(upload: Any, name: str) -> tuple[str, str]:
    """Import an uploaded file (file-like) in a separate, memory-limited process, so that whatever it holds the
    server does not grow: (kind, message), naming ``name`` (the user's file, never the temporary copy)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.zip"
        upload.seek(0)
        with path.open("wb") as out:
            shutil.copyfileobj(upload, out)
        try:
            run_id = import_in_worker(store().home, path, name)
        except StoreError as exc:
            if exc.kind == "duplicate":  # "<name>: already stored as run <id>; nothing imported"
                return "info", str(exc)
            return "error", f"Could not import {name}: {_without(str(exc), f'{name}: ')}"
    return "success", f"Imported {name} as run {run_id}"


def _without(text: str, prefix: str) -> str:
    return text[len(prefix) :] if text.startswith(prefix) else text


# --- overlay ---------------------------------------------------------------------------------------------------------


def overlay(prefix: str, frames: dict[str, pd.DataFrame]) -> None:
    """One metric of the selected runs in one chart, e.g. one config at four step sizes."""
    columns = overlays.overlay_columns(frames.values())
    c1, c2, c3, c4 = st.columns([3, 1, 1, 1], vertical_alignment="bottom")
    column = c1.selectbox("Metric", columns, key=f"{prefix}.metric", format_func=overlays.overlay_option)
    x = c2.segmented_control("x axis", ["step", "t"], default="step", key=f"{prefix}.x", required=True) or "step"
    log_x = c3.toggle("log x", key=f"{prefix}.log_x")
    wanted = st.session_state.setdefault(f"{prefix}.log_y_wanted", True)  # on by default, where it can be
    if overlays.overlay_log_ok(frames, column, x=x, log_x=log_x):
        log_y = c4.toggle("log y", value=wanted, key=f"{prefix}.log_y")
        st.session_state[f"{prefix}.log_y_wanted"] = log_y  # kept while a signed metric is shown
    else:
        why = f"{column} has values ≤ 0 (it is signed): a log axis would hide them, so it is drawn linear"
        log_y = c4.toggle("log y", value=False, key=f"{prefix}.log_y_signed", disabled=True, help=why)
    fig = overlays.overlay_figure(frames, column, log_y=log_y, x=x, log_x=log_x)
    st.plotly_chart(fig, key=f"{prefix}.overlay", config=chart_config(f"overlay-{column}"))
    st.caption(plain(plots.CAPTIONS["overlay"]))
    html = functools.partial(fig.to_html, include_plotlyjs=True, full_html=True)
    st.download_button("Chart (HTML)", html, f"overlay-{column}.html", "text/html", key=f"{prefix}.html")
