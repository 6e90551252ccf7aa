"""The one record a run is read back as (from the store, an archive, reuse, the claims), and its config versions.

A run starts from its config; a live change (the step size changed while it trains) is a new config version that
applies from a step on. The store keeps the versions as events (``lr`` at step k: the step size from step k's
update on), so runs stored before versions existed read the same way; ``RunRecord.versions`` turns them back into
configs, and ``balance.runs.loop.replay`` trains a record again from them to the same numbers.

Torch-free: the store, the archive, the command line and the pages read records without the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from balance.config import RunConfig
from balance.engine.status import RunStatus

if TYPE_CHECKING:
    import pandas as pd

# The settings a run may change while it trains: the store's event kind -> the dotted setting it changes.
# Adding one is an entry here, its effect in ``balance.runs.loop.LIVE``, and a command that sends it.
LIVE_EVENTS = {"lr": "optim.lr"}


class Change(NamedTuple):
    """A live change: from step ``step`` on (that step's update included), setting ``key`` is ``value``."""

    step: int
    key: str  # a dotted setting of ``LIVE_EVENTS``, e.g. "optim.lr"
    value: float

    @property
    def event(self) -> str:
        """The store's event kind for this change."""
        return next(kind for kind, key in LIVE_EVENTS.items() if key == self.key)


def changes_from_events(events: Sequence[tuple[int, str, Any]]) -> tuple[Change, ...]:
    """The live changes among (step, kind, value) events, in the order they apply (by step, then as recorded)."""
    found = [(int(k), kind, v) for k, kind, v in events if kind in LIVE_EVENTS and isinstance(v, (int, float))]
    return tuple(Change(k, LIVE_EVENTS[kind], float(v)) for k, kind, v in sorted(found, key=lambda e: e[0]))


def versions(config: RunConfig, changes: Sequence[Change]) -> list[tuple[int, RunConfig]]:
    """(first step, config) of each version, the starting config first; a change that changes nothing is none."""
    out = [(0, config)]
    for change in changes:
        current = out[-1][1]
        new = current.replace(**{change.key: change.value})
        if new == current:
            continue
        if change.step == out[-1][0]:
            out[-1] = (change.step, new)  # two changes before the same step: the later one trained
        else:
            out.append((change.step, new))
    return out


def differences(before: RunConfig, after: RunConfig) -> dict[str, Any]:
    """The dotted settings whose values differ, with their values in ``after``."""
    old, new = _flat(before.to_dict()), _flat(after.to_dict())
    return {k: v for k, v in new.items() if old.get(k) != v}


def _flat(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def history(config: RunConfig, changes: Sequence[Change]) -> str:
    """The versions in words, e.g. ``optim.lr 0.01 → 0.05 at step 300 → 0.02 at step 900``; "" if none changed.

    (The step size only, as ``lr_history`` reads: ``0.01 → 0.05 at step 300``.)
    """
    parts = []
    for key in dict.fromkeys(c.key for c in changes):
        text = lr_history(_get(config, key), [(c.step, c.value) for c in changes if c.key == key])
        if text:
            parts.append(f"{key} {text}")
    return "; ".join(parts)


def lr_history(start: float, changes: Sequence[tuple[int, float]]) -> str:
    """The step-size changes in words, e.g. ``0.01 → 0.05 at step 300 → 0.02 at step 900``.

    ``start`` is the config's step size, ``changes`` the ``lr`` events as (step, lr) in the order they apply; ""
    if none changes it.
    """
    parts, current = [], start
    for step, lr in changes:
        if lr != current:
            parts.append(f" → {lr:g} at step {step}")
            current = lr
    return f"{_float_text(start)}{''.join(parts)}" if parts else ""


def _float_text(x: Any) -> str:
    try:
        return f"{float(x):g}"
    except (TypeError, ValueError):
        return "?"


def _get(config: RunConfig, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


@dataclass(frozen=True)
class RunRecord:
    """A stored run: its starting config and live changes (``versions``), where it ended (``status``), when, its
    metric columns, name, sweep and origin ("trained" here or "imported" from a file); ``metrics`` when it was
    read with them (``RunStore.load``), else None."""

    id: str
    config: RunConfig
    state: str
    step: int
    message: str
    created: datetime
    updated: datetime
    columns: list[str]
    name: str = ""
    sweep: str = ""
    origin: str = "trained"  # or "imported": see ``balance.runs.store.ORIGINS``
    changes: tuple[Change, ...] = ()
    metrics: pd.DataFrame | None = field(default=None, compare=False, repr=False)

    @property
    def run_id(self) -> str:
        return self.id

    @property
    def status(self) -> RunStatus:
        return RunStatus(self.state, self.step, self.message)

    @property
    def versions(self) -> list[tuple[int, RunConfig]]:
        """(first step, config) of each config version that trained, the starting config first."""
        return versions(self.config, self.changes)

    @property
    def history(self) -> str:
        """The live changes in words ("" if nothing changed while it trained)."""
        return history(self.config, self.changes)
