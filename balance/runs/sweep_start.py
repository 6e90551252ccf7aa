"""Starting a sweep without waiting for it (the Sweeps page's form): its size and cost first, then its members queued
on a running executor, each chunk one job at the sweeps' priority. Torch-free until a chunk is planned.

``cost(spec)`` is the spec's member count and estimated total work (``balance.runs.limits.estimate`` per member:
the largest peak memory, the summed wall time), computed from the configs alone; ``check_cap(cost)`` refuses a spec
over ``PAGE_CAP`` (members, total seconds) with a message saying what to shrink. ``start(spec, store, runner)``
creates the members as queued runs of a new sweep (one transaction) and submits the chunks ``balance.runs.sweep.plan``
forms; it returns at once, and the page polls the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from balance.config import ConfigError
from balance.runs import limits, stamp
from balance.runs.sweep import (
    SNAPSHOTS,
    SweepSpec,
    check_members,
    member_name,
    new_sweep_id,
    plan,
    run_sweep,
    summary,  # fmt: skip
)

PAGE_CAP = {"members": 512, "seconds": 1800.0}  # what one start from the page may ask (all workers together)


@dataclass(frozen=True)
class Cost:
    members: int
    seconds: float  # estimated wall time of all members, one after another (an upper bound: see limits)
    memory: int  # the largest member's estimated peak memory, bytes

    def describe(self) -> str:
        return (f"{self.members} runs, {limits.duration(self.seconds)} of training in all (an upper bound; "
                f"the workers share it) and at most {limits.gib(self.memory)} per run")  # fmt: skip


def cost(spec: SweepSpec) -> Cost:
    """The spec's size and estimated cost, counted before any member is trained (the member count first: a spec
    of a million members is refused before a config is built)."""
    check_members(spec.size(), "this sweep")
    estimates = [limits.estimate(c) for c in spec.configs()]
    return Cost(len(estimates), sum(e.seconds for e in estimates), max((e.memory for e in estimates), default=0))


def check_cap(c: Cost, cap: dict[str, float] | None = None) -> None:
    """ConfigError when ``c`` is over the page's cap (``PAGE_CAP``), naming the limit and what to shrink."""
    cap = PAGE_CAP if cap is None else cap
    if c.members > cap["members"]:
        raise ConfigError(f"{c.members} runs: a sweep started from the page may have at most {cap['members']:g}; "
                          "use fewer values or seeds, or 'balance sweep' on the command line")  # fmt: skip
    if c.seconds > cap["seconds"]:
        raise ConfigError(f"about {limits.duration(c.seconds)} of training: a sweep started from the page may take at "
                          f"most {limits.duration(cap['seconds'])}; use fewer steps, values or seeds, or "
                          "'balance sweep' on the command line")  # fmt: skip


def sweep(
    spec: SweepSpec | Mapping[str, Any] | str,
    home: str | None = None,
    workers: int | None = None,
    at_time: float | None = None,
    at_step: int | None = None,
) -> pd.DataFrame:
    """``balance.sweep(spec)``: train every member of ``spec`` (a ``SweepSpec``, its dict, or its TOML text) into the
    run store at ``home`` (default: $BALANCE_HOME, else ~/.balance) and return its summary, read at training time
    ``at_time`` or step ``at_step`` (``balance.runs.sweep_stats.summary``), with the reproducibility stamp in
    ``attrs["stamp"]``. ``workers``: training processes (default: the usable cores; 1: in this process)."""
    from balance.runs.store import RunStore

    if isinstance(spec, str):
        spec = SweepSpec.from_toml(spec)
    elif not isinstance(spec, SweepSpec):
        spec = SweepSpec.from_dict(spec)
    with RunStore(home) as store:
        result = run_sweep(spec, store, workers=workers)
        table = summary(store, result.sweep, at_time, at_step)
    table.attrs["stamp"] = stamp.stamp()
    table.attrs["sweep"] = result.sweep
    return table


def numbers(text: str, name: str) -> list[float]:
    """'0.01, 0.02,0.04' -> [0.01, 0.02, 0.04]; ConfigError naming ``name`` for anything else (at most 64 values)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts or len(parts) > 64:
        raise ConfigError(f"{name}: give 1 to 64 numbers separated by commas, such as 0.01, 0.02")
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{name} {text!r}: give numbers separated by commas, such as 0.01, 0.02") from None


def form_spec(preset: str, lrs: str, scales: str, seeds: str, steps: int, at_time: float | None = None) -> SweepSpec:
    """The page's form as a spec: ``preset`` with every step size x init scale x seed. With ``at_time`` each step
    size trains K = round(t / eta) steps, so every member reaches the same training time t (the scaling question is
    asked at a fixed t); else ``steps`` each."""
    etas = numbers(lrs, "step sizes")
    raw: dict[str, Any] = {"name": "page", "preset": preset, "base": {"steps": int(steps)},
                           "grid": {"model.init_scale": numbers(scales, "init scales"), "seed": seeds}}  # fmt: skip
    if at_time is None:
        raw["grid"]["optim.lr"] = etas
    else:
        if not at_time > 0:
            raise ConfigError(f"training time t = {at_time}: must be positive")
        raw["list"] = [{"optim.lr": e, "steps": max(1, round(at_time / e))} for e in etas]
    return SweepSpec.from_dict(raw)


def start(spec: SweepSpec, store: Any, runner: Any) -> tuple[str, list[str]]:
    """Queue every member of ``spec`` as a run of a new sweep and submit its chunks to ``runner`` (a
    ``balance.runs.executor.Runner``) at the sweeps' priority; returns (sweep id, run ids) without waiting."""
    configs, changes = spec.configs(), spec.changes()
    for c in configs:
        limits.check(c, runner.limits)  # before anything is stored: one member over the limits refuses the sweep
    sweep = new_sweep_id(spec.name)
    with store.transaction():
        ids = [store.create_run(c, [], name=member_name(ch), sweep=sweep) for c, ch in zip(configs, changes)]
    for unit in plan(configs):
        runner.submit([configs[i] for i in unit], priority="sweep", ids=[ids[i] for i in unit], snapshots=SNAPSHOTS)
    return sweep, ids
