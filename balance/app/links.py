"""Explore's address: the config (and ``run=<id>``) read from the URL once per session, and written back.

A link names settings, the seed and, for CSV data, the file's key (``csv=<key>``): never a server path.
"""

from __future__ import annotations

from collections.abc import Mapping

import streamlit as st

from balance.app.common import attach, literal, store
from balance.app.sidebar import FIELDS, load_config
from balance.config import ConfigError, RunConfig, link_query
from balance.runs import uploads
from balance.runs.store import StoreError

TRUE = frozenset({"1", "true", "yes", "on"})


def init_session(prefix: str) -> None:
    """Once per browser session: take the config (and ``run=<id>``) from the URL, warning about bad values."""
    pending = st.session_state.pop(f"{prefix}.open", None)  # "Open in Explore" on the Runs page
    if pending:
        st.session_state[f"{prefix}.ready"] = True
        _attach_stored(prefix, pending)
    if st.session_state.get(f"{prefix}.ready"):
        return
    st.session_state[f"{prefix}.ready"] = True
    query = {k: v for k, v in st.query_params.to_dict().items() if k != "run"}
    st.session_state[f"{prefix}.hidden"], query = hidden_by_link(query)
    run_id = st.query_params.get("run", "")
    config, problems = config_from_link(query)
    if problems:
        st.session_state[f"{prefix}.url_problems"] = problems
    if run_id and not query and not problems:
        _attach_stored(prefix, run_id)
        return
    load_config(prefix, config)
    if run_id:
        _attach_stored(prefix, run_id, load=False)


CSV_PARAM = "csv"  # a link names its CSV by key (uploads.find_csv), never by path


def page_query(config: RunConfig) -> dict[str, str]:
    """``link_query`` and, for the csv dataset, the key of its file (``csv=<key>``): a link without a path."""
    query = link_query(config)
    if config.data.name == "csv" and (key := uploads.key_of(store().home, config.data.csv_path)):
        query[CSV_PARAM] = key
    return query


def config_from_link(query: Mapping[str, str]) -> tuple[RunConfig, list[str]]:
    """``RunConfig.from_query`` (lenient) with the file named by ``csv=<key>``, if the dashboard may read it.

    data.name=csv is valid only with a path, which no query carries: the rest is validated with the teacher data as
    a stand-in, then the dataset and its file are set (or the stand-in kept, and the problem named).
    """
    query = dict(query)
    key = query.pop(CSV_PARAM, "")
    if query.get("data.name") != "csv":
        return RunConfig.from_query(query, strict=False)
    stand_in, problems = RunConfig.from_query({**query, "data.name": "teacher"}, strict=False)
    path = uploads.find_csv(store().home, key) if key else None
    if path is None:
        why = f"{CSV_PARAM} = {key!r}: no such CSV file here" if key else "the link names no CSV file"
        return stand_in, [*problems, f"data.name = 'csv': {why}; the data are teacher until you upload the file"]
    try:
        return stand_in.replace(**{"data.name": "csv", "data.csv_path": str(path)}), problems
    except ConfigError as exc:
        return stand_in, [*problems, str(exc)]


def _attach_stored(prefix: str, run_id: str, load: bool = True) -> None:
    try:
        record = store().get_run(run_id)
    except (StoreError, ValueError):
        st.session_state[f"{prefix}.url_problems"] = [
            f"run = {run_id!r}: no such run is stored here; press Start to train this configuration again"
        ]
        return
    if load:
        load_config(prefix, record.config)
    attach(prefix, run_id)


def url_warnings(prefix: str) -> None:
    problems = st.session_state.pop(f"{prefix}.url_problems", None)
    if problems:
        lines = "\n".join(f"- {literal(p)}" for p in problems)
        st.warning(f"This link had settings that could not be used; they were left at their defaults:\n{lines}")


def hidden_by_link(query: Mapping[str, str]) -> tuple[frozenset[str], dict[str, str]]:
    """The settings a classroom link hides, and the rest of its query.

    As TensorFlow Playground's ``*_hide``: ``optim.momentum_hide=1`` hides one setting; ``show=optim.lr,steps``
    hides all but those (``preset`` names the preset picker). Unknown names are ignored: a link still opens.
    """
    hidden = {k[: -len("_hide")] for k, v in query.items() if k.endswith("_hide") and v.lower() in TRUE}
    if "show" in query:
        hidden |= {*FIELDS, "preset"} - {s.strip() for s in query["show"].split(",")}
    rest = {k: v for k, v in query.items() if k != "show" and not k.endswith("_hide")}
    return frozenset(hidden & {*FIELDS, "preset"}), rest


def link_flags(hidden: frozenset[str]) -> dict[str, str]:
    """``hidden`` as the shortest flags: ``show=`` when most settings are hidden, else one ``*_hide`` each."""
    if not hidden:
        return {}
    shown = [name for name in ["preset", *FIELDS] if name not in hidden]
    if len(shown) < len(hidden):
        return {"show": ",".join(shown)}
    return {f"{name}_hide": "1" for name in sorted(hidden)}


def sync_url(prefix: str, config: RunConfig | None) -> None:
    """Write the config (see ``link_query``) and the attached run into the URL."""
    if config is None:  # keep the last good link while the user fixes a value
        return
    wanted = {**page_query(config), **link_flags(st.session_state.get(f"{prefix}.hidden", frozenset()))}
    run_id = st.session_state.get(f"{prefix}.run")
    if run_id:
        wanted["run"] = run_id
    if st.query_params.to_dict() != wanted:
        st.query_params.from_dict(wanted)
