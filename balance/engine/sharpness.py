"""Sharpness: the largest eigenvalue lambda_max of the loss's Hessian, and the step sizes it allows.

Near a point where the Hessian's largest eigenvalue is lambda_max, a gradient step of size eta multiplies the
error along that eigenvector by (1 - eta lambda_max): GD is stable there only for eta < 2 / lambda_max (the edge of
stability). The eigenvalue comes from Lanczos iterations on Hessian-vector products (double backward, float64),
with full reorthogonalisation: exact (to round-off) once the iterations reach the number of parameters, and the
extreme eigenvalues converge long before that for larger models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

LANCZOS_STEPS = 60
Operator = Callable[[torch.Tensor], torch.Tensor]  # v [n] -> H v [n]


def _lanczos(
    hvp: Operator, n: int, dtype: torch.dtype, steps: int, seed: int, start: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues [m], Ritz vectors [m, n]) of the Lanczos tridiagonal after at most ``steps`` products, started
    from ``start`` (a warm start: the previous top eigenvector) or a seeded random vector."""
    k = min(steps, n)
    if start is None or start.numel() != n or not bool(torch.linalg.vector_norm(start) > 0):
        start = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    q = start.to(dtype) / torch.linalg.vector_norm(start)
    basis, alpha, beta = [], [], []
    for j in range(k):
        basis.append(q)
        w = hvp(q)
        alpha.append(float(w @ q))
        Q = torch.stack(basis)
        w = w - Q.T @ (Q @ w)  # full reorthogonalisation, twice: Lanczos loses orthogonality in floating point
        w = w - Q.T @ (Q @ w)
        b = float(torch.linalg.vector_norm(w))
        if j == k - 1 or b <= 1e-12 * max(1.0, max(abs(a) for a in alpha)):
            break
        beta.append(b)
        q = w / b
    T = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if len(alpha) > 1:
        off = torch.tensor(beta[: len(alpha) - 1], dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    ev, vectors = torch.linalg.eigh(T)
    return ev, vectors.T.to(dtype) @ torch.stack(basis)


def extreme_eigenvalues(
    hvp: Operator, n: int, dtype: torch.dtype = torch.float64, steps: int = LANCZOS_STEPS, seed: int = 0
) -> tuple[float, float]:
    """(smallest, largest) eigenvalue of the symmetric n x n operator ``hvp`` (v [n] -> H v [n])."""
    ev, _ = _lanczos(hvp, n, dtype, steps, seed, None)
    return float(ev[0]), float(ev[-1])


def top_eigenpair(
    hvp: Operator, n: int, start: torch.Tensor | None = None, steps: int = LANCZOS_STEPS, seed: int = 0
) -> tuple[float, torch.Tensor]:
    """(lambda_max, its unit eigenvector [n]) of ``hvp`` in float64, warm-started from ``start`` (e.g. the vector of
    the previous logged step: the top eigenvector moves little between them, so Lanczos needs few products)."""
    ev, ritz = _lanczos(hvp, n, torch.float64, steps, seed, start)
    return float(ev[-1]), ritz[-1]


def hessian_operator(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> tuple[Operator, int]:
    """v -> H v for the scalar ``loss`` of ``params`` (a graph built with gradients enabled), and n."""
    grads = torch.autograd.grad(loss, params, create_graph=True)
    sizes = [p.numel() for p in params]

    def hvp(v: torch.Tensor) -> torch.Tensor:
        parts = torch.split(v, sizes)
        dot = sum((g * x.reshape(g.shape)).sum() for g, x in zip(grads, parts))
        hv = torch.autograd.grad(dot, params, retain_graph=True, allow_unused=True)
        return torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1) for h, p in zip(hv, params)])

    return hvp, sum(sizes)


def initial_sharpness(config: object) -> float:
    """lambda_max of the full-batch objective at the config's initial weights, in float64."""
    from balance.engine.data import make_task
    from balance.engine.models import MODELS, build_model
    from balance.engine.networks import objective  # the engine's own objective: the quantity its steps see

    cfg = config.replace(dtype="float64")  # type: ignore[attr-defined]
    task = make_task(cfg.data, torch.float64, image_input=MODELS[cfg.model.name].image_input)
    model = build_model(cfg, task, torch.Generator().manual_seed(cfg.seed), torch.float64)
    with torch.enable_grad():
        hvp, n = hessian_operator(objective(model, task), model.params)
        return extreme_eigenvalues(hvp, n)[1]


def nice_below(x: float) -> float:
    """The largest 1, 2, 5 x 10^k not above ``x`` (x > 0)."""
    e = math.floor(math.log10(x))
    return max(m * 10.0**e for m in (1, 2, 5) if m * 10.0**e <= x * (1 + 1e-12))


def step_advice(config: object, lr: float) -> tuple[float, str]:
    """(a step size to try, one sentence saying why) after a run of ``config`` diverged at step size ``lr``.

    From the sharpness at the start: stability needs eta < 2 / lambda_0 there, and as the layers grow the sharpness
    grows (for matrix factorisation from a small start, to about twice lambda_0 at a balanced minimum), so the
    advice is about 1 / lambda_0, and never more than a quarter of a step size that is known to have diverged.
    """
    try:
        lam = initial_sharpness(config)
    except Exception:  # advice must never fail the run's report
        lam = math.nan
    if not (math.isfinite(lam) and lam > 0):
        value = nice_below(lr / 10)
        return value, f"try a step size of {value:g}"
    limit = 2 / lam
    value = nice_below(min(1 / lam, lr / 4))
    if lr > limit:
        why = (
            f"the loss's sharpness at the start is {lam:.3g}, so steps above 2/{lam:.3g} = {limit:.3g} cannot be stable"
        )
    else:
        why = f"this step size was below 2/λ = {limit:.3g} at the start (λ = {lam:.3g}); the sharpness grew in training"
    return value, f"{why}: try a step size of {value:g}"
