"""balance: see, teach and check how gradient descent balances the layers of deep homogeneous models.

The public names below are imported on first use (PEP 562), so ``import balance`` and the command line's
``--help`` do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from balance import claims
    from balance.config import ConfigError, DataConfig, ModelConfig, OptimConfig, RunConfig
    from balance.config.presets import PRESETS, preset
    from balance.engine.status import RunStatus
    from balance.engine.trainer import Trainer
    from balance.runs.loop import RunResult, replay, run
    from balance.runs.record import RunRecord
    from balance.runs.sweep_start import sweep
    from balance.views import figures as plots
    from balance.watch import audit, watch

_EXPORTS = {
    "PRESETS": "balance.config.presets",
    "ConfigError": "balance.config",
    "DataConfig": "balance.config",
    "ModelConfig": "balance.config",
    "OptimConfig": "balance.config",
    "RunConfig": "balance.config",
    "RunRecord": "balance.runs.record",
    "RunResult": "balance.runs.loop",
    "RunStatus": "balance.engine.status",
    "Trainer": "balance.engine.trainer",
    "audit": "balance.watch",
    "claims": "balance",  # the package balance.claims, which is callable: balance.claims([3, 6], quick=True)
    "plots": "balance",
    "preset": "balance.config.presets",
    "replay": "balance.runs.loop",
    "run": "balance.runs.loop",
    "sweep": "balance.runs.sweep_start",
    "watch": "balance",  # the package balance.watch, which is callable: balance.watch(model, optimizer)
}
__all__ = [
    "PRESETS",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "RunRecord",
    "RunResult",
    "RunStatus",
    "Trainer",
    "audit",
    "claims",
    "plots",
    "preset",
    "replay",
    "run",
    "sweep",
    "watch",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'balance' has no attribute {name!r}")
    module = _EXPORTS[name]
    value = (
        importlib.import_module(f"balance.{name}")
        if module == "balance"
        else getattr(importlib.import_module(module), name)
    )
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
