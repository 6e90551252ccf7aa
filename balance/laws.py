"""Where the layer-gap law applies, decided from the config alone (no torch): the charts, the CSV and the captions
draw a prediction only where this says there is one, and say why not where there is none.

The law (formula sheet, section 3): for a pair of consecutive layers of a network that is invariant under
rescaling W_h -> c W_h, b_h -> c b_h, W_{h+1} -> W_{h+1} / c, every step of GD / SGD / heavy ball / Nesterov
(with or without weight decay) changes the gap G_h = ||W_{h+1}||^2 - ||W_h||^2 - ||b_h||^2 by an exactly known
amount, and gradient flow keeps it constant. Without the symmetry, or with an update that breaks it at first order,
nothing is predicted.
"""

from __future__ import annotations

from balance.config import RunConfig

NO_LAW = {
    "tanh": "tanh is not homogeneous: no conservation law to predict",
    "batch_norm": (
        "batch norm makes each hidden layer's weights scale-invariant, so the layer gaps are not conserved "
        "(the per-neuron law still holds for batch norm's own scale and shift)"
    ),
    "adam": "Adam rescales each coordinate of the gradient: the rescaling symmetry gives no law for its steps",
    "flow_regularized": "gradient flow with the balancing regulariser has no closed-form gap: nothing to predict",
}


def why_no_law(config: RunConfig) -> str:
    """'' where the layer-gap law predicts the drift of every pair; else one sentence saying why it does not."""
    m, o = config.model, config.optim
    if m.name in ("mlp", "cnn") and m.activation == "tanh":
        return NO_LAW["tanh"]
    if m.batch_norm:
        return NO_LAW["batch_norm"]
    if o.name == "adam":
        return NO_LAW["adam"]
    if o.name == "flow" and m.regularizer:
        return NO_LAW["flow_regularized"]
    return ""
