"""The ``balance`` command line over the same library: run a config, list presets, print a resolved config.

Every setting of ``RunConfig`` is a flag, built from ``balance.config.settings()`` so a new field appears by itself;
precedence is defaults < ``--preset`` or ``--config FILE.toml`` < flags. Exit codes: 0 finished, 2 bad input
(one line on stderr), 3 diverged, 4 stopped at the wall-time limit, 130 interrupted (Ctrl-C on ``run`` stops after
the current step; the rows so far are recorded and written). Files given as input are read only if they are regular
files under a size cap; outputs are written whole (through a rename) with the user's usual permissions.

A subcommand is one ``Command`` entry in ``COMMANDS``; ``add_config_arguments`` and ``config_from_args`` are
shared by every subcommand that takes a config. Only the command-line modules print; the library logs.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import signal
import sys
import tempfile
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from balance.config import ConfigError, RunConfig, choices_of, clip, loads_toml, parse_value, schema
from balance.files import FileRefused, read_text_limited, write_atomic

if TYPE_CHECKING:  # pandas (~1 s to import) only where metrics are written: --help and presets never load it
    import pandas as pd

EXIT_OK, EXIT_USAGE, EXIT_DIVERGED, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 2, 3, 4, 130
EXIT_BY_STATE = {
    "finished": EXIT_OK,
    "diverged": EXIT_DIVERGED,
    "stopped": EXIT_STOPPED,
    "failed": 1,
    "interrupted": EXIT_INTERRUPTED,
}
MAX_INPUT_BYTES = 2**20  # a config or a sweep spec: a 1,000-value axis is about 20 kB
WRITERS: dict[str, Callable[[pd.DataFrame, str], None]] = {
    # floats are written in their shortest round-trip form, so every float64 survives the file exactly
    ".csv": lambda df, path: df.to_csv(path, index=False),
    ".parquet": lambda df, path: df.to_parquet(path, index=False),
}
_DEST = "config:"  # namespace prefix of the setting flags, so they never clash with a subcommand's own options

EXIT_CODES = """\
exit codes: 0 finished, 2 bad input (one line on stderr), 3 diverged, 4 stopped at the wall-time limit
(--max-seconds), 130 interrupted (Ctrl-C: the rows so far are recorded and written; press twice to quit at once)"""


class UsageError(Exception):
    """Bad command-line input that is not a config value (a bad flag, an output path); exits 2 with one line."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reports errors as one line (raised, so ``main`` decides how to exit)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


# --- settings as flags --------------------------------------------------------------------------------------


def flag_of(key: str, f: dataclasses.Field) -> str:
    """The flag of the dotted setting ``key``: the field's ``cli`` metadata, else ``--`` + name with ``-``."""
    return f.metadata.get("cli") or "--" + key.rpartition(".")[2].replace("_", "-")


def _metavar(key: str, f: dataclasses.Field) -> str:
    choices = choices_of(f)
    if key == "data.name":  # csv takes its path in the same flag
        choices = tuple(f"{c}:PATH" if c == "csv" else c for c in choices or ())
    if choices:
        return "{" + ",".join(choices) + "}"
    kind = {"int": "INT", "float": "X", "tuple[float, ...]": "X,Y,...", "tuple[int, ...]": "N,M,..."}
    return kind.get(f.type, "PATH" if key.endswith("_path") else "TEXT")


