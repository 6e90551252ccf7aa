"""The metric half of the registry of laws and metrics (``balance.engine.laws`` re-exports it), torch-free: every
logged quantity with its scope, kind, formula, labels (TeX and plain text), unit and sign convention, and the only code
that makes and reads column names (``column``, ``columns``, ``parse``, ``of_metric``) and turns them into what a
reader sees (``label``, ``plain``, ``describe``, ``expand`` for captions). The torch side is
``balance.engine.metrics.COMPUTE``, keyed by the same names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# --- metrics and their columns ------------------------------------------------------------------------------------

SCOPES = ("scalar", "layer", "pair", "neuron")
KINDS = ("coordinate", "measured", "predicted")
SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
NO_PREDICTION = "no finite-step prediction for this optimiser"  # a predicted column that is all NaN, reason unknown


@dataclass(frozen=True)
class Metric:
    """One logged quantity. Layer metrics have one column per weight layer h = 1 .. L (input side first; for mf
    1 = V, 2 = U), pair metrics one per consecutive pair (h, h+1), h = 1 .. L-1; ``where`` narrows that to the layers
    with a bias or the pairs whose hidden units are linear (the matrix invariant). Neuron metrics are the columns of
    the per-unit table.

    Labels: ``tex`` (captions, which render TeX) and ``text`` (plain Unicode for charts, which do not); in both
    ``{h}`` stands for the index and ``{n}`` for h + 1. ``definition`` (TeX) defines a label that is only a symbol
    (G_h = ...). ``title``: a few words ("gap drift"). ``predicts``: for a predicted metric, the measured one it
    predicts. ``signed``: it can be negative (a log axis would hide values). ``chart``: Explore draws it in a chart of
    its own where no built-in chart does (a new entry is drawn by default)."""

    scope: str
    kind: str
    formula: str
    tex: str
    unit: str
    sign: str = ""
    where: str = "all"  # all | bias | linear
    text: str = ""
    title: str = ""
    definition: str = ""
    predicts: str = ""
    signed: bool = False
    chart: bool = True

    def __post_init__(self) -> None:
        if self.scope not in SCOPES or self.kind not in KINDS or self.where not in ("all", "bias", "linear"):
            raise ValueError(f"bad metric entry {self}")

    def label(self, index: int | None = None) -> str:
        """The TeX label of this metric's column for ``index`` (None: the generic label, W_{h}, W_{h+1})."""
        return _tex(self.tex, index)

    def defined(self, index: int | None = None) -> str:
        """The TeX definition (``G_{h} = ...``), or the label where there is none."""
        return _tex(self.definition, index) if self.definition else self.label(index)

    def plain(self, index: int | None = None) -> str:
        """The plain-text label for a chart: '||W₂||²' for index 2, '||W_h||²' for None (the TeX source if the
        entry has no ``text``)."""
        if not self.text:
            return self.label(index)
        if index is None:
            return self.text.replace("{h}", "_h").replace("{n}", "_{h+1}")
        return self.text.replace("{h}", str(index).translate(SUBSCRIPTS)).replace(
            "{n}", str(index + 1).translate(SUBSCRIPTS)
        )

    def place(self, index: int | None, names: Sequence[str] | None = None) -> str:
        """What a column of this metric is about, for a legend: 'layer 2', 'layers 1-2' (or with ``names``, one per
        layer: 'U', 'V-U'); for a scalar, its title."""
        if index is None or self.scope not in ("layer", "pair"):
            return self.title
        if self.scope == "layer":
            return f"layer {index}" if names is None else names[index - 1]
        return f"layers {index}-{index + 1}" if names is None else f"{names[index - 1]}-{names[index]}"


def _tex(tex: str, index: int | None) -> str:
    h, n = ("h", "h+1") if index is None else (str(index), str(index + 1))
    return tex.replace("{h}", f"{{{h}}}").replace("{n}", f"{{{n}}}")  # W_{h} -> W_{12}


