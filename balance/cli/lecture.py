"""``balance lecture --out handout.html --figures DIR --pdf lecture.pdf``: the lecture for a room, offline.

``--out``: one self-contained HTML file (text, formulas, interactive charts). ``--figures DIR``: every step's figure
for slides, ``lecture-3-layer-gaps.svg`` and ``.png`` (2x). ``--pdf``: the whole lecture, one page a step, for
printing. Figures and PDF are drawn by the system's Chromium (kaleido); nothing is fetched from the network.
The demos' runs are looked up in the run store (``$BALANCE_HOME``) and trained there first when missing, so a
second export is quick. Exit 0 written, 2 bad input (one line on stderr: an output path that cannot be written, no
Chromium for figures or PDF).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

SUFFIXES = (".html", ".htm")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``lecture`` to the ``balance`` command's subparsers."""
    help = "export the lecture: a self-contained HTML handout, its figures for slides, a PDF to print"
    p = subparsers.add_parser(
        "lecture",
        help=help,
        description=help + ". All offline: the handout opens with no server or network; figures and PDF are drawn "
        "by the system's Chromium.",
        epilog="exit codes: 0 written, 2 bad input (one line on stderr)",
        allow_abbrev=False,
    )
    p.add_argument("--out", metavar="PATH", help="the HTML handout to write (.html)")
    p.add_argument("--figures", metavar="DIR", help="write every figure as SVG and PNG (2x) into DIR (made if missing)")
    p.add_argument("--pdf", metavar="PATH", help="the PDF of the whole lecture to write, one page a step (.pdf)")
    p.add_argument("--no-store", action="store_true", help="train the demos in a temporary store (keep nothing)")
    p.set_defaults(handler=run)


def check_output(path: str, suffixes: tuple[str, ...] = SUFFIXES, option: str = "--out") -> Path:
    """The output path, or ``UsageError`` (exit 2, one line) before any work: a wrong suffix, a folder, unwritable."""
    from balance.cli.core import UsageError, check_output

    try:
        return check_output(path, suffixes)
    except UsageError as exc:
        raise UsageError(str(exc).replace("--out", option, 1)) from None


def check_folder(path: str) -> Path:
    """The figures' folder (made if missing, its parent must exist), or ``UsageError`` before any work."""
    from balance.cli.core import UsageError

    folder = Path(os.path.abspath(os.path.expanduser(path)))
    try:
        folder.mkdir(exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe-")
    except OSError as exc:
        raise UsageError(f"--figures {path}: cannot write there ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
    return folder


def run(args: argparse.Namespace) -> int:
    import torch

    from balance.cli.core import UsageError

    if not (args.out or args.figures or args.pdf):
        raise UsageError("lecture: say what to write: --out handout.html, --figures DIR and/or --pdf lecture.pdf")
    target = check_output(args.out) if args.out else None
    folder = check_folder(args.figures) if args.figures else None
    pdf = check_output(args.pdf, (".pdf",), "--pdf") if args.pdf else None
    if folder or pdf:
        from balance.lecture.slides import ExportError, chromium

        try:
            chromium()
        except ExportError as exc:
            raise UsageError(f"lecture: {exc}") from None
    torch.set_num_threads(1)  # tiny tensors: more threads only add synchronisation
    with tempfile.TemporaryDirectory() as tmp:
        from balance.runs.store import RunStore

        store = RunStore(tmp if args.no_store else None)
        try:
            if target:
                write_handout(store, target, args.out)
            if folder:
                write_figures(store, folder)
            if pdf:
                write_pdf(store, pdf)
        finally:
            store.close()
    return 0


def progress(what: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r{what}: step {done} of {total}", end="" if done < total else "\n", file=sys.stderr)

    return report


def write_handout(store: object, target: Path, given: str) -> None:
    from balance.cli.core import UsageError
    from balance.files import write_atomic
    from balance.lecture.handout import handout_html

    text = handout_html(store, on_step=progress("handout"))
    try:
        write_atomic(target, text)  # whole or not at all, readable as any file the user writes: it is to be shared
    except OSError as exc:
        raise UsageError(f"--out {given}: writing failed ({exc.strerror or exc})") from None
    print(f"wrote {target} ({len(text.encode()) / 1e6:.1f} MB): the lecture's 8 steps, opens offline")


def write_figures(store: object, folder: Path) -> None:
    from balance.cli.core import UsageError
    from balance.lecture.slides import ExportError, export_figures

    try:
        files = export_figures(store, folder, on_step=progress("figures"))
    except ExportError as exc:
        raise UsageError(f"--figures: {exc}") from None
    print(f"wrote {len(files)} files into {folder}: " + ", ".join(f.name for f in files[:2]) + ", …")


def write_pdf(store: object, target: Path) -> None:
    from balance.cli.core import UsageError
    from balance.lecture.slides import ExportError, lecture_pdf

    try:
        lecture_pdf(store, target, on_step=progress("pdf"))
    except ExportError as exc:
        raise UsageError(f"--pdf: {exc}") from None
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB): the lecture, one page a step")