def _help(f: dataclasses.Field) -> str:
    meta, default = f.metadata, f.default
    text = meta["help"]
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None or hi is not None:
        text += f"; {lo:g} to {hi:g}" if isinstance(lo, float) else f"; {lo} to {hi}"
    if default not in ((), ""):
        shown = (
            str(default).lower()
            if isinstance(default, bool)
            else f"{default:g}"
            if isinstance(default, float)
            else default
        )
        text += f"; default {shown}"
    return text.replace("%", "%%")  # argparse %-formats help strings


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--preset`` / ``--config`` and one flag per setting of ``schema()``, grouped by section."""
    from balance.config.presets import PRESETS

    base = parser.add_argument_group("starting point (defaults < preset or config file < flags)")
    one = base.add_mutually_exclusive_group()
    one.add_argument("--preset", metavar="NAME", help=f"start from a preset: {', '.join(PRESETS)}")
    one.add_argument("--config", metavar="FILE.toml", help="start from a TOML file (see: balance config)")
    add_setting_flags(parser)


def add_setting_flags(
    parser: argparse.ArgumentParser, group_title: str = "{section} settings", dest: str = _DEST
) -> None:
    """One flag per setting of ``schema()``, in a group per section; parsed values land under ``dest + key``."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for key, f in schema():
        section = key.rpartition(".")[0] or "run"
        if section not in groups:
            groups[section] = parser.add_argument_group(group_title.format(section=section))
        options: dict[str, Any] = {"dest": dest + key, "default": argparse.SUPPRESS, "help": _help(f)}
        if f.type == "bool":
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["metavar"] = _metavar(key, f)
        groups[section].add_argument(flag_of(key, f), **options)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The config the flags describe: the preset, the config file or the defaults, then each given flag.

    Raises ``ConfigError`` for an unknown preset, an unreadable or invalid file, a bad value or a refused combination.
    """
    changes: dict[str, Any] = {}
    for key, _ in schema():
        if not hasattr(args, _DEST + key):
            continue
        value = getattr(args, _DEST + key)
        changes[key] = value if isinstance(value, bool) else parse_value(key, value)
    name = changes.get("data.name", "")
    if name.startswith("csv:"):
        if "data.csv_path" in changes:
            raise ConfigError("give the CSV path once: --dataset csv:PATH or --csv-path PATH")
        changes["data.name"], changes["data.csv_path"] = "csv", name[len("csv:") :]
    return _base_config(args).replace(**changes)


def _base_config(args: argparse.Namespace) -> RunConfig:
    from balance.config.presets import preset

    if getattr(args, "preset", None) is not None:
        return preset(args.preset)
    if getattr(args, "config", None) is not None:
        return load_config(args.config)
    return RunConfig()


def load_config(path: str) -> RunConfig:
    """A ``RunConfig`` from a TOML file; every problem (missing, not a regular file, too large, not TOML, nested too
    deeply, bad key) is a one-line ConfigError."""
    where = f"config file {path}"
    try:
        return RunConfig.from_dict(loads_toml(read_input(path, "config file"), where))
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from None


def read_input(path: str, what: str, limit: int = MAX_INPUT_BYTES) -> str:
    """The text of a file the user names (a config, a sweep spec); ``ConfigError`` if it is missing, not a regular
    file (a FIFO would block the read forever, ``/dev/zero`` never ends), larger than ``limit`` or not UTF-8."""
    try:
        return read_text_limited(path, limit, what)
    except FileRefused as exc:
        raise ConfigError(str(exc)) from None


# --- balance run --------------------------------------------------------------------------------------------


def metrics_help(width: int = 100) -> str:
    """What ``balance run`` logs and predicts, read from the registry (``balance.engine.laws``; torch-free, so
    ``--help`` stays fast): a line per metric (its columns, formula, unit and sign convention) and per optimiser its
    exact law of the layer gap, or why there is none."""
    from balance.engine import laws

    def item(name: str, text: str) -> str:
        return textwrap.fill(text, width, initial_indent=f"  {name:<20} ", subsequent_indent=" " * 23)

    lines = ["metrics (a CSV column each; _h: layer h = 1..L, or the pair of layers h, h+1):"]
    for name, m in laws.METRICS.items():
        if m.scope == "neuron":  # the per-unit table, not a column of the rows
            continue
        sign = f"; sign: {m.sign}" if m.sign else ""
        kind = "predicted: " if m.kind == "predicted" else ""
        lines.append(item(laws.pattern(name), f"{kind}{m.formula} [{m.unit}]{sign}"))
    predicted = ", ".join(laws.pattern(n) for n, m in laws.METRICS.items() if m.kind == "predicted")
    lines.append(f"optimisers and the exact law behind {predicted} (NaN where there is none):")
    for name, o in laws.OPTIMIZERS.items():
        lines.append(item(name, o.law.recursion if o.law is not None else f"no law: {o.no_law}"))
    for name, reason in {**{n: a.no_law for n, a in laws.ACTIVATIONS.items() if a.no_law}, **laws.MODEL_NO_LAW}.items():
        lines.append(item(name, f"no law: {reason}"))
    return "\n".join(lines)


def _run_epilog() -> str:
    return f"{metrics_help()}\n\n{EXIT_CODES}"


def _add_run(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--out", metavar="PATH", help="write the metrics to PATH (.csv or .parquet); else only summarise")
    out.add_argument("--no-store", action="store_true", help="do not record the run in the run store")


def _cmd_run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.out is not None:
        check_output(args.out)
    _set_threads(config)
    from balance.runs.loop import run

    with _CtrlC() as ctrl_c, _progress(config.steps) as on_step:
        result = run(config, on_step, lambda: ctrl_c.pressed)  # stop: after a Ctrl-C
        # the rows so far are kept whatever happened: recorded, written, then the exit code says how it ended
        if not args.no_store:
            from balance.cli.runs import record_run

            record_run(result)
        if args.out is not None:
            write_metrics(result.metrics, args.out)
    print(summary(result.metrics, result.status.state, result.status.step, result.status.message))
    return EXIT_BY_STATE[result.status.state]


# Below this many FLOPs a step (~2 ms of one core) a second torch thread only adds synchronisation: a 1000-step MF
# run took 2.9x the wall and 2.75x the CPU time with torch's default of 2 threads on a busy 2-core machine.
ONE_THREAD_FLOPS = 2e8


def _set_threads(config: RunConfig) -> int:
    """Train small models on one torch thread, as the dashboard's workers do; returns the thread count used.
    ``OMP_NUM_THREADS`` in the environment, where set, decides instead."""
    import torch

    from balance.runs.limits import estimate

    if "OMP_NUM_THREADS" not in os.environ and estimate(config).flops_per_step < ONE_THREAD_FLOPS:
        torch.set_num_threads(1)
    return torch.get_num_threads()


class _CtrlC:
    """While training in the foreground, the first Ctrl-C (SIGINT) asks the run to stop after its current step, so
    its rows so far are recorded and written; a second one interrupts at once (KeyboardInterrupt, nothing kept)."""

    def __init__(self) -> None:
        self.pressed, self.previous = False, None

    def __enter__(self) -> _CtrlC:
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (a caller's thread): Ctrl-C keeps its usual meaning
            self.previous = None
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


class _progress:
    """A tqdm bar on stderr when it is a terminal; yields the ``on_step`` callback (None without a terminal)."""

    def __init__(self, total: int) -> None:
        self.total, self.bar = total, None

    def __enter__(self) -> Callable[[int], None] | None:
        if not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, unit="step", file=sys.stderr, dynamic_ncols=True)
        return lambda k: self.bar.update(k - self.bar.n)  # type: ignore[union-attr]

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def check_output(path: str, suffixes: Sequence[str] = tuple(WRITERS)) -> Path:
    """The output path (absolute, with ``~`` expanded); refused (``UsageError``) before any work if its suffix is not
    one of ``suffixes``, it is a folder, or it cannot be written."""
    if Path(path).suffix.lower() not in suffixes:
        raise UsageError(f"--out {path}: the file name must end in {' or '.join(suffixes)}")
    try:
        target = Path(os.path.abspath(os.path.expanduser(path)))
        if target.is_dir():
            raise UsageError(f"--out {path}: is a directory")
        # the only reliable test of writability is to write
        fd, probe = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:  # no such folder, no permission, a name too long
        raise UsageError(f"--out {path}: cannot write there ({exc.strerror or exc})") from None
    except ValueError:  # a NUL byte in the name
        raise UsageError(f"--out {path}: not a usable file name") from None
    os.close(fd)
    os.unlink(probe)
    return target


def write_metrics(metrics: pd.DataFrame, path: str) -> None:
    """Write ``metrics`` by the suffix of ``path``, atomically (never half a file) and with the user's usual
    permissions (``write_atomic``)."""
    writer = WRITERS[Path(path).suffix.lower()]
    try:
        write_atomic(Path(os.path.abspath(os.path.expanduser(path))), lambda tmp: writer(metrics, tmp))
    except OSError as exc:
        raise UsageError(f"--out {path}: writing failed ({exc.strerror or exc})") from None


def summary(metrics: pd.DataFrame, state: str, steps: int, message: str = "") -> str:
    """One line: status, steps, final loss and the final gap drift against its prediction.

    Of several layer pairs the one with the largest measured drift is shown, with the largest mismatch over all.
    Columns are named and read by the registry (``balance.engine.laws``).
    """
    from balance.engine.laws import METRICS, column, of_metric, prediction_of

    last = metrics.iloc[-1]
    text = f"{state}: {steps} step{'' if steps == 1 else 's'}, final loss {last['loss']:.6g}"
    drift, predicted = METRICS["gap_drift"], prediction_of("gap_drift")
    pairs = of_metric(metrics.columns, "gap_drift")
    if pairs and predicted is not None:
        ends = {h: (last[column("gap_drift", h)], last[column(predicted, h)]) for h in pairs}
        h = max(pairs, key=lambda h: abs(ends[h][0]))
        mismatch = max(abs(m - p) for m, p in ends.values())
        text += (
            f", {drift.title} {ends[h][0]:.6g} vs predicted {ends[h][1]:.6g} "
            f"({drift.place(h)}; max mismatch {mismatch:.2g})"
        )
    return f"{text}; {message}" if message else text


# --- balance presets, balance config ------------------------------------------------------------------------


def _add_presets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--show", metavar="NAME", help="print the preset's config as TOML")


def _cmd_presets(args: argparse.Namespace) -> int:
    from balance.config.presets import PRESETS, preset

    if args.show:
        print(preset(args.show).to_toml(), end="")
        return EXIT_OK
    width = max(map(len, PRESETS))
    for name, (description, _) in PRESETS.items():
        print(f"{name:<{width}}  {description}")
    return EXIT_OK


def _cmd_config(args: argparse.Namespace) -> int:
    print(config_from_args(args).to_toml(), end="")
    return EXIT_OK


# --- the parser and main ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, a one-line help, a function adding its arguments, and its handler -> exit code."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]
    epilog: str | Callable[[], str] = ""  # a function: computed when the parser is built (the registry's metrics)


# Subcommands with their own module (``register(subparsers)`` each) and their one-line help. Only the module of the
# command being run is imported: the others pull in pandas, NumPy or the engine, and ``balance --help`` lists them
# from this table (tests/test_cli.py checks it against what each module registers).
EXTENSIONS = {
    "runs": ("balance.cli.runs", "list, show, export, import or delete the runs in the run store"),
    "sweep": ("balance.cli.sweep", "train a grid of configurations together (comma-separated values, --seeds 0-7)"),
    "claims": ("balance.cli.claims", "run the reviewers' claims as experiments and write a report with the verdicts"),
    "lecture": (
        "balance.cli.lecture",
        "export the lecture: a self-contained HTML handout, its figures for slides, a PDF to print",
    ),
    "audit": (
        "balance.cli.audit",
        "find the conservation laws of your own PyTorch model (FILE.py:factory) and check each in float64",
    ),
}

COMMANDS: list[Command] = [
    Command("run", "train one config; write its metrics and print a summary", _add_run, _cmd_run, _run_epilog),
    Command("presets", "list the presets, or print one as TOML", _add_presets, _cmd_presets),
    Command("config", "print the resolved config as TOML (a start for --config)", add_config_arguments, _cmd_config),
]


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``balance`` parser. Given the ``argv`` it will parse, only the command named there gets its options
    built (and its module imported); the others are listed by name and help. Without ``argv``: every command."""
    from balance import __version__

    parser = _Parser(
        prog="balance",
        description="See, teach and check how gradient descent balances the layers of deep homogeneous models.",
        epilog=f"Run 'balance COMMAND --help' for a command's options.\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"balance {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the library's log messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = None if argv is None else _command_of(argv)
    for command in COMMANDS:
        if argv is not None and command.name != wanted:
            sub.add_parser(command.name, help=command.help)
            continue
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            epilog=command.epilog() if callable(command.epilog) else command.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,  # a new setting must never make an existing abbreviation ambiguous
        )
        command.add_arguments(p)
        p.set_defaults(handler=command.handler)
    for name, (module, help) in EXTENSIONS.items():
        if argv is None or name == wanted:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=help)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names: its first word that is not an option (the top-level options take no value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def _fail(message: str) -> int:
    print(f"balance: error: {clip(message)}", file=sys.stderr)  # one line of at most a few hundred characters
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return the exit code."""
    try:
        try:
            words = sys.argv[1:] if argv is None else argv
            args = build_parser(words).parse_args(words)
        except SystemExit as exc:  # --help and --version
            return exc.code if isinstance(exc.code, int) else EXIT_OK
        if args.verbose:
            logging.basicConfig(level=logging.INFO, format="balance: %(name)s: %(message)s")
        return args.handler(args)
    except (UsageError, ConfigError) as exc:
        return _fail(str(exc))
    except RecursionError:  # a structure nested past Python's stack in some input: bad input, not a crash
        return _fail("the input is nested too deeply")
    except KeyboardInterrupt:
        print("balance: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def entry() -> NoReturn:
    """The ``balance`` program: ``main``, then once every output is flushed, exit without the interpreter's teardown
    (with pandas or torch loaded it costs ~0.7 s of CPU, and nothing is left to clean up). If a child process is
    still alive (a worker that did not stop) the usual exit runs, so its clean-up still happens."""
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (balance runs list | head): nothing more to say
            code = code or 1
    import multiprocessing

    if multiprocessing.active_children():
        sys.exit(code)
    os._exit(code)


if __name__ == "__main__":
    entry()
