"""The registry of laws and metrics, torch-free: what each optimiser and activation does to the layer gaps, and what
every logged column means.

- ``OPTIMIZERS``: per optimiser its help, the settings it reads and its exact law (the per-step recursion of the layer
  gap G_h, formula sheet section 3) or the reason there is none. The torch side is keyed by the same names: the
  update on stacked weights (``balance.engine.optim.RULES``) and the recursion's numbers
  (``balance.engine.theory.RECURSIONS``).
- ``ACTIVATIONS``: per activation whether it is positively homogeneous (the rescaling symmetry holds); its function
  is ``balance.engine.models.ACTIVATION_FUNCTIONS``, keyed by the same names.
- ``SCHEDULES``: the step-size schedules eta_k = eta_0 s(k).
- ``METRICS``: per metric its scope (scalar / layer / pair / neuron), kind (coordinate / measured / predicted),
  formula, TeX label, plain-text label, unit, sign convention and which metric it predicts; the torch side is
  ``balance.engine.metrics.COMPUTE``.
- ``SYMMETRIES``, ``BREAKS``, ``NOT_HOMOGENEOUS``, ``TORCH_OPTIMIZERS`` (``balance.engine.symmetries``): for watching
  any model (``balance.watch``), the kinds of symmetry the audit finds and what each conserves, what breaks one,
  and which ``torch.optim`` optimiser has an exact law (the rest: why not).
- Column names (``gap_drift_2``) are made by ``column`` / ``columns`` and read back by ``parse`` / ``of_metric``,
  nowhere else; ``label`` (TeX), ``plain`` (charts), ``describe`` (words) and ``expand`` (captions) are what
  consumers show, ``prediction_of`` and ``why_no_law`` say whether there is a prediction and why not.
  (The metric half lives in ``balance.engine.columns``; this module re-exports it, so the registry is one import.)

Importing this module imports neither torch nor numpy (tested in a fresh interpreter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from balance.engine.columns import (
    KINDS,
    METRICS,
    NEURON_INDEX,
    NO_PREDICTION,
    SCOPES,
    Layout,
    Metric,
    column,
    columns,
    describe,
    expand,
    label,
    of_metric,
    parse,
    pattern,
    plain,
    prediction_of,
)
from balance.engine.families import DATASETS, MODELS, DataSet, Family
from balance.engine.symmetries import (  # the entries for watching any model (balance.watch)
    BREAKS,
    NOT_HOMOGENEOUS,
    SYMMETRIES,
    TORCH_OPTIMIZERS,
    Symmetry,
    TorchOptimizer,
)

__all__ = [
    "ACTIVATIONS",
    "BREAKS",
    "DATASETS",
    "KINDS",
    "METRICS",
    "MODELS",
    "MODEL_NO_LAW",
    "NEURON_INDEX",
    "NOT_HOMOGENEOUS",
    "NO_LAW",
    "NO_PREDICTION",
    "OPTIMIZERS",
    "SCHEDULES",
    "SCOPES",
    "SYMMETRIES",
    "TORCH_OPTIMIZERS",
    "Activation",
    "DataSet",
    "Family",
    "Law",
    "Layout",
    "Metric",
    "Optimizer",
    "Schedule",
    "Symmetry",
    "TorchOptimizer",
    "column",
    "columns",
    "describe",
    "expand",
    "label",
    "of_metric",
    "parse",
    "pattern",
    "plain",
    "prediction_of",
    "why_no_law",
]

# --- optimisers and their laws ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Law:
    """The exact per-step recursion of the layer gap G_h = ||W_{h+1}||^2 - ||W_h||^2 - ||b_h||^2.

    Delta<x, y> = <x_{h+1}, y_{h+1}> - <x_h, y_h> (biases on the h side); g_k is the gradient the step used (the
    mini-batch's for SGD), E_k = Delta<theta_k, g_k> (0 for a rescaling-invariant objective; MF's balancing
    regulariser makes it nonzero and is carried exactly).

    Per-layer step sizes eta_h = eta m_h (``optim.layer_lrs``, Kunin et al. 2024): the gap becomes the eta-weighted
    G_h = ||W_{h+1}||^2 / m_{h+1} - (||W_h||^2 + ||b_h||^2) / m_h (eta times ||W_{h+1}||^2/eta_{h+1} - ...), and
    every recursion holds unchanged with Delta of the optimiser's buffers weighted by m: Delta||g||^2 =
    m_{h+1} ||g_{h+1}||^2 - m_h ||g_h||^2 (E_k stays unweighted). Exact for lambda = 0 (per-layer decay factors
    differ); flow conserves the weighted gap.
    """

    recursion: str  # plain text, one line per state variable
    tex: str
    reads: tuple[str, ...] = ()  # the optimiser's buffers the recursion reads besides ||g||^2 (e.g. ||v_{k+1}||^2)


@dataclass(frozen=True)
class Optimizer:
    help: str
    settings: tuple[str, ...]  # dotted settings the update reads (besides the schedule's own)
    law: Law | None
    no_law: str = ""  # why there is no law, where ``law`` is None
    batches: bool = True  # can train K > 1 members on stacked weights

    @property
    def exact_theory(self) -> bool:
        return self.law is not None


_STEP = ("optim.lr", "optim.weight_decay", "optim.schedule", "optim.layer_lrs")
_GD_LAW = Law(
    "G_{k+1} = (1 - eta lambda)^2 G_k - 2 eta (1 - eta lambda) E_k + eta^2 Delta||g_k||^2",
    r"G_{k+1} = (1-\eta\lambda)^2 G_k - 2\eta(1-\eta\lambda)E_k + \eta^2 \Delta\|g_k\|^2",
)
OPTIMIZERS: dict[str, Optimizer] = {
    "gd": Optimizer("full-batch gradient descent", _STEP, _GD_LAW),
    "sgd": Optimizer("mini-batch stochastic gradient descent", (*_STEP, "optim.batch_size"), _GD_LAW),
    "momentum": Optimizer(
        "heavy-ball momentum (PyTorch convention)",
        (*_STEP, "optim.momentum", "optim.batch_size"),
        Law(
            "G_{k+1} = G_k - 2 eta (beta B_k + E_k + lambda G_k) + eta^2 C_{k+1}; "
            "B_{k+1} = beta B_k + E_k + lambda G_k - eta C_{k+1}  (B = Delta<theta, v>, C = Delta||v||^2, B_0 = 0)",
            r"G_{k+1} = G_k - 2\eta(\beta B_k + E_k + \lambda G_k) + \eta^2 C_{k+1},\ "
            r"B_{k+1} = \beta B_k + E_k + \lambda G_k - \eta C_{k+1}",
            ("vv",),
        ),
    ),
    "nesterov": Optimizer(
        "Nesterov momentum (PyTorch convention)",
        (*_STEP, "optim.momentum", "optim.batch_size"),
        Law(
            "G_{k+1} = G_k - 2 eta ((1 + beta)(lambda G_k + E_k) + beta^2 B_k) + eta^2 Delta||u_k||^2; "
            "B_{k+1} = beta B_k + lambda G_k + E_k - eta Delta<u_k, v_{k+1}>  (u_k = d_k + beta v_{k+1})",
            r"G_{k+1} = G_k - 2\eta((1+\beta)(\lambda G_k + E_k) + \beta^2 B_k) + \eta^2\Delta\|u_k\|^2,\ "
            r"B_{k+1} = \beta B_k + \lambda G_k + E_k - \eta\Delta\langle u_k, v_{k+1}\rangle",
            ("uu", "uv"),
        ),
    ),
    "label_noise": Optimizer(
        "full-batch GD on labels with fresh Gaussian noise at every step (label-noise SGD)",
        (*_STEP, "optim.label_noise"),
        Law(
            _GD_LAW.recursion + "  (g_k: the gradient on this step's noisy labels; for the scalar chain f = u w x: "
            "Phi_{k+1} = (1 - eta^2 s_k^2) Phi_k, s_k = mean_i r_i x_i)",
            _GD_LAW.tex,
        ),
    ),
    "sam": Optimizer(
        "sharpness-aware minimisation: the step uses the gradient at theta + rho g / ||g||",
        (*_STEP, "optim.rho"),
        Law(
            "G_{k+1} = (1 - eta lambda)^2 G_k + 2 eta (1 - eta lambda) rho Delta<g^_k, g~_k> + eta^2 Delta||g~_k||^2  "
            "(g~ = grad L(theta + rho g^), g^ = g / ||g||; Euler's identity at the perturbed point: "
            "Delta<theta, g~> = -rho Delta<g^, g~>)",
            r"G_{k+1} = (1-\eta\lambda)^2 G_k + 2\eta(1-\eta\lambda)\rho\,\Delta\langle\hat g_k, \tilde g_k\rangle"
            r" + \eta^2 \Delta\|\tilde g_k\|^2",
            ("tt", "tg"),
        ),
    ),
    "adam": Optimizer(
        "Adam (coordinate-wise: breaks the invariant)",
        (*_STEP, "optim.momentum", "optim.beta2", "optim.eps", "optim.batch_size"),
        None,
        "Adam rescales each coordinate of the gradient: the rescaling symmetry gives no law for its steps",
    ),
    "flow": Optimizer(
        "gradient flow, integrated by an adaptive ODE solver",
        ("optim.lr", "optim.rtol", "optim.layer_lrs"),
        Law("G(t) = G(0)", r"G(t) = G(0)"),
        batches=False,
    ),
}

# --- activations --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Activation:
    help: str
    homogeneous: bool  # phi(c z) = c phi(z) for c > 0: the rescaling symmetry, hence the laws, hold
    no_law: str = ""


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation("max(z, 0)", True),
    "leaky_relu": Activation("max(z, a z) with the negative slope a", True),
    "linear": Activation("the identity (a deep linear network; the matrix invariant holds too)", True),
    "tanh": Activation(
        "tanh(z), the non-homogeneous control", False, "tanh is not homogeneous: no conservation law to predict"
    ),
}

# Reasons on the model side, where neither the optimiser nor the activation decides.
MODEL_NO_LAW = {
    "batch_norm": (
        "batch norm makes each hidden layer's weights scale-invariant, so the layer gaps are not conserved "
        "(the per-neuron law still holds for batch norm's own scale and shift)"
    ),
    "flow_regularized": "gradient flow with the balancing regulariser has no closed-form gap: nothing to predict",
    "sam_regularized": (
        "SAM with the balancing regulariser: Euler's identity fails at the perturbed point, nothing to predict"
    ),
    "layer_lrs_decay": (
        "per-layer step sizes with weight decay shrink each layer by its own factor (1 - eta_h lambda): the "
        "eta-weighted gap has no closed recursion"
    ),
}
NO_LAW = {  # every reason by key, as ``balance.engine.laws.NO_LAW`` has always offered them
    "tanh": ACTIVATIONS["tanh"].no_law,
    "adam": OPTIMIZERS["adam"].no_law,
    **MODEL_NO_LAW,
}


def why_no_law(config: Any) -> str:
    """'' where the layer-gap law predicts the drift of every pair of ``config`` (a RunConfig); else why not."""
    m, o = config.model, config.optim
    activation = "linear" if m.name in ("mf", "linear") else m.activation
    if not ACTIVATIONS[activation].homogeneous:
        return ACTIVATIONS[activation].no_law
    if m.batch_norm:
        return MODEL_NO_LAW["batch_norm"]
    if OPTIMIZERS[o.name].law is None:
        return OPTIMIZERS[o.name].no_law
    if o.name == "flow" and m.regularizer:
        return MODEL_NO_LAW["flow_regularized"]
    if o.name == "sam" and m.regularizer:
        return MODEL_NO_LAW["sam_regularized"]
    if any(m != 1 for m in o.layer_lrs) and o.weight_decay:
        return MODEL_NO_LAW["layer_lrs_decay"]
    return ""


def reads(setting: str) -> Callable[[Any], bool]:
    """``applies`` of an optimiser setting: whether the chosen optimiser (or schedule) reads ``setting``."""

    def applies(flat: Any) -> bool:
        own = OPTIMIZERS[flat["optim.name"]].settings
        schedule = SCHEDULES[flat["optim.schedule"]].settings if "optim.schedule" in own else ()
        return setting in own or setting in schedule

    return applies


# --- schedules ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """eta_k = eta_0 * factor(cfg, k); called as ``SCHEDULES[name](optim_config, k)``."""

    factor: Callable[[Any, int], float]
    help: str
    formula: str
    settings: tuple[str, ...] = ()

    def __call__(self, cfg: Any, k: int) -> float:
        return self.factor(cfg, k)


SCHEDULES: dict[str, Schedule] = {
    "constant": Schedule(lambda cfg, k: 1.0, "a constant step size", "eta_k = eta_0"),
    "theorem": Schedule(
        lambda cfg, k: (k + 1) ** -(0.5 + cfg.decay_power),
        "square-summable but not summable (the paper's Theorem 3.1)",
        "eta_k = eta_0 (k + 1)^-(1/2 + delta)",
        ("optim.decay_power",),
    ),
    "step": Schedule(
        lambda cfg, k: cfg.decay_factor ** (k // cfg.decay_every),
        "multiplied by a factor every so many steps",
        "eta_k = eta_0 f^floor(k / n)",
        ("optim.decay_every", "optim.decay_factor"),
    ),
}
