"""``balance.audit(model, example_input)``: the continuous symmetries of any ``nn.Module``, each checked in float64.

The graph (``balance.watch.graph``) proposes the laws; each is then checked numerically on a float64 copy of the
model whose parameters are moved a little at random (a check at a special point, such as LoRA's B = 0, would prove
nothing; the model itself is not touched):

- invariance: a random element of the symmetry group (per-unit scales e^u, u uniform in [-1/2, 1/2], or a random
  invertible mixing M = I + N / (2 sqrt(n))) changes the model's output on the example input by at most 1e-10
  relative (the loss, whatever it is, is then unchanged too);
- one GD step: for the loss L = ||f(x) - R||^2 / 2 with a fixed random R and a step eta that moves the law's
  parameters by a tenth of their norm, Q(theta - eta g) - Q(theta) = eta^2 Q(g) to 1e-10 relative to eta^2 times
  the size of the gradient's terms (``balance.engine.symmetries``).

A law whose check fails is reported among the places without a law, with its residual. A law the graph finds only
approximately (a normaliser's eps) is kept, marked approximate, with its residuals.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn

from balance.engine.symmetries import SYMMETRIES
from balance.watch.forms import Law
from balance.watch.graph import find
from balance.watch.trace import AuditError, NoLaw, bare_copy

EXACT = 1e-10  # float64: a law that holds gives ~1e-15; anything above this is not an exact symmetry
APPROXIMATE = 1e-3  # a normaliser's eps (1e-5) leaves ~1e-6: still worth watching, marked approximate


@dataclass(frozen=True)
class Checked:
    """A law with its numerical check: relative residuals of the invariance and of the one-step identity."""

    law: Law
    invariance: float
    step: float
    status: str  # exact | approximate

    @property
    def kind(self) -> str:
        return self.law.kind

    @property
    def quantity(self) -> str:
        return SYMMETRIES[self.law.kind].quantity


@dataclass
class Audit:
    """What ``audit`` found: ``laws`` (checked) and ``no_laws`` (where and why there is none)."""

    model: str
    laws: list[Checked] = field(default_factory=list)
    no_laws: list[NoLaw] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        """One row per law and per place without one: kind, where, quantity, size, invariance, step, status."""
        rows = [
            {
                "kind": c.kind,
                "where": c.law.name,
                "conserved": c.quantity,
                "size": _size(c.law),
                "invariance": c.invariance,
                "step": c.step,
                "status": c.status + (f" ({c.law.approximate})" if c.law.approximate else ""),
            }
            for c in self.laws
        ]
        rows += [
            {"kind": "no law here", "where": n.where, "conserved": "", "size": "", "invariance": math.nan,
             "step": math.nan, "status": n.reason}
            for n in self.no_laws
        ]  # fmt: skip
        return pd.DataFrame(rows, columns=["kind", "where", "conserved", "size", "invariance", "step", "status"])

    def __str__(self) -> str:
        lines = [f"{self.model}: {len(self.laws)} law{'s' * (len(self.laws) != 1)}"]
        for c in self.laws:
            lines.append(f"  {c.kind:16s} {c.law.name}")
            lines.append(f"  {'':16s}   conserves {c.quantity} [{_size(c.law)}]")
            note = f"; {c.law.approximate}" if c.law.approximate else ""
            lines.append(
                f"  {'':16s}   check: invariance {c.invariance:.1e}, one GD step {c.step:.1e} ({c.status}{note})"
            )
        for n in self.no_laws:
            lines.append(f"  {'no law here':16s} {n.where}: {n.reason}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return self.frame().to_html(index=False, float_format=lambda v: f"{v:.1e}")


def _size(law: Law) -> str:
    shape = f"{law.units}x{law.units} matrix" if law.matrix else f"{law.units} unit{'s' * (law.units != 1)}"
    return f"{law.groups} heads x {shape}" if law.groups > 1 else shape


def as_inputs(example: Any) -> tuple[Any, ...]:
    return tuple(example) if isinstance(example, (tuple, list)) else (example,)


def audit(model: nn.Module, example_input: Any, *, seed: int = 0) -> Audit:
    """Find the laws of ``model`` (in its current train / eval mode) from its graph on ``example_input`` (a tensor or
    a tuple of them) and check each numerically in float64. ``AuditError`` for a model that cannot be traced."""
    inputs = as_inputs(example_input)
    found = find(model, inputs)
    report = Audit(type(model).__name__, no_laws=list(found.no_laws))
    base = _jittered(_float64(model), seed)
    inputs64 = tuple(x.double() if torch.is_tensor(x) and x.is_floating_point() else x for x in inputs)
    for law in found.laws:
        invariance, step = check(base, inputs64, law, seed)
        worst = max(invariance, step)
        if worst <= EXACT:
            report.laws.append(Checked(law, invariance, step, "exact"))
        elif law.approximate and worst <= APPROXIMATE:
            report.laws.append(Checked(law, invariance, step, "approximate"))
        else:
            why = (
                f"the graph suggests {law.kind}, but the check fails: the output changes by {invariance:.1e} "
                f"relative under the symmetry, one GD step leaves {step:.1e}"
            )
            report.no_laws.append(NoLaw(law.name, why))
    return report


def _float64(model: nn.Module) -> nn.Module:
    try:
        return bare_copy(model).double()
    except Exception as exc:  # pragma: no cover - a module that refuses float64
        raise AuditError(f"{type(model).__name__} cannot be copied to float64 for the check: {exc}") from None


def _jittered(model: nn.Module, seed: int) -> nn.Module:
    """``model`` with every parameter moved a little at random (in place): a symmetry holds at every point, and a
    check at a special one proves nothing (a LoRA pair's B = 0 start leaves the output unchanged by any A)."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            size = float(p.abs().mean()) if p.numel() else 0.0
            size = size or (p.shape[-1] ** -0.5 if p.dim() > 1 else 0.1)
            p.add_(0.1 * size * torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device))
    return model


