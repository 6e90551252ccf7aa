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
  formula, TeX label, unit and sign convention; the torch side is ``balance.engine.metrics.COMPUTE``.
- Column names (``gap_drift_2``) are made by ``column`` / ``columns`` and read back by ``parse``, nowhere else.

Importing this module imports neither torch nor numpy (tested in a fresh interpreter).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# --- optimisers and their laws ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Law:
    """The exact per-step recursion of the layer gap G_h = ||W_{h+1}||^2 - ||W_h||^2 - ||b_h||^2.

    Delta<x, y> = <x_{h+1}, y_{h+1}> - <x_h, y_h> (biases on the h side); g_k is the gradient the step used (the
    mini-batch's for SGD), E_k = Delta<theta_k, g_k> (0 for a rescaling-invariant objective; MF's balancing
    regulariser makes it nonzero and is carried exactly).
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


_STEP = ("optim.lr", "optim.weight_decay", "optim.schedule")
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
    "adam": Optimizer(
        "Adam (coordinate-wise: breaks the invariant)",
        (*_STEP, "optim.momentum", "optim.beta2", "optim.eps", "optim.batch_size"),
        None,
        "Adam rescales each coordinate of the gradient: the rescaling symmetry gives no law for its steps",
    ),
    "flow": Optimizer(
        "gradient flow, integrated by an adaptive ODE solver",
        ("optim.lr", "optim.rtol"),
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
}
NO_LAW = {  # every reason by key, as ``balance.laws.NO_LAW`` has always offered them
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
    return ""


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

# --- metrics and their columns ------------------------------------------------------------------------------------

SCOPES = ("scalar", "layer", "pair", "neuron")
KINDS = ("coordinate", "measured", "predicted")


@dataclass(frozen=True)
class Metric:
    """One logged quantity. Layer metrics have one column per weight layer h = 1 .. L (input side first; for mf
    1 = V, 2 = U), pair metrics one per consecutive pair (h, h+1), h = 1 .. L-1; ``where`` narrows that to the layers
    with a bias or the pairs whose hidden units are linear (the matrix invariant). Neuron metrics are the columns of
    the per-unit table. In ``tex``, ``{h}`` stands for the index and ``{n}`` for h + 1."""

    scope: str
    kind: str
    formula: str
    tex: str
    unit: str
    sign: str = ""
    where: str = "all"  # all | bias | linear

    def __post_init__(self) -> None:
        if self.scope not in SCOPES or self.kind not in KINDS or self.where not in ("all", "bias", "linear"):
            raise ValueError(f"bad metric entry {self}")

    def label(self, index: int | None = None) -> str:
        """The TeX label of this metric's column for ``index``."""
        if index is None:
            return self.tex
        return self.tex.replace("{h}", f"{{{index}}}").replace("{n}", f"{{{index + 1}}}")  # W_{h} -> W_{12}


