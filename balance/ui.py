"""The dashboard's Streamlit layer: config widgets built from the schema, URL sync, run controls, live charts.

The only library module that imports streamlit; pages call these functions and draw nothing of their own.
Data flow: widgets (or the URL) -> ``RunConfig`` -> ``Runner.start`` in a worker process -> ``RunStore`` ->
``store.metrics(run, after=cursor)`` polled by a fragment twice a second -> ``balance.plots`` -> ``live_chart`` (a
chart that updates in place; ``assets/live_chart.js``).

Session state keys carry the page prefix: ``explore.model.width`` is a widget, ``explore.run`` the attached run.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import logging
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from latex2mathml.converter import convert

from balance import plots, uploads
from balance.advice import divergence_advice, settings_key
from balance.config import ConfigError, RunConfig, applicable, choices_of, link_query, parse_value, schema
from balance.data import DATASETS
from balance.files import FileRefused
from balance.laws import why_no_law
from balance.models import MODELS
from balance.optim import OPTIMIZERS
from balance.presets import PRESETS
from balance.store import ACTIVE as STORE_ACTIVE
from balance.store import RunStore, StoreError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
REFRESH_S = 0.5  # live charts and the status line poll this often while a run trains
LIVE_POINTS = 150  # buckets per live chart: decimation keeps each bucket's extremes, so about 300 points a trace
TRUE = frozenset({"1", "true", "yes", "on"})
ACTIVE = frozenset(STORE_ACTIVE)  # queued, running, paused: the page polls while a run is in one of these
SECTIONS = {"model": "Model", "data": "Data", "optim": "Optimiser", "run": "Run"}
OPEN_SECTIONS = frozenset({"model", "optim", "run"})
# Registries whose entries carry a one-line ``help``: shown under the choice and listed in its tooltip.
REGISTRIES: dict[str, Mapping[str, Any]] = {"model.name": MODELS, "data.name": DATASETS, "optim.name": OPTIMIZERS}
# Settings most runs never touch: drawn in one "Advanced" expander instead of their section.
ADVANCED = frozenset(
    {
        "data.singular_values",
        "data.teacher_width",
        "data.image_size",
        "data.target",
        "data.loss",
        "data.seed",
        "model.widths",
        "model.negative_slope",
        "optim.beta2",
        "optim.eps",
        "optim.rtol",
        "optim.decay_power",
        "optim.decay_every",
        "optim.decay_factor",
        "log_every",
        "max_seconds",
    }
)
# A model's usual starting point (its preset): a model change brings these values for ``MODEL_FIELDS``, except
# where the user set one in this session. Not batch norm: switched on for an MLP, it stays, and the message under it
# says that it does not fit the new model.
MODEL_DEFAULTS: dict[str, RunConfig] = {
    "mf": RunConfig(),
    "mlp": PRESETS["mlp-relu"][1],
    "linear": PRESETS["linear-deep"][1],
    "cnn": PRESETS["cnn"][1],
}
MODEL_FIELDS = (
    "data.name",
    "data.samples",
    "data.input_dim",
    "data.image_size",
    "model.depth",
    "model.width",
    "model.widths",
    "model.rank",
    "model.init_scale",
    "model.layer_scales",
    "model.regularizer",
    "optim.lr",
    "steps",
)
# The log-spaced grid offered for a ``log`` field; the config's own min / max where absent.
LOG_RANGES = {"model.init_scale": (1e-4, 10.0), "optim.lr": (1e-5, 10.0), "optim.eps": (1e-12, 1e-2)}
LABELS = {
    "model.name": "model",
    "model.rank": "factor rank",
    "model.init": "init distribution",
    "model.init_scale": "init scale σ",
    "model.layer_scales": "per-layer scale multipliers",
    "model.bias": "biases",
    "model.batch_norm": "batch norm",
    "data.name": "dataset",
    "data.rank": "target rank",
    "optim.name": "optimiser",
    "optim.lr": "step size η",
    "optim.weight_decay": "weight decay",
    "optim.batch_size": "batch size",
}


def chart_config(filename: str) -> dict[str, Any]:
    """Plotly's modebar: no logo; the camera button downloads a PNG at twice the size, named ``filename``."""
    return {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2, "filename": filename}}


