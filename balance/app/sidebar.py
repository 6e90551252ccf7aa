"""Explore's sidebar: a widget for every setting of the config schema, presets, model defaults, CSV files.

Widget values live in session state under ``<prefix>.<setting>``; ``current_values`` falls back on the values saved
at the end of the last run (``<prefix>.values``) for settings Streamlit dropped because they were not drawn.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import streamlit as st

from balance.app.common import ACTIVE, literal, number_text, run_status, runner, store
from balance.config import ConfigError, RunConfig, applicable, choices_of, parse_value, schema
from balance.config.presets import PRESETS
from balance.engine import laws
from balance.files import FileRefused
from balance.runs import uploads

SECTIONS = {"model": "Model", "data": "Data", "optim": "Optimiser", "run": "Run"}
OPEN_SECTIONS = frozenset({"model", "optim", "run"})

# Registries whose entries carry a one-line ``help``: shown under the choice and listed in its tooltip.
REGISTRIES: dict[str, Mapping[str, Any]] = {
    "model.name": laws.MODELS,
    "data.name": laws.DATASETS,
    "optim.name": laws.OPTIMIZERS,
}

# Settings most runs never touch: drawn in one "Advanced" expander instead of their section.
ADVANCED = frozenset(
    {
        "data.singular_values",
        "data.teacher_width",
        "data.image_size",
        "data.channels",
        "data.target",
        "data.loss",
        "data.seed",
        "model.widths",
        "model.negative_slope",
        "model.bias_init",
        "model.bn_eps",
        "model.pooling",
        "optim.layer_lrs",
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
    "model.bias_init": "bias initialisation",
    "model.bn_eps": "batch norm ε",
    "optim.layer_lrs": "per-layer step-size multipliers",
    "data.channels": "image channels",
    "model.bias": "biases",
    "model.batch_norm": "batch norm",
    "data.name": "dataset",
    "data.rank": "target rank",
    "optim.name": "optimiser",
    "optim.lr": "step size η",
    "optim.weight_decay": "weight decay",
    "optim.batch_size": "batch size",
}
FIELDS: dict[str, dataclasses.Field] = dict(schema())


def section_of(name: str) -> str:
    return name.partition(".")[0] if "." in name else "run"


def value_of(config: RunConfig, name: str) -> Any:
    section, _, field = name.rpartition(".")
    return getattr(getattr(config, section) if section else config, field)


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
    shown = [f"{LABELS.get(n) or n} {v:.3g}" if isinstance(v, float) else f"{LABELS.get(n) or n} {v}"
             for n, v in new.items() if n in applicable({**values, **new})]  # fmt: skip
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