_GAP_SIGN = "positive when the outer layer W_{h+1} carries more squared weight than W_h and b_h"
METRICS: dict[str, Metric] = {
    "step": Metric("scalar", "coordinate", "k, the number of steps taken", "k", "steps"),
    "t": Metric("scalar", "coordinate", "t_k = sum_{j<k} eta_j (gradient-flow time)", "t", "time"),
    "lr": Metric("scalar", "coordinate", "eta_k, the step size of step k", r"\eta_k", "step size"),
    "loss": Metric("scalar", "measured", "L(theta_k) on the whole training set", r"L(\theta_k)", "loss"),
    "sqnorm": Metric("layer", "measured", "||W_h||_F^2", r"\|W_{h}\|_F^2", "weight²"),
    "bias_sqnorm": Metric("layer", "measured", "||b_h||^2", r"\|b_{h}\|^2", "weight²", where="bias"),
    "grad_norm": Metric(
        "layer", "measured", "||dL/dW_h||_F of the step's gradient", r"\|\nabla_{W_{h}} L\|_F", "gradient"
    ),
    "gap": Metric("pair", "measured", "G_h = ||W_{h+1}||^2 - ||W_h||^2 - ||b_h||^2", r"G_{h}", "weight²", _GAP_SIGN),
    "gap_drift": Metric(
        "pair", "measured", "G_h(k) - G_h(0)", r"G_{h}(k) - G_{h}(0)", "weight²", "positive when the gap grew"
    ),
    "pred_gap_drift": Metric(
        "pair",
        "predicted",
        "G_h(k) - G_h(0) by the optimiser's exact law (NaN where no law applies)",
        r"\hat G_{h}(k) - G_{h}(0)",
        "weight²",
        "as gap_drift",
    ),
    "ratio": Metric(
        "pair", "measured", "||W_{h+1}||_F / ||W_h||_F", r"\|W_{n}\|_F / \|W_{h}\|_F", "ratio", "1 = balanced"
    ),
    "neuron_drift_max": Metric(
        "scalar",
        "measured",
        "max_i |B_i(k) - B_i(0)| over hidden units, B_i = ||w_in,i||^2 - ||w_out,i||^2",
        r"\max_i |B_i(k) - B_i(0)|",
        "weight²",
        "B_i: incoming minus outgoing",
    ),
    "neuron_drift_mean": Metric(
        "scalar",
        "measured",
        "mean_i |B_i(k) - B_i(0)| over hidden units",
        r"\mathrm{mean}_i |B_i(k) - B_i(0)|",
        "weight²",
        "B_i: incoming minus outgoing",
    ),
    "matrix_inv": Metric(
        "pair",
        "measured",
        "||D_h||_F, D_h = W_{h+1}^T W_{h+1} - [W_h b_h][W_h b_h]^T (linear hidden units)",
        r"\|D_{h}\|_F",
        "weight²",
        "tr D_h = G_h",
        "linear",
    ),
    "matrix_drift": Metric(
        "pair", "measured", "||D_h(k) - D_h(0)||_F", r"\|D_{h}(k) - D_{h}(0)\|_F", "weight²", "", "linear"
    ),
    "in_sqnorm": Metric(
        "neuron",
        "measured",
        "||w_in,i||^2: row i of W_h and b_h[i] (or BatchNorm's gamma_i, beta_i)",
        r"\|w_{\mathrm{in},i}\|^2",
        "weight²",
    ),
    "out_sqnorm": Metric(
        "neuron", "measured", "||w_out,i||^2: column i of W_{h+1}", r"\|w_{\mathrm{out},i}\|^2", "weight²"
    ),
}
NEURON_INDEX = ("layer", "neuron")  # the neuron table's index columns: layer h (1-based) and unit i (0-based)


@dataclass(frozen=True)
class Layout:
    """What fixes a run's columns: L weight layers, the (1-based) layers with a bias, the pairs h with linear hidden
    units (identity activation, no BatchNorm)."""

    layers: int
    biases: tuple[int, ...] = ()
    linear: tuple[int, ...] = ()

    def indices(self, metric: Metric) -> list[int | None]:
        if metric.scope == "scalar":
            return [None]
        if metric.scope == "neuron":
            return []
        if metric.where == "bias":
            return list(self.biases)
        if metric.where == "linear":
            return list(self.linear)
        return list(range(1, self.layers + (metric.scope == "layer")))


def column(metric: str, index: int | None = None) -> str:
    """The column of ``metric`` at ``index`` (None for scalars): ``column('gap_drift', 2) == 'gap_drift_2'``."""
    return metric if index is None else f"{metric}_{index}"


def columns(layout: Layout, metrics: Mapping[str, Metric] | None = None) -> list[str]:
    """Every row column of a run with ``layout``, in registry order (metric by metric, index by index)."""
    metrics = METRICS if metrics is None else metrics
    return [column(name, i) for name, m in metrics.items() for i in layout.indices(m)]


def parse(name: str) -> tuple[str, int | None]:
    """(metric, index) of a column: ``parse('gap_drift_2') == ('gap_drift', 2)``, ``parse('loss') == ('loss', None)``.

    Raises ValueError for a column no registered metric makes."""
    entry = METRICS.get(name)
    if entry is not None and entry.scope == "scalar":
        return name, None
    metric, _, index = name.rpartition("_")
    entry = METRICS.get(metric)
    if entry is not None and entry.scope in ("layer", "pair") and index.isdigit() and not index.startswith("0"):
        return metric, int(index)
    raise ValueError(f"{name!r} is not a column of any registered metric")


def label(name: str) -> str:
    """The TeX label of a column."""
    metric, index = parse(name)
    return METRICS[metric].label(index)


def of_metric(names: list[str], metric: str) -> list[int]:
    """The indices h of the columns of ``metric`` among ``names`` (e.g. a frame's columns), sorted."""
    out = []
    for name in names:
        try:
            m, index = parse(name)
        except ValueError:
            continue
        if m == metric and index is not None:
            out.append(index)
    return sorted(out)
