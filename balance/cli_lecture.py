"""``balance lecture`` (scaffold: being built)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``lecture`` to the ``balance`` command's subparsers."""
    subparsers.add_parser("lecture", help="(being built)")
