"""``balance sweep`` (scaffold: being built)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sweep`` to the ``balance`` command's subparsers."""
    subparsers.add_parser("sweep", help="(being built)")
