"""What to try after a run diverged: the trainer's advice, checked against the step sizes a session has seen.

The trainer suggests a step size from the sharpness at the start (``balance.engine.sharpness.step_advice``); a page that
has seen runs of the same settings knows more. ``divergence_advice`` never repeats a suggestion that is known to
fail (a step size at or above one that diverged for these settings), and offers the largest step size that worked
for them when there is one. "These settings" (``settings_key``) are a run's config but for its step size, length,
seed and logging.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from balance.config import RunConfig

TRY = re.compile(r"[;:,]?\s*try a step size (?:of|below) ([0-9][0-9.eE+-]*)")
IGNORED = frozenset({"optim.lr", "steps", "seed", "log_every", "max_seconds"})


def settings_key(config: RunConfig) -> tuple[tuple[str, str], ...]:
    """The settings that decide which step sizes are stable, as a hashable key (not the step size itself)."""
    return tuple(sorted((k, v) for k, v in config.to_query().items() if k not in IGNORED))


def nice_below(x: float) -> float:
    """The largest 1, 2, 5 x 10^k not above ``x`` (x > 0)."""
    e = math.floor(math.log10(x))
    return max(float(f"{m * 10.0**k:.1g}") for k in (e - 1, e) for m in (1, 2, 5) if m * 10.0**k <= x * (1 + 1e-12))


def divergence_advice(why: str, lr: float, worked: Iterable[float], diverged: Iterable[float]) -> tuple[str, float]:
    """(the explanation to show, the step size to offer) after a run of step size ``lr`` diverged.

    ``why`` is the trainer's message after 'diverged at step k (t = ...): '; ``worked`` and ``diverged`` are the
    step sizes this session saw finish and diverge for the same settings. The trainer's "try a step size of x" is
    kept unless x is known to diverge; the largest step size that worked (below every diverged one) is named and
    offered when there is one; else the trainer's x, else a 1-2-5 value below a quarter of the smallest that
    diverged.
    """
    bad = min([lr, *diverged])
    good = max((w for w in worked if w < bad), default=None)
    found = TRY.search(why)
    suggested = float(found.group(1)) if found else None
    failed = sorted({d for d in [lr, *diverged] if suggested is not None and d <= suggested})
    kept = suggested is not None and not failed
    text = why if kept or not found else why[: found.start()]
    if failed:
        text += f"; η = {', '.join(f'{d:g}' for d in failed)} diverged for these settings in this session"
    if good is not None:
        text += f"; η = {good:g} worked for these settings in this session" + ("" if kept else ": try it")
        return text, good
    if kept:
        return text, suggested
    offer = nice_below(bad / 4)
    return text + f": try a step size of {offer:g}", offer
