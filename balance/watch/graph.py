"""Find a model's continuous symmetries from its ``torch.fx`` graph.

A *producer* makes channels whose scale the parameters feeding it fix: a Linear or Conv (row i and bias i make
channel i), a BatchNorm's or LayerNorm's affine (gamma_i, beta_i), an Embedding (column i), ``F.linear`` or a
matmul with a parameter, attention's output projection. From each producer the walk follows every use of its
output through operations that commute with a positive per-channel scaling (ReLU, leaky ReLU, identity, pooling,
flatten, dropout, products with constants, powers: degree k), collecting parameters added on the way (they go with
the incoming side), until each path ends in

- a *consumer* (a Linear, Conv, ``F.linear``, matmul or self-attention reading those channels): its columns are
  the outgoing side of a rescaling law, or of the matrix law where every path is linear;
- a *normaliser* (BatchNorm in train mode: per channel; LayerNorm or RMSNorm: the whole layer): the incoming side
  alone is scale-invariant;

or in something that breaks the symmetry (a non-homogeneous activation, a residual addition, a constant offset, a
product of activations, the model's output), which is reported as "no law here" with the reason. Attention modules
(``nn.MultiheadAttention``) bring their own per-head laws. Parameters used in more than one place (weight tying)
void every law they are part of.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from balance.engine.symmetries import BREAKS, NOT_HOMOGENEOUS
from balance.watch.forms import Law, Term


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


_LEAVES = (nn.Linear, nn.modules.conv._ConvNd, nn.MultiheadAttention, nn.Embedding)


class _Tracer(torch.fx.Tracer):
    """``torch.fx.Tracer`` that remembers the innermost module being traced when tracing fails.

    Leaves (kept as one node) are the layers the audit knows and torch.nn's modules without children (activations,
    pooling, norms); every other module is traced through, ``nn.TransformerEncoderLayer`` included."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, _LEAVES):
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
    tracer = _Tracer()
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


_HOOKS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called",
)  # fmt: skip


