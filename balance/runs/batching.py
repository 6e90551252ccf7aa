"""K runs of one shape trained together: a facade over ``balance.engine.Engine`` (which also trains a single run).

Members share everything that fixes the computation's shapes (``batch_key``) and each keeps its own step size,
schedule, momentum, Adam betas, weight decay, initialisation, MF regulariser, run seed and data seed
(``PER_MEMBER``). Every member starts from exactly the weights a single run builds and logs exactly its rows.

What a sweep batches is a policy of this module (``why_not_batched``): mini-batch SGD, gradient flow, CNNs and
BatchNorm runs train one per process in ``balance.runs.sweep`` (the engine can stack all of them but flow; their
compute-bound steps gain little from it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from balance.config import RunConfig
from balance.engine.engine import PER_MEMBER, Engine, engine_key
from balance.runs.loop import NEURON_SNAPSHOTS, RunResult, train

__all__ = ["BATCHED_OPTIMIZERS", "PER_MEMBER", "BatchedTrainer", "batch_key", "check_batch", "train_batched",
           "tune_allocator", "why_not_batched"]  # fmt: skip

BATCHED_OPTIMIZERS = ("gd", "momentum", "nesterov", "adam")


def why_not_batched(config: RunConfig) -> str:
    """Why ``config`` is not batched in sweeps ('' when it is)."""
    m, o = config.model, config.optim
    if m.name == "cnn":
        return "convolutional networks are trained one per process"
    if m.batch_norm:
        return "BatchNorm runs are trained one per process"
    if o.name not in BATCHED_OPTIMIZERS:
        return f"the {o.name} optimiser is trained one run per process"
    return ""


def batch_key(config: RunConfig) -> str | None:
    """Configs with equal keys train together; None for a config that cannot batch (see ``why_not_batched``)."""
    if why_not_batched(config):
        return None
    return engine_key(config)


def check_batch(configs: Sequence[RunConfig]) -> None:
    """ValueError saying why ``configs`` cannot train as one batch (none, or not one ``batch_key``)."""
    if not configs:
        raise ValueError("a batch needs at least one config")
    keys = {batch_key(c) for c in configs}
    if None in keys or len(keys) != 1:
        why = next((why_not_batched(c) for c in configs if why_not_batched(c)), "the configs differ in shape")
        raise ValueError(f"these configs cannot train as one batch: {why}")


class BatchedTrainer(Engine):
    """Trains ``configs`` (equal ``batch_key``) together; ``step()`` returns {member index: rows logged}."""

    def __init__(self, configs: Sequence[RunConfig]) -> None:
        check_batch(configs)
        super().__init__(configs)


def tune_allocator() -> bool:
    """Keep freed memory in glibc's heap (no mmap per large tensor, no trimming): stacked activations of a few MB
    are then reused instead of page-faulted in on every step (performance notes: 82k faults per step at K = 256).
    Process-wide and Linux-only; for worker processes and benchmarks. Returns whether it took effect."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 256 << 20) and libc.mallopt(-1, 512 << 20))  # M_MMAP_ / M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        return False


def train_batched(
    configs: Sequence[RunConfig], on_step: Callable[[int], None] | None = None, snapshots: int = NEURON_SNAPSHOTS
) -> list[RunResult]:
    """Train ``configs`` (one ``batch_key``) together to the end, in this process, through the one loop
    (``balance.runs.loop.train``); one ``RunResult`` per config, in order. ``on_step(k)`` is called after every batched
    step. The wall-time limit (the smallest ``max_seconds``) stops every member still running."""
    check_batch(configs)
    return train(configs, on_step, snapshots)
