"""Tracing a model for the audit (``torch.fx``, with shapes) and naming what each of its operations is.

``balance.watch.graph`` walks the traced graph; this module says, per node, which operation it is (``op_name``),
whether it is transparent to a positive per-channel scaling and of what degree (``TRANSPARENT_MODULES``,
``TRANSPARENT_FUNCTIONS``), a reshape, an addition, a product, a power or a normaliser, and which parameter a node
reads (``weight_of``). What the audit cannot read raises ``AuditError`` naming the module that stopped it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from balance.engine.symmetries import NOT_HOMOGENEOUS
from balance.watch.forms import Law


class AuditError(ValueError):
    """A model the audit cannot read: the message names the module that stopped the trace and why."""


@dataclass(frozen=True)
class NoLaw:
    """A place where a symmetry could have been and is not: ``where`` (module or parameter), ``reason``."""

    where: str
    reason: str


@dataclass
class Found:
    laws: list[Law] = field(default_factory=list)
    no_laws: list[NoLaw] = field(default_factory=list)
    graph: torch.fx.GraphModule | None = None


# --- tracing -----------------------------------------------------------------------------------------------------


LEAVES = (nn.Linear, nn.modules.conv._ConvNd, nn.MultiheadAttention, nn.Embedding)


class Tracer(torch.fx.Tracer):
    """``torch.fx.Tracer`` that remembers the innermost module being traced when tracing fails.

    Leaves (kept as one node) are the layers the audit knows and torch.nn's modules without children (activations,
    pooling, norms); every other module is traced through, ``nn.TransformerEncoderLayer`` included."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, LEAVES):
            return True
        return m.__module__.startswith("torch.nn") and not any(True for _ in m.children())

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:
            if not hasattr(exc, "_balance_module"):
                try:
                    path = self.path_of_module(m)
                except NameError:
                    path = "?"
                exc._balance_module = (path or "(the model itself)", type(m).__name__)  # type: ignore[attr-defined]
            raise


def trace(model: nn.Module, example: tuple[Any, ...]) -> torch.fx.GraphModule:
    """The model's graph with every node's output shape (``meta['tensor_meta']``), run on ``example``.

    The shapes come from a copy of the model, so the model's own state (BatchNorm's running statistics, the random
    generator of dropout) is left as it was. ``AuditError`` names the module where ``torch.fx`` stopped."""
    tracer = Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        path, kind = getattr(exc, "_balance_module", ("(the model itself)", type(model).__name__))
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AuditError(
            f"cannot trace {type(model).__name__}: torch.fx stopped in module {path!r} ({kind}): {first[:300]}. "
            "Data-dependent control flow (an if or a loop on tensor values) cannot be traced: move it out of "
            "forward, or mark that module as a leaf"
        ) from None
    gm = torch.fx.GraphModule(bare_copy(model), graph)
    state = torch.random.get_rng_state()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*example)
    except Exception as exc:
        raise AuditError(f"{type(model).__name__} failed on the example input: {type(exc).__name__}: {exc}") from None
    finally:
        torch.random.set_rng_state(state)
    return gm


HOOKS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called",
)  # fmt: skip


def bare_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without its forward and backward hooks (a watch's, a logger's): running the copy
    has no effect outside it."""
    copied = copy.deepcopy(model)
    for m in copied.modules():
        for name in HOOKS:
            hooks = getattr(m, name, None)
            if hooks:
                hooks.clear()
    return copied


def shape_of(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


# --- what each operation is --------------------------------------------------------------------------------------

TRANSPARENT_MODULES = {
    # name: (linear: commutes with any channel mixing, degree)
    "ReLU": (False, 1), "LeakyReLU": (False, 1), "PReLU": (False, 1), "Identity": (True, 1),
    "Dropout": (False, 1), "Dropout1d": (False, 1), "Dropout2d": (False, 1), "Dropout3d": (False, 1),
    "MaxPool1d": (False, 1), "MaxPool2d": (False, 1), "MaxPool3d": (False, 1),
    "AdaptiveMaxPool1d": (False, 1), "AdaptiveMaxPool2d": (False, 1), "AdaptiveMaxPool3d": (False, 1),
    "AvgPool1d": (True, 1), "AvgPool2d": (True, 1), "AvgPool3d": (True, 1),
    "AdaptiveAvgPool1d": (True, 1), "AdaptiveAvgPool2d": (True, 1), "AdaptiveAvgPool3d": (True, 1),
}  # fmt: skip
TRANSPARENT_FUNCTIONS = {
    "relu": (False, 1), "relu_": (False, 1), "leaky_relu": (False, 1), "dropout": (False, 1),
    "max_pool1d": (False, 1), "max_pool2d": (False, 1), "max_pool3d": (False, 1),
    "adaptive_max_pool1d": (False, 1), "adaptive_max_pool2d": (False, 1),
    "avg_pool1d": (True, 1), "avg_pool2d": (True, 1), "avg_pool3d": (True, 1),
    "adaptive_avg_pool1d": (True, 1), "adaptive_avg_pool2d": (True, 1),
    "contiguous": (True, 1), "clone": (True, 1), "neg": (True, 1),
}  # fmt: skip
RESHAPES = {"flatten", "view", "reshape", "Flatten"}
ADDS = {"add", "add_", "iadd", "sub", "isub", "sub_"}
SCALES = {"mul", "mul_", "imul", "truediv", "div", "div_", "itruediv"}
POWERS = {"pow", "square"}
NORMS = {
    "BatchNorm1d": "batch", "BatchNorm2d": "batch", "BatchNorm3d": "batch", "LayerNorm": "layer", "RMSNorm": "layer",
}  # fmt: skip


def op_name(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method":
        return str(node.target)
    return node.op


def not_homogeneous(name: str) -> str:
    key = name.lower().replace("_", "")
    for op, reason in NOT_HOMOGENEOUS.items():
        if op.replace("_", "") == key:
            return reason
    return ""


def param_name(gm: torch.fx.GraphModule, node: Any) -> str | None:
    """The parameter a ``get_attr`` node reads, else None."""
    if isinstance(node, torch.fx.Node) and node.op == "get_attr":
        try:
            gm.get_parameter(node.target)
        except AttributeError:
            return None
        return str(node.target)
    return None


def weight_of(gm: torch.fx.GraphModule, node: Any) -> tuple[str, bool] | None:
    """(parameter, transposed) for a matmul operand that is a parameter P (x @ P: P is [in, out]) or its transpose
    (x @ P.T: the usual [out, in] weight)."""
    name = param_name(gm, node)
    if name is not None:
        return name, False
    if not isinstance(node, torch.fx.Node) or len(node.args) < 1:
        return None
    inner = param_name(gm, node.args[0])
    if inner is None:
        return None
    op = op_name(node, gm)
    if op in ("t",) or (op == "getattr" and node.args[1] in ("T", "mT")):
        return inner, True
    if op == "transpose" and set(node.args[1:3]) in ({0, 1}, {-1, -2}, {0, -1}, {1, -2}):
        return inner, True
    return None
