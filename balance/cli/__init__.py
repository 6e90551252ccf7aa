"""The ``balance`` command: ``main`` parses and dispatches (``balance.cli.core``); one module per subcommand."""

from balance.cli.core import main

__all__ = ["main"]
