"""``balance runs list|show|export|import|delete``: the run store from the command line; ``record_run`` for ``run``.

The store is found as everywhere else: ``--home DIR``, else ``$BALANCE_HOME``, else ``~/.balance``. A run is named
by its id or by a unique prefix of it. A bad id, a refused file or an unusable store exits 2 with one line (at most
``MAX_LINE`` characters). ``list``, ``show`` and ``export`` open the store read-only: they work on a full disk or a
read-only folder, and a damaged run is reported without hiding the others.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from balance.runs.record import differences
from balance.runs.store import RunStore, StoreError

EXIT_OK, EXIT_USAGE = 0, 2
MAX_LINE = 1000  # characters of an error line (a message may quote a long value)
READ_ONLY = ("list", "show", "export")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``runs`` and its actions to the ``balance`` command's subparsers."""
    runs = subparsers.add_parser(
        "runs",
        help="list, show, export, import or delete the runs in the run store",
        description="The run store: every run the dashboard or 'balance run' recorded.",
        epilog="exit codes: 0 done, 2 bad id, refused file or unusable store (one line on stderr)",
        allow_abbrev=False,
    )
    runs.add_argument("--home", metavar="DIR", help="data directory (default: $BALANCE_HOME, else ~/.balance)")
    actions = runs.add_subparsers(dest="runs_action", metavar="ACTION", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help, description=help, allow_abbrev=False)
        p.add_argument("--home", metavar="DIR", default=argparse.SUPPRESS, help="data directory")
        return p

    action("list", "one line per run, newest first")
    action("show", "a run's status, config and last metrics").add_argument("id", help="run id (or a unique prefix)")
    export = action("export", "write a run to one portable file (a zip of JSON and Parquet)")
    export.add_argument("id", help="run id (or a unique prefix)")
    export.add_argument("file", help="the file to write, e.g. run.zip")
    action("import", "add the run in an exported file (checked strictly)").add_argument("file")
    action("delete", "delete a run and its data").add_argument("id", help="run id (or a unique prefix)")
    runs.set_defaults(handler=_cmd_runs)


def record_run(result: Any, home: str | Path | None = None) -> str:
    """Record a foreground run (``balance.runs.loop.RunResult``: config, metrics, neuron snapshots, final status)
    in the store, all or nothing (``RunStore.record``); returns its id.

    Never fails the command that trained the run: if the store cannot take it, one warning line goes to stderr and
    the id is "".
    """
    try:
        store = RunStore(home)
        try:
            run_id = store.record(result, name="balance run")
        finally:
            store.close()
    except StoreError as exc:
        print(f"balance: warning: the run was not recorded: {exc}", file=sys.stderr)
        return ""
    print(f"balance: recorded as run {run_id} in {store.path}", file=sys.stderr)
    return run_id


def _cmd_runs(args: argparse.Namespace) -> int:
    try:
        store = RunStore(args.home, read_only=args.runs_action in READ_ONLY)
    except StoreError as exc:
        return _fail(str(exc))
    try:
        return ACTIONS[args.runs_action](store, args)
    except StoreError as exc:
        return _fail(str(exc))
    finally:
        store.close()


def _fail(message: str) -> int:
    print(f"balance: error: {_line(message)}", file=sys.stderr)
    return EXIT_USAGE


def _line(message: str) -> str:
    """``message`` on one line of at most ``MAX_LINE`` characters."""
    text = " ".join(message.split())
    if len(text) <= MAX_LINE:
        return text
    return f"{text[: MAX_LINE - 40]}… ({len(text) - MAX_LINE + 40} more characters)"


def resolve(store: RunStore, run_id: str) -> str:
    """The run id that ``run_id`` names: itself, or the one id it is a prefix of."""
    ids = store.list_runs()["id"].tolist()
    if run_id in ids:
        return run_id
    found = [i for i in ids if i.startswith(run_id)] if run_id else []
    if len(found) == 1:
        return found[0]
    why = f"is a prefix of {len(found)} runs" if found else "is not a run"
    raise StoreError(f"{run_id!r} {why} in {store.path} (see: balance runs list)", "missing")


def _list(store: RunStore, args: argparse.Namespace) -> int:
    runs = store.list_runs()
    if runs.empty:
        print(f"no runs in {store.path}")
        return EXIT_OK
    table = pd.DataFrame(
        {
            "id": runs["id"],
            "created": runs["created"].map(_local),
            "state": runs["state"],
            "step": [f"{s}/{n}" for s, n in zip(runs["step"], runs["steps"])],
            "model": runs["model"],
            "data": runs["dataset"],
            "optim": runs["optimizer"],
            "lr": [_short_lr(lr, history) for lr, history in zip(runs["lr"], runs["lr_history"])],
            "origin": runs["origin"],
            "name": runs["name"],
        }
    )
    print(table.to_string(index=False))
    for run in runs[runs["state"] == "unreadable"].itertuples():
        print(f"balance: warning: run {run.id}: {_line(run.message)}", file=sys.stderr)
    return EXIT_OK


def _short_lr(lr: float, history: str) -> str:
    """The step size, or its changes as "0.01→0.05@300" when it changed during the run."""
    return history.replace(" → ", "→").replace(" at step ", "@") if history else f"{lr:g}"


def _show(store: RunStore, args: argparse.Namespace) -> int:
    record = store.get_run(resolve(store, args.id))
    print(f"run {record.id}" + (f" ({record.name})" if record.name else ""))
    print(f"state    {record.state} at step {record.step}" + (f": {record.message}" if record.message else ""))
    print(f"created  {_local(record.created)}   updated {_local(record.updated)}")
    if record.origin != "trained":
        print(f"origin   {record.origin}: from a file, not trained here (never reused as a cached result)")
    history = store.lr_history(record.id)
    if history:
        print(f"lr       {history}")
    last = store.last_row(record.id)
    if last:
        shown = {k: last[k] for k in ("step", "t", "lr", "loss") if k in last}
        print("last row " + ", ".join(f"{k} {v:.6g}" for k, v in shown.items()))
    events = store.events(record.id)
    for e in events.itertuples():
        print(f"event    step {e.step}: {e.kind} = {e.text or f'{e.value:g}'}")
    versions = record.versions
    if len(versions) == 1:
        print("\n# config\n" + record.config.to_toml(), end="")
        return EXIT_OK
    print(f"\n# config: version 1 of {len(versions)}, from step 0 (changed while it trained; below)")
    print(record.config.to_toml(), end="")
    for n, (step, config) in enumerate(versions[1:], start=2):
        changed = ", ".join(f"{k} = {v!r}" for k, v in differences(versions[n - 2][1], config).items())
        print(f"# version {n}, from step {step}: {changed}")
    return EXIT_OK


def _export(store: RunStore, args: argparse.Namespace) -> int:
    run_id = resolve(store, args.id)
    try:
        store.export_run(run_id, args.file)
    except OSError as exc:
        return _fail(f"cannot write {args.file}: {exc.strerror or exc}")
    print(f"exported run {run_id} to {args.file}")
    return EXIT_OK


def _import(store: RunStore, args: argparse.Namespace) -> int:
    print(store.import_run(args.file))
    return EXIT_OK


def _delete(store: RunStore, args: argparse.Namespace) -> int:
    run_id = resolve(store, args.id)
    store.delete_run(run_id)
    print(f"deleted run {run_id}")
    return EXIT_OK


def _local(when: datetime | pd.Timestamp) -> str:
    return datetime.fromtimestamp(when.timestamp()).strftime("%Y-%m-%d %H:%M:%S")


ACTIONS = {"list": _list, "show": _show, "export": _export, "import": _import, "delete": _delete}
