"""Fuzzing the archive importer (issue 11, "Done means"): whatever a file holds (mutated zips, manifests, Parquet
members, sizes, compression methods), importing it gives a run or a clear ``StoreError``, never another exception,
and writes nothing outside the store."""

from __future__ import annotations

import copy
import io
import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_archive import TINY, manifest, neuron_table, parquet

from balance.config import RunConfig
from balance.runs.store import RunStore, StoreError

FUZZ = settings(
    max_examples=250, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
MEMBERS = ("run.json", "metrics.parquet", "events.json", "neurons.parquet")
METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
EXPECTED = ("invalid", "duplicate")  # the kinds a file can cause; full, io, corrupt or locked would be the store's

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
names = st.sampled_from(["step", "loss", "t", "lr", "gap_1", "layer", "neuron", "in_sqnorm"]) | st.text(max_size=6)
kinds = st.sampled_from(["int64", "float64", "float32", "uint8", "string", "bool", "list", "dictionary", "null"])


def column(draw: st.DrawFn, kind: str, rows: int) -> pa.Array:
    numbers = st.floats(allow_nan=True, allow_infinity=True, width=32 if kind == "float32" else 64)
    if kind in ("int64", "uint8"):
        low, high = (0, 255) if kind == "uint8" else (-(2**63), 2**63 - 1)
        values = draw(st.lists(st.integers(low, high), min_size=rows, max_size=rows))
        return pa.array(values, type=getattr(pa, kind)())
    if kind in ("float64", "float32"):
        return pa.array(draw(st.lists(numbers | st.none(), min_size=rows, max_size=rows)), type=getattr(pa, kind)())
    if kind == "list":
        return pa.array([[1.0, 2.0]] * rows)
    if kind == "dictionary":
        return pa.array(["a"] * rows).dictionary_encode()
    if kind == "null":
        return pa.nulls(rows)
    return pa.array(["x"] * rows if kind == "string" else [True] * rows)


@st.composite
def tables(draw: st.DrawFn) -> bytes:
    """A Parquet member: a random small table, often starting with a plausible step column."""
    rows = draw(st.integers(0, 12))
    columns = draw(st.lists(st.tuples(names, kinds), min_size=1, max_size=5, unique_by=lambda c: c[0]))
    arrays = {name: column(draw, kind, rows) for name, kind in columns}
    if draw(st.booleans()):
        arrays = {"step": pa.array(np.arange(rows) * draw(st.integers(-1, 3))), **arrays}
    options = draw(st.sampled_from([{}, {"compression": "zstd"}, {"row_group_size": 1}, {"compression": "none"}]))
    return parquet(pa.table(arrays), **options)


@st.composite
def plausible(draw: st.DrawFn, columns: tuple[str, ...]) -> bytes:
    """A member with the expected columns and any numbers in them (steps repeated, negative, out of order...)."""
    rows = draw(st.integers(0, 30))
    steps = draw(st.lists(st.integers(-2, 40), min_size=rows, max_size=rows))
    numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 5)
    table = {"step": pa.array(steps if draw(st.booleans()) else sorted(set(steps))[:rows], type=pa.int64())}
    rows = len(table["step"])
    for name in columns[1:]:
        table[name] = pa.array([float(x) for x in draw(st.lists(numbers, min_size=rows, max_size=rows))])
    return parquet(pa.table(table), **draw(st.sampled_from([{}, {"row_group_size": 3}])))


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with bytes flipped, cut short, or cut and extended."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        if out:
            out[draw(st.integers(0, len(out) - 1))] ^= draw(st.integers(1, 255))
    how = draw(st.sampled_from(["keep", "keep", "truncate", "extend"]))
    if how == "truncate":
        out = out[: draw(st.integers(0, len(out)))]
    elif how == "extend":
        out += draw(st.binary(max_size=64))
    return bytes(out)


def good_members() -> dict[str, bytes]:
    steps = np.arange(3)
    return {
        "run.json": json.dumps(manifest()).encode(),
        "metrics.parquet": parquet({"step": steps, "loss": np.array([1.0, 0.5, 0.25])}),
        "events.json": json.dumps([{"step": 1, "time": 1.7e9, "kind": "lr", "value": 0.1, "text": ""}]).encode(),
        "neurons.parquet": parquet(neuron_table(np.repeat(steps, 2))),
    }


