"""The registry's entries for watching any model (``balance.watch``), torch-free: the kinds of continuous symmetry the
audit finds, what each conserves, what breaks one, and what each ``torch.optim`` optimiser does to the laws.

Notation: a law groups parameter blocks X_t (units as rows: row i of W_h and b_h[i] on the incoming side, column i
of W_{h+1} on the outgoing side, the rows of one head of W_Q, ...) with coefficients c_t (+1 incoming, -k outgoing)
and conserves, under gradient flow, the diagonal (per-unit symmetry) or the whole (matrix symmetry) of

    Q = sum_t c_t X_t X_t^T .

One plain GD step theta' = theta - eta g changes it by exactly eta^2 sum_t c_t G_t G_t^T (G_t the same block of the
gradient): the first-order term vanishes by the symmetry (Euler's identity). With per-block step sizes eta r_t the
conserved quantity is sum_t (c_t / r_t) X_t X_t^T, changed by eta^2 sum_t c_t r_t G_t G_t^T (formula sheet 3.4).

For a watched run, pair index j of the metric columns (``gap_j``, ``gap_drift_j``, ``pred_gap_drift_j``,
``matrix_inv_j``, ``matrix_drift_j``) is law j, and ``gap_j`` is the trace of its Q as written here (incoming side
minus outgoing side, as the issue and the audit write each law); layer index h (``sqnorm_h``, ``grad_norm_h``) is
the h-th weight block the laws involve.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- kinds of symmetry ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Symmetry:
    """One kind of continuous symmetry: its group action, the quantity it conserves, the exact one-step change."""

    help: str
    action: str  # how the group acts on the parameters
    quantity: str  # what gradient flow conserves (plain text)
    tex: str
    step: str  # the exact change in one plain GD step
    matrix: bool  # the whole matrix Q is conserved (a GL(n) symmetry), not only its diagonal
    per: str  # unit | head | layer


SYMMETRIES: dict[str, Symmetry] = {
    "rescale": Symmetry(
        "per-neuron / per-channel rescaling through a positively homogeneous path (ReLU, leaky ReLU, identity, "
        "max or average pooling, flatten, dropout)",
        "w_in,i -> c_i w_in,i (bias included), w_out,i -> w_out,i / c_i",
        "||w_in,i||^2 - ||w_out,i||^2 for every unit i",
        r"\|w_{\mathrm{in},i}\|^2 - \|w_{\mathrm{out},i}\|^2",
        "eta^2 (||g_in,i||^2 - ||g_out,i||^2)",
        False,
        "unit",
    ),
    "rescale_power": Symmetry(
        "per-unit rescaling through a path homogeneous of degree k (ReLU^k units)",
        "w_in,i -> c_i w_in,i, w_out,i -> c_i^-k w_out,i",
        "||w_in,i||^2 - k ||w_out,i||^2 for every unit i",
        r"\|w_{\mathrm{in},i}\|^2 - k\|w_{\mathrm{out},i}\|^2",
        "eta^2 (||g_in,i||^2 - k ||g_out,i||^2)",
        False,
        "unit",
    ),
    "linear_pair": Symmetry(
        "any invertible mixing of the units between two layers joined by nothing but linear maps (a LoRA pair A, B "
        "is one)",
        "[W_in b_in] -> M [W_in b_in], W_out -> W_out M^-1",
        "A A^T - B^T B with A = [W_in b_in], B = W_out (the matrix invariant)",
        r"A A^\top - B^\top B",
        "eta^2 (G_A G_A^T - G_B^T G_B)",
        True,
        "layer",
    ),
    "batchnorm_scale": Symmetry(
        "scale symmetry of a layer followed by BatchNorm (batch statistics): each channel's incoming weights",
        "w_in,i -> c_i w_in,i",
        "||w_in,i||^2 (its norm only grows under GD)",
        r"\|w_{\mathrm{in},i}\|^2",
        "eta^2 ||g_in,i||^2 >= 0",
        False,
        "unit",
    ),
    "layernorm_scale": Symmetry(
        "scale symmetry of a layer followed by LayerNorm or RMSNorm: the whole layer at once",
        "[W b] -> c [W b]",
        "||W||_F^2 + ||b||^2 (only grows under GD)",
        r"\|W\|_F^2 + \|b\|^2",
        "eta^2 (||G_W||^2 + ||g_b||^2) >= 0",
        False,
        "layer",
    ),
    "attention_qk": Symmetry(
        "the query-key symmetry of attention, per head: scores depend on W_Q and W_K through W_Q^T W_K only",
        "W_Q -> M W_Q, W_K -> M^-T W_K (rows of one head, biases included)",
        "W_Q^T W_Q - W_K^T W_K per head (in PyTorch's [out, in] layout: W_Q W_Q^T - W_K W_K^T)",
        r"W_Q^\top W_Q - W_K^\top W_K",
        "eta^2 (G_Q G_Q^T - G_K G_K^T)",
        True,
        "head",
    ),
    "attention_vo": Symmetry(
        "the value-output symmetry of attention, per head",
        "W_V -> M W_V (rows of one head, bias included), W_O -> W_O M^-1 (its columns)",
        "W_V^T W_V - W_O W_O^T per head (in PyTorch's layout: W_V W_V^T - W_O^T W_O)",
        r"W_V^\top W_V - W_O W_O^\top",
        "eta^2 (G_V G_V^T - G_O^T G_O)",
        True,
        "head",
    ),
}

# --- what breaks a symmetry -------------------------------------------------------------------------------------

_NOT_HOMOGENEOUS = "is not positively homogeneous (phi(c z) != c phi(z)): no rescaling symmetry through it"
NOT_HOMOGENEOUS: dict[str, str] = {
    name: f"{name} {_NOT_HOMOGENEOUS}"
    for name in (
        "tanh", "gelu", "sigmoid", "silu", "softplus", "elu", "selu", "celu", "mish", "softmax", "log_softmax",
        "hardtanh", "relu6", "hardswish", "hardsigmoid", "softsign", "tanhshrink", "logsigmoid", "glu", "exp", "log",
        "sin", "cos",
    )
}  # fmt: skip
BREAKS: dict[str, str] = {
    "residual": "its output is added to another branch (a residual connection or an adapter): rescaling one "
    "side alone changes the sum",
    "constant": "a constant (not a parameter) is added or subtracted on the way: an offset is not homogeneous",
    "product": "it is multiplied by another activation (attention scores, a gate): the audit follows only "
    "products with constants",
    "output": "it reaches the model's output directly: no later parameters can undo a rescaling",
    "tied": "weight tying: the parameter is used in more than one place, so rescaling one use changes the others",
    "eval_norm": "BatchNorm in eval mode normalises with its running statistics: affine, not scale-invariant "
    "(audit the model in train mode)",
    "unknown": "the audit does not know how this operation treats a rescaled input",
    "mixed_inputs": "attention whose query, key and value come from different tensors: the audit follows only "
    "self-attention inputs",
    "grouped": "a grouped convolution mixes channels in blocks the audit does not follow",
    "frozen": "a parameter of the law is not trained (requires_grad is False or it is in no param group): "
    "the symmetry moves it, gradient flow does not",
}

# --- torch.optim optimisers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TorchOptimizer:
    """How the watch predicts the laws under a ``torch.optim`` class: the registry optimiser whose exact law applies
    (``balance.engine.laws.OPTIMIZERS``), or None and the reason it is measured only."""

    law: str | None
    no_law: str = ""


_PRECONDITIONED = (
    "rescales each coordinate of the gradient by its own history: the symmetry gives no exact law for its steps"
)
TORCH_OPTIMIZERS: dict[str, TorchOptimizer] = {
    "SGD": TorchOptimizer("sgd"),  # with momentum / nesterov read from each param group
    "Adam": TorchOptimizer(None, f"Adam {_PRECONDITIONED}"),
    "AdamW": TorchOptimizer(None, f"AdamW {_PRECONDITIONED} (and decays the weights decoupled from it)"),
    "Adamax": TorchOptimizer(None, f"Adamax {_PRECONDITIONED}"),
    "NAdam": TorchOptimizer(None, f"NAdam {_PRECONDITIONED}"),
    "RAdam": TorchOptimizer(None, f"RAdam {_PRECONDITIONED}"),
    "RMSprop": TorchOptimizer(None, f"RMSprop {_PRECONDITIONED}"),
    "Adagrad": TorchOptimizer(None, f"Adagrad {_PRECONDITIONED}"),
    "Adadelta": TorchOptimizer(None, f"Adadelta {_PRECONDITIONED}"),
    "Adafactor": TorchOptimizer(None, f"Adafactor {_PRECONDITIONED}"),
    "Rprop": TorchOptimizer(None, "Rprop steps by the sign of each coordinate: no exact law"),
    "ASGD": TorchOptimizer(None, "ASGD decays its step with eta_t and averages: the watch does not model it"),
    "LBFGS": TorchOptimizer(None, "L-BFGS preconditions with a curvature estimate and searches a line: no exact law"),
}
UNKNOWN_OPTIMIZER = "{name} is not a torch.optim optimiser the watch models: measured only"
SGD_UNSUPPORTED = {
    "dampening": "SGD with dampening != 0: the registry's momentum law assumes none; measured only",
    "maximize": "SGD with maximize=True ascends: measured only",
    "mixed": "the law's parameters sit in param groups with different momentum, weight decay or Nesterov settings: "
    "measured only",
    "decay_ratio": "weight decay with different step sizes within one law has no closed recursion: measured only",
    "ratio_changed": "the ratio of the law's step sizes changed while it trained: the eta-weighted quantity is "
    "defined for one ratio; measured only from here",
}