# --- live charts ------------------------------------------------------------------------------------------------

STATIC = Path(__file__).resolve().parent.parent / "static"  # served at app/static/ (.streamlit/config.toml)


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
    _LIVE_CHART(key=key, data=data, height=int(fig.layout.height or plots.HEIGHT))


# --- services ---------------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def _store(home: str) -> RunStore:
    return RunStore(home or None)


@st.cache_resource(show_spinner=False)
def _runner(home: str) -> Any:
    from balance.runner import Runner  # imported late: the runner starts worker processes

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


# --- settings <-> widget values ---------------------------------------------------------------------------------

FIELDS: dict[str, dataclasses.Field] = dict(schema())


def section_of(name: str) -> str:
    return name.partition(".")[0] if "." in name else "run"


def value_of(config: RunConfig, name: str) -> Any:
    section, _, field = name.rpartition(".")
    return getattr(getattr(config, section) if section else config, field)


def number_text(v: Any) -> str:
    """Shortest text that reads back as the same number: 0.001, 1e-05, 0.17677669529663687."""
    if isinstance(v, float):
        short = f"{v:g}"
        return short if float(short) == v else repr(v)
    return str(v)


def to_widget(name: str, value: Any) -> Any:
    """A setting's value as its widget holds it (lists of numbers as comma-separated text)."""
    return ",".join(number_text(v) for v in value) if isinstance(value, tuple) else value


def config_values(config: RunConfig) -> dict[str, Any]:
    return {name: to_widget(name, value_of(config, name)) for name in FIELDS}


DEFAULT_VALUES = config_values(RunConfig())


def build_config(values: Mapping[str, Any]) -> tuple[RunConfig | None, str, str]:
    """``(config, field, message)``: the config of the widget values, or None with the offending field and why."""
    parsed: dict[str, Any] = {}
    try:
        for name, value in values.items():
            is_text = isinstance(value, str) and FIELDS[name].type.startswith("tuple")
            parsed[name] = parse_value(name, value) if is_text else value
        return RunConfig().replace(**parsed), "", ""
    except ConfigError as exc:
        return None, error_field(str(exc)), str(exc)


def error_field(message: str) -> str:
    """The setting a ``ConfigError`` message starts with ('model.name = ...' -> 'model.name'), or ''."""
    m = re.match(r"^(?:run\.)?([a-z_]+(?:\.[a-z_]+)?) = ", message)
    return m.group(1) if m and m.group(1) in FIELDS else ""


