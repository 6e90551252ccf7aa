"""``balance sweep``: train a grid of configurations together; every member lands in the run store.

Two ways to say what to sweep (they combine: flags override the file)::

    balance sweep --config SPEC.toml                      # a sweep spec (see balance.runs.sweep), or a run config
    balance sweep --model mf --d1 50 --d2 50 --rank 5 --lr 0.01,0.02,0.05 --init-scale 0.01,0.1 \\
        --seeds 0-7 --steps 2000 --out DIR

Every flag of ``balance run`` is accepted; a comma-separated value makes that setting an axis of the grid (list
settings such as --widths take one value). ``--out DIR`` writes summary.csv (one row per member), metrics.parquet
(every member's rows, with a ``run`` column) and spec.toml (the resolved spec, to run the same sweep again).
Exit codes: 0 every member finished or diverged (divergence is a result), 1 a member failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import tomli_w

from balance.config import ConfigError, parse_value, schema
from balance.runs.sweep import MAX_MEMBERS, RAY_CONNECT_SECONDS

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EPILOG = f"""\
examples:
  balance sweep --model mf --d1 50 --d2 50 --rank 5 --lr 0.01,0.02,0.05 --init-scale 0.01,0.1 \\
      --seeds 0-7 --steps 2000 --log-every 10 --out DIR
  balance sweep --config SPEC.toml          (a sweep spec: name, preset, [base], [grid], [[list]])

a sweep has at most {MAX_MEMBERS:,} members (counted before any is built); --workers is at most the cores here;
a --ray-address that does not answer within {RAY_CONNECT_SECONDS:g} s is refused before anything is stored.

