"""The CSV's identity columns: the per-unit predicted drift, the per-step identity residual (largest over units and
layers) and the matrix-identity residual, float64, for every homogeneous family."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import BATCH_NORM, FAMILIES, FAMILY_IDS, TANH, Family, make_config, train_frame

from balance.config import OptimConfig, RunConfig
from balance.engine import laws
from balance.engine.engine import Engine
from balance.engine.invariants import neuron_balance
from balance.engine.models import build_model
from balance.engine.networks import objective

OPTIMS = {
    "gd-decay": OptimConfig(name="gd", lr=0.05, weight_decay=0.02),
    "sgd": OptimConfig(name="sgd", lr=0.05, batch_size=4),
}


@pytest.mark.parametrize("optim", list(OPTIMS), ids=list(OPTIMS))
@pytest.mark.parametrize("family", [*FAMILIES, BATCH_NORM], ids=[*FAMILY_IDS, BATCH_NORM.id])
def test_unit_law_and_residuals_are_exact(family: Family, optim: str) -> None:
    if family.model["name"] == "mf" and optim == "sgd":
        pytest.skip("the lowrank matrix has no samples to batch")
    df = train_frame(make_config(family, optim=OPTIMS[optim], steps=25, seed=3))
    measured, predicted = df["neuron_drift_max"], df["pred_neuron_drift_max"]
    scale = float(measured.abs().max())
    assert scale > 0
    assert (measured - predicted).abs().max() <= 1e-10 * scale
    assert (df["neuron_drift_mean"] - df["pred_neuron_drift_mean"]).abs().max() <= 1e-10 * scale
    assert np.isnan(df["identity_residual"].iloc[0])
    assert df["identity_residual"].iloc[1:].max() <= 1e-12 * max(scale, 1.0)
    for h in laws.of_metric(df.columns, "matrix_residual"):
        residual = df[laws.column("matrix_residual", h)].iloc[1:]
        assert residual.max() <= 1e-12 * max(float(df[laws.column("matrix_inv", h)].max()), 1.0)


def test_the_mf_regulariser_is_carried_per_unit_but_not_as_a_matrix() -> None:
    df = train_frame(RunConfig().replace(**{"model.regularizer": 1.0, "steps": 20}))
    assert (df["neuron_drift_max"] - df["pred_neuron_drift_max"]).abs().max() <= 1e-10 * df["neuron_drift_max"].max()
    assert df[laws.column("matrix_residual", 1)].isna().all()


def test_one_step_against_autograd() -> None:
    """B_i after one GD step, from the module itself, against B_i(0) + eta^2 (||g_in,i||^2 - ||g_out,i||^2) from
    autograd: the engine's first predicted drift is that number."""
    family = FAMILIES[FAMILY_IDS.index("mlp-relu-bias")]
    config = make_config(family, optim=OptimConfig(name="gd", lr=0.1), steps=1, seed=7)
    engine = Engine([config])
    task = engine.tasks[0]
    model = build_model(config, task, torch.Generator().manual_seed(7), torch.float64)  # the engine's own start
    grads = torch.autograd.grad(objective(model, task), model.params)
    g2 = [g.detach().numpy() ** 2 for g in grads]
    w2 = [p.detach().numpy() ** 2 for p in model.params]
    change = np.concatenate([0.01 * neuron_balance(g2, grp, squared=True) for grp in model.neurons])
    b0 = np.concatenate([neuron_balance(w2, grp, squared=True) for grp in model.neurons])
    with torch.no_grad():
        for p, g in zip(model.params, grads):
            p.sub_(0.1 * g)
    w2 = [p.detach().numpy() ** 2 for p in model.params]
    b1 = np.concatenate([neuron_balance(w2, grp, squared=True) for grp in model.neurons])
    np.testing.assert_allclose(b1 - b0, change, rtol=1e-10, atol=1e-15)
    rows = engine.step()[0]  # a one-step run: rows 0 and 1
    df = pd.DataFrame(np.array(rows), columns=engine.columns)
    assert df["pred_neuron_drift_max"].iloc[-1] == pytest.approx(np.abs(change).max(), rel=1e-10)


@pytest.mark.parametrize(
    ("config", "why"),
    [
        (make_config(FAMILIES[3], optim=OptimConfig(name="momentum", lr=0.05)), "momentum"),
        (make_config(TANH), "tanh"),
        (make_config(FAMILIES[3]).replace(**{"optim.layer_lrs": (1.0, 2.0, 1.0)}), "per-layer rates"),
    ],
    ids=["momentum", "tanh", "layer-lrs"],
)
def test_no_unit_prediction_where_no_law(config: RunConfig, why: str) -> None:
    df = train_frame(config.replace(steps=3))
    assert df["pred_neuron_drift_max"].iloc[1:].isna().all(), why
    assert df["identity_residual"].isna().all(), why
