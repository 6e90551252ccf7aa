"""The one vocabulary of run states, the status every layer passes around, and the row budget (torch-free).

A run is ``queued`` (waiting for a worker), ``running`` or ``paused`` while it is active; it ends ``finished`` (its
last step), ``diverged`` (its loss exploded), ``stopped`` (by its user or a wall-time limit), ``failed`` (an error,
said in the message) or ``interrupted`` (the process driving it went away, or Ctrl-C). The engine, the loop, the
executor, the store, the archive, reuse and the pages all use these names and nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

STATES = ("queued", "running", "paused", "finished", "diverged", "stopped", "failed", "interrupted")
ACTIVE = ("queued", "running", "paused")
ENDED = ("finished", "diverged", "stopped", "failed", "interrupted")
ON_ITS_OWN = ("finished", "diverged")  # ended by the run itself: the same config and code end the same way


@dataclass(frozen=True)
class RunStatus:
    """Where a run is: its state (one of ``STATES``), the step it is at, and why (for an ended run)."""

    state: str
    step: int
    message: str = ""


DENSE_STEPS = 10_000  # every step logged up to here; then about 4,500 rows per decade


def should_log(k: int, last: int, log_every: int = 1) -> bool:
    """Row budget: every ``log_every``-th step for the first 10^4 steps, then a stride of 2 * 10^(d-3) in the decade
    [10^d, 10^(d+1)), so 10^6 steps keep about 19,000 rows; the first and last step always."""
    if k == 0 or k == last:
        return True
    stride = log_every if k < DENSE_STEPS else log_every * 2 * 10 ** (int(math.log10(k)) - 3)
    return k % stride == 0
