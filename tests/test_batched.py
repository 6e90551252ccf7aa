"""Sweep batching (``balance.runs.batching``): what batches and why not, and the paths a stack of K > 1 members takes
that a single run (K = 1, the same engine) does not, each against the single runs of its configs, float64, 1e-10.

Since one engine trains both (issue 13.1), a batch and a single run share every update, law and metric; what still
differs is data: members that differ in everything a member may choose (per-member hyperparameter arrays, each
member's own data when data seeds differ, schedules), a stack whose members disagree on the regulariser (the
invariant's term is zeroed per member), a member that drops out of the stack (divergence), and float32 members.
Every metric column is compared.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import FAMILIES, TANH, Family, make_config

from balance.config import OptimConfig, RunConfig
from balance.runs.batching import BatchedTrainer, batch_key, train_batched, why_not_batched
from balance.runs.loop import run

BATCHING = [f for f in FAMILIES if f.model["name"] != "cnn"] + [TANH]
CLASSIFY = Family("mlp-ce", {"name": "mlp", "activation": "relu", "bias": True}, {"name": "moons", "samples": 16})
LOGISTIC = Family("mlp-logistic", {"name": "mlp"}, {"name": "circles", "samples": 16})


def members(family: Family, optimizer: str, steps: int = 30) -> list[RunConfig]:
    """Four members of one shape that differ in everything a member may choose."""
    base = make_config(family, optim=OptimConfig(name=optimizer, lr=0.05), steps=steps)
    changes = [
        {},
        {"optim.lr": 0.02, "model.init_scale": 0.3, "seed": 3, "optim.momentum": 0.5},
        {"optim.weight_decay": 0.01, "model.init": "uniform", "data.seed": 7, "optim.schedule": "theorem"},
        {"optim.lr": 0.08, "model.init": "orthogonal", "seed": 11, "optim.beta2": 0.99, "optim.schedule": "step",
         "optim.decay_every": 7},
    ]  # fmt: skip
    return [base.replace(**c) for c in changes]


def assert_same(batched: pd.DataFrame, single: pd.DataFrame) -> None:
    assert list(batched.columns) == list(single.columns)
    assert batched["step"].tolist() == single["step"].tolist()
    for column in single.columns:
        a, b = batched[column].to_numpy(), single[column].to_numpy()
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=column)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])  # MF: the subspace coordinates, then the full ones
@pytest.mark.parametrize("family", BATCHING, ids=[f.id for f in BATCHING])
def test_identical_to_single_runs(family: Family, optimizer: str) -> None:
    configs = members(family, optimizer)
    assert len({batch_key(c) for c in configs}) == 1
    results = train_batched(configs)
    for config, result in zip(configs, results):
        single = run(config)
        assert result.status == single.status
        assert_same(result.metrics, single.metrics)


@pytest.mark.parametrize("family", [CLASSIFY, LOGISTIC], ids=["cross-entropy", "logistic"])
def test_classification_losses_identical_to_single_runs(family: Family) -> None:
    configs = members(family, "gd")
    for config, result in zip(configs, train_batched(configs)):
        assert_same(result.metrics, run(config).metrics)


def test_mf_regulariser_and_log_every_identical_to_single_runs() -> None:
    mf = FAMILIES[0]
    base = make_config(mf, steps=57).replace(log_every=10)
    configs = [base.replace(**{"model.regularizer": r, "optim.lr": lr}) for r, lr in [(0, 0.1), (0.5, 0.05), (2, 0.02)]]
    results = train_batched(configs)
    assert results[0].metrics["step"].tolist() == [0, 10, 20, 30, 40, 50, 57]
    for config, result in zip(configs, results):
        assert_same(result.metrics, run(config).metrics)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_mf_regulariser_prediction_identical_to_single_runs(optimizer: str) -> None:
    """The regulariser's first-order term in the prediction (theory: E = Delta<theta, g>), for every optimiser, in
    the subspace coordinates (gd, momentum, nesterov) and the full ones (adam), with weight decay."""
    optim = OptimConfig(name=optimizer, lr=0.03, momentum=0.7, weight_decay=0.05)
    base = make_config(FAMILIES[0], optim=optim, steps=30, model={"init_scale": 0.7})
    configs = [base.replace(**{"model.regularizer": r}) for r in (0.0, 0.5, 2.0)]
    for config, result in zip(configs, train_batched(configs)):
        assert_same(result.metrics, run(config).metrics)


def test_a_diverged_member_does_not_stop_the_others() -> None:
    mf = FAMILIES[0]
    base = make_config(mf, steps=200, model={"init_scale": 1.0})
    configs = [base.replace(**{"optim.lr": lr}) for lr in (0.05, 5.0, 0.1)]
    results = train_batched(configs)
    assert [r.status.state for r in results] == ["finished", "diverged", "finished"]
    for config, result in zip(configs, results):
        single = run(config)
        assert result.status == single.status
        if single.status.state == "diverged":  # rows up to the step that went wrong, that step included
            pd.testing.assert_frame_equal(result.metrics.iloc[:-1], single.metrics.iloc[:-1], rtol=1e-10)
            assert result.metrics["step"].iloc[-1] == single.metrics["step"].iloc[-1]
        else:
            assert_same(result.metrics, single.metrics)


def test_zero_steps_and_the_wall_time_limit() -> None:
    base = make_config(FAMILIES[0], steps=0)
    (only,) = train_batched([base])
    assert only.status.state == "finished" and only.metrics["step"].tolist() == [0]
    slow = make_config(FAMILIES[0], steps=10**7).replace(max_seconds=0.1)
    results = train_batched([slow, slow.replace(seed=1)])
    assert {r.status.state for r in results} == {"stopped"}
    assert "wall-time limit of 0.1 s" in results[0].status.message
    assert results[0].metrics["step"].iloc[-1] == results[0].status.step > 0


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"model.name": "cnn", "data.name": "images"}, "convolutional"),
        ({"model.batch_norm": True}, "BatchNorm"),
        ({"optim.name": "sgd", "optim.batch_size": 4}, "sgd"),
        ({"optim.name": "flow"}, "flow"),
    ],
)
def test_what_cannot_batch_says_why(change: dict, why: str) -> None:
    config = make_config(FAMILIES[3]).replace(**change)
    assert why in why_not_batched(config)
    assert batch_key(config) is None
    with pytest.raises(ValueError, match=why):
        BatchedTrainer([config])


def test_shapes_must_agree() -> None:
    a = make_config(FAMILIES[1])
    assert batch_key(a) != batch_key(a.replace(**{"model.width": 5}))
    assert batch_key(a) == batch_key(a.replace(**{"optim.lr": 0.3, "seed": 4, "model.init_scale": 2.0}))
    with pytest.raises(ValueError, match="differ in shape"):
        BatchedTrainer([a, a.replace(**{"model.width": 5})])
    with pytest.raises(ValueError, match="at least one"):
        BatchedTrainer([])


@pytest.mark.parametrize("optimizer", ["gd", "momentum"])
@pytest.mark.parametrize("family", [FAMILIES[0], FAMILIES[3]], ids=lambda f: f.id)
def test_float32_members_compute_every_metric_in_float64(family: Family, optimizer: str) -> None:
    """As the single trainer (issue 12.7): float32 weights, metrics summed in float64, for the subspace (MF under GD,
    momentum) and the full coordinates alike."""
    configs = [c.replace(dtype="float32") for c in members(family, optimizer)[:2]]
    trainer = BatchedTrainer(configs)
    for _ in range(20):
        trainer.step()
    rows = trainer.rows()
    weights = [p.detach().numpy().astype(np.float64) for p in trainer.params]
    grads = [g.numpy().astype(np.float64) for g in trainer.grads]
    K = len(rows)
    for h, layer in enumerate(trainer.model.layers, start=1):
        W, g = weights[layer.weight].reshape(K, -1), grads[layer.weight].reshape(K, -1)
        np.testing.assert_allclose(rows[:, trainer.columns.index(f"sqnorm_{h}")], (W * W).sum(1), rtol=1e-14)
        grad_norm = rows[:, trainer.columns.index(f"grad_norm_{h}")]
        np.testing.assert_allclose(grad_norm, np.sqrt((g * g).sum(1)), rtol=1e-14)
    assert all(b.dtype == np.float64 for b in trainer.balance0)
