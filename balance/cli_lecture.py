"""``balance lecture --out handout.html``: the lecture as one self-contained HTML file.

The demos' runs are looked up in the run store (``$BALANCE_HOME``) and trained there first when missing, so a
second handout is quick. Exit 0 written, 2 bad input (one line on stderr: an output path that cannot be written).
"""

from __future__ import annotations

import argparse
import os
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
    from balance.cli import check_output

    return check_output(path, SUFFIXES)


def run(args: argparse.Namespace) -> int:
    import torch

    from balance.cli import UsageError
    from balance.handout import handout_html
    from balance.store import RunStore

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
    fd, tmp_path = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes it private; a handout is meant to be shared
        os.replace(tmp_path, target)
    except OSError as exc:
        raise UsageError(f"--out {args.out}: writing failed ({exc.strerror or exc})") from None
    finally:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
    print(f"wrote {target} ({len(text.encode()) / 1e6:.1f} MB): the lecture's 8 steps, opens offline")
    return 0
