"""Model families and datasets of the registry (torch-free): names, help, what each needs. Their torch side is
``balance.engine.models`` and ``balance.engine.data``; ``balance.engine.laws`` re-exports these names."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    help: str
    image_input: bool = False  # asks the data for [N, C, s, s] inputs


MODELS: dict[str, Family] = {
    "mf": Family("asymmetric matrix factorisation U V^T (the paper's problems (7) and (9))"),
    "linear": Family("deep linear network"),
    "mlp": Family("fully connected network (relu, leaky_relu, linear or the tanh control)"),
    "cnn": Family("small convolutional network, conv + activation blocks then a linear head", image_input=True),
}


@dataclass(frozen=True)
class DataSet:
    help: str
    default_loss: str
    losses: tuple[str, ...]
    images: bool = False  # can give [N, C, s, s] inputs to a CNN


_LOSSES = ("squared", "logistic", "cross_entropy")
_PLANAR = ("logistic", ("logistic", "squared"))
DATASETS: dict[str, DataSet] = {
    "lowrank": DataSet("low-rank matrix M* = A diag(s) B^T (the paper's (7))", "squared", ("squared",)),
    "teacher": DataSet(
        "regression on a random 2-layer ReLU teacher, Gaussian inputs", "squared", ("squared",), images=True
    ),
    "moons": DataSet("two interleaved half circles, 2-D", *_PLANAR),
    "circles": DataSet("two concentric circles, 2-D", *_PLANAR),
    "spiral": DataSet("two interleaved spiral arms, 2-D", *_PLANAR),
    "xor": DataSet("label = sign(x1 x2): the four quadrants", *_PLANAR),
    "images": DataSet("small images of 4 shapes (-, |, square, X)", "cross_entropy", ("cross_entropy",), images=True),
    "csv": DataSet("your CSV file: numeric feature columns and a target column", "squared", _LOSSES),
}
