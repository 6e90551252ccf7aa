"""One run as one portable file: a zip of JSON and Parquet, read back with strict validation.

Members (nothing else is accepted; nothing is unpickled or evaluated)::

    run.json         {"format": "balance-run", "version": 1, "id", "name", "sweep", "state", "step", "message",
                      "created", "updated", "columns", "config"}; config is RunConfig.to_dict()
    metrics.parquet  one column per metric column (step int64, the rest float64), one row per logged step
    events.json      [{"step", "time", "kind", "value", "text"}, ...]                      (optional)
                     kind "lr": the step size from that step on, a config version (``balance.runs.record``)
    neurons.parquet  step, then the per-neuron columns; one block of rows per snapshot     (optional)
    stamp.json       what wrote it: balance version, git commit, code hash, torch / NumPy / Python versions
                     (``balance.runs.stamp``; optional, for the reader: an import ignores it)

Reading never lets the file decide how much memory or time it takes:

- the path must name a regular file (``balance.files``: a FIFO, a device or a directory is refused unread);
- member names, compression methods and declared sizes are checked before anything is decompressed, and each
  member is copied out in bounded chunks (a lying size header is caught by its CRC) into a spooled temporary file
  in the store's folder (unnamed: nothing is left behind, even if the process is killed);
- a Parquet member's footer is checked before any column is decoded: its length, the column types (plain integers
  and floats only), and the decoded size as a product, rows x columns x 8 bytes, against ``MAX_DECODED``; then it
  is decoded one row group at a time into one float64 array;
- per-neuron snapshots are grouped in one pass (a sort, O(n log n)) and thinned like a live run's.

A file someone else chose is best imported with ``import_in_worker``: the same import in a separate process with
an address-space limit and a time limit, so that a hostile file cannot grow the dashboard's process.

Only ``run.json`` fields above are accepted: an archive cannot set a run's ``origin``; an imported run is always
marked ``imported`` (so ``balance.runs.reuse`` never reuses it as its own result). Importing a run that is stored
already (same content) is refused as a ``duplicate``.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from balance.config import RunConfig
from balance.files import write_atomic
from balance.runs import unpack
from balance.runs.stamp import stamp
from balance.runs.store import StoreError
from balance.runs.unpack import FORMAT, IMPORT_MEMORY, IMPORT_SECONDS, LIMITS, MAX_DECODED, VERSION  # noqa: F401

if TYPE_CHECKING:
    from balance.runs.store import RunStore


# --- writing ------------------------------------------------------------------------------------------------


def write_archive(store: RunStore, run_id: str, path: Path) -> None:
    """Write ``run_id`` to ``path`` (atomically, with the permissions a plain ``open`` gives: ``write_atomic``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = store._raw_run(run_id)
    manifest = {"format": FORMAT, "version": VERSION, **raw}
    columns = raw["columns"] or ["step"]
    df = store.metrics(run_id)
    metrics = pa.table({c: df[c].to_numpy() for c in columns if c in df})
    events = store.events(run_id)
    event_list = [
        {"step": int(e.step), "time": e.time.timestamp(), "kind": e.kind, "value": unpack.num(e.value), "text": e.text}
        for e in events.itertuples()
    ]
    snapshots = [store.neurons(run_id, k) for k in store.neuron_steps(run_id)]
    members = {
        "run.json": json.dumps(manifest, indent=1, allow_nan=False).encode(),
        "metrics.parquet": _parquet_bytes(pq, metrics),
        "events.json": json.dumps(event_list, allow_nan=False).encode(),
        "stamp.json": json.dumps(stamp(), indent=1).encode(),
    }
    if snapshots and len({tuple(s.columns) for s in snapshots}) == 1:
        keys = list(snapshots[0].columns)
        members["neurons.parquet"] = _parquet_bytes(
            pq, pa.table({k: np.concatenate([s[k].to_numpy() for s in snapshots]) for k in keys})
        )

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w") as zf:
            for name, data in members.items():
                method = zipfile.ZIP_STORED if name.endswith(".parquet") else zipfile.ZIP_DEFLATED
                zf.writestr(zipfile.ZipInfo(name, time.gmtime()[:6]), data, compress_type=method)

    write_atomic(path, write)


def _parquet_bytes(pq: Any, table: Any) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


# --- reading ------------------------------------------------------------------------------------------------


def read_archive(store: RunStore, path: Path, name: str | None = None) -> str:
    """Validate the file at ``path`` and add its run to ``store``; returns the new run's id.

    ``name`` is how messages call the file (default: ``path``). Every refusal is ``StoreError`` kind ``invalid``
    whose message starts with ``<name>: refused:``.
    """
    label = unpack.label(path if name is None else name)
    refuse = unpack.Refuse(label)
    if store.read_only:
        raise StoreError(f"{label}: cannot import into {store.path}: it was opened read-only", "readonly")
    try:
        with unpack.open_regular(path, refuse) as f, unpack.members(f, refuse, store.home) as members:
            raw, columns = unpack.manifest(members["run.json"].read(), refuse)
            rows = unpack.metrics(members["metrics.parquet"], columns, refuse)
            events = unpack.events(members["events.json"].read() if "events.json" in members else None, refuse)
            unpack.check_versions(raw, events, refuse)
            neurons = unpack.neurons(members.get("neurons.parquet"), refuse)
    except MemoryError:
        raise refuse("reading it needs more memory than an import may use") from None
    return store._insert_run(raw, rows, events, neurons, label)


# --- importing in a worker process --------------------------------------------------------------------------


def import_in_worker(
    home: str | Path | None,
    path: str | Path,
    name: str | None = None,
    timeout: float = IMPORT_SECONDS,
    memory: int = IMPORT_MEMORY,
) -> str:
    """``RunStore(home).import_run(path, name)`` in a separate, spawned process; returns the new run's id.

    The process may add at most ``memory`` bytes of address space (``RLIMIT_AS``, where the platform has it) and
    run ``timeout`` seconds; past either it is ended and the file refused. Whatever the file holds, this process
    grows by nothing. Raises ``StoreError`` with the same kinds and messages as ``import_run`` (``invalid``,
    ``duplicate``, ``locked``, ...).
    """
    from balance.runs.executor import neutral_main
    from balance.runs.store import default_home

    label = unpack.label(path if name is None else name)
    home = Path(home).expanduser() if home is not None else default_home()
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    args = (send, str(home), str(path), label, memory)
    proc = ctx.Process(target=_import_main, args=args, name="balance-import", daemon=True)
    try:
        with neutral_main():
            proc.start()
    except OSError as exc:
        receive.close()
        raise StoreError(f"{label}: cannot start the import process ({exc.strerror or exc})", "io") from None
    finally:
        send.close()  # the child holds the only sending end now: its death ends our wait
    try:
        if not receive.poll(timeout):
            raise StoreError(f"{label}: refused: importing it took longer than {timeout:g} s", "invalid")
        try:
            kind, text = receive.recv()
        except (EOFError, OSError):
            proc.join(5)
            raise StoreError(
                f"{label}: refused: the import process ended without an answer (exit code {proc.exitcode}); "
                "the file may need more memory than an import may use",
                "invalid",
            ) from None
    finally:
        receive.close()
        if proc.is_alive():
            proc.kill()  # mid-write, SQLite rolls the transaction back; spooled members were never named
        proc.join(5)
    if kind == "ok":
        return text
    raise StoreError(text, kind)


def _import_main(send: Any, home: str, path: str, label: str, memory: int) -> None:
    """The import process: limit its memory, import, send ("ok", id) or (kind, message), exit at once."""
    try:
        import pyarrow.parquet  # noqa: F401  (imported before the limit: the limit is on what the file costs)

        from balance.runs.store import RunStore

        RunConfig.from_dict(RunConfig().to_dict())  # checking a config imports the model registry (torch): now
        _limit_memory(memory)
        try:
            with RunStore(home) as store:
                result = ("ok", store.import_run(path, label))
        except StoreError as exc:
            result = (exc.kind, str(exc))
        except MemoryError:
            result = ("invalid", f"{label}: refused: importing it needs more memory than an import may use")
        except Exception as exc:  # a bug, not the file: say what it was rather than lose it
            result = ("io", f"{label}: import failed: {type(exc).__name__}: {str(exc)[:300]}")
        with contextlib.suppress(OSError, ValueError):
            send.send(result)
    finally:
        # skip interpreter teardown: nothing is left to save, and native threads cannot abort an exit that is not run
        os._exit(0)


def _limit_memory(extra: int) -> None:
    """Cap this process's address space at its current size plus ``extra`` bytes (where ``resource`` exists)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows: the time limit still applies
        return
    current = 0
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/status") as f:
        current = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = current + int(extra)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
