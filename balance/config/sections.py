"""The sections of the frozen config: what to fit (``DataConfig``), the network and its initialisation
(``ModelConfig``) and how to step (``OptimConfig``). ``balance.config.settings`` assembles them into ``RunConfig``."""

from __future__ import annotations

from dataclasses import dataclass

from balance.config.fields import (
    ACTIVATIONS,
    BIAS_INITS,
    INITS,
    LOSSES,
    POOLINGS,
    _data,
    _datasets,
    _model,
    _models,
    _not_data,
    _not_model,
    _optimizers,
    _schedules,
    _spec,
    _Validated,
)
from balance.engine import laws


@dataclass(frozen=True)
class DataConfig(_Validated):
    """What to fit. ``lowrank`` is the paper's matrix M* = A diag(s) B^T; the rest are sample sets."""

    _section = "data"
    name: str = _spec("lowrank", "dataset", choices=_datasets, cli="--dataset")
    d1: int = _spec(100, "rows of the target matrix M (lowrank)", min=1, max=2000, applies=_data("lowrank"))
    d2: int = _spec(25, "columns of the target matrix M (lowrank)", min=1, max=2000, applies=_data("lowrank"))
    rank: int = _spec(5, "rank r of the target matrix (lowrank)", min=1, max=500, applies=_data("lowrank"))
    singular_values: tuple[float, ...] = _spec(
        (), "singular values of M, largest first (default r, r-1, ..., 1)", min=0.0, max=1e6, applies=_data("lowrank")
    )
    samples: int = _spec(
        256, "number of samples (sample sets)", min=4, max=100_000, applies=_not_data("lowrank", "csv")
    )
    input_dim: int = _spec(10, "input dimension (teacher)", min=1, max=4096, applies=_data("teacher"))
    output_dim: int = _spec(1, "output dimension (teacher)", min=1, max=256, applies=_data("teacher"))
    teacher_width: int = _spec(
        16, "hidden width of the teacher network (teacher)", min=1, max=1024, applies=_data("teacher")
    )
    noise: float = _spec(
        0.1, "label noise (teacher) or point jitter (2-D sets)", min=0.0, max=10.0, applies=_not_data("lowrank", "csv")
    )
    image_size: int = _spec(8, "side of the generated square images (images)", min=4, max=32, applies=_data("images"))
    channels: int = _spec(
        1, "colour channels of the generated images: 1 (grey) or 3 (RGB)", min=1, max=3, applies=_data("images")
    )
    csv_path: str = _spec(
        "", "path of a CSV file: numeric features and a target column (csv)", applies=_data("csv"), link=False
    )
    target: str = _spec("", "target column of the CSV (default: the last)", applies=_data("csv"))
    loss: str = _spec(
        "auto",
        "loss; auto picks squared error or logistic / cross-entropy",
        choices=LOSSES,
        applies=_not_data("lowrank"),
    )
    seed: int = _spec(0, "seed of the data (separate from the run seed)", min=0, max=2**31 - 1, cli="--data-seed")

    def _check(self) -> None:
        if self.channels == 2:
            self._fail("channels", self.channels, "images have 1 (grey) or 3 (RGB) channels")
        if self.name == "lowrank" and self.rank > min(self.d1, self.d2):
            self._fail("rank", self.rank, f"the rank cannot exceed min(d1, d2) = {min(self.d1, self.d2)}")
        if self.singular_values and len(self.singular_values) != self.rank:
            self._fail("singular_values", self.singular_values, f"give exactly rank = {self.rank} values")
        if self.name == "csv" and not self.csv_path:
            self._fail("csv_path", self.csv_path, "the csv dataset needs a file path (--dataset csv:PATH)")


