"""A law as a quadratic form over parameter blocks: what the audit finds and the watch measures and predicts.

A ``Term`` names a block of one parameter with its units as rows: ``view(tensor)`` is X [G, n, m] (G groups such as
attention heads, n units per group, m entries per unit). A ``Law`` is a list of terms with coefficients c_t and
conserves, under gradient flow (``balance.engine.symmetries``),

    Q = sum_t c_t X_t X_t^T        [G, n, n] for a matrix symmetry, its diagonal [G, n] for a per-unit one.

``quantity`` computes Q (or its diagonal) from any tensors shaped like the parameters (the weights, a gradient, a
momentum buffer), ``cross`` the symmetrised sum_t c_t (X_t Y_t^T + Y_t X_t^T) / 2, and ``act`` applies one element
of the symmetry group to the parameters (the audit's numerical check).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Term:
    """Rows ``start .. start + groups * units * block`` of ``param`` along ``axis``, as X [groups, units, m].

    ``block``: consecutive entries along the axis that belong to one unit (a flattened feature map: H*W columns of
    the next layer per channel). ``coef``: +1 on the incoming side, -k on the outgoing side of a unit of degree k.
    """

    param: str
    axis: int
    units: int
    coef: float = 1.0
    start: int = 0
    groups: int = 1
    block: int = 1

    @property
    def length(self) -> int:
        return self.groups * self.units * self.block

    def region(self, tensor: Tensor) -> Tensor:
        """The block of ``tensor`` with the unit axis first: [groups * units * block, ...] (a view)."""
        return tensor.narrow(self.axis, self.start, self.length).movedim(self.axis, 0)

    def view(self, tensor: Tensor) -> Tensor:
        """X [groups, units, m] (a copy where the block is not contiguous)."""
        return self.region(tensor).reshape(self.groups, self.units, -1)

    def rowsq(self, tensor: Tensor) -> Tensor:
        """The diagonal of X X^T, [groups, units], without building X."""
        sq = self.region(tensor).square()
        sq = sq.sum(dim=tuple(range(1, sq.dim()))) if sq.dim() > 1 else sq
        return sq.reshape(self.groups, self.units, self.block).sum(-1)

    def write(self, tensor: Tensor, X: Tensor) -> None:
        """Set the block of ``tensor`` to X [groups, units, m] (the inverse of ``view``), in place."""
        target = self.region(tensor)
        target.copy_(X.reshape(target.shape))


@dataclass(frozen=True)
class Law:
    """One symmetry family of a model: its kind (a key of ``SYMMETRIES``), where it is, and its terms.

    ``matrix``: the whole Q is conserved (GL(n) per group), else only its diagonal. ``approximate``: why the
    symmetry holds only approximately (a normaliser's eps), '' if exactly."""

    kind: str
    name: str
    terms: tuple[Term, ...]
    matrix: bool = False
    approximate: str = ""
    note: str = ""
    modules: tuple[str, ...] = field(default=())

    @property
    def groups(self) -> int:
        return self.terms[0].groups

    @property
    def units(self) -> int:
        return self.terms[0].units

    @functools.cached_property
    def params(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.param for t in self.terms))

    def quantity(self, tensors: Mapping[str, Tensor], weights: Mapping[str, float] | None = None) -> Tensor:
        """Q = sum_t c_t w_t X_t X_t^T: [G, n, n] (matrix) or its diagonal [G, n]; ``weights`` per parameter
        (1 where absent)."""
        total = None
        for t in self.terms:
            c = t.coef * (weights.get(t.param, 1.0) if weights else 1.0)
            if self.matrix:  # one fused op per term: total + c X X^T
                X = t.view(tensors[t.param])
                total = (
                    (c * X) @ X.transpose(-1, -2) if total is None else total.baddbmm(X, X.transpose(-1, -2), alpha=c)
                )
            else:
                part = t.rowsq(tensors[t.param])
                total = c * part if total is None else total.add(part, alpha=c)
        assert total is not None
        return total

    def cross(
        self, a: Mapping[str, Tensor], b: Mapping[str, Tensor], weights: Mapping[str, float] | None = None
    ) -> Tensor:
        """sum_t c_t w_t sym(X_t Y_t^T) of the blocks of ``a`` and ``b`` (the diagonal: row-wise <x_i, y_i>)."""
        total = None
        for t in self.terms:
            c = t.coef * (weights.get(t.param, 1.0) if weights else 1.0)
            if self.matrix:
                X, Y = t.view(a[t.param]), t.view(b[t.param])
                XY = X @ Y.transpose(-1, -2)
                part = (XY + XY.transpose(-1, -2)) / 2
            else:
                prod = t.region(a[t.param]) * t.region(b[t.param])
                prod = prod.sum(dim=tuple(range(1, prod.dim()))) if prod.dim() > 1 else prod
                part = prod.reshape(t.groups, t.units, t.block).sum(-1)
            total = c * part if total is None else total + c * part
        assert total is not None
        return total

    def scale(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """sum_t |c_t| ||X_t||^2: the size of the terms of Q, for relative residuals."""
        return sum(abs(t.coef) * t.rowsq(tensors[t.param]).sum() for t in self.terms)  # type: ignore[return-value]

    def act(self, tensors: Mapping[str, Tensor], generator: torch.Generator, spread: float = 0.5) -> None:
        """Apply a random element of the symmetry group to ``tensors`` in place.

        Per-unit: X_t -> diag(c)^{e_t} X_t with c_i = exp(u_i), u_i uniform in [-spread, spread], e_t = +1 on the
        incoming side and -k (the coefficient) on the outgoing side; matrix: X -> M X (incoming) and M^-T X
        (outgoing), M = I + spread * N / sqrt(n) with N standard normal (invertible with high probability).
        """
        G, n = self.groups, self.units
        some = next(iter(tensors.values()))
        options = {"dtype": some.dtype, "device": some.device}
        if self.matrix:
            noise = torch.randn(G, n, n, generator=generator, dtype=some.dtype).to(some.device)
            M = torch.eye(n, **options) + spread * noise / n**0.5
            Minv_T = torch.linalg.inv(M).transpose(-1, -2)
            for t in self.terms:
                X = t.view(tensors[t.param])
                t.write(tensors[t.param], (M if t.coef > 0 else Minv_T) @ X)
            return
        u = (torch.rand(G, n, 1, generator=generator, dtype=some.dtype).to(some.device) * 2 - 1) * spread
        for t in self.terms:
            X = t.view(tensors[t.param])
            exponent = 1.0 if t.coef > 0 else t.coef  # -k on the outgoing side of a unit of degree k
            t.write(tensors[t.param], torch.exp(u * exponent) * X)


def trace(Q: Tensor, matrix: bool) -> Tensor:
    """The scalar of a law: the sum over groups of tr Q (matrix) or of the diagonal."""
    return Q.diagonal(dim1=-2, dim2=-1).sum() if matrix else Q.sum()


def diagonal(Q: Tensor, matrix: bool) -> Tensor:
    """The per-unit values [G, n] of Q."""
    return Q.diagonal(dim1=-2, dim2=-1) if matrix else Q


Params = Callable[[], Mapping[str, Tensor]]
