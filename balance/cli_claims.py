"""``balance claims`` (scaffold: being built)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``claims`` to the ``balance`` command's subparsers."""
    subparsers.add_parser("claims", help="(being built)")