@dataclass(frozen=True)
class ModelConfig(_Validated):
    """The network and its initialisation. Layer 1 is the input side; for ``mf`` layer 1 is V and layer 2 is U."""

    _section = "model"
    name: str = _spec("mf", "model family", choices=_models, cli="--model")
    depth: int = _spec(
        3, "number of weight layers (linear, mlp; cnn: conv layers + head)", min=2, max=32, applies=_not_model("mf")
    )
    width: int = _spec(32, "hidden width (linear, mlp) or channels (cnn)", min=1, max=4096, applies=_not_model("mf"))
    widths: tuple[int, ...] = _spec(
        (), "hidden widths, one per hidden layer (overrides width)", min=1, max=4096, applies=_not_model("mf")
    )
    rank: int = _spec(
        0,
        "factor rank of U and V (mf; 0: the target's rank)",
        min=0,
        max=2000,
        cli="--factor-rank",
        applies=_model("mf"),
    )
    activation: str = _spec(
        "relu", "activation of hidden layers (mlp, cnn)", choices=ACTIVATIONS, applies=_model("mlp", "cnn")
    )
    negative_slope: float = _spec(
        0.1,
        "slope of leaky_relu for negative inputs",
        min=0.0,
        max=1.0,
        applies=lambda v: v["model.name"] in ("mlp", "cnn") and v["model.activation"] == "leaky_relu",
    )
    bias: bool = _spec(False, "hidden and output layers have biases", applies=_not_model("mf"))
    bias_init: str = _spec(
        "zero",
        "initial biases: zero, or drawn like the weights (same distribution, the layer's scale)",
        choices=BIAS_INITS,
        applies=lambda v: v["model.name"] != "mf" and v["model.bias"],
    )
    batch_norm: bool = _spec(False, "BatchNorm after every hidden linear layer (mlp)", applies=_model("mlp"))
    bn_eps: float = _spec(
        1e-5,
        "BatchNorm's epsilon in 1 / sqrt(var + eps) (smaller: closer to exact scale invariance)",
        min=1e-30,
        max=1.0,
        log=True,
        applies=lambda v: v["model.name"] == "mlp" and v["model.batch_norm"],
    )
    pooling: str = _spec("avg", "2x2 pooling after each conv block (cnn)", choices=POOLINGS, applies=_model("cnn"))
    regularizer: float = _spec(
        0.0, "lambda of the balancing term lambda/8 ||U^T U - V^T V||_F^2 (mf)", min=0.0, max=1e3, applies=_model("mf")
    )
    init: str = _spec("gaussian", "initial weight distribution (same standard deviation)", choices=INITS)
    init_scale: float = _spec(0.1, "standard deviation of each initial weight", min=1e-8, max=100.0, log=True)
    layer_scales: tuple[float, ...] = _spec(
        (), "per-layer multipliers on the init scale, input side first", min=0.0, max=1e6
    )

    def hidden_widths(self) -> tuple[int, ...]:
        """Widths of the hidden layers (linear, mlp, cnn): ``widths`` if given, else ``width`` repeated."""
        return self.widths or (self.width,) * (self.depth - 1)

    def _check(self) -> None:
        if self.widths and len(self.widths) != self.depth - 1:
            self._fail("widths", self.widths, f"give depth - 1 = {self.depth - 1} hidden widths")
        n_layers = 2 if self.name == "mf" else self.depth
        if self.layer_scales and len(self.layer_scales) != n_layers:
            self._fail("layer_scales", self.layer_scales, f"give one multiplier per layer ({n_layers})")
        if self.batch_norm and self.name != "mlp":
            self._fail("batch_norm", self.batch_norm, "batch norm is available for mlp only")
        if self.regularizer and self.name != "mf":
            self._fail("regularizer", self.regularizer, "the balancing regulariser applies to mf only")


@dataclass(frozen=True)
class OptimConfig(_Validated):
    """How to step. ``flow`` integrates gradient flow with an adaptive ODE solver; t advances by lr per step."""

    _section = "optim"
    name: str = _spec("gd", "optimiser", choices=_optimizers, cli="--optimizer")
    lr: float = _spec(0.01, "step size eta (flow: time per step)", min=1e-8, max=100.0, log=True)
    momentum: float = _spec(
        0.9,
        "momentum beta (momentum, nesterov; adam: beta1)",
        min=0.0,
        max=0.9999,
        applies=laws.reads("optim.momentum"),
    )
    beta2: float = _spec(0.999, "adam's second-moment decay", min=0.0, max=0.999999, applies=laws.reads("optim.beta2"))
    eps: float = _spec(1e-8, "adam's epsilon", min=1e-16, max=1.0, log=True, applies=laws.reads("optim.eps"))
    weight_decay: float = _spec(
        0.0,
        "coupled L2 weight decay lambda (gradient + lambda * W)",
        min=0.0,
        max=10.0,
        applies=laws.reads("optim.weight_decay"),
    )
    schedule: str = _spec("constant", "step-size schedule", choices=_schedules, applies=laws.reads("optim.schedule"))
    decay_power: float = _spec(
        0.25,
        "delta of the theorem schedule eta0 (k+1)^-(1/2+delta)",
        min=0.0,
        max=0.5,
        applies=laws.reads("optim.decay_power"),
    )
    decay_every: int = _spec(
        1000,
        "steps between step-decay drops",
        min=1,
        max=10**8,
        applies=laws.reads("optim.decay_every"),
    )
    decay_factor: float = _spec(
        0.5,
        "factor of each step-decay drop",
        min=1e-6,
        max=1.0,
        applies=laws.reads("optim.decay_factor"),
    )
    batch_size: int = _spec(
        0,
        "mini-batch size (0: full batch)",
        min=0,
        max=100_000,
        applies=lambda v: laws.reads("optim.batch_size")(v) and v["data.name"] != "lowrank",
    )
    rho: float = _spec(
        0.05,
        "SAM's radius rho: the gradient is taken at theta + rho g / ||g||",
        min=0.0,
        max=10.0,
        applies=laws.reads("optim.rho"),
    )
    label_noise: float = _spec(
        0.1,
        "standard deviation of the fresh Gaussian noise added to every target at every step (label-noise GD)",
        min=0.0,
        max=10.0,
        applies=laws.reads("optim.label_noise"),
    )
    layer_lrs: tuple[float, ...] = _spec(
        (),
        "per-layer step-size multipliers, input side first (eta_h = eta m_h; empty: all 1)",
        min=1e-6,
        max=1e6,
        applies=laws.reads("optim.layer_lrs"),
    )
    rtol: float = _spec(
        1e-10,
        "relative tolerance of the gradient-flow solver",
        min=1e-14,
        max=1e-2,
        log=True,
        applies=laws.reads("optim.rtol"),
    )

    def _check(self) -> None:
        if self.name == "sgd" and self.batch_size == 0:
            self._fail("batch_size", 0, "sgd needs a mini-batch size of at least 1 (or use gd for full batch)")
        if self.batch_size and "optim.batch_size" not in laws.OPTIMIZERS[self.name].settings:
            self._fail("batch_size", self.batch_size, f"{self.name} is full-batch; use sgd for mini-batches")
        if self.name == "flow" and (self.weight_decay or self.schedule != "constant"):
            self._fail("name", self.name, "gradient flow takes no weight decay and no schedule")
