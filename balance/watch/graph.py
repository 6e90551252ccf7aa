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

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn

from balance.engine.symmetries import BREAKS
from balance.watch.forms import Law, Term
from balance.watch.trace import (
    ADDS,
    NORMS,
    POWERS,
    RESHAPES,
    SCALES,
    TRANSPARENT_FUNCTIONS,
    TRANSPARENT_MODULES,
    Found,
    NoLaw,
    not_homogeneous,
    op_name,
    param_name,
    shape_of,
    trace,
    weight_of,
)

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
        name = op_name(user, self.gm)
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
            if axis != len(shape_of(value) or ()) - 1:
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
        if type(m).__name__ in NORMS:
            self.normalizer(user, m, value, axis, block, n, reach)
            return
        # transparent operations
        if type(m).__name__ in TRANSPARENT_MODULES or (m is None and name in TRANSPARENT_FUNCTIONS):
            linear, k = TRANSPARENT_MODULES.get(type(m).__name__) or TRANSPARENT_FUNCTIONS[name]
            reach.linear &= linear
            self.walk(user, axis, block, degree * k, n, reach)
            return
        if name in ("to", "float", "double", "type_as") and m is None:
            self.walk(user, axis, block, degree, n, reach)
            return
        if name in RESHAPES:
            self.reshape(value, user, axis, block, degree, n, reach)
            return
        if name in ADDS and m is None:
            self.add(value, user, axis, block, degree, n, reach)
            return
        if name in SCALES and m is None:
            other = [a for a in user.args if a is not value]
            if name in ("truediv", "div", "div_", "itruediv") and user.args[0] is not value:
                reach.stop(f"it divides a value: not homogeneous{where}")
            elif len(other) == 1 and isinstance(other[0], (int, float)):
                self.walk(user, axis, block, degree, n, reach)
            else:
                reach.stop(BREAKS["product"] + where)
            return
        if name in POWERS and m is None:
            k = 2 if name == "square" else (user.args[1] if len(user.args) > 1 else user.kwargs.get("exponent"))
            if user.args[0] is value and isinstance(k, (int, float)) and k > 0:
                reach.linear &= k == 1
                self.walk(user, axis, block, degree * k, n, reach)
            else:
                reach.stop(f"a power with a tensor exponent or base{where}")
            return
        reason = not_homogeneous(name)
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
        if axis != len(shape_of(value) or ()) - 1 or block != 1:
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
        if axis != len(shape_of(value) or ()) - 1:
            reach.stop(f"{name} reads it along another axis than its channels{where}")
            return
        if name == "linear":
            weight = param_name(self.gm, user.args[1] if len(user.args) > 1 else user.kwargs.get("weight"))
            if weight is None:
                reach.stop(BREAKS["product"] + where)
                return
            reach.outgoing.append((Term(weight, 1, n, coef=-degree, block=block), degree))
            return
        found = weight_of(self.gm, user.args[1]) if len(user.args) > 1 else None
        if found is None:
            reach.stop(BREAKS["product"] + where)
            return
        weight, transposed = found
        reach.outgoing.append((Term(weight, 1 if transposed else 0, n, coef=-degree, block=block), degree))

    def normalizer(self, user: torch.fx.Node, m: nn.Module, value: torch.fx.Node, axis: int, block: int, n: int,
                   reach: _Reach) -> None:  # fmt: skip
        where = f" (at {user.name})"
        kind = NORMS[type(m).__name__]
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
        ndim = len(shape_of(value) or ())
        if len(shape) != 1 or axis != ndim - 1 or block != 1 or shape[0] != n:
            reach.stop(f"{type(m).__name__} normalises over more than these channels{where}")
            return
        reach.normalizers.append(("layer", str(user.target), eps))

    def reshape(self, value: torch.fx.Node, user: torch.fx.Node, axis: int, block: int, degree: int, n: int,
                reach: _Reach) -> None:  # fmt: skip
        before, after = shape_of(value), shape_of(user)
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
        name = param_name(self.gm, other)
        if name is None:
            is_node = isinstance(other, torch.fx.Node) and other.op != "get_attr"
            reach.stop(BREAKS["residual" if is_node else "constant"] + where)
            return
        if degree != 1 or block != 1:
            reach.stop(f"a parameter is added after a power or a flatten{where}: {BREAKS['constant']}")
            return
        shape, out = tuple(self.gm.get_parameter(name).shape), shape_of(value) or ()
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
        shape = shape_of(node)
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            t = str(node.target)
            if isinstance(m, nn.Linear | nn.modules.conv._ConvNd):
                terms = [Term(f"{t}.weight", 0, m.weight.shape[0])]
                if m.bias is not None:
                    terms.append(Term(f"{t}.bias", 0, m.weight.shape[0]))
                out.append(_Producer(node, t, m.weight.shape[0], terms, True))
            elif type(m).__name__ in NORMS and getattr(m, "weight", None) is not None and m.weight.dim() == 1:
                terms = [Term(f"{t}.weight", 0, m.weight.shape[0])]
                if getattr(m, "bias", None) is not None:
                    terms.append(Term(f"{t}.bias", 0, m.weight.shape[0]))
                out.append(_Producer(node, t, m.weight.shape[0], terms, False))
            elif isinstance(m, nn.Embedding) and m.max_norm is None:
                out.append(_Producer(node, t, m.embedding_dim, [Term(f"{t}.weight", 1, m.embedding_dim)], True))
            elif isinstance(m, nn.MultiheadAttention):
                for user in node.users:
                    if op_name(user, gm) == "getitem" and user.args[1] == 0:
                        E = m.embed_dim
                        terms = [Term(f"{t}.out_proj.weight", 0, E)]
                        if m.out_proj.bias is not None:
                            terms.append(Term(f"{t}.out_proj.bias", 0, E))
                        out.append(_Producer(user, f"{t}.out_proj", E, terms, True))
        elif node.op == "call_function" and shape is not None:
            name = op_name(node, gm)
            if name == "linear":
                weight = param_name(gm, node.args[1] if len(node.args) > 1 else node.kwargs.get("weight"))
                bias = param_name(gm, node.args[2] if len(node.args) > 2 else node.kwargs.get("bias"))
                if weight is not None:
                    units = gm.get_parameter(weight).shape[0]
                    terms = [Term(weight, 0, units)] + ([Term(bias, 0, units)] if bias else [])
                    out.append(_Producer(node, weight.rpartition(".")[0] or weight, units, terms, True))
            elif name == "matmul" and len(node.args) > 1 and param_name(gm, node.args[0]) is None:
                found = weight_of(gm, node.args[1])
                if found is not None:
                    weight, transposed = found
                    units = gm.get_parameter(weight).shape[0 if transposed else 1]
                    axis = 0 if transposed else 1
                    out.append(_Producer(node, weight, units, [Term(weight, axis, units)], True))
    return out


def _axis_of(producer: _Producer, gm: torch.fx.GraphModule) -> int:
    shape = shape_of(producer.node) or ()
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