def _output(model: nn.Module, inputs: Sequence[Any], seed: int) -> torch.Tensor:
    """The model's outputs as one flat float64 vector; dropout masks fixed by ``seed``; the model's buffers (running
    statistics) kept as they were."""
    model = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model(*inputs)
    tensors = [out] if torch.is_tensor(out) else [t for t in _flatten(out) if torch.is_tensor(t)]
    return torch.cat([t.reshape(-1).double() for t in tensors if t.is_floating_point()])


def _flatten(x: Any) -> list[Any]:
    if isinstance(x, (tuple, list)):
        return [y for item in x for y in _flatten(item)]
    if isinstance(x, dict):
        return [y for item in x.values() for y in _flatten(item)]
    return [x]


def check(model: nn.Module, inputs: Sequence[Any], law: Law, seed: int = 0) -> tuple[float, float]:
    """(invariance, one-step) relative residuals of ``law`` on the float64 ``model`` (left unchanged)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        before = _output(model, inputs, seed)
        moved = copy.deepcopy(model)
        law.act(dict(moved.named_parameters()), generator)
        after = _output(moved, inputs, seed)
    invariance = float((after - before).norm() / before.norm().clamp_min(1e-300))

    stepped = copy.deepcopy(model)
    params = dict(stepped.named_parameters())
    for name in law.params:
        params[name].requires_grad_(True)
    target = torch.randn(before.shape, generator=generator, dtype=before.dtype).to(before.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = _output_differentiable(stepped, inputs)
    loss = 0.5 * (out - target).square().sum()
    grads = torch.autograd.grad(loss, [params[n] for n in law.params], allow_unused=True)
    theta = {n: params[n].detach() for n in law.params}
    g = {n: torch.zeros_like(theta[n]) if gr is None else gr for n, gr in zip(law.params, grads)}
    size_g, size_theta = float(law.scale(g)), float(law.scale(theta))
    if size_g == 0.0:
        return invariance, 0.0  # no gradient reaches the law's parameters here: nothing moves
    eta = 0.1 * math.sqrt(size_theta / size_g) if size_theta > 0 else 1.0
    moved_theta = {n: theta[n] - eta * g[n] for n in law.params}
    change = law.quantity(moved_theta) - law.quantity(theta)
    residual = (change - eta**2 * law.quantity(g)).norm()
    return invariance, float(residual / (eta**2 * size_g))


def _output_differentiable(model: nn.Module, inputs: Sequence[Any]) -> torch.Tensor:
    out = model(*inputs)
    tensors = [out] if torch.is_tensor(out) else [t for t in _flatten(out) if torch.is_tensor(t)]
    return torch.cat([t.reshape(-1) for t in tensors if t.is_floating_point()])