def log_grid(name: str, f: dataclasses.Field, current: float) -> list[float]:
    """1-2-5 values per decade across the field's range, plus ``current`` if it is off the grid."""
    lo, hi = LOG_RANGES.get(name, (f.metadata.get("min", 1e-8), f.metadata.get("max", 1e2)))
    grid = [m * 10.0**e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1) for m in (1, 2, 5)]
    grid = [float(f"{v:.1g}") for v in grid if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
    return sorted({*grid, float(current)})


def help_text(name: str, f: dataclasses.Field) -> str:
    text = f.metadata.get("help", "")
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if lo is not None and hi is not None:
        text += f" (from {number_text(lo)} to {number_text(hi)})"
    if name in REGISTRIES:
        text += "\n\n" + "\n".join(f"- **{k}**: {entry.help}" for k, entry in REGISTRIES[name].items())
    return text


# --- config widgets ---------------------------------------------------------------------------------------------


def load_config(prefix: str, config: RunConfig) -> None:
    """Set every config widget of the page to ``config`` (before the widgets are drawn, or in a callback).

    A whole config (a preset, a link, a stored run) counts as nobody's edit: a model change may replace its values.
    """
    values = config_values(config)
    for name, value in values.items():
        st.session_state[f"{prefix}.{name}"] = value
    st.session_state[f"{prefix}.values"] = values
    st.session_state[f"{prefix}.touched"] = set()
    key = uploads.key_of(store().home, config.data.csv_path) if config.data.csv_path else ""
    if key:  # a file the dashboard may read (csv_picker clears any other path)
        shown = key if key.endswith(".csv") else f"uploaded file {key}"
        st.session_state.setdefault(f"{prefix}.csv_files", {}).setdefault(key, shown)


def current_values(prefix: str) -> dict[str, Any]:
    """Every setting's value: its widget's, or the last value saved for it (``{prefix}.values``).

    Streamlit deletes a widget's state at the end of a run that did not draw it (a setting hidden by a model
    change, or another page): a callback that runs before the next run would read None there and build no config.
    That was why the first Start after a model change did nothing.
    """
    saved = st.session_state.get(f"{prefix}.values") or DEFAULT_VALUES
    return {name: st.session_state.get(f"{prefix}.{name}", saved.get(name)) for name in FIELDS}


def _restore_widgets(prefix: str) -> None:
    """Streamlit forgets the state of widgets not drawn on a run (another page): put back the last values."""
    for name, value in current_values(prefix).items():
        st.session_state.setdefault(f"{prefix}.{name}", value)


def _widget(prefix: str, name: str, f: dataclasses.Field) -> None:
    key = f"{prefix}.{name}"
    label = LABELS.get(name) or name.rpartition(".")[2].replace("_", " ")
    common: dict[str, Any] = {"key": key, "help": help_text(name, f)}
    common.update(on_change=_edited, args=(prefix, name))
    choices = choices_of(f)
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if name == "data.csv_path":
        csv_picker(prefix, common)
    elif choices is not None:
        st.selectbox(label, choices, **common)
        if name in REGISTRIES and st.session_state.get(key) in REGISTRIES[name]:
            st.caption(REGISTRIES[name][st.session_state[key]].help)
    elif f.type == "bool":
        st.toggle(label, **common)
    elif f.type == "float" and f.metadata.get("log"):
        options = log_grid(name, f, st.session_state[key])
        st.select_slider(label, options, format_func=number_text, **common)
    elif f.type == "int":
        step = 10 ** max(0, math.floor(math.log10(max(f.default, 1))) - 1)
        st.number_input(label, min_value=lo, max_value=hi, step=step, **common)
    elif f.type == "float":
        step = 0.01 if hi is not None and hi <= 10 else 1.0
        st.number_input(label, min_value=float(lo), max_value=float(hi), step=step, format="%g", **common)
    else:  # text and lists of numbers
        placeholder = "comma-separated numbers, e.g. 1,0.5,1" if f.type.startswith("tuple") else ""
        st.text_input(label, placeholder=placeholder, **common)


def config_sidebar(prefix: str) -> tuple[RunConfig | None, str]:
    """Draw the preset picker and every setting of ``schema()`` in the sidebar; return ``(config, error)``.

    A bad value or combination is explained by ``st.error`` under the setting it names, never as a traceback.
    """
    _restore_widgets(prefix)
    hidden = st.session_state.get(f"{prefix}.hidden", frozenset())
    values = current_values(prefix)
    shown = set(applicable(values)) - hidden  # settings that do not apply are kept, not shown
    shown.add(build_config(values)[1])  # ... unless the one a message names, so that it can be mended
    slots: dict[str, Any] = {}
    by_section: dict[str, list[str]] = {s: [] for s in [*SECTIONS, "advanced"]}
    for name in FIELDS:
        if name in shown:
            by_section["advanced" if name in ADVANCED else section_of(name)].append(name)
    with st.sidebar:
        if "preset" not in hidden:
            st.selectbox(
                "Start from a preset",
                ["", *PRESETS],
                format_func=lambda k: PRESETS[k][0] if k else "(choose a preset)",
                key=f"{prefix}.preset",
                on_change=_load_preset,
                args=(prefix,),
            )
        if hidden:
            st.caption("This link shows only some settings; the others keep the link's values.")
            st.button("Show all settings", key=f"{prefix}.show_all", on_click=_show_all, args=(prefix,))
        top = st.empty()
        for section, title in [*SECTIONS.items(), ("advanced", "Advanced")]:
            if not by_section[section]:
                continue
            with st.expander(title, expanded=section in OPEN_SECTIONS or bool(hidden)):
                for name in by_section[section]:
                    _widget(prefix, name, FIELDS[name])
                    slots[name] = st.empty()
    values = current_values(prefix)
    st.session_state[f"{prefix}.values"] = values
    config, field, message = build_config(values)
    if field == "data.csv_path":  # the config's own words are for the command line (--dataset csv:PATH)
        message = "data.csv_path: upload a CSV file (numeric features, then the target column) or choose one"
    if message:
        (slots.get(field) or top).error(literal(message), icon=":material/warning:")
    return config, message


# --- CSV data: uploads and the server's data folder, never a path typed or linked ------------------------------


def csv_picker(prefix: str, common: dict[str, Any]) -> None:
    """The CSV of the csv dataset: an upload, or a file of the folder the server's owner offers.

    The setting holds a server path, but only one that ``uploads.find_csv`` gave: this session's uploads and the
    data folder's files are the choices, and a path from anywhere else (a stored or imported run) is cleared.
    """
    home = store().home
    known = st.session_state.setdefault(f"{prefix}.csv_files", {})  # key -> name shown (uploads of this session)
    choices = {str(p): name for name, p in uploads.folder_files().items()}
    choices.update({str(p): known[k] for k in known if (p := uploads.find_csv(home, k)) is not None})
    if st.session_state.get(common["key"]) not in choices:
        st.session_state[common["key"]] = ""  # never read a path this page did not offer
    st.file_uploader(
        "CSV file",
        type=["csv"],
        key=f"{prefix}.csv_upload",
        max_upload_size=uploads.MAX_CSV_BYTES >> 20,
        on_change=_csv_uploaded,
        args=(prefix,),
        help="numeric feature columns and a target column (the last, unless you name another)",
    )
    names = {"": "(upload a file)" if len(choices) == 0 else "(choose a file)", **choices}
    st.selectbox("data file", list(names), format_func=names.__getitem__, **common)
    why = st.session_state.pop(f"{prefix}.csv_error", "")
    if why:
        st.error(literal(why), icon=":material/block:")


def _csv_uploaded(prefix: str) -> None:
    """Store the upload by its content hash (its size checked first) and choose it."""
    file = st.session_state.get(f"{prefix}.csv_upload")
    if file is None:
        return
    try:
        if file.size > uploads.MAX_CSV_BYTES:  # before a byte is written
            raise FileRefused(f"{file.name}: larger than the {uploads.MAX_CSV_BYTES >> 20} MiB limit")
        key = uploads.save_upload(store().home, file.getvalue())
    except (FileRefused, OSError) as exc:
        st.session_state[f"{prefix}.csv_error"] = f"Not stored: {exc}"
        return
    st.session_state.setdefault(f"{prefix}.csv_files", {})[key] = file.name
    st.session_state[f"{prefix}.data.csv_path"] = str(uploads.find_csv(store().home, key))
    st.session_state.setdefault(f"{prefix}.touched", set()).add("data.csv_path")


def _show_all(prefix: str) -> None:
    st.session_state[f"{prefix}.hidden"] = frozenset()


def _load_preset(prefix: str) -> None:
    name = st.session_state[f"{prefix}.preset"]
    if name:
        load_config(prefix, PRESETS[name][1])
        st.session_state[f"{prefix}.preset"] = ""
        st.toast(f"Loaded preset: {PRESETS[name][0]}")


def _edited(prefix: str, name: str) -> None:
    """A widget's on_change: remember that the user set ``name``; a new model brings its own defaults."""
    touched = st.session_state.setdefault(f"{prefix}.touched", set())
    touched.add(name)
    if name == "model.name":
        _model_defaults(prefix, touched)
    if name in ("model.name", "data.name"):
        _repair_pair(prefix, name)
    if name == "optim.lr":
        _lr_changed(prefix)


def _model_defaults(prefix: str, touched: set[str]) -> None:
    """Give the settings that follow the model (``MODEL_FIELDS``) the new model's defaults, except those the user
    set in this session: MF's init scale and step size leave an MLP at rest, an MLP's teacher data make a CNN slow.
    """
    values = current_values(prefix)
    model = values["model.name"]
    if model not in MODEL_DEFAULTS:
        return
    fresh = config_values(MODEL_DEFAULTS[model])
    new = {n: fresh[n] for n in MODEL_FIELDS if n not in touched and values[n] != fresh[n]}
    for name, value in new.items():
        st.session_state[f"{prefix}.{name}"] = value
    if new.pop("data.name", None) is not None and build_config({**values, "model.name": model})[0] is None:
        st.toast(f"{LABELS['data.name']} set to {fresh['data.name']}: {values['data.name']} does not fit {model}")
    shown = [f"{LABELS.get(n) or n} {number_text(v)}" for n, v in new.items() if n in applicable({**values, **new})]
    if shown:
        st.toast(f"{model}'s usual settings: " + ", ".join(shown))


def _repair_pair(prefix: str, changed: str) -> None:
    """After a new model (dataset), pick the first dataset (model) that fits it, if the old one does not."""
    values = current_values(prefix)
    message = build_config(values)[2]
    other = "data.name" if changed == "model.name" else "model.name"
    if not message or other not in message:
        return
    for choice in choices_of(FIELDS[other]) or ():
        if build_config({**values, other: choice})[0] is not None:
            st.session_state[f"{prefix}.{other}"] = choice
            st.toast(f"{LABELS[other]} set to {choice}: {values[other]} does not fit {values[changed]}")
            return


def _lr_changed(prefix: str) -> None:
    """A new step size reaches the attached run at once (no reset); the run keeps its other settings."""
    run_id = st.session_state.get(f"{prefix}.run")
    lr = st.session_state[f"{prefix}.optim.lr"]
    if run_id and run_status(run_id).state in ACTIVE:
        runner().set_learning_rate(run_id, lr)
        st.toast(f"step size of the running run set to {number_text(lr)}")


# --- URL ------------------------------------------------------------------------------------------------------


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


# --- runs -------------------------------------------------------------------------------------------------------


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


def run_status(run_id: str) -> Status:
    try:
        v = runner().status(run_id)
    except (StoreError, ValueError):
        return Status("missing", 0, f"run {run_id} is not stored here")
    return Status(v.state, int(v.step), v.message or "", v.steps_per_second or 0.0, v.t, v.loss, v.lr)


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


def attach(prefix: str, run_id: str | None) -> None:
    """Make ``run_id`` the run the page shows (None: detach), and forget the rows drawn so far."""
    st.session_state[f"{prefix}.run"] = run_id
    st.session_state[f"{prefix}.frame"] = None
    st.session_state[f"{prefix}.cursor"] = -1
    st.session_state[f"{prefix}.initial"] = None


def _start(prefix: str) -> None:
    """Start's on_click: start a run of the sidebar's settings, or leave the reason why not for the page to show."""
    config, _, message = build_config(current_values(prefix))
    if config is None:
        st.session_state[f"{prefix}.start_error"] = f"Not started: {message}"
        return
    try:
        run_id = runner().start(config, name=st.session_state.get(f"{prefix}.name") or "")
    except (ConfigError, StoreError) as exc:
        st.session_state[f"{prefix}.start_error"] = f"Not started: {exc}"
        return
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


def run_controls(prefix: str, config: RunConfig | None) -> None:
    """Start, Pause / Resume, Step 1 / 10 / 100, Stop, Reset, as one row of buttons."""
    run_id = st.session_state.get(f"{prefix}.run")
    state = run_status(run_id).state if run_id else ""
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


# --- live charts ------------------------------------------------------------------------------------------------


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


def run_figures(
    df: pd.DataFrame,
    config: RunConfig,
    neurons: tuple[pd.DataFrame | None, pd.DataFrame | None],
    log_x: bool,
    max_points: int = plots.MAX_POINTS,
    marks: Sequence[tuple[float, str]] = (),
) -> list[tuple[str, go.Figure, str]]:
    """(name, figure, caption) in display order; the matrix chart only where there are linear layers.

    Where the layer-gap law does not apply (``why_no_law``) the balance chart draws no prediction and it and its
    caption say why; ``marks`` (step, label) are drawn on every step axis (a step size changed mid-run).
    """
    names = plots.MF_LAYER_NAMES if config.model.name == "mf" else None
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
        figure = plots.neuron_figure(now, initial=initial, max_points=max_points)
        out.insert(3, ("neurons", figure, plots.CAPTIONS["neurons"]))
    if any(str(c).startswith("matrix_drift_") for c in df.columns):
        fn, caption = plots.FIGURES["matrix"]
        out.append(("matrix", fn(df, layer_names=names, log_x=log_x, max_points=max_points), caption))
    for name, fig, _ in out:
        plots.mark_steps(fig, marks)
        plots.fit_legend(fig, plots.WIDE if name == "balance" else plots.NARROW)
    return out


def lr_marks(s: RunStore, run_id: str) -> tuple[tuple[float, str], ...]:
    """Where the run's step size was changed while it trained: (step, 'η → new value') from its events."""
    events = s.events(run_id)
    changes = events[events["kind"] == "lr"]
    return tuple((float(step), f"η → {number_text(float(v))}") for step, v in zip(changes["step"], changes["value"]))


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
            st.caption(caption)  # Markdown with LaTeX: assets/captions.toml and balance.laws, no outside text


def live_section(prefix: str) -> None:
    """Status line and charts of the attached run, refreshed every ``REFRESH_S`` while it is active.

    One fragment ticks: the status line and, unless "freeze charts" is on, the charts, which update in place
    (``live_chart``: a zoom survives). Frozen charts are drawn once by the page and not touched again. A change of
    state (queued -> running, -> finished or diverged) reruns the page, so the buttons follow.
    """
    run_id = st.session_state.get(f"{prefix}.run")
    if not run_id:
        st.info("Choose settings in the sidebar (or a preset) and press **Start**.")
        return
    first = run_status(run_id)
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


# --- pages --------------------------------------------------------------------------------------------------------

PAGES = Path(__file__).resolve().parent.parent / "app_pages"


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
    ]
    return st.navigation(pages, position="top")


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
    run_controls(prefix, config)
    changed_note(prefix, config)
    live_section(prefix)
    share(prefix, config)
    downloads(prefix)


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
    changes = lr_changes(prefix, run_id)
    if changes:
        st.caption(
            f"The run shown changed its step size while it trained ({changes}; dotted lines on the charts). "
            "**Start** trains the sidebar's settings from step 0 with one step size: it does not replay those "
            "changes."
        )


def lr_changes(prefix: str, run_id: str) -> str:
    """'at step 120: η → 0.02; ...' for the attached run's step-size changes, '' if there were none."""
    try:
        marks = lr_marks(store(), run_id)
    except StoreError:
        return ""
    return "; ".join(f"at step {step:,.0f}: {label}" for step, label in marks)


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


def about_page() -> None:
    st.markdown(asset("about.md"))