exit codes: 0 every member finished or diverged, 1 a member failed, 2 bad input (one line on stderr)"""
_DEST = "sweep:"
_LISTS = ("tuple[float, ...]", "tuple[int, ...]")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sweep`` to the ``balance`` command's subparsers."""
    from balance.cli.core import add_setting_flags

    p = subparsers.add_parser(
        "sweep",
        help="train a grid of configurations together (comma-separated values, --seeds 0-7)",
        description="Train a grid of configurations together; every member lands in the run store as a run of the "
        "sweep (see them on the Sweeps and Runs pages). A comma-separated value makes a setting an axis of the grid.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    base = p.add_argument_group("what to sweep (defaults < preset or spec file < flags)")
    one = base.add_mutually_exclusive_group()
    one.add_argument("--preset", metavar="NAME", help="start from a preset")
    one.add_argument("--config", metavar="SPEC.toml", help="a sweep spec ([base], [grid], [[list]]) or a run config")
    base.add_argument("--seeds", metavar="0-7", help="run seeds: a range or a list (an axis of the grid)")
    base.add_argument("--name", help="name of the sweep (its id is the name and a random suffix)")
    run = p.add_argument_group("running")
    run.add_argument("--out", metavar="DIR", help="also write summary.csv, metrics.parquet and spec.toml to DIR")
    run.add_argument("--home", metavar="DIR", help="data directory of the run store (default: $BALANCE_HOME)")
    run.add_argument("--workers", type=int, metavar="N", help="worker processes (default: the CPU count)")
    run.add_argument("--chunk", type=int, metavar="N", help="members per batch (default: 64 for mf, else 8)")
    run.add_argument("--ray-address", metavar="HOST:PORT", help="send the batches to this Ray cluster")
    add_setting_flags(p, "{section} settings (comma-separated values: an axis)", _DEST)
    p.set_defaults(handler=_cmd_sweep)


def spec_from_args(args: argparse.Namespace) -> Any:
    """The ``SweepSpec`` the flags describe: the spec file (or preset, or defaults), then each flag."""
    from balance.cli.core import read_input
    from balance.config.presets import preset
    from balance.runs.sweep import SweepSpec, parse_seeds

    if args.config is not None:
        text = read_input(args.config, "spec file")  # a regular file under a size cap: never a FIFO or /dev/zero
        spec = SweepSpec.from_toml(text, where=f"spec file {args.config}")
    elif args.preset is not None:
        spec = SweepSpec(base=preset(args.preset))
    else:
        spec = SweepSpec()
    base_changes: dict[str, Any] = {}
    grid = dict(spec.grid)
    for key, f in schema():
        if not hasattr(args, _DEST + key):
            continue
        value = getattr(args, _DEST + key)
        if isinstance(value, bool) or f.type in _LISTS:
            values = [value if isinstance(value, bool) else parse_value(key, value)]
        else:
            values = [parse_value(key, v.strip()) for v in value.split(",") if v.strip()]
            if not values:
                raise ConfigError(f"{key} = {value!r}: give at least one value")
        if key == "data.name" and any(str(v).startswith("csv:") for v in values):
            if len(values) > 1:
                raise ConfigError("--dataset csv:PATH takes one data set")
            base_changes["data.csv_path"] = values[0][len("csv:") :]
            values = ["csv"]
        if len(values) == 1:
            base_changes[key] = values[0]
            grid.pop(key, None)
        else:
            if len({repr(v) for v in values}) != len(values):
                raise ConfigError(f"{key} = {value!r}: a value is given twice")
            grid[key] = tuple(values)
    if args.seeds is not None:
        grid["seed"] = parse_seeds(args.seeds)
        base_changes.pop("seed", None)
    base = spec.base.replace(**base_changes)
    name = args.name if args.name is not None else spec.name
    out = SweepSpec(base, tuple(grid.items()), spec.members, name)
    return SweepSpec.from_dict(spec_to_dict(out))  # validated as a file would be


def spec_to_dict(spec: Any) -> dict[str, Any]:
    """The TOML-ready table of a ``SweepSpec`` (the inverse of ``SweepSpec.from_dict``)."""
    plain = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    out: dict[str, Any] = {"name": spec.name, "base": spec.base.to_dict()}
    if spec.grid:
        out["grid"] = {k: [plain(v) for v in values] for k, values in spec.grid}
    if spec.members:
        out["list"] = [{k: plain(v) for k, v in m} for m in spec.members]
    return out


def _cmd_sweep(args: argparse.Namespace) -> int:
    from balance.cli.core import UsageError
    from balance.runs.store import RunStore, StoreError
    from balance.runs.sweep import run_sweep, summary, usable_cores

    spec = spec_from_args(args)
    configs = spec.configs()
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: give at least 1")
    if args.workers is not None and args.workers > usable_cores() and not args.ray_address:
        print(f"balance: note: --workers {args.workers}: using {usable_cores()}, the cores here", file=sys.stderr)
        args.workers = usable_cores()
    if args.chunk is not None and args.chunk < 1:
        raise UsageError(f"--chunk {args.chunk}: give at least 1")
    out = _out_dir(args.out)
    try:
        store = RunStore(args.home)
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    from tqdm import tqdm

    bar = tqdm(total=len(configs), unit="run", file=sys.stderr, dynamic_ncols=True, disable=None)
    try:
        result = run_sweep(
            spec,
            store,
            workers=args.workers,
            chunk=args.chunk,
            ray_address=args.ray_address,
            on_progress=lambda done, total: bar.update(done - bar.n),
        )
        bar.close()
        table = summary(store, result.sweep)
        if out is not None:
            try:
                _write_outputs(store, spec, table, out)
            except OSError as exc:
                raise UsageError(f"--out {args.out}: writing failed ({exc.strerror or exc})") from None
    finally:
        bar.close()
        store.close()
    counts = ", ".join(f"{n} {state}" for state, n in result.counts().items())
    print(f"sweep {result.sweep}: {len(configs)} runs ({counts}) in {store.path}")
    if out is not None:
        print(f"wrote {out / 'summary.csv'}, {out / 'metrics.parquet'}, {out / 'spec.toml'} and {out / 'stamp.json'}")
    return EXIT_FAILED if "failed" in result.states else EXIT_OK


def _out_dir(text: str | None) -> Path | None:
    """The ``--out`` folder, created; ``UsageError`` if it is not a folder or cannot be created."""
    from balance.cli.core import UsageError

    if text is None:
        return None
    if not text:
        raise UsageError("--out: give a folder name")
    try:
        out = Path(os.path.abspath(os.path.expanduser(text)))
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {text}: exists and is not a directory")
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # no permission, a name too long
        raise UsageError(f"--out {text}: cannot create it ({exc.strerror or exc})") from None
    except ValueError:  # a NUL byte in the name
        raise UsageError(f"--out {text}: not a usable folder name") from None
    return out


def _write_outputs(store: Any, spec: Any, table: Any, out: Path) -> None:
    """summary.csv, metrics.parquet, spec.toml and stamp.json (``balance.runs.stamp``) in ``out``: each whole or not
    at all, with the usual permissions."""
    import json

    import pandas as pd

    from balance.files import write_atomic
    from balance.runs import stamp

    write_atomic(out / "summary.csv", lambda tmp: table.to_csv(tmp, index=False))
    frames = [store.metrics(run_id).assign(run=run_id) for run_id in table["run"]]
    metrics = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    metrics = metrics[["run", *[c for c in metrics.columns if c != "run"]]]
    write_atomic(out / "metrics.parquet", lambda tmp: metrics.to_parquet(tmp, index=False))
    write_atomic(out / "spec.toml", tomli_w.dumps(spec_to_dict(spec)))
    # which code made the numbers: with spec.toml, enough to re-run the sweep on a checkout at that commit
    write_atomic(out / "stamp.json", json.dumps(stamp.stamp(), indent=2) + "\n")