def bare_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without its forward and backward hooks (a watch's, a logger's): running the copy
    has no effect outside it."""
    copied = copy.deepcopy(model)
    for m in copied.modules():
        for name in _HOOKS:
            hooks = getattr(m, name, None)
            if hooks:
                hooks.clear()
    return copied


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


# --- what each operation is --------------------------------------------------------------------------------------

_TRANSPARENT_MODULES = {
    # name: (linear: commutes with any channel mixing, degree)
    "ReLU": (False, 1), "LeakyReLU": (False, 1), "PReLU": (False, 1), "Identity": (True, 1),
    "Dropout": (False, 1), "Dropout1d": (False, 1), "Dropout2d": (False, 1), "Dropout3d": (False, 1),
    "MaxPool1d": (False, 1), "MaxPool2d": (False, 1), "MaxPool3d": (False, 1),
    "AdaptiveMaxPool1d": (False, 1), "AdaptiveMaxPool2d": (False, 1), "AdaptiveMaxPool3d": (False, 1),
    "AvgPool1d": (True, 1), "AvgPool2d": (True, 1), "AvgPool3d": (True, 1),
    "AdaptiveAvgPool1d": (True, 1), "AdaptiveAvgPool2d": (True, 1), "AdaptiveAvgPool3d": (True, 1),
}  # fmt: skip
_TRANSPARENT_FUNCTIONS = {
    "relu": (False, 1), "relu_": (False, 1), "leaky_relu": (False, 1), "dropout": (False, 1),
    "max_pool1d": (False, 1), "max_pool2d": (False, 1), "max_pool3d": (False, 1),
    "adaptive_max_pool1d": (False, 1), "adaptive_max_pool2d": (False, 1),
    "avg_pool1d": (True, 1), "avg_pool2d": (True, 1), "avg_pool3d": (True, 1),
    "adaptive_avg_pool1d": (True, 1), "adaptive_avg_pool2d": (True, 1),
    "contiguous": (True, 1), "clone": (True, 1), "neg": (True, 1),
}  # fmt: skip
_RESHAPES = {"flatten", "view", "reshape", "Flatten"}
_ADDS = {"add", "add_", "iadd", "sub", "isub", "sub_"}
_SCALES = {"mul", "mul_", "imul", "truediv", "div", "div_", "itruediv"}
_POWERS = {"pow", "square"}
_NORMS = {
    "BatchNorm1d": "batch", "BatchNorm2d": "batch", "BatchNorm3d": "batch", "LayerNorm": "layer", "RMSNorm": "layer",
}  # fmt: skip


def _op_name(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method":
        return str(node.target)
    return node.op


def _not_homogeneous(name: str) -> str:
    key = name.lower().replace("_", "")
    for op, reason in NOT_HOMOGENEOUS.items():
        if op.replace("_", "") == key:
            return reason
    return ""


def _param_name(gm: torch.fx.GraphModule, node: Any) -> str | None:
    """The parameter a ``get_attr`` node reads, else None."""
    if isinstance(node, torch.fx.Node) and node.op == "get_attr":
        try:
            gm.get_parameter(node.target)
        except AttributeError:
            return None
        return str(node.target)
    return None


def _weight_of(gm: torch.fx.GraphModule, node: Any) -> tuple[str, bool] | None:
    """(parameter, transposed) for a matmul operand that is a parameter P (x @ P: P is [in, out]) or its transpose
    (x @ P.T: the usual [out, in] weight)."""
    name = _param_name(gm, node)
    if name is not None:
        return name, False
    if not isinstance(node, torch.fx.Node) or len(node.args) < 1:
        return None
    inner = _param_name(gm, node.args[0])
    if inner is None:
        return None
    op = _op_name(node, gm)
    if op in ("t",) or (op == "getattr" and node.args[1] in ("T", "mT")):
        return inner, True
    if op == "transpose" and set(node.args[1:3]) in ({0, 1}, {-1, -2}, {0, -1}, {1, -2}):
        return inner, True
    return None


# --- the walk ------------------------------------------------------------------------------------------------------


@dataclass
class _Reach:
    incoming: list[Term] = field(default_factory=list)
    outgoing: list[tuple[Term, int]] = field(default_factory=list)  # (term, degree)
    normalizers: list[tuple[str, str, float]] = field(default_factory=list)  # (kind, module, eps)
    linear: bool = True
    blocked: str = ""

    def stop(self, reason: str) -> None:
        if not self.blocked:
            self.blocked = reason


@dataclass
class _Producer:
    node: torch.fx.Node
    module: str
    units: int
    incoming: list[Term]
    linear_map: bool  # the channels are a linear map of the input (Linear, Conv, ...): a matrix law is possible


class _Walker:
    def __init__(self, gm: torch.fx.GraphModule) -> None:
        self.gm = gm

    def module(self, node: torch.fx.Node) -> nn.Module | None:
        return self.gm.get_submodule(node.target) if node.op == "call_module" else None

    def walk(self, value: torch.fx.Node, axis: int, block: int, degree: int, n: int, reach: _Reach) -> None:
        for user in list(value.users):
            if reach.blocked:
                return
            self.step(value, user, axis, block, degree, n, reach)

    def step(self, value: torch.fx.Node, user: torch.fx.Node, axis: int, block: int, degree: int, n: int,
             reach: _Reach) -> None:  # fmt: skip
        where = f" (at {user.name})"
        if user.op == "output":
            reach.stop(BREAKS["output"])
            return
        name = _op_name(user, self.gm)
        m = self.module(user)
        if name in ("size", "dim") or (name == "getattr" and user.args[1] in ("shape", "dtype", "device")):
            return  # reads the shape, not the values
        if isinstance(m, nn.MultiheadAttention):
            self.attention_input(user, m, value, axis, block, degree, n, reach)
            return
        if (isinstance(m, nn.Linear) or name in ("linear", "matmul")) and (not user.args or user.args[0] is not value):
            reach.stop(BREAKS["product"] + where)  # it is the weight, or the second factor
            return
        # consumers
        if isinstance(m, nn.Linear):
            if axis != len(_shape(value) or ()) - 1:
                reach.stop(f"a Linear layer reads it along another axis than its channels{where}")
                return
            reach.outgoing.append((Term(f"{user.target}.weight", 1, n, coef=-degree, block=block), degree))
            return
        if isinstance(m, nn.modules.conv._ConvNd):
            if m.groups != 1:
                reach.stop(BREAKS["grouped"] + where)
            elif axis != 1 or block != 1:
                reach.stop(f"a convolution reads it along another axis than its channels{where}")
            else:
                reach.outgoing.append((Term(f"{user.target}.weight", 1, n, coef=-degree), degree))
            return
        if name in ("linear", "matmul"):
            self.functional_consumer(user, name, value, axis, block, degree, n, reach)
            return
        # normalisers
        if type(m).__name__ in _NORMS:
            self.normalizer(user, m, value, axis, block, n, reach)
            return
        # transparent operations
        if type(m).__name__ in _TRANSPARENT_MODULES or (m is None and name in _TRANSPARENT_FUNCTIONS):
            linear, k = _TRANSPARENT_MODULES.get(type(m).__name__) or _TRANSPARENT_FUNCTIONS[name]
            reach.linear &= linear
            self.walk(user, axis, block, degree * k, n, reach)
            return
        if name in ("to", "float", "double", "type_as") and m is None:
            self.walk(user, axis, block, degree, n, reach)
            return
        if name in _RESHAPES:
            self.reshape(value, user, axis, block, degree, n, reach)
            return
        if name in _ADDS and m is None:
            self.add(value, user, axis, block, degree, n, reach)
            return
        if name in _SCALES and m is None:
            other = [a for a in user.args if a is not value]
            if name in ("truediv", "div", "div_", "itruediv") and user.args[0] is not value:
                reach.stop(f"it divides a value: not homogeneous{where}")
            elif len(other) == 1 and isinstance(other[0], (int, float)):
                self.walk(user, axis, block, degree, n, reach)
            else:
                reach.stop(BREAKS["product"] + where)
            return
        if name in _POWERS and m is None:
            k = 2 if name == "square" else (user.args[1] if len(user.args) > 1 else user.kwargs.get("exponent"))
            if user.args[0] is value and isinstance(k, (int, float)) and k > 0:
                reach.linear &= k == 1
                self.walk(user, axis, block, degree * k, n, reach)
            else:
                reach.stop(f"a power with a tensor exponent or base{where}")
            return
        reason = _not_homogeneous(name)
        if reason:
            reach.stop(reason + where)
            return
        if name == "getitem":
            reach.stop(f"a slice of its channels is taken{where}: {BREAKS['unknown']}")
            return
        reach.stop(f"{BREAKS['unknown']}: {name}{where}")

    def attention_input(self, user: torch.fx.Node, m: nn.MultiheadAttention, value: torch.fx.Node, axis: int,
                        block: int, degree: int, n: int, reach: _Reach) -> None:  # fmt: skip
        inputs = [*user.args[:3], *(user.kwargs.get(k) for k in ("query", "key", "value") if k in user.kwargs)]
        if len(inputs) < 3 or any(i is not value for i in inputs[:3]):
            reach.stop(BREAKS["mixed_inputs"] + f" (at {user.name})")
            return
        if axis != len(_shape(value) or ()) - 1 or block != 1:
            reach.stop(f"attention reads it along another axis than its channels (at {user.name})")
            return
        if m.in_proj_weight is not None:
            reach.outgoing.append((Term(f"{user.target}.in_proj_weight", 1, n, coef=-degree), degree))
        else:
            for part in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                reach.outgoing.append((Term(f"{user.target}.{part}", 1, n, coef=-degree), degree))

    def functional_consumer(self, user: torch.fx.Node, name: str, value: torch.fx.Node, axis: int, block: int,
                            degree: int, n: int, reach: _Reach) -> None:  # fmt: skip
        where = f" (at {user.name})"
        if axis != len(_shape(value) or ()) - 1:
            reach.stop(f"{name} reads it along another axis than its channels{where}")
            return
        if name == "linear":
            weight = _param_name(self.gm, user.args[1] if len(user.args) > 1 else user.kwargs.get("weight"))
            if weight is None:
                reach.stop(BREAKS["product"] + where)
                return
            reach.outgoing.append((Term(weight, 1, n, coef=-degree, block=block), degree))
            return
        found = _weight_of(self.gm, user.args[1]) if len(user.args) > 1 else None
        if found is None:
            reach.stop(BREAKS["product"] + where)
            return
        weight, transposed = found
        reach.outgoing.append((Term(weight, 1 if transposed else 0, n, coef=-degree, block=block), degree))

    def normalizer(self, user: torch.fx.Node, m: nn.Module, value: torch.fx.Node, axis: int, block: int, n: int,
                   reach: _Reach) -> None:  # fmt: skip
        where = f" (at {user.name})"
        kind = _NORMS[type(m).__name__]
        eps = float(getattr(m, "eps", 0.0) or 0.0)
        if kind == "batch":
            if not m.training and m.track_running_stats:  # running statistics: an affine map
                reach.stop(BREAKS["eval_norm"] + where)
            elif axis != 1 or block != 1:
                reach.stop(f"BatchNorm normalises it along another axis than its channels{where}")
            else:
                reach.normalizers.append(("batch", str(user.target), eps))
            return
        shape = tuple(getattr(m, "normalized_shape", ()) or ())
        ndim = len(_shape(value) or ())
        if len(shape) != 1 or axis != ndim - 1 or block != 1 or shape[0] != n:
            reach.stop(f"{type(m).__name__} normalises over more than these channels{where}")
            return
        reach.normalizers.append(("layer", str(user.target), eps))

    def reshape(self, value: torch.fx.Node, user: torch.fx.Node, axis: int, block: int, degree: int, n: int,
                reach: _Reach) -> None:  # fmt: skip
        before, after = _shape(value), _shape(user)
        where = f" (at {user.name})"
        if before is None or after is None:
            reach.stop(f"{BREAKS['unknown']}: a reshape of unknown shape{where}")
            return
        if before == after:
            self.walk(user, axis, block, degree, n, reach)
            return
        lead = math.prod(before[:axis])
        for new_axis in range(len(after)):
            if math.prod(after[:new_axis]) == lead and after[new_axis] == math.prod(before[axis:]):
                if new_axis == len(after) - 1:  # the channel and everything after it merged into the last axis
                    reach.linear &= math.prod(before[axis + 1 :]) == 1
                    self.walk(user, new_axis, block * math.prod(before[axis + 1 :]), degree, n, reach)
                    return
                break
        reach.stop(f"a reshape that splits or moves its channels{where}: {BREAKS['unknown']}")

    def add(self, value: torch.fx.Node, user: torch.fx.Node, axis: int, block: int, degree: int, n: int,
            reach: _Reach) -> None:  # fmt: skip
        where = f" (at {user.name})"
        others = [a for a in [*user.args, *user.kwargs.values()] if a is not value]
        if len(others) != 1 or user.args.count(value) != 1:
            reach.stop(BREAKS["residual"] + where)
            return
        other = others[0]
        name = _param_name(self.gm, other)
        if name is None:
            is_node = isinstance(other, torch.fx.Node) and other.op != "get_attr"
            reach.stop(BREAKS["residual" if is_node else "constant"] + where)
            return
        if degree != 1 or block != 1:
            reach.stop(f"a parameter is added after a power or a flatten{where}: {BREAKS['constant']}")
            return
        shape, out = tuple(self.gm.get_parameter(name).shape), _shape(value) or ()
        offset = len(out) - len(shape)
        if offset < 0 or axis - offset < 0 or shape[axis - offset] != n:
            reach.stop(f"a parameter added across its channels{where}")
            return
        reach.incoming.append(Term(name, axis - offset, n))
        self.walk(user, axis, block, degree, n, reach)


# --- producers and laws --------------------------------------------------------------------------------------------


def _producers(gm: torch.fx.GraphModule) -> list[_Producer]:
    out = []
    for node in gm.graph.nodes:
        shape = _shape(node)
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            t = str(node.target)
            if isinstance(m, nn.Linear | nn.modules.conv._ConvNd):
                terms = [Term(f"{t}.weight", 0, m.weight.shape[0])]
                if m.bias is not None:
                    terms.append(Term(f"{t}.bias", 0, m.weight.shape[0]))
                out.append(_Producer(node, t, m.weight.shape[0], terms, True))
            elif type(m).__name__ in _NORMS and getattr(m, "weight", None) is not None and m.weight.dim() == 1:
                terms = [Term(f"{t}.weight", 0, m.weight.shape[0])]
                if getattr(m, "bias", None) is not None:
                    terms.append(Term(f"{t}.bias", 0, m.weight.shape[0]))
                out.append(_Producer(node, t, m.weight.shape[0], terms, False))
            elif isinstance(m, nn.Embedding) and m.max_norm is None:
                out.append(_Producer(node, t, m.embedding_dim, [Term(f"{t}.weight", 1, m.embedding_dim)], True))
            elif isinstance(m, nn.MultiheadAttention):
                for user in node.users:
                    if _op_name(user, gm) == "getitem" and user.args[1] == 0:
                        E = m.embed_dim
                        terms = [Term(f"{t}.out_proj.weight", 0, E)]
                        if m.out_proj.bias is not None:
                            terms.append(Term(f"{t}.out_proj.bias", 0, E))
                        out.append(_Producer(user, f"{t}.out_proj", E, terms, True))
        elif node.op == "call_function" and shape is not None:
            name = _op_name(node, gm)
            if name == "linear":
                weight = _param_name(gm, node.args[1] if len(node.args) > 1 else node.kwargs.get("weight"))
                bias = _param_name(gm, node.args[2] if len(node.args) > 2 else node.kwargs.get("bias"))
                if weight is not None:
                    units = gm.get_parameter(weight).shape[0]
                    terms = [Term(weight, 0, units)] + ([Term(bias, 0, units)] if bias else [])
                    out.append(_Producer(node, weight.rpartition(".")[0] or weight, units, terms, True))
            elif name == "matmul" and len(node.args) > 1 and _param_name(gm, node.args[0]) is None:
                found = _weight_of(gm, node.args[1])
                if found is not None:
                    weight, transposed = found
                    units = gm.get_parameter(weight).shape[0 if transposed else 1]
                    axis = 0 if transposed else 1
                    out.append(_Producer(node, weight, units, [Term(weight, axis, units)], True))
    return out


def _axis_of(producer: _Producer, gm: torch.fx.GraphModule) -> int:
    shape = _shape(producer.node) or ()
    m = gm.get_submodule(producer.node.target) if producer.node.op == "call_module" else None
    if isinstance(m, nn.modules.conv._ConvNd) or (type(m).__name__.startswith("BatchNorm")):
        return 1
    return len(shape) - 1


def _module_of(param: str) -> str:
    """A parameter's module for a layer's weight or bias (``fc1.weight`` -> ``fc1``), else the parameter itself."""
    module, _, leaf = param.rpartition(".")
    return module if module and leaf in ("weight", "bias", "in_proj_weight", "in_proj_bias") else param


def _fan(gm: torch.fx.GraphModule, term: Term) -> int:
    """How many entries each unit of a term touches in its parameter (its fan-in or fan-out)."""
    shape = list(gm.get_parameter(term.param).shape)
    shape.pop(term.axis)
    return math.prod(shape)


def _law_of(p: _Producer, reach: _Reach, gm: torch.fx.GraphModule) -> Law:
    incoming = [*p.incoming, *reach.incoming]
    outgoing = [t for t, _ in reach.outgoing]
    degrees = {k for _, k in reach.outgoing}
    layer_norm = any(kind == "layer" for kind, _, _ in reach.normalizers)
    targets = sorted({_module_of(t.param) for t in outgoing})
    norms = [module for _, module, _ in reach.normalizers]
    eps = [(module, e) for _, module, e in reach.normalizers if e > 0]
    approximate = "; ".join(f"{module}.eps = {e:g} makes the scale symmetry approximate" for module, e in eps)
    if not outgoing:
        kind = "layernorm_scale" if layer_norm else "batchnorm_scale"
        name = f"{p.module} (scale, before {', '.join(norms)})"
    elif degrees != {1}:
        kind = "rescale_power"
        name = f"{p.module} → {', '.join(targets)} (degree {', '.join(f'{k:g}' for k in sorted(degrees))})"
    elif reach.linear and p.linear_map and not reach.normalizers and all(t.block == 1 for t in outgoing):
        kind = "linear_pair"
        low = all(p.units < _fan(gm, t) for t in [*p.incoming[:1], *outgoing])
        name = f"{p.module} → {', '.join(targets)} ({'low-rank pair, as LoRA' if low else 'linear'})"
    else:
        kind = "rescale"
        name = f"{p.module} → {', '.join(targets)}"
    terms = [*incoming, *outgoing]
    if layer_norm:  # one scale for the whole layer: every term becomes one unit
        terms = [Term(t.param, t.axis, 1, t.coef, t.start, 1, t.length) for t in terms]
    modules = tuple(dict.fromkeys([p.module, *targets]))
    return Law(kind, name, tuple(terms), matrix=kind == "linear_pair", approximate=approximate, modules=modules)


def _head_rows(m: nn.MultiheadAttention, t: str, part: str, start: int, coef: float) -> list[Term]:
    """The rows of W_Q, W_K or W_V (and their biases) of every head, as one term each: [heads, head_dim, m]."""
    H = m.num_heads
    d = m.embed_dim // H
    if m.in_proj_weight is not None:
        terms = [Term(f"{t}.in_proj_weight", 0, d, coef, start, H)]
    else:
        terms = [Term(f"{t}.{part}_proj_weight", 0, d, coef, 0, H)]
    if m.in_proj_bias is not None:
        terms.append(Term(f"{t}.in_proj_bias", 0, d, coef, start, H))
    return terms


def _attention_laws(gm: torch.fx.GraphModule) -> tuple[list[Law], list[NoLaw]]:
    laws, no = [], []
    for node in gm.graph.nodes:
        m = gm.get_submodule(node.target) if node.op == "call_module" else None
        if not isinstance(m, nn.MultiheadAttention):
            continue
        t, E, H = str(node.target), m.embed_dim, m.num_heads
        d = E // H
        if m.bias_k is not None or m.bias_v is not None:
            no.append(NoLaw(t, "add_bias_kv appends learned keys and values the per-head symmetries would move"))
            continue
        qk = (*_head_rows(m, t, "q", 0, 1.0), *_head_rows(m, t, "k", E, -1.0))
        laws.append(Law("attention_qk", f"{t} (W_Q, W_K per head, {H} heads)", qk, matrix=True, modules=(t,)))
        vo = (*_head_rows(m, t, "v", 2 * E, 1.0), Term(f"{t}.out_proj.weight", 1, d, -1.0, 0, H))
        laws.append(Law("attention_vo", f"{t} (W_V, W_O per head, {H} heads)", vo, matrix=True, modules=(t,)))
    return laws, no


def _uses(gm: torch.fx.GraphModule, model: nn.Module) -> dict[str, list[str]]:
    """For every parameter name, the names of every parameter sharing its storage and the nodes using it."""
    uses: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            uses[str(node.target)] = uses.get(str(node.target), 0) + 1
        elif node.op == "call_module":
            for name, _ in gm.get_submodule(node.target).named_parameters(prefix=str(node.target)):
                uses[name] = uses.get(name, 0) + 1
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    tied: dict[str, list[str]] = {}
    for names in by_id.values():
        total = sum(uses.get(n, 0) for n in names)
        if len(names) > 1 or total > 1:
            for n in names:
                tied[n] = names
    return tied


def find(model: nn.Module, example: tuple[Any, ...]) -> Found:
    """Every law of ``model`` its graph shows (not yet checked numerically) and every place it shows none."""
    gm = trace(model, example)
    found = Found(graph=gm)
    walker = _Walker(gm)
    for p in _producers(gm):
        reach = _Reach()
        walker.walk(p.node, _axis_of(p, gm), 1, 1, p.units, reach)
        if reach.blocked:
            found.no_laws.append(NoLaw(p.module, reach.blocked))
        elif reach.outgoing or reach.normalizers:
            found.laws.append(_law_of(p, reach, gm))
    laws, no = _attention_laws(gm)
    found.laws += laws
    found.no_laws += no
    tied = _uses(gm, model)
    # named_parameters deduplicates shared tensors: a law names the first name of each
    kept = []
    for law in found.laws:
        shared = [name for name in law.params if name in tied]
        if shared:
            others = ", ".join(n for n in tied[shared[0]] if n != shared[0]) or "a second call of the same module"
            found.no_laws.append(NoLaw(law.name, f"{BREAKS['tied']} ({shared[0]} also as {others})"))
        else:
            kept.append(law)
    found.laws = kept
    return found
