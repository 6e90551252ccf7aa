"""What actually balances (issue 16), torch-free: the mechanisms that move the layer gap, each from one common
unbalanced start, with its law and what its chart's residual badge checks.

Gradient flow only conserves the gap G_h (Du, Hu and Lee, Theorem 2.1): nothing in it moves the layers towards
balance, as Reviewer 1 objected. What moves G is what flow lacks:

- ``gd``: plain GD, eta^2 Delta||g||^2 a step: G barely moves (the control);
- ``sgd``: mini-batch noise (Ziyin et al. 2023-24): the same exact identity with the batch's gradient, whose noise
  keeps Delta||g||^2 from vanishing at the optimum; for the scalar chain f = u w x each step multiplies
  Phi = u^2 - w^2 by exactly (1 - eta^2 r^2 x^2);
- (label-noise GD, ``optim.name = label_noise``: fresh label noise each step, the same identity; not an arm here);
- ``large_step``: the edge of stability (Wang et al. ICLR 2022): a GD minimum is stable only if its sharpness is
  <= 2/eta, and the sharpness grows with the imbalance, so large steps can only end at balanced minima;
- ``sam``: sharpness-aware minimisation (Li, Zhang, He, NeurIPS 2024): Euler's identity at the perturbed point gives
  a first-order term 2 eta rho Delta<g^, g~> that pulls G to 0;
- ``weight_decay``: G_{k+1} = (1 - eta lambda)^2 G_k + eta^2 Delta||g||^2: geometric decay at rate 2 eta lambda.

``START`` is the common start (a two-layer linear network on teacher data, the input layer at 1/10 of the output
layer's scale); ``config_changes(name)`` the dotted settings of each arm on top of it. The numbers in ``measured``
are what these runs gave (float64, seed 0) when this registry was written; the claim recomputes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RESIDUALS = ("exact", "bound", "rate")  # what a mechanism's badge checks: its per-step law, its bound, its rate
# keeps: G stays (up to eta^2); moves: G goes to a noise equilibrium, not necessarily 0; balances: |G| shrinks and the
# ratio of the norms ends nearer 1 than plain GD's from the same start
EFFECTS = ("keeps", "moves", "balances")


@dataclass(frozen=True)
class Mechanism:
    title: str
    changes: Mapping[str, Any]  # dotted settings on top of START
    law: str  # the exact per-step law, the bound or the rate, plain text
    residual: str  # one of RESIDUALS
    effect: str  # one of EFFECTS: what it is expected to do to the gap from START
    source: str
    measured: str = ""  # what the arm gave when this entry was written (see the claim for the live numbers)
    closed_rate: bool = False  # the law gives |G|'s per-step factor in closed form (``predicted_rate``)


START: dict[str, Any] = {
    "data.name": "teacher",
    "data.samples": 64,
    "data.input_dim": 4,
    "data.output_dim": 1,
    "data.teacher_width": 8,
    "data.noise": 0.1,
    "model.name": "linear",
    "model.depth": 2,
    "model.width": 4,
    "model.init_scale": 1.0,
    "model.layer_scales": (0.1, 1.0),
    "optim.name": "gd",
    "optim.lr": 0.05,
    "steps": 2000,
    "log_every": 10,
    "sharpness_every": 100,
}

_GD = "G_{k+1} = G_k + eta^2 Delta||g_k||^2 (exact)"
MECHANISMS: dict[str, Mechanism] = {
    "gd": Mechanism(
        "gradient descent, eta = 0.05", {}, _GD, "exact", "keeps", "Du, Hu and Lee 2018, Theorem 2.1 + eta^2 term",
        "G: 3.31 -> 3.30, ratio 3.99 -> 3.27",
    ),
    "sgd": Mechanism(
        "SGD, batch 1", {"optim.name": "sgd", "optim.batch_size": 1}, _GD + " with the batch's gradient; scalar "
        "chain: Phi_{k+1} = (1 - eta^2 r_k^2 x_k^2) Phi_k", "exact", "moves", "Ziyin et al. 2023-24",
        "G: 3.31 -> -0.54 (its noise equilibrium E r^2 ||W_1 x||^2 = E r^2 ||u||^2 ||x||^2, past 0 here)",
    ),
    "large_step": Mechanism(
        "large-step GD, eta = 0.5", {"optim.lr": 0.5}, "a GD minimum is stable only if sharpness <= 2/eta",
        "bound", "balances", "Wang, Chen, Zhao, Tao, ICLR 2022; Cohen et al. 2021",
        "G: 3.31 -> 1.2, sharpness 2.7 <= 4",
    ),
    "sam": Mechanism(
        "SAM, rho = 0.2", {"optim.name": "sam", "optim.rho": 0.2},
        "G_{k+1} = G_k + 2 eta rho Delta<g^_k, g~_k> + eta^2 Delta||g~_k||^2 (exact)", "exact", "balances",
        "Li, Zhang, He, NeurIPS 2024", "G: 3.31 -> -0.14",
    ),
    "weight_decay": Mechanism(
        "weight decay, lambda = 0.01", {"optim.weight_decay": 0.01},
        "G_{k+1} = (1 - eta lambda)^2 G_k + eta^2 Delta||g_k||^2 (exact): |G| decays as (1 - eta lambda)^(2k)",
        "rate", "balances", "formula sheet 3.4; Kunin et al. 2021", "G: 3.31 -> 0.45 (predicted 0.45)",
        closed_rate=True,
    ),
}  # fmt: skip


def config_changes(name: str) -> dict[str, Any]:
    """The dotted settings of mechanism ``name``'s run: ``START`` with its changes."""
    return {**START, **MECHANISMS[name].changes}


def predicted_rate(name: str) -> float | None:
    """The predicted per-step factor of |G| where the law gives one in closed form (weight decay: (1 - eta lambda)^2,
    the eta^2 terms neglected); None otherwise."""
    if not MECHANISMS[name].closed_rate:
        return None
    settings = config_changes(name)
    return (1 - settings["optim.lr"] * settings.get("optim.weight_decay", 0.0)) ** 2
