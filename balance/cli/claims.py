"""``balance claims [--only N[,M]] --report FILE.md``: run the reviewers' claims and write the report.

Runs are looked up in the run store first (``balance.runs.reuse``: same config and code version, same run) and the
missing ones train in parallel worker processes (``balance.runs.executor.Runner``). Progress goes to stderr, one
line per
claim; the report (Markdown, figures as ``claim-N.html`` beside it) to FILE.md. Exit codes: 0 all claims ran,
1 a claim's runs could not be analysed (the others are still reported), 2 bad input (an unknown claim number, an
unwritable report path; one line on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``claims`` to the ``balance`` command's subparsers."""
    p = subparsers.add_parser(
        "claims",
        help="run the reviewers' claims as experiments and write a report with the verdicts",
        description="Run the experiments of the Claims page and write a Markdown report with each claim, its "
        "numbers and its verdict (figures as HTML files next to it).",
        epilog="exit codes: 0 all claims ran, 1 a claim failed (the others are reported), 2 bad input (one line on "
        "stderr)",
        allow_abbrev=False,
    )
    p.add_argument("--report", required=True, metavar="FILE.md", help="the Markdown report to write")
    p.add_argument("--only", metavar="N[,M]", help="run only these claims (numbers as in the report, comma-separated)")
    p.add_argument("--quick", action="store_true", help="a reduced budget (fewer steps and step sizes), for tests")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="training processes (default: the cores)")
    p.add_argument("--home", metavar="DIR", help="data directory (default: $BALANCE_HOME, else ~/.balance)")
    p.set_defaults(handler=_cmd_claims)


def _error(message: str) -> int:
    from balance.config import clip

    print(f"balance: error: {clip(message)}", file=sys.stderr)  # one line of at most a few hundred characters
    return EXIT_USAGE


def parse_only(text: str | None) -> list[int] | None:
    """'3' or '3,5' -> [3] / [3, 5]; None -> None (all). ValueError with one line for anything else."""
    if text is None:
        return None
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--only {text!r}: expected claim numbers such as 3 or 3,5") from None
    if not numbers:
        raise ValueError(f"--only {text!r}: expected claim numbers such as 3 or 3,5")
    return list(dict.fromkeys(numbers))


def check_writable(path: Path) -> str:
    """Why the report cannot be written at ``path`` ('' when it can)."""
    if path.is_dir():
        return f"--report {str(path)!r}: is a directory"
    if path.suffix.lower() != ".md":
        return f"--report {str(path)!r}: the report is Markdown, give a name ending in .md"
    parent = path.parent
    if not parent.is_dir():
        return f"--report {str(path)!r}: the directory {str(parent)!r} does not exist"
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"--report {str(path)!r}: not writable"
    try:  # the only reliable test of writability is to write (/proc passes the access test); before any training
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        return f"--report {str(path)!r}: not writable ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(probe)
    return ""


def _cmd_claims(args: argparse.Namespace) -> int:
    from balance import claims  # imported here: torch and the experiments load only for this command
    from balance.runs.executor import Runner
    from balance.runs.store import RunStore, StoreError
    from balance.runs.sweep import usable_cores

    try:
        chosen = claims.by_number(parse_only(args.only))
    except ValueError as exc:
        return _error(str(exc))
    try:
        report = Path(os.path.abspath(os.path.expanduser(args.report)))
        why = check_writable(report)
    except (OSError, ValueError):  # a name too long, a NUL byte
        why = f"--report {args.report!r}: not a usable file name"
    if why:
        return _error(why)
    if args.workers < 0:
        return _error(f"--workers {args.workers}: must be at least 1 (0: one per core)")
    cores = usable_cores()
    if args.workers > cores:  # more processes than cores only add memory and contention
        print(f"balance: note: --workers {args.workers}: using {cores}, the cores here", file=sys.stderr)
        args.workers = cores
    try:
        store = RunStore(args.home)
    except StoreError as exc:
        return _error(str(exc))
    runner = Runner(store, max_workers=args.workers or None)
    results, failed, start = [], [], time.monotonic()
    try:
        ids = claims.start(chosen, store, runner, quick=args.quick)  # every missing run queued now, all claims
        for claim in chosen:
            began = time.monotonic()

            def progress(done: int, total: int, claim: claims.Claim = claim) -> None:
                print(f"claim {claim.number} ({claim.title}): {done}/{total} runs", file=sys.stderr, flush=True)

            try:
                evaluated = claims.collect(claim, ids[claim.number], store, runner, progress, quick=args.quick)
            except Exception as exc:  # one claim's broken runs must not lose the others' report
                print(f"claim {claim.number}: failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                failed.append(claim.number)
                continue
            v = evaluated.finding.verdict
            took = time.monotonic() - began
            print(f"claim {claim.number}: {v.outcome} ({took:.1f} s): {v.reason}", file=sys.stderr, flush=True)
            results.append(evaluated)
    finally:
        runner.shutdown()
    seconds = time.monotonic() - start
    try:
        written = claims.report.write(results, report, seconds, quick=args.quick)
    except OSError as exc:
        return _error(f"--report {str(report)!r}: {exc.strerror or exc}")
    finally:
        store.close()
    n = (len(written) - 1) // 2
    print(f"wrote {written[0]} and {n} figures and {n} config files beside it ({seconds:.1f} s)", file=sys.stderr)
    if failed:
        print(f"balance: error: claims {', '.join(map(str, failed))} did not run to a verdict", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
