"""Moved to ``balance.engine.laws`` (the registry of laws and metrics); this shim keeps the old import path working."""

from balance.engine.laws import NO_LAW, why_no_law

__all__ = ["NO_LAW", "why_no_law"]
