"""Watch the conservation laws of any PyTorch model: ``balance.audit(model, x)`` finds its continuous symmetries,
``w = balance.watch(model, optimizer)`` logs each law's drift and exact prediction from an ordinary training loop
(see ``balance.watch.watcher``).

The package itself is callable, ``balance.watch(model, optimizer, name=...)``, so the name means the same whether
Python hands out the package or the function. Names are imported on first use: importing this package imports no
torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_EXPORTS = {
    "Audit": "balance.watch.check",
    "AuditError": "balance.watch.graph",
    "Watch": "balance.watch.watcher",
    "audit": "balance.watch.check",
    "watch": "balance.watch.watcher",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'balance.watch' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


class _Callable(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.watch(*args, **kwargs)


sys.modules[__name__].__class__ = _Callable
