"""``balance audit FILE.py:factory``: the continuous symmetries of your own model, each checked in float64.

``factory`` is a function in FILE.py taking no arguments and returning ``(model, example_input)`` (or a model
with an ``example_input`` attribute). The file is run as Python, as ``python FILE.py`` would run it (with
``__name__`` not ``"__main__"``): audit only files you trust. Exit 0 with the report, 2 for bad input (one line
on stderr: no such file or function, a factory that fails, a model the audit cannot trace, naming the module).
"""

from __future__ import annotations

import argparse
import json
import math
import runpy
import sys
from pathlib import Path
from typing import Any

EPILOG = "exit codes: 0 the report, 2 bad input (one line on stderr)"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``audit`` to the ``balance`` command's subparsers."""
    help = "find the conservation laws of your own PyTorch model (FILE.py:factory) and check each in float64"
    p = subparsers.add_parser("audit", help=help, description=__doc__.split("\n\n")[0] + "\n\n" + help,
                              epilog=EPILOG, allow_abbrev=False)  # fmt: skip
    p.add_argument("target", metavar="FILE.py:factory", help="a Python file and a function in it")
    p.add_argument("--json", action="store_true", help="print the report as JSON (one object per law)")
    p.set_defaults(handler=run)


def load(target: str) -> tuple[Any, Any]:
    """(model, example_input) from ``FILE.py:factory``; ``UsageError`` naming what is wrong."""
    from balance.cli.core import UsageError

    path_text, sep, name = target.rpartition(":")
    if not sep or not name.isidentifier():
        raise UsageError(f"{target}: give FILE.py:factory, a Python file and a function in it")
    path = Path(path_text)
    if path.suffix != ".py" or not path.is_file():
        raise UsageError(f"{path_text}: not a Python file (.py) here")
    sys.path.insert(0, str(path.resolve().parent))  # the file's own imports of its neighbours, as python FILE.py
    try:
        namespace = runpy.run_path(str(path), run_name="balance_audit")
        factory = namespace.get(name)
        if not callable(factory):
            raise UsageError(f"{path_text} has no function {name!r}")
        made = factory()
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"{target} failed: {type(exc).__name__}: {exc}") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    if isinstance(made, tuple) and len(made) == 2:
        return made
    if hasattr(made, "example_input"):
        return made, made.example_input
    raise UsageError(f"{target} returned {type(made).__name__}: return (model, example_input)")


def run(args: argparse.Namespace) -> int:
    import torch

    from balance.cli.core import UsageError
    from balance.watch.check import audit
    from balance.watch.trace import AuditError

    model, example = load(args.target)
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{args.target}: the model is a {type(model).__name__}, not a torch.nn.Module")
    try:
        report = audit(model, example)
    except AuditError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        rows = report.frame().to_dict(orient="records")
        clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
        print(json.dumps(clean, indent=1))
    else:
        print(report)
    return 0
