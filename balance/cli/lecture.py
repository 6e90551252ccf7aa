"""``balance lecture --out handout.html``: the lecture as one self-contained HTML file.

The demos' runs are looked up in the run store (``$BALANCE_HOME``) and trained there first when missing, so a
second handout is quick. Exit 0 written, 2 bad input (one line on stderr: an output path that cannot be written).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

SUFFIXES = (".html", ".htm")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``lecture`` to the ``balance`` command's subparsers."""
    help = "export the lecture (text, formulas, interactive charts) as one self-contained HTML file"
    p = subparsers.add_parser(
        "lecture",
        help=help,
        description=help + "; it opens offline, with no server and nothing loaded from the network.",
        epilog="exit codes: 0 written, 2 bad input (one line on stderr)",
        allow_abbrev=False,
    )
    p.add_argument("--out", metavar="PATH", required=True, help="the HTML file to write (.html)")
    p.add_argument("--no-store", action="store_true", help="train the demos in a temporary store (keep nothing)")
    p.set_defaults(handler=run)


def check_output(path: str) -> Path:
    """The output path, or ``UsageError`` (exit 2, one line) before any work: not .html, a folder, unwritable."""
    from balance.cli.core import check_output

    return check_output(path, SUFFIXES)


def run(args: argparse.Namespace) -> int:
    import torch

    from balance.cli.core import UsageError
    from balance.files import write_atomic
    from balance.lecture.handout import handout_html
    from balance.runs.store import RunStore

    target = check_output(args.out)
    torch.set_num_threads(1)  # tiny tensors: more threads only add synchronisation

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\rlecture: step {done} of {total}", end="" if done < total else "\n", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(tmp if args.no_store else None)
        try:
            text = handout_html(store, on_step=progress)
        finally:
            store.close()
    try:
        write_atomic(target, text)  # whole or not at all, readable as any file the user writes: it is to be shared
    except OSError as exc:
        raise UsageError(f"--out {args.out}: writing failed ({exc.strerror or exc})") from None
    print(f"wrote {target} ({len(text.encode()) / 1e6:.1f} MB): the lecture's 8 steps, opens offline")
    return 0