@st.composite
def manifests(draw: st.DrawFn) -> bytes:
    raw = copy.deepcopy(manifest(columns=["step", "loss"]))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from([*raw, "origin", "extra"]))
        action = draw(st.sampled_from(["set", "delete", "config", "config", "config"]))
        if action == "set":
            raw[key] = draw(json_values)
        elif action == "delete":
            raw.pop(key, None)
        elif isinstance(raw.get("config"), dict):
            section = draw(st.sampled_from(["model", "data", "optim", "steps", "seed"]))
            target = raw["config"].get(section)
            if isinstance(target, dict) and target:
                target[draw(st.sampled_from(sorted(target)))] = draw(json_values)
            else:
                raw["config"][section] = draw(json_values)
    text = json.dumps(raw)
    return draw(st.sampled_from([text] * 8 + [text.replace("1700000000.0", "NaN"), "[" * 100_000])).encode()


@st.composite
def archives(draw: st.DrawFn) -> bytes:
    """A good file with one or two members changed, now and then a structural change (an extra member, a member
    missing, another compression method, damaged zip bytes), so that most examples reach the deeper checks."""
    members = good_members()
    for _ in range(draw(st.integers(1, 2))):
        name = draw(st.sampled_from(MEMBERS))
        change = draw(st.sampled_from(["replace", "replace", "replace", "mutate", "mutate", "keep", "drop"]))
        if change == "drop":
            members.pop(name, None)
        elif change == "mutate" and name in members:
            members[name] = draw(mutated(members[name]))
        elif change == "replace":
            columns = ("step", "loss") if name == "metrics.parquet" else ("step", "layer", "neuron", "in_sqnorm")
            parquets = plausible(columns) | tables()
            new = draw(manifests() if name == "run.json" else parquets if "parquet" in name else json_values)
            members[name] = new if isinstance(new, bytes) else json.dumps(new).encode()
    if draw(st.integers(0, 9)) == 0:
        members[draw(st.sampled_from(["../evil", "run.json/", "x.pkl", "events.json"]))] = b"payload"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            method = draw(st.sampled_from(METHODS)) if draw(st.integers(0, 9)) == 0 else zipfile.ZIP_DEFLATED
            zf.writestr(name, data, compress_type=method)
    data = buffer.getvalue()
    return draw(mutated(data)) if draw(st.integers(0, 7)) == 0 else data


def tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=archives())
def test_any_file_gives_a_run_or_a_clear_error_and_writes_only_the_store(sandbox, monkeypatch, data):
    home, work, temp = sandbox / "home", sandbox / "work", sandbox / "temp"
    for folder in (home, work, temp):
        folder.mkdir(exist_ok=True)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # any temporary file outside the store would land here
    path = work / "upload.zip"
    path.write_bytes(data)
    with RunStore(home) as store:
        before = len(store.list_runs())
        try:
            run_id = store.import_run(path, name="upload.zip")
        except StoreError as exc:
            event(f"{exc.kind}: {str(exc).partition('refused: ')[2][:28]}")  # see --hypothesis-show-statistics
            assert exc.kind in EXPECTED, exc
            assert str(exc).startswith("upload.zip: ") and "\n" not in str(exc)
            assert len(store.list_runs()) == before  # nothing half-imported
        else:
            event("imported")
            record = store.get_run(run_id)  # what was taken reads back: the pages can show it
            assert record.origin == "imported" and RunConfig.from_dict(record.config.to_dict()) == record.config
            store.metrics(run_id), store.events(run_id), store.neurons(run_id)
            assert len(store.list_runs()) == before + 1
    assert tree(work) == {"upload.zip": len(data)}
    assert tree(temp) == {}
    assert set(tree(home)) <= {"runs.db", "runs.db-wal", "runs.db-shm"}


def test_the_good_members_import(tmp_path):
    """The fuzzer's starting point is a file that imports, so mutations start from the accepting path."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in good_members().items():
            zf.writestr(name, data)
    (tmp_path / "good.zip").write_bytes(buffer.getvalue())
    with RunStore(tmp_path / "home") as store:
        run_id = store.import_run(tmp_path / "good.zip")
        assert store.get_run(run_id).config == TINY and store.neuron_steps(run_id) == [0, 1, 2]
