"""The one vocabulary of run states, and the status every layer passes around (torch-free).

A run is ``queued`` (waiting for a worker), ``running`` or ``paused`` while it is active; it ends ``finished`` (its
last step), ``diverged`` (its loss exploded), ``stopped`` (by its user or a wall-time limit), ``failed`` (an error,
said in the message) or ``interrupted`` (the process driving it went away, or Ctrl-C). The engine, the loop, the
executor, the store, the archive, reuse and the pages all use these names and nothing else.
"""

from __future__ import annotations

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
