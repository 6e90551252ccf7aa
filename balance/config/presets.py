"""Named configurations: the paper's Figure 1 runs and starting points a user would pick.

A preset is a ``RunConfig``; a width-aware scale or an unbalanced start is a value in a preset, not a different
meaning of a setting. Figure 1's exact sizes are not in the paper; these use the analogue of the formula sheet
(d1 = 100, d2 = 25, r = 5, s = 5..1, GD eta = 0.01, 3000 steps), which reproduces its features.
"""

from __future__ import annotations

from balance.config.settings import DataConfig, ModelConfig, OptimConfig, RunConfig
from balance.engine.mechanisms import MECHANISMS, config_changes

_FIG1 = DataConfig(name="lowrank", d1=100, d2=25, rank=5)


def _fig1(scale: float, regularizer: float = 0.0) -> RunConfig:
    return RunConfig(
        data=_FIG1,
        model=ModelConfig(name="mf", init_scale=scale, regularizer=regularizer),
        optim=OptimConfig(name="gd", lr=0.01),
        steps=3000,
    )


def _mlp(depth: int, width: int, **model: object) -> RunConfig:
    return RunConfig(
        data=DataConfig(name="teacher", samples=256, input_dim=10),
        model=ModelConfig(name="mlp", depth=depth, width=width, init_scale=width**-0.5, **model),  # type: ignore[arg-type]
        optim=OptimConfig(name="gd", lr=0.05),
        steps=2000,
    )


def _relu2(scale: float, lr: float, steps: int) -> RunConfig:
    return RunConfig(
        data=DataConfig(name="teacher", samples=256, input_dim=10),
        model=ModelConfig(name="mlp", depth=2, width=32, init_scale=scale),
        optim=OptimConfig(name="gd", lr=lr),
        steps=steps,
    )


def _small_target(scale: float, layer_scales: tuple[float, ...]) -> RunConfig:
    """MF on a target with singular values 0.5 .. 0.1: the factors' norms stay near 1, so a gap of 1 is not small."""
    return RunConfig(
        data=DataConfig(name="lowrank", d1=100, d2=25, rank=5, singular_values=(0.5, 0.4, 0.3, 0.2, 0.1)),
        model=ModelConfig(name="mf", init_scale=scale, layer_scales=layer_scales),
        optim=OptimConfig(name="gd", lr=0.05),
        steps=3000,
    )


PRESETS: dict[str, tuple[str, RunConfig]] = {
    "fig1-small": ("Figure 1: MF, small init (sigma = 1e-3), objective (7)", _fig1(1e-3)),
    "fig1-large": ("Figure 1: MF, large init (sigma = 0.5), objective (7)", _fig1(0.5)),
    "fig1-small-reg": ("Figure 1: MF, small init, regularised objective (9), lambda = 1", _fig1(1e-3, 1.0)),
    "fig1-large-reg": ("Figure 1: MF, large init, regularised objective (9), lambda = 1", _fig1(0.5, 1.0)),
    "mlp-relu": ("3-layer ReLU MLP, width 32, width-aware init 1/sqrt(width), teacher data", _mlp(3, 32)),
    "mlp-relu-deep": ("6-layer ReLU MLP, width 32, teacher data", _mlp(6, 32)),
    "mlp-unbalanced": (
        "3-layer ReLU MLP, first layer 1e-3 of the others",
        _mlp(3, 32, layer_scales=(1e-3, 1.0, 1.0)),
    ),
    "mlp-tanh": ("tanh control: not homogeneous, no invariant", _mlp(3, 32, activation="tanh")),
    "linear-deep": (
        "deep linear network, depth 4, small init",
        RunConfig(
            data=DataConfig(name="teacher", samples=256, input_dim=10),
            model=ModelConfig(name="linear", depth=4, width=16, init_scale=0.05),
            optim=OptimConfig(name="gd", lr=0.05),
            steps=2000,
        ),
    ),
    "cnn": (
        "small CNN on generated images",
        RunConfig(
            data=DataConfig(name="images", samples=256, image_size=8),
            model=ModelConfig(name="cnn", depth=3, width=8, init_scale=0.2),
            optim=OptimConfig(name="gd", lr=0.05),
            steps=500,
        ),
    ),
    "moons-logistic": (
        "ReLU MLP on two moons with the logistic loss: norms grow, the gap stays",
        RunConfig(
            data=DataConfig(name="moons", samples=256, noise=0.1),
            model=ModelConfig(name="mlp", depth=3, width=32, init_scale=0.3),
            optim=OptimConfig(name="gd", lr=0.1),
            steps=3000,
        ),
    ),
    # --- the lecture's demos (balance.lecture.steps): small enough that each step's runs train in a few seconds -----
    "lecture-rescale": (
        "Lecture 1: 3-layer ReLU MLP, width 16, untrained (the rescaling symmetry)",
        _mlp(3, 16).replace(steps=0),
    ),
    "lecture-neurons": (
        "Lecture 2: one hidden ReLU layer, width 32, init 0.05, small steps (per-neuron invariant)",
        _relu2(0.05, lr=0.02, steps=3000),
    ),
    "lecture-small-init": (
        "Lecture 3: one hidden ReLU layer, width 32, init 1e-3: gaps stay tiny, ratios go to 1",
        _relu2(1e-3, lr=0.1, steps=3000),
    ),
    "lecture-step-size": (
        "Lecture 4: 3-layer ReLU MLP, 500 steps (drift at three step sizes)",
        _mlp(3, 32).replace(steps=500),
    ),
    "lecture-breaks": (
        "Lecture 6: 3-layer ReLU MLP, 600 steps, the baseline for tanh, Adam, weight decay and batch norm",
        _mlp(3, 32).replace(steps=600),
    ),
    "lecture-unbalanced": (
        "Lecture 7: MF, V at 1e-3 of U (difference ~1, ratio ~2000), small target",
        _small_target(0.05, (1e-3, 1.0)),
    ),
    "lecture-balanced": (
        "Lecture 7: MF, both factors at 1e-3, small target",
        _small_target(1e-3, ()),
    ),
}

# What actually balances (issue 16): one preset per mechanism, all from the same unbalanced start
# (``balance.engine.mechanisms``); the sharpness is logged every 100 steps, against 2/eta.
PRESETS.update(
    {
        f"balances-{name.replace('_', '-')}": (
            f"What balances: {m.title}, from the common unbalanced start",
            RunConfig().replace(**config_changes(name)),
        )
        for name, m in MECHANISMS.items()
    }
)


def preset(name: str) -> RunConfig:
    from balance.config.settings import ConfigError

    if name not in PRESETS:
        raise ConfigError(f"preset {name!r}: unknown; available: {', '.join(PRESETS)}")
    return PRESETS[name][1]
