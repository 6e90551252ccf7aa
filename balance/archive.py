"""One run as one portable file: a zip of JSON and Parquet, read back with strict validation.

Members (nothing else is accepted; nothing is unpickled or evaluated)::

    run.json         {"format": "balance-run", "version": 1, "id", "name", "sweep", "state", "step", "message",
                      "created", "updated", "columns", "config"}; config is RunConfig.to_dict()
    metrics.parquet  one column per metric column (step int64, the rest float64), one row per logged step
    events.json      [{"step", "time", "kind", "value", "text"}, ...]                      (optional)
    neurons.parquet  step, then the per-neuron columns; one block of rows per snapshot     (optional)

Reading checks the archive before decompressing anything (member names against the list above, declared sizes
against caps, the compression method), reads each member with a bounded read, checks the config with
``RunConfig.from_dict``, and checks that the metrics are numeric, match the declared columns, and have increasing
steps. Parquet is read with pyarrow into NumPy arrays column by column (no pandas metadata is honoured).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from balance.config import ConfigError, RunConfig

if TYPE_CHECKING:
    from balance.store import RunStore

FORMAT, VERSION = "balance-run", 1
LIMITS = {"run.json": 1 << 20, "metrics.parquet": 256 << 20, "events.json": 16 << 20, "neurons.parquet": 256 << 20}
MAX_FILE = 600 << 20
MAX_ROWS = 2_000_000
MAX_COLUMNS = 2_000
MAX_EVENTS = 100_000
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")


def write_archive(store: RunStore, run_id: str, path: Path) -> None:
    """Write ``run_id`` to ``path`` (atomically: a temporary file in the same folder, then a rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = store._raw_run(run_id)
    manifest = {"format": FORMAT, "version": VERSION, **raw}
    columns = raw["columns"] or ["step"]
    df = store.metrics(run_id)
    metrics = pa.table({c: df[c].to_numpy() for c in columns if c in df})
    events = store.events(run_id)
    event_list = [
        {"step": int(e.step), "time": e.time.timestamp(), "kind": e.kind, "value": _num(e.value), "text": e.text}
        for e in events.itertuples()
    ]
    snapshots = [store.neurons(run_id, k) for k in store.neuron_steps(run_id)]
    members = {
        "run.json": json.dumps(manifest, indent=1, allow_nan=False).encode(),
        "metrics.parquet": _parquet(pq, metrics),
        "events.json": json.dumps(event_list, allow_nan=False).encode(),
    }
    if snapshots and len({tuple(s.columns) for s in snapshots}) == 1:
        keys = list(snapshots[0].columns)
        members["neurons.parquet"] = _parquet(
            pq, pa.table({k: np.concatenate([s[k].to_numpy() for s in snapshots]) for k in keys})
        )
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".balance-export-", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w") as zf:
            for name, data in members.items():
                method = zipfile.ZIP_STORED if name.endswith(".parquet") else zipfile.ZIP_DEFLATED
                zf.writestr(zipfile.ZipInfo(name, time.gmtime()[:6]), data, compress_type=method)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_archive(store: RunStore, path: Path) -> str:
    """Validate the file at ``path`` and add its run to ``store``; returns the new run's id."""
    from balance.store import ACTIVE, STATES, StoreError

    def refuse(why: str) -> StoreError:
        return StoreError(f"{path}: refused: {why}", "invalid")

    members = _read_members(path, refuse)
    raw = _json(members["run.json"], "run.json", refuse)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise refuse("run.json is not a balance run (format should be 'balance-run')")
    if raw.get("version") != VERSION:
        raise refuse(f"run.json has version {raw.get('version')!r}; this balance reads version {VERSION}")
    expected = {"format", "version", "id", "name", "sweep", "state", "step", "message", "created", "updated"}
    unknown = set(raw) - expected - {"columns", "config"}
    if unknown:
        raise refuse(f"run.json has unknown keys {sorted(unknown)}")
    for key, kind in (("id", str), ("name", str), ("sweep", str), ("state", str), ("message", str)):
        if not isinstance(raw.get(key), kind) or len(raw[key]) > 4000:
            raise refuse(f"run.json: {key} should be text")
    if not re.fullmatch(r"[0-9a-f]{1,32}", raw["id"]):
        raise refuse(f"run.json: id {raw['id'][:40]!r} is not a run id")
    if raw["state"] not in STATES:
        raise refuse(f"run.json: state {raw['state'][:40]!r} is not one of {', '.join(STATES)}")
    if not _is_int(raw.get("step")) or raw["step"] < 0:
        raise refuse("run.json: step should be a whole number >= 0")
    for key in ("created", "updated"):
        if not _is_num(raw.get(key)) or not 0 <= raw[key] < 1e11:
            raise refuse(f"run.json: {key} should be a time in seconds")
    try:
        config = RunConfig.from_dict(raw.get("config"))  # type: ignore[arg-type]
    except ConfigError as exc:
        raise refuse(f"run.json: bad config: {exc}") from None
    columns = raw.get("columns")
    if (
        not isinstance(columns, list)
        or not 1 <= len(columns) <= MAX_COLUMNS
        or not all(isinstance(c, str) and _NAME.match(c) for c in columns)
        or columns[0] != "step"
        or len(set(columns)) != len(columns)
    ):
        raise refuse("run.json: columns should be distinct names, 'step' first")
    rows = _metrics(members["metrics.parquet"], columns, refuse)
    events = _events(members.get("events.json"), refuse)
    neurons = _neurons(members.get("neurons.parquet"), refuse)
    if raw["state"] in ACTIVE:  # a snapshot of a run that was still going: it is not running here
        raw["message"] = f"imported while {raw['state']} at step {raw['step']}"
        raw["state"] = "interrupted"
    raw["config"] = config.to_dict()
    return store._insert_run(raw, rows, events, neurons)


def _read_members(path: Path, refuse: Any) -> dict[str, bytes]:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise refuse(f"cannot read it ({exc.strerror})") from None
    if size > MAX_FILE:
        raise refuse(f"it is {size / 2**20:.0f} MiB; the limit is {MAX_FILE >> 20} MiB")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            for name in names:
                if name not in LIMITS:
                    raise refuse(f"unexpected member {name[:80]!r}; a run file holds only {', '.join(LIMITS)}")
            if len(set(names)) != len(names):
                raise refuse("a member appears twice")
            if "run.json" not in names or "metrics.parquet" not in names:
                raise refuse("run.json or metrics.parquet is missing; is this a balance run file?")
            out = {}
            for info in infos:
                limit = LIMITS[info.filename]
                if info.flag_bits & 0x1:
                    raise refuse(f"{info.filename} is encrypted")
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise refuse(f"{info.filename} uses an unsupported compression method")
                if info.file_size > limit:
                    raise refuse(f"{info.filename} would be {info.file_size} bytes; the limit is {limit}")
                with zf.open(info) as f:
                    data = f.read(limit + 1)  # bounded even if the declared size lies
                if len(data) > limit:
                    raise refuse(f"{info.filename} is larger than its limit of {limit} bytes")
                out[info.filename] = data
            return out
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as exc:
        raise refuse(f"not a valid zip archive ({exc})") from None


def _json(data: bytes, name: str, refuse: Any) -> Any:
    def no_constant(text: str) -> None:
        raise ValueError(f"{text} is not allowed")

    try:
        return json.loads(data.decode("utf-8"), parse_constant=no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise refuse(f"{name} is not valid JSON ({str(exc)[:120]})") from None


def _table(data: bytes, name: str, refuse: Any) -> Any:
    """A Parquet member as a pyarrow Table of plain numeric columns, after checking its size from the footer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(io.BytesIO(data)).metadata
        if meta.num_rows > MAX_ROWS or meta.num_columns > MAX_COLUMNS:
            raise refuse(f"{name} has {meta.num_rows} rows x {meta.num_columns} columns; too large")
        table = pq.read_table(io.BytesIO(data), use_pandas_metadata=False)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise refuse(f"{name} is not a valid Parquet file ({str(exc)[:120]})") from None
    for field in table.schema:
        if not (pa.types.is_integer(field.type) or pa.types.is_floating(field.type)):
            raise refuse(f"{name}: column {field.name[:40]!r} is {field.type}, not a number")
        if table.column(field.name).null_count:
            raise refuse(f"{name}: column {field.name[:40]!r} has missing values")
    return table


def _metrics(data: bytes, columns: list[str], refuse: Any) -> np.ndarray:
    table = _table(data, "metrics.parquet", refuse)
    if table.column_names != columns:
        raise refuse("metrics.parquet: its columns do not match run.json's columns")
    rows = np.column_stack([table.column(c).to_numpy().astype("<f8") for c in columns]) if len(table) else None
    if rows is None:
        return np.zeros((0, len(columns)))
    steps = rows[:, 0]
    if not (np.all(np.isfinite(steps)) and np.all(steps >= 0) and np.all(steps == np.round(steps))):
        raise refuse("metrics.parquet: steps should be whole numbers >= 0")
    if np.any(np.diff(steps) <= 0):
        raise refuse("metrics.parquet: steps should increase")
    return rows


def _events(data: bytes | None, refuse: Any) -> list[tuple]:
    if data is None:
        return []
    raw = _json(data, "events.json", refuse)
    if not isinstance(raw, list) or len(raw) > MAX_EVENTS:
        raise refuse(f"events.json should be a list of at most {MAX_EVENTS} events")
    out = []
    for e in raw:
        if (
            not isinstance(e, dict)
            or set(e) != {"step", "time", "kind", "value", "text"}
            or not _is_int(e["step"])
            or not _is_num(e["time"])
            or not (isinstance(e["kind"], str) and _NAME.match(e["kind"]))
            or not (e["value"] is None or _is_num(e["value"]))
            or not (isinstance(e["text"], str) and len(e["text"]) <= 4000)
        ):
            raise refuse("events.json: each event needs step, time, kind (a name), value (a number or null), text")
        out.append((e["step"], float(e["time"]), e["kind"], e["value"], e["text"]))
    return out


def _neurons(data: bytes | None, refuse: Any) -> list[tuple]:
    """Snapshots as (step, keys JSON, n, float64 bytes) rows for the store."""
    if data is None:
        return []
    table = _table(data, "neurons.parquet", refuse)
    names = table.column_names
    if not names or names[0] != "step" or len(names) > 16 or not all(_NAME.match(c) for c in names):
        raise refuse("neurons.parquet: columns should be step, then up to 15 named numeric columns")
    values = {c: table.column(c).to_numpy().astype("<f8") for c in names}
    steps = values.pop("step")
    out = []
    for k in np.unique(steps):
        mask = steps == k
        if not (math.isfinite(k) and k >= 0 and k == round(k)):
            raise refuse("neurons.parquet: steps should be whole numbers >= 0")
        blob = b"".join(v[mask].tobytes() for v in values.values())
        out.append((int(k), json.dumps(list(values)), int(mask.sum()), blob))
    return out


def _parquet(pq: Any, table: Any) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**62


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
