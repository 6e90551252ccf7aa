"""balance.engine.laws.why_no_law: a prediction exactly where the rescaling symmetry gives one."""

from __future__ import annotations

import pytest

from balance.config import RunConfig
from balance.engine.laws import why_no_law

MLP = {"model.name": "mlp", "data.name": "teacher"}


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({}, ""),
        ({**MLP, "model.activation": "leaky_relu", "model.bias": True, "optim.name": "nesterov"}, ""),
        ({**MLP, "optim.name": "sgd", "optim.batch_size": 8, "optim.weight_decay": 0.1}, ""),
        ({"model.name": "cnn", "data.name": "images"}, ""),
        ({"optim.name": "flow"}, ""),
        ({**MLP, "model.activation": "tanh"}, "tanh is not homogeneous"),
        ({"model.name": "cnn", "data.name": "images", "model.activation": "tanh"}, "tanh is not homogeneous"),
        ({**MLP, "model.batch_norm": True}, "batch norm"),
        ({"optim.name": "adam"}, "Adam"),
        ({"optim.name": "flow", "model.regularizer": 1.0}, "regulariser"),
        ({"model.regularizer": 1.0}, ""),  # GD with the regulariser: its exact first-order term is predicted
    ],
)
def test_why_no_law(changes, why):
    reason = why_no_law(RunConfig().replace(**changes))
    assert (reason == "") if not why else why in reason
