"""The metric half of the registry of laws and metrics (``balance.engine.laws`` re-exports it), torch-free: every
logged quantity with its scope, kind, formula, TeX label, unit and sign convention, and the only code that makes and
reads column names (``column``, ``columns``, ``parse``). The torch side is ``balance.engine.metrics.COMPUTE``, keyed
by the same names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
