"""Per-layer step sizes (``optim.layer_lrs``) and their exact law, float64 against autograd and torch.optim.

With eta_h = eta m_h the conserved quantity of gradient flow is the eta-weighted gap
||W_{h+1}||^2/eta_{h+1} - (||W_h||^2 + ||b_h||^2)/eta_h, and one plain GD step changes it by exactly
eta_{h+1} ||g_{h+1}||^2 - eta_h ||g_h||^2 (Euler's identity cancels the first-order terms).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAMILIES, FAMILY_IDS, Family, make_config, train_frame

from balance.config import ConfigError, OptimConfig, RunConfig
from balance.engine import laws
from balance.engine.data import loss_value, make_task
from balance.engine.engine import Engine
from balance.engine.models import build_model
from balance.engine.networks import objective

MULT = {2: (3.0, 0.5), 3: (1.0, 4.0, 0.25)}
RELU = FAMILIES[FAMILY_IDS.index("mlp-relu-bias")]


def _layers(family: Family) -> int:
    return 2 if family.model["name"] == "mf" else 3


def _weighted_gaps(model: torch.nn.Module, eta: list[float]) -> list[float]:
    """||W_{h+1}||^2/eta_{h+1} - (||W_h||^2 + ||b_h||^2)/eta_h, straight from the modules (float64)."""
    ps = [p.detach() for p in model.params]
    sq = []
    for layer in model.layers:
        s = float(ps[layer.weight].double().square().sum())
        b = 0.0 if layer.bias is None else float(ps[layer.bias].double().square().sum())
        sq.append((s, b))
    return [sq[h + 1][0] / eta[h + 1] - (sq[h][0] + sq[h][1]) / eta[h] for h in range(len(sq) - 1)]


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.id in ("mlp-relu-bias", "linear", "cnn-bias", "mf")])
def test_one_gd_step_changes_the_weighted_gap_by_exactly_eta_g_squared(family: Family) -> None:
    """Autograd oracle, independent of the engine: one step theta_h <- theta_h - eta_h g_h, float64, to 1e-10."""
    config = make_config(family, seed=4)
    task = make_task(config.data, torch.float64, image_input=family.model["name"] == "cnn")
    model = build_model(config, task, torch.Generator().manual_seed(4), torch.float64)
    eta = [0.05 * m for m in MULT[_layers(family)]]
    before = _weighted_gaps(model, eta)
    grads = torch.autograd.grad(objective(model, task), model.params)
    gw, gb = [0.0] * len(model.layers), [0.0] * len(model.layers)  # ||g_{W_h}||^2, ||g_{b_h}||^2
    with torch.no_grad():
        for h, layer in enumerate(model.layers):
            for i, out in ((layer.weight, gw), (layer.bias, gb)):
                if i is not None:
                    model.params[i].sub_(eta[h] * grads[i])
                    out[h] = float(grads[i].square().sum())
    after = _weighted_gaps(model, eta)
    for h in range(len(after)):
        predicted = eta[h + 1] * gw[h + 1] - eta[h] * (gw[h] + gb[h])  # b_{h+1} belongs to the next pair
        change = after[h] - before[h]
        assert abs(change - predicted) <= 1e-10 * abs(predicted), (h, change, predicted)


@pytest.mark.parametrize(
    ("family", "optim"),
    [
        (RELU, OptimConfig(name="gd", lr=0.05)),
        (RELU, OptimConfig(name="sgd", lr=0.05, batch_size=5)),
        (RELU, OptimConfig(name="momentum", lr=0.02, momentum=0.8)),
        (RELU, OptimConfig(name="nesterov", lr=0.02, momentum=0.8)),
        (FAMILIES[FAMILY_IDS.index("cnn-bias")], OptimConfig(name="gd", lr=0.05)),
        (FAMILIES[0], OptimConfig(name="gd", lr=0.05)),
    ],
    ids=["mlp-gd", "mlp-sgd", "mlp-momentum", "mlp-nesterov", "cnn-gd", "mf-gd"],
)
def test_the_engine_predicts_the_weighted_gap_to_round_off(family: Family, optim: OptimConfig) -> None:
    """The engine's gap is the eta-weighted one and its law predicts every step's drift to 1e-10 relative, while the
    plain gap ||W_{h+1}||^2 - ||W_h||^2 drifts at first order."""
    mult = MULT[_layers(family)]
    base = make_config(family, optim=optim, steps=40, seed=1)
    weighted = train_frame(base.replace(**{"optim.layer_lrs": mult}))
    for h in laws.of_metric(weighted.columns, "gap_drift"):
        drift = weighted[laws.column("gap_drift", h)].to_numpy()
        pred = weighted[laws.column("pred_gap_drift", h)].to_numpy()
        scale = np.abs(drift).max()
        assert scale > 0 and np.abs(drift - pred).max() <= 1e-10 * max(scale, 1e-300)
        sq = weighted[laws.column("sqnorm", h + 1)] - weighted[laws.column("sqnorm", h)]
        if laws.column("bias_sqnorm", h) in weighted:
            sq = sq - weighted[laws.column("bias_sqnorm", h)]
        plain = (sq - sq.iloc[0]).abs().max()
        assert plain > 3 * scale  # the unweighted gap is not what is conserved


def test_flow_conserves_the_weighted_gap() -> None:
    config = make_config(RELU, optim=OptimConfig(name="flow", lr=0.05), steps=20, seed=2)
    df = train_frame(config.replace(**{"optim.layer_lrs": MULT[3]}))
    gap0 = df[laws.column("gap", 1)].abs().iloc[0]
    for h in laws.of_metric(df.columns, "gap_drift"):
        assert df[laws.column("gap_drift", h)].abs().max() <= 1e-7 * max(gap0, 1.0)


def test_the_update_is_torch_sgd_with_one_parameter_group_per_layer() -> None:
    config = make_config(RELU, steps=3, seed=3).replace(**{"optim.layer_lrs": MULT[3]})
    engine = Engine([config])
    task = engine.tasks[0]
    model = build_model(config, task, torch.Generator().manual_seed(3), torch.float64)
    groups = [
        {"params": [model.params[i] for i in (layer.weight, layer.bias) if i is not None], "lr": 0.1 * m}
        for layer, m in zip(model.layers, MULT[3])
    ]
    opt = torch.optim.SGD(groups, lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        loss_value(model(task.inputs), task.targets, task.loss).backward()
        opt.step()
        engine.step()
    for ours, theirs in zip(engine.weights(0), model.params):
        torch.testing.assert_close(ours, theirs.detach(), rtol=1e-12, atol=1e-14)


def test_weight_decay_with_per_layer_rates_has_no_law() -> None:
    config = make_config(RELU, steps=3).replace(**{"optim.layer_lrs": MULT[3], "optim.weight_decay": 0.01})
    assert "own factor" in laws.why_no_law(config)
    df = train_frame(config)
    assert df[laws.column("pred_gap_drift", 1)].iloc[1:].isna().all()
    same = make_config(RELU, steps=3).replace(**{"optim.layer_lrs": (1.0, 1.0, 1.0), "optim.weight_decay": 0.01})
    assert laws.why_no_law(same) == ""


def test_the_setting_is_validated_and_travels_in_links() -> None:
    with pytest.raises(ConfigError, match="one step-size multiplier per weight layer \\(3\\)"):
        make_config(RELU).replace(**{"optim.layer_lrs": (1.0, 2.0)})
    with pytest.raises(ConfigError, match="out of range"):
        make_config(RELU).replace(**{"optim.layer_lrs": (1.0, 0.0, 1.0)})
    config = make_config(RELU).replace(**{"optim.layer_lrs": (1.0, 2.5, 0.5)})
    query = config.to_query()
    assert "optim.layer_lrs" in query
    assert RunConfig.from_query(query)[0] == config
    assert RunConfig.from_toml(config.to_toml()) == config


def test_the_command_line_takes_per_layer_rates_and_the_new_settings(capsys: pytest.CaptureFixture[str]) -> None:
    from balance.cli.core import main

    argv = ["run", "--model", "mlp", "--dataset", "teacher", "--depth", "3", "--width", "4", "--steps", "5",
            "--layer-lrs", "1,2,0.5", "--bias", "--bias-init", "weights", "--sharpness-every", "5", "--dtype",
            "float64"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("finished: 5 steps")
    assert main([*argv[:-4], "--layer-lrs", "1,2"]) == 2  # one multiplier per layer, else a one-line error
    err = capsys.readouterr().err
    assert "one step-size multiplier per weight layer (3)" in err and len(err.strip().splitlines()) == 1
