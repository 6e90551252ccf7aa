"""``python -m balance``: the command line."""

from balance.cli.core import entry

entry()
