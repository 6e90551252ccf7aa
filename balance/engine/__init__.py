"""The engine layer: models, optimisers, invariants, theory, the registry of laws and metrics (``laws``, torch-free),
and the engine that trains K >= 1 runs of one shape on stacked weights (a single run is K = 1).

Names are imported on first use (PEP 562): ``import balance.engine.laws`` must not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from balance.engine.engine import Engine
    from balance.engine.status import RunStatus

_EXPORTS = {"Engine": "balance.engine.engine", "RunStatus": "balance.engine.status"}
__all__ = ["Engine", "RunStatus"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'balance.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
