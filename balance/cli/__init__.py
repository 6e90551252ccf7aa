"""The ``balance`` command: ``main`` parses and dispatches (``balance.cli.core``); one module per subcommand.
``entry`` is the program (the console script and ``python -m balance``): ``main``, then a fast exit."""

from balance.cli.core import entry, main

__all__ = ["entry", "main"]
