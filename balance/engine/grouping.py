"""Which runs can train together in one engine, and the registry's view of a model's layout (torch-free)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from balance.engine import laws

if TYPE_CHECKING:
    from balance.config import RunConfig
    from balance.engine.models import HomogeneousModel

# Settings each member may choose for itself; everything else must agree within an engine.
PER_MEMBER = (
    "seed",
    "max_seconds",
    "data.seed",
    "model.init",
    "model.init_scale",
    "model.layer_scales",
    "model.regularizer",
    "optim.lr",
    "optim.momentum",
    "optim.beta2",
    "optim.eps",
    "optim.rho",
    "optim.label_noise",
    "optim.weight_decay",
    "optim.schedule",
    "optim.decay_power",
    "optim.decay_every",
    "optim.decay_factor",
    "optim.rtol",
)


def engine_key(config: RunConfig) -> str:
    """Configs with equal keys can train in one engine (everything but ``PER_MEMBER``)."""
    flat = config.flat()
    return json.dumps({k: v for k, v in flat.items() if k not in PER_MEMBER}, sort_keys=True)


def why_not_together(configs: Sequence[RunConfig]) -> str:
    """Why ``configs`` cannot train in one engine ('' when they can)."""
    if not configs:
        return "an engine needs at least one config"
    if len({engine_key(c) for c in configs}) > 1:
        return "the configs differ in shape"
    name = configs[0].optim.name
    if len(configs) > 1 and not laws.OPTIMIZERS[name].batches:
        return f"the {name} optimiser trains one run at a time"
    return ""


def layout_of(model: HomogeneousModel) -> laws.Layout:
    """The registry's view of a model: its number of layers, the layers with a bias, the linear pairs."""
    biases = tuple(h for h, layer in enumerate(model.layers, start=1) if layer.bias is not None)
    linear = tuple(g.layer + 1 for g in model.neurons if g.linear)
    return laws.Layout(len(model.layers), biases, linear)