_GAP_SIGN = "positive when the outer layer W_{h+1} carries more squared weight than W_h and b_h"
_B_SIGN = "B_i: incoming minus outgoing"
METRICS: dict[str, Metric] = {
    "step": Metric("scalar", "coordinate", "k, the number of steps taken", "k", "steps", text="k", title="step"),
    "t": Metric(
        "scalar", "coordinate", "t_k = sum_{j<k} eta_j (gradient-flow time)", "t", "time", text="t", title="time"
    ),
    "lr": Metric(
        "scalar", "coordinate", "eta_k, the step size of step k", r"\eta_k", "step size", text="η_k", title="step size"
    ),
    "loss": Metric(
        "scalar", "measured", "L(theta_k) on the whole training set", r"L(\theta_k)", "loss", text="L(θ_k)",
        title="loss",
    ),
    "sqnorm": Metric(
        "layer", "measured", "||W_h||_F^2", r"\|W_{h}\|_F^2", "weight²", text="||W{h}||²", title="squared norm"
    ),
    "bias_sqnorm": Metric(
        "layer", "measured", "||b_h||^2", r"\|b_{h}\|^2", "weight²", where="bias", text="||b{h}||²",
        title="bias squared norm", chart=False,
    ),
    "grad_norm": Metric(
        "layer", "measured", "||dL/dW_h||_F of the step's gradient", r"\|\nabla_{W_{h}} L\|_F", "gradient",
        text="||∂L/∂W{h}||", title="gradient norm",
    ),
    "gap": Metric(
        "pair", "measured",
        "G_h = ||W_{h+1}||^2 - ||W_h||^2 - ||b_h||^2; with per-layer step sizes eta_h = eta m_h the eta-weighted "
        "||W_{h+1}||^2/m_{h+1} - (||W_h||^2 + ||b_h||^2)/m_h", r"G_{h}", "weight²", _GAP_SIGN,
        text="G{h}", title="gap", definition=r"G_{h} = \|W_{n}\|_F^2 - \|W_{h}\|_F^2 - \|b_{h}\|^2", signed=True,
        chart=False,
    ),
    "gap_drift": Metric(
        "pair", "measured", "G_h(k) - G_h(0)", r"G_{h}(k) - G_{h}(0)", "weight²", "positive when the gap grew",
        text="G{h}(k) − G{h}(0)", title="gap drift", signed=True,
    ),
    "pred_gap_drift": Metric(
        "pair", "predicted", "G_h(k) - G_h(0) by the optimiser's exact law (NaN where no law applies)",
        r"\hat G_{h}(k) - G_{h}(0)", "weight²", "as gap_drift", text="Ĝ{h}(k) − G{h}(0)",
        title="predicted gap drift", predicts="gap_drift", signed=True,
    ),
    "ratio": Metric(
        "pair", "measured", "||W_{h+1}||_F / ||W_h||_F", r"\|W_{n}\|_F / \|W_{h}\|_F", "ratio", "1 = balanced",
        text="||W{n}|| / ||W{h}||", title="layer ratio",
    ),
    "neuron_drift_max": Metric(
        "scalar", "measured", "max_i |B_i(k) - B_i(0)| over hidden units, B_i = ||w_in,i||^2 - ||w_out,i||^2",
        r"\max_i |B_i(k) - B_i(0)|", "weight²", _B_SIGN, text="max_i |B_i(k) − B_i(0)|",
        title="largest neuron drift", chart=False,
    ),
    "neuron_drift_mean": Metric(
        "scalar", "measured", "mean_i |B_i(k) - B_i(0)| over hidden units", r"\mathrm{mean}_i |B_i(k) - B_i(0)|",
        "weight²", _B_SIGN, text="mean_i |B_i(k) − B_i(0)|", title="mean neuron drift", chart=False,
    ),
    "pred_neuron_drift_max": Metric(
        "scalar", "predicted", "max_i |B^_i(k) - B_i(0)| by the per-unit law (GD, SGD, flow; NaN otherwise)",
        r"\max_i |\hat B_i(k) - B_i(0)|", "weight²", _B_SIGN, text="max_i |B̂_i(k) − B_i(0)|",
        title="predicted largest neuron drift", predicts="neuron_drift_max", chart=False,
    ),
    "pred_neuron_drift_mean": Metric(
        "scalar", "predicted", "mean_i |B^_i(k) - B_i(0)| by the per-unit law",
        r"\mathrm{mean}_i |\hat B_i(k) - B_i(0)|", "weight²", _B_SIGN, text="mean_i |B̂_i(k) − B_i(0)|",
        title="predicted mean neuron drift",
        predicts="neuron_drift_mean", chart=False,
    ),
    "identity_residual": Metric(
        "scalar", "measured",
        "max over hidden units i of every layer of |B_i(k) - B^_i(k | k-1)|: the identity's residual over one step",
        r"\max_{h,i} |B_i(k) - \hat B_i(k \mid k-1)|", "weight²", "0 up to round-off where the law is exact",
        text="max |B_i(k) − B̂_i(k | k−1)|", title="identity residual", chart=False,
    ),
    "matrix_inv": Metric(
        "pair", "measured", "||D_h||_F, D_h = W_{h+1}^T W_{h+1} - [W_h b_h][W_h b_h]^T (linear hidden units)",
        r"\|D_{h}\|_F", "weight²", "tr D_h = G_h", "linear", text="||D{h}||_F", title="matrix invariant",
        definition=r"D_{h} = W_{n}^\top W_{n} - [W_{h}\ b_{h}][W_{h}\ b_{h}]^\top",
    ),
    "matrix_drift": Metric(
        "pair", "measured", "||D_h(k) - D_h(0)||_F", r"\|D_{h}(k) - D_{h}(0)\|_F", "weight²", "", "linear",
        text="||D{h}(k) − D{h}(0)||_F", title="matrix drift",
    ),
    "matrix_residual": Metric(
        "pair", "measured", "||D_h(k) - D^_h(k | k-1)||_F: the matrix identity's residual over one step (linear units)",
        r"\|D_{h}(k) - \hat D_{h}(k \mid k-1)\|_F", "weight²", "", "linear",
        text="||D{h}(k) − D̂{h}(k | k−1)||_F", title="matrix identity residual", chart=False,
    ),
    "sharpness": Metric(
        "scalar", "measured",
        "lambda_max of the full-batch loss's Hessian (Lanczos on Hessian-vector products, warm-started; every "
        "sharpness_every-th step, NaN otherwise)", r"\lambda_{\max}(\nabla^2 L)", "curvature", text="λ_max(∇²L)",
        title="sharpness", chart=False,
    ),
    "stability_bound": Metric(
        "scalar", "predicted", "2 / eta_k: a GD minimum is linearly stable only if its sharpness is at most this",
        r"2 / \eta_k", "curvature", text="2/η_k", title="stability bound", predicts="sharpness", chart=False,
    ),
    "in_sqnorm": Metric(
        "neuron", "measured", "||w_in,i||^2: row i of W_h and b_h[i] (or BatchNorm's gamma_i, beta_i)",
        r"\|w_{\mathrm{in},i}\|^2", "weight²", text="||w_in||² (+ b²)", title="incoming",
    ),
    "out_sqnorm": Metric(
        "neuron", "measured", "||w_out,i||^2: column i of W_{h+1}", r"\|w_{\mathrm{out},i}\|^2", "weight²",
        text="||w_out||²", title="outgoing",
    ),
}  # fmt: skip
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


