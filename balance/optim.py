"""Moved to ``balance.engine.optim`` (updates on stacked weights) and ``balance.engine.laws`` (the optimiser and
schedule registries); this shim keeps the old import path working."""

from balance.engine.optim import OPTIMIZERS, RULES, SCHEDULES, Flow, Members, Optimizer, Rule

__all__ = ["OPTIMIZERS", "RULES", "SCHEDULES", "Flow", "Members", "Optimizer", "Rule"]
