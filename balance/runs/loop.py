"""The notebook API: ``run(config)`` trains to the end and returns the metrics as a DataFrame and the status."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pandas as pd

from balance.config import RunConfig
from balance.engine.trainer import RunStatus, Trainer


class RunResult(NamedTuple):
    metrics: pd.DataFrame
    status: RunStatus


def frame(columns: list[str], rows: list[list[float]]) -> pd.DataFrame:
    """Rows as a float64 DataFrame; ``step`` as int64 (built column by column: ~8x faster than from rows)."""
    data = np.asarray(rows, dtype=np.float64).reshape(-1, len(columns))
    out = {c: data[:, i] for i, c in enumerate(columns)}
    if "step" in out:
        out["step"] = out["step"].astype(np.int64)
    return pd.DataFrame(out)


def run(
    config: RunConfig, on_step: Callable[[int], None] | None = None, stop: Callable[[], bool] | None = None
) -> RunResult:
    """Train ``config`` to its last step (or divergence, or its wall-time limit, or ``stop``).

    ``on_step(k)`` is called after every step (the CLI's progress bar). ``stop()`` is asked after every step: True
    ends the run as ``interrupted`` with the rows so far and the current state as its last row (the CLI's Ctrl-C).
    Returns ``(metrics, status)``; a diverged run keeps its rows up to and including the step that went wrong.
    """
    trainer = Trainer(config)
    rows: list[list[float]] = []
    deadline = time.monotonic() + config.max_seconds
    while trainer.status.state == "running":
        rows += trainer.step()
        if on_step is not None:
            on_step(trainer.step_index)
        if trainer.step_index % 64 == 0 and time.monotonic() > deadline and trainer.status.state == "running":
            rows.append(trainer.row())
            limit = config.max_seconds
            trainer.status = RunStatus("stopped", trainer.step_index, f"stopped at the wall-time limit of {limit:g} s")
        if stop is not None and trainer.status.state == "running" and stop():
            rows.append(trainer.row())
            k = trainer.step_index
            trainer.status = RunStatus("interrupted", k, f"interrupted at step {k} of {config.steps}")
    return RunResult(frame(trainer.columns, rows), trainer.status)