def column(metric: str, index: int | str | None = None) -> str:
    """The column of ``metric`` at ``index`` (None for scalars): ``column('gap_drift', 2) == 'gap_drift_2'`` (a text
    index names them all: ``column('gap_drift', 'h')``)."""
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


def of_metric(names: Iterable[object], metric: str) -> list[int]:
    """The indices h of the columns of ``metric`` among ``names`` (e.g. a frame's columns), sorted."""
    out = []
    for name in names:
        try:
            m, index = parse(str(name))
        except ValueError:
            continue
        if m == metric and index is not None:
            out.append(index)
    return sorted(out)


def plain(name: str) -> str:
    """The plain-text label of a column for a chart ('G₁(k) − G₁(0)'); an unregistered column's own name."""
    try:
        metric, index = parse(name)
    except ValueError:
        return name
    return METRICS[metric].plain(index)


def describe(name: str) -> str:
    """A column in words: 'gap drift, layers 1-2', 'loss'; an unregistered column's own name."""
    try:
        metric, index = parse(name)
    except ValueError:
        return name
    m = METRICS[metric]
    title = m.title or metric.replace("_", " ")
    return title if index is None else f"{title}, {m.place(index)}"


def prediction_of(metric: str) -> str | None:
    """The registered metric that predicts ``metric`` (``pred_gap_drift`` for ``gap_drift``), or None."""
    return next((name for name, m in METRICS.items() if m.predicts == metric), None)


_REFERENCE = re.compile(r"\{\{(\w+)(=?)\}\}")


def expand(template: str) -> str:
    """A caption with the registry's TeX in place of its references: ``{{sqnorm}}`` becomes the generic label
    ``$\\|W_{h}\\|_F^2$``, ``{{gap=}}`` the definition ``$G_{h} = ...$``. An unknown metric raises KeyError, so a
    typo in a caption file fails when it is read."""

    def one(match: re.Match) -> str:
        metric = METRICS[match.group(1)]
        return f"${metric.defined() if match.group(2) else metric.label()}$"

    return _REFERENCE.sub(one, template)


def pattern(metric: str) -> str:
    """The columns of ``metric`` as one name: 'gap_drift_h' (h its layer or pair), 'loss' (a scalar or a neuron-table
    column)."""
    return metric if METRICS[metric].scope in ("scalar", "neuron") else column(metric, "h")
