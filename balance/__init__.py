"""balance: see, teach and check how gradient descent balances the layers of deep homogeneous models."""

from balance import plots
from balance.api import RunResult, run
from balance.config import ConfigError, DataConfig, ModelConfig, OptimConfig, RunConfig
from balance.presets import PRESETS, preset
from balance.trainer import RunStatus, Trainer

__all__ = [
    "PRESETS",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "RunResult",
    "RunStatus",
    "Trainer",
    "plots",
    "preset",
    "run",
]
__version__ = "0.1.0"
