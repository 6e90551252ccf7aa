"""Tests of balance.config: every field's validation message, cross-field rules, lossless round trips."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from conftest import FAMILIES, TEACHER, make_config
from hypothesis import given, settings
from hypothesis import strategies as st

from balance.config import (
    SECTIONS,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    applicable,
    choices_of,
    clip,
    parse_value,
    schema,
)
from balance.runs.loop import run

SCHEMA = schema()
KEYS = [key for key, _ in SCHEMA]
FIELDS = dict(SCHEMA)
NUMERIC = [(k, f) for k, f in SCHEMA if f.type in ("int", "float", "tuple[float, ...]", "tuple[int, ...]")]
CHOICE = [(k, f) for k, f in SCHEMA if choices_of(f) is not None]


def _raw(key: str, value: Any) -> dict[str, Any]:
    """The from_dict input setting one dotted key, everything else default."""
    section, _, name = key.rpartition(".")
    return {section: {name: value}} if section else {name: value}


def _error(key: str, value: Any) -> str:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(_raw(key, value))
    return str(info.value)


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(_shown(v) for v in value)
    return repr(value) if isinstance(value, str) else str(value)


# --- the schema -----------------------------------------------------------------------------------------------


def test_schema_is_complete() -> None:
    assert len(KEYS) == len(set(KEYS))
    own = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
    assert len(own) + 6 == len(KEYS)  # run fields: steps, dtype, seed, log_every, max_seconds, sharpness_every
    for key, f in SCHEMA:
        assert f.metadata["help"], key
        if (key, f) in NUMERIC:
            assert f.metadata.get("min") is not None and f.metadata.get("max") is not None, key
    assert choices_of(FIELDS["model.name"]) == ("mf", "linear", "mlp", "cnn")
    assert choices_of(FIELDS["optim.schedule"]) == ("constant", "theorem", "step")


def test_defaults_are_valid_and_round_trip() -> None:
    config = RunConfig()
    assert RunConfig.from_dict({}) == config
    assert config.to_query() == {}
    assert RunConfig.from_query({}) == (config, [])


# --- 11. every field's bad values ----------------------------------------------------------------------------


def _outside(f: dataclasses.Field, side: str) -> Any:
    lo, hi = f.metadata["min"], f.metadata["max"]
    integer = "int" in f.type
    below = lo - 1 if integer else lo - (abs(lo) or 1.0) / 2
    value = below if side == "below" else hi + 1 if integer else hi * 1.5
    return (value,) if f.type.startswith("tuple") else value


@pytest.mark.parametrize("side", ["below", "above"])
@pytest.mark.parametrize(("key", "f"), NUMERIC, ids=[k for k, _ in NUMERIC])
def test_out_of_range_names_field_value_and_range(key: str, f: dataclasses.Field, side: str) -> None:
    value = _outside(f, side)
    message = _error(key, value)
    assert key in message
    assert f"= {_shown(value)}:" in message
    assert f"allowed {f.metadata['min']} to {f.metadata['max']}" in message
    inside = f.metadata["min"] if side == "below" else f.metadata["max"]
    edge = (inside,) if f.type.startswith("tuple") else inside
    try:  # the boundary itself is allowed (it may still clash with another field's default)
        RunConfig.from_dict(_raw(key, edge))
    except ConfigError as exc:
        assert "out of range" not in str(exc)


@pytest.mark.parametrize(("key", "f"), CHOICE, ids=[k for k, _ in CHOICE])
def test_unknown_choice_names_field_value_and_choices(key: str, f: dataclasses.Field) -> None:
    message = _error(key, "nope")
    assert key in message and "'nope'" in message
    for choice in choices_of(f):
        assert choice in message


def _wrong_types(f: dataclasses.Field) -> list[Any]:
    return {
        "int": ["3", 1.5, True, None],
        "float": ["0.1", True, None, math.nan, math.inf],
        "bool": ["yes", 1, None],
        "str": [3, None, ("a",)],
        "tuple[float, ...]": [1.5, "1,2", ("a",), (True,), (math.nan,)],
        "tuple[int, ...]": [3, "1,2", (1.5,), (True,)],
    }[f.type]


@pytest.mark.parametrize(("key", "f"), SCHEMA, ids=KEYS)
def test_wrong_types_name_field_and_value(key: str, f: dataclasses.Field) -> None:
    for value in _wrong_types(f):
        message = _error(key, value)
        assert key in message and "expected" in message, (value, message)


def test_integers_are_accepted_for_floats() -> None:
    config = RunConfig.from_dict({"optim": {"lr": 1}, "model": {"layer_scales": [1, 2]}})
    assert config.optim.lr == 1.0 and type(config.optim.lr) is float
    assert config.model.layer_scales == (1.0, 2.0) and all(type(v) is float for v in config.model.layer_scales)


CROSS_FIELD = [
    ({"model": {"name": "mlp"}}, ["model.name", "'mlp'", "data.name", "'lowrank'"]),
    ({"data": {"name": "teacher"}}, ["model.name", "'mf'", "'teacher'"]),
    ({"optim": {"name": "sgd"}}, ["optim.batch_size", "sgd"]),
    ({"optim": {"name": "gd", "batch_size": 8}}, ["optim.batch_size = 8", "full-batch"]),
    ({"optim": {"name": "flow", "batch_size": 8}}, ["optim.batch_size = 8", "flow"]),
    ({"optim": {"name": "flow", "weight_decay": 0.1}}, ["optim.name", "flow", "weight decay"]),
    ({"optim": {"name": "flow", "schedule": "theorem"}}, ["optim.name", "flow", "schedule"]),
    ({"optim": {"name": "momentum", "batch_size": 8}}, ["optim.batch_size = 8", "lowrank"]),
    (
        {
            "data": {"name": "teacher", "samples": 10},
            "model": {"name": "mlp"},
            "optim": {"name": "sgd", "batch_size": 11},
        },
        ["optim.batch_size = 11", "data.samples = 10"],
    ),
    ({"model": {"layer_scales": [1.0, 2.0, 3.0]}}, ["model.layer_scales = 1.0,2.0,3.0", "(2)"]),
    (
        {"data": {"name": "teacher"}, "model": {"name": "mlp", "depth": 4, "layer_scales": [1.0]}},
        ["model.layer_scales = 1.0", "(4)"],
    ),
    (
        {"data": {"name": "teacher"}, "model": {"name": "mlp", "depth": 4, "widths": [3, 4]}},
        ["model.widths = 3,4", "depth - 1 = 3"],
    ),
    ({"data": {"d1": 3, "d2": 7, "rank": 4}}, ["data.rank = 4", "min(d1, d2) = 3"]),
    ({"data": {"d1": 9, "d2": 7, "rank": 2}, "model": {"rank": 8}}, ["model.rank = 8", "min(d1, d2) = 7"]),
    ({"data": {"rank": 3, "singular_values": [3.0, 2.0]}}, ["data.singular_values = 3.0,2.0", "rank = 3"]),
    ({"data": {"name": "csv"}, "model": {"name": "mlp"}}, ["data.csv_path", "file path"]),
    ({"data": {"name": "teacher"}, "model": {"name": "cnn", "batch_norm": True}}, ["model.batch_norm", "mlp"]),
    ({"data": {"name": "teacher"}, "model": {"name": "linear", "batch_norm": True}}, ["model.batch_norm", "mlp"]),
    ({"data": {"name": "teacher"}, "model": {"name": "mlp", "regularizer": 1.0}}, ["model.regularizer", "mf"]),
]


@pytest.mark.parametrize(("raw", "needles"), CROSS_FIELD, ids=[str(i) for i in range(len(CROSS_FIELD))])
def test_cross_field_errors(raw: dict[str, Any], needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(raw)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_sections_must_be_section_objects() -> None:
    with pytest.raises(ConfigError, match=r"run\.model"):
        RunConfig(model=OptimConfig())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"bogus": 1}, "'bogus'"),
        ({"model": {"bogus": 1}}, "model.bogus"),
        ({"model": 3}, "model: expected a table"),
        ([("steps", 3)], "config: expected a table"),
    ],
)
def test_from_dict_refuses_unknown_keys_and_bad_shapes(raw: Any, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(raw)
    assert needle in str(info.value)


def test_from_toml_refuses_bad_toml() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        RunConfig.from_toml("steps = = 3")
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        RunConfig.from_toml('[optim]\nlr = "fast"\n')


def test_deeply_nested_or_huge_toml_is_one_config_error() -> None:
    """tomllib recurses: 5,000 nested lists raised RecursionError (exit 1 on the CLI); a 5,000-digit integer a bare
    ValueError. Both are bad input with one line."""
    for text in ("steps = " + "[" * 5000 + "]" * 5000, "steps = " + "{a = " * 5000 + "1" + "}" * 5000):
        with pytest.raises(ConfigError, match="nested too deeply"):
            RunConfig.from_toml(text)
    with pytest.raises(ConfigError, match="not usable TOML"):
        RunConfig.from_toml("steps = " + "1" * 5000)
    with pytest.raises(ConfigError, match=r"run.steps = a list: expected a whole number"):
        RunConfig.from_toml("steps = " + "[" * 300 + "]" * 300)  # parses, and is shown without recursing


def test_error_messages_are_one_short_line() -> None:
    """A TOML with 10^6 layer scales printed one 4 MB line: a value is shown by its first items and its length."""
    with pytest.raises(ConfigError) as info:
        ModelConfig(layer_scales=(-1.0,) * 10**6)
    message = str(info.value)
    shown = "-1.0," * 8 + "... (1000000 values)"
    assert message == f"model.layer_scales = {shown}: out of range, allowed 0.0 to 1000000.0"
    for raw in ({"model": {"name": "x" * 10**6}}, {"x" * 10**6: 1}, {"steps": 10**5000}, {"model": {"widths": [[1]]}}):
        message = _error_of(raw)
        assert len(message) <= 300 and "\n" not in message, message
    assert "a whole number of about 5000 digits" in _error_of({"steps": 10**5000})
    assert len(str(ConfigError("x " * 10**6 + "the end"))) == 300  # every message, whoever builds it


def _error_of(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(raw)
    return str(info.value)


def test_clip_keeps_both_ends() -> None:
    assert clip("a\n b\t c") == "a b c"
    long = "start " + "x" * 1000 + " allowed 0 to 1"
    assert len(clip(long)) == 300 and clip(long).startswith("start x") and clip(long).endswith("allowed 0 to 1")
    assert len(clip("y" * 10**7)) == 300


# --- round trips ----------------------------------------------------------------------------------------------

SPECIAL_FLOATS = [0.1, 1e-7, 1 / 3, 2 / 3, 0.3, 1e-8, 0.9999, 5e-324, 1e-300, 123456.789, 0.0]


def _values(f: dataclasses.Field) -> st.SearchStrategy[Any]:
    """Any value the field itself accepts (cross-field rules are the caller's business)."""
    choices = choices_of(f)
    if choices is not None:
        return st.sampled_from(choices)
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if f.type in ("float", "tuple[float, ...]"):
        special = [v for v in SPECIAL_FLOATS if lo <= v <= hi]
        floats = st.one_of(st.sampled_from(special), st.floats(lo, hi, allow_nan=False, allow_infinity=False))
        return floats if f.type == "float" else st.lists(floats, max_size=4).map(tuple)
    if f.type == "int":
        return st.integers(lo, hi)
    if f.type == "tuple[int, ...]":
        return st.lists(st.integers(lo, hi), max_size=4).map(tuple)
    if f.type == "bool":
        return st.booleans()
    return st.text(max_size=8)


PAIRS = [
    ("lowrank", "mf"),
    ("teacher", "linear"),
    ("teacher", "mlp"),
    ("teacher", "cnn"),
    ("moons", "mlp"),
    ("xor", "linear"),
    ("images", "cnn"),
    ("images", "mlp"),
    ("csv", "mlp"),
]


@st.composite
def valid_configs(draw: st.DrawFn) -> RunConfig:
    """Random valid configs: every field drawn from its own range, then the cross-field rules enforced."""
    flat = {key: draw(_values(f)) for key, f in SCHEMA}
    data_name, model_name = draw(st.sampled_from(PAIRS))
    flat["data.name"], flat["model.name"] = data_name, model_name
    d1, d2 = flat["data.d1"], flat["data.d2"]
    flat["data.rank"] = draw(st.integers(1, min(d1, d2, 500)))
    if flat["data.singular_values"]:
        sv = _values(FIELDS["data.singular_values"]).filter(bool)
        flat["data.singular_values"] = tuple(draw(sv)[0] for _ in range(flat["data.rank"]))
    if data_name == "csv":
        flat["data.csv_path"] = draw(st.text(min_size=1, max_size=8))
    depth = flat["model.depth"] = draw(st.integers(2, 6))
    if flat["model.widths"]:
        flat["model.widths"] = tuple(draw(st.integers(1, 4096)) for _ in range(depth - 1))
    if flat["model.layer_scales"]:
        n = 2 if model_name == "mf" else depth
        flat["model.layer_scales"] = tuple(draw(_values(FIELDS["data.noise"])) for _ in range(n))
    if flat["optim.layer_lrs"]:
        n = 2 if model_name == "mf" else depth
        lrs = _values(FIELDS["optim.layer_lrs"]).filter(bool)
        flat["optim.layer_lrs"] = tuple(draw(lrs)[0] for _ in range(n))
    flat["data.channels"] = draw(st.sampled_from([1, 3]))
    if model_name == "mf":
        flat["model.rank"] = draw(st.integers(0, min(d1, d2)))
    else:
        flat["model.regularizer"] = 0.0
    flat["model.batch_norm"] = flat["model.batch_norm"] and model_name == "mlp"
    names = ["gd", "momentum", "nesterov", "adam", "flow"] + ([] if data_name == "lowrank" else ["sgd"])
    name = flat["optim.name"] = draw(st.sampled_from(names))
    if name == "flow":
        flat["optim.weight_decay"], flat["optim.schedule"] = 0.0, "constant"
    most = 0 if data_name == "lowrank" else flat["data.samples"] if data_name != "csv" else 100_000
    if name in ("gd", "flow") or most == 0:
        flat["optim.batch_size"] = 0
    else:
        flat["optim.batch_size"] = draw(st.integers(1 if name == "sgd" else 0, most))
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        section, _, field_name = key.rpartition(".")
        (nested.setdefault(section, {}) if section else nested)[field_name] = value
    return RunConfig.from_dict(nested)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(config=valid_configs())
def test_round_trips_dict_toml_query(config: RunConfig) -> None:
    """Lossless: floats (subnormals, 1/3, 1e-7 ...), text with any characters, tuples, every section."""
    assert RunConfig.from_dict(config.to_dict()) == config
    assert RunConfig.from_toml(config.to_toml()) == config
    query = config.to_query()
    assert all(isinstance(v, str) for v in query.values())
    default = RunConfig().to_dict()
    for key in query:  # only what differs from the defaults
        section, _, name = key.rpartition(".")
        assert (default[section][name] if section else default[name]) != _get(config, key)
    assert "data.csv_path" not in query  # a server path never travels in a link (data.csv_path: link=False)
    if config.data.name == "csv":  # and the csv dataset is not valid without one
        return
    config = config.replace(**{"data.csv_path": ""})  # kept where it does not apply, but not in the query
    assert RunConfig.from_query(query) == (config, [])
    assert RunConfig.from_query(query, strict=False) == (config, [])


def _get(config: RunConfig, key: str) -> Any:
    section, _, name = key.rpartition(".")
    value = getattr(getattr(config, section), name) if section else getattr(config, name)
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("value", [0.1, 1e-7, 1 / 3, 0.1 + 0.2, 2.0**-20, 99.99999999999999])
def test_floats_round_trip_exactly(value: float) -> None:
    config = RunConfig(optim=OptimConfig(lr=value), model=ModelConfig(layer_scales=(value, 1 / 3)))
    for back in (
        RunConfig.from_toml(config.to_toml()),
        RunConfig.from_query(config.to_query())[0],
        RunConfig.from_dict(config.to_dict()),
    ):
        assert back.optim.lr == value and back.model.layer_scales == (value, 1 / 3)


# --- URL query: strict and lenient ---------------------------------------------------------------------------


def test_query_needs_keys_together() -> None:
    """A non-mf model only validates together with its dataset; the order of the keys does not matter."""
    query = {"model.name": "mlp", "data.name": "teacher", "model.depth": "4", "optim.name": "sgd"}
    query["optim.batch_size"] = "8"
    config, problems = RunConfig.from_query(query)
    assert problems == [] and (config.model.name, config.data.name, config.optim.batch_size) == ("mlp", "teacher", 8)
    assert RunConfig.from_query(dict(reversed(query.items())))[0] == config


def test_strict_query_raises_on_the_first_bad_value() -> None:
    with pytest.raises(ConfigError, match=r"model\.width = 'abc'"):
        RunConfig.from_query({"model.width": "abc"})
    with pytest.raises(ConfigError, match=r"bogus\.key: unknown setting"):
        RunConfig.from_query({"bogus.key": "1"})
    with pytest.raises(ConfigError, match="steps = -3"):
        RunConfig.from_query({"steps": "-3"})
    with pytest.raises(ConfigError, match=r"model\.name"):
        RunConfig.from_query({"model.name": "mlp"})  # valid alone, not with the default dataset


def test_lenient_query_drops_and_names_bad_keys() -> None:
    query = {
        "data.name": "teacher",
        "model.name": "mlp",
        "model.width": "abc",
        "optim.lr": "0.5",
        "bogus.key": "1",
        "steps": "-3",
        "model.bias": "maybe",
        "optim.schedule": "sometimes",
        "optim.batch_size": "4",  # gd is full batch: a clash with optim.name, dropped as the later key
    }
    config, problems = RunConfig.from_query(query, strict=False)
    assert (config.data.name, config.model.name, config.optim.lr) == ("teacher", "mlp", 0.5)
    assert (config.model.width, config.steps, config.model.bias, config.optim.batch_size) == (32, 3000, False, 0)
    assert len(problems) == 6
    for key in ("model.width", "bogus.key", "steps", "model.bias", "optim.schedule", "optim.batch_size"):
        assert sum(key in p for p in problems) == 1, key


def test_lenient_query_with_conflicts_only_between_keys() -> None:
    config, problems = RunConfig.from_query({"model.name": "mlp", "optim.lr": "0.5"}, strict=False)
    assert config.model.name == "mf" and config.optim.lr == 0.5
    assert len(problems) == 1 and "model.name" in problems[0]


def test_query_parses_every_kind() -> None:
    query = {
        "data.name": "teacher",
        "model.name": "mlp",
        "model.widths": "3,4",
        "model.layer_scales": "1,0.5,2e-3",
        "model.bias": "1",
        "model.batch_norm": "TRUE",
        "optim.lr": "1e-3",
        "seed": "7",
    }
    config, _ = RunConfig.from_query(query)
    assert config.model.widths == (3, 4) and config.model.layer_scales == (1.0, 0.5, 0.002)
    assert config.model.bias and config.model.batch_norm and config.optim.lr == 1e-3 and config.seed == 7
    assert RunConfig.from_query({"model.layer_scales": ""})[0].model.layer_scales == ()
    assert parse_value("optim.lr", "0.25") == 0.25 and parse_value("steps", "12") == 12
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        parse_value("optim.lr", "fast")


def test_replace() -> None:
    config = RunConfig().replace(**{"optim.lr": 0.5, "steps": 10, "model.layer_scales": (1.0, 2.0)})
    assert (config.optim.lr, config.steps, config.model.layer_scales) == (0.5, 10, (1.0, 2.0))
    with pytest.raises(ConfigError, match=r"optim\.bogus: unknown setting"):
        RunConfig().replace(**{"optim.bogus": 1})
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        RunConfig().replace(**{"optim.lr": -1.0})


def test_sections_are_frozen() -> None:
    config = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.steps = 4  # type: ignore[misc]
    for section in (DataConfig(), ModelConfig(), OptimConfig()):
        with pytest.raises(dataclasses.FrozenInstanceError):
            section.name = "x"  # type: ignore[misc]


# --- which settings apply ---------------------------------------------------------------------------------------

BASES = [
    *(make_config(f, steps=3) for f in FAMILIES),
    make_config(FAMILIES[3], steps=3, optim=OptimConfig(name="adam", lr=0.01)),
    make_config(FAMILIES[3], steps=3, optim=OptimConfig(name="flow", lr=0.01)),
    make_config(FAMILIES[3], steps=3, optim=OptimConfig(name="sgd", lr=0.01, batch_size=4)),
    make_config(FAMILIES[0], steps=3, optim=OptimConfig(name="momentum", lr=0.01, schedule="step", decay_every=1)),
    make_config(FAMILIES[3], steps=3, data={**TEACHER, "name": "moons"}),
]


def _other_value(key: str, f: dataclasses.Field, value: Any) -> Any:
    """A different allowed value of the setting (or None where there is none to try)."""
    choices = choices_of(f)
    if choices is not None:
        return next((c for c in choices if c != value and c != "csv"), None)
    if f.type == "bool":
        return not value
    if f.type.startswith("tuple") or f.type == "str":
        return None  # lists must match a length; paths must exist: covered by validation tests
    hi = f.metadata.get("max")
    new = value * 2 if value else 1
    new = min(new, hi) if hi is not None else new
    return (int(new) if f.type == "int" else float(new)) if new != value else f.metadata.get("min")


@pytest.mark.parametrize("base", BASES, ids=lambda c: f"{c.model.name}-{c.model.activation}-{c.optim.name}")
def test_a_setting_that_does_not_apply_changes_nothing(base: RunConfig) -> None:
    """The dashboard hides what ``applicable`` leaves out: changing any of it must leave every number alone."""
    flat = base.flat()
    skipped = [(k, f) for k, f in schema() if k not in applicable(flat)]
    assert skipped, "every base config has settings that do not apply"
    want = run(base).metrics
    for key, f in skipped:
        other = _other_value(key, f, flat[key])
        if other is None:
            continue
        try:
            changed = base.replace(**{key: other})
        except ConfigError:
            continue  # not even allowed in this combination
        got = run(changed).metrics
        assert got.equals(want), f"{key} = {other!r} changed the run, but applicable() says it does not apply"


def test_applicable_names_the_family_settings() -> None:
    def names(config: RunConfig) -> set[str]:
        return set(applicable(config.flat()))

    mf, mlp = names(BASES[0]), names(make_config(FAMILIES[5]))
    assert {"model.rank", "data.d1", "model.regularizer"} <= mf
    assert not {"model.depth", "model.activation", "optim.batch_size", "optim.beta2"} & mf
    assert {"model.depth", "model.activation", "model.negative_slope", "data.samples"} <= mlp
    assert "model.negative_slope" not in names(make_config(FAMILIES[3]))
