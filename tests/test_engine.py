"""balance.engine.Engine: K members on stacked weights against K single runs (K = 1) for what sweeps do not batch
(CNNs, BatchNorm, mini-batch SGD with each member's own batch order), members that drop out, live step-size
changes, stopping, the neuron table, and the engine's boundaries (no clock, thread or I/O; flow is one run)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import BATCH_NORM, FAMILIES, FAMILY_IDS, Family, make_config

import balance.engine
from balance.config import OptimConfig, RunConfig
from balance.engine.engine import Engine, RunStatus
from balance.engine.trainer import Trainer
from balance.runs.loop import run

CNN = FAMILIES[FAMILY_IDS.index("cnn-bias")]
RELU = FAMILIES[FAMILY_IDS.index("mlp-relu-bias")]
MF = FAMILIES[0]


def _train(engine: Engine) -> list[pd.DataFrame]:
    rows: list[list[np.ndarray]] = [[] for _ in engine.configs]
    while engine.running:
        for member, new in engine.step().items():
            rows[member] += new
    return [pd.DataFrame(np.array(r), columns=engine.columns) for r in rows]


def _same(a: pd.DataFrame, b: pd.DataFrame, rtol: float = 1e-10) -> None:
    assert list(a.columns) == list(b.columns) and a["step"].tolist() == b["step"].tolist()
    for column in a.columns:
        np.testing.assert_allclose(a[column], b[column], rtol=rtol, atol=1e-12, err_msg=column)


def _members(family: Family, optim: OptimConfig, steps: int = 12) -> list[RunConfig]:
    base = make_config(family, optim=optim, steps=steps)
    changes = [{}, {"optim.lr": 0.03, "seed": 3, "model.init_scale": 0.3}, {"data.seed": 5, "optim.weight_decay": 0.02}]
    return [base.replace(**c) for c in changes]


@pytest.mark.parametrize(
    ("family", "optim"),
    [
        (CNN, OptimConfig(name="gd", lr=0.05)),
        (BATCH_NORM, OptimConfig(name="momentum", lr=0.05)),
        (RELU, OptimConfig(name="sgd", lr=0.05, batch_size=5)),
        (FAMILIES[FAMILY_IDS.index("mlp-leaky")], OptimConfig(name="nesterov", lr=0.05, batch_size=4)),
        (CNN, OptimConfig(name="adam", lr=0.01, batch_size=3)),
    ],
    ids=["cnn-gd", "batchnorm-momentum", "mlp-sgd", "leaky-nesterov-minibatch", "cnn-adam-minibatch"],
)
def test_stacked_members_equal_single_runs(family: Family, optim: OptimConfig) -> None:
    """Every column of every member, to 1e-10: the stacked forward (vmap for the CNN, broadcasting for the MLP) and
    each member's own mini-batch order reproduce the single run, which calls the module itself."""
    configs = _members(family, optim)
    for config, frame in zip(configs, _train(Engine(configs))):
        _same(frame, run(config).metrics)


def test_a_diverging_network_member_drops_out() -> None:
    configs = [make_config(RELU, optim=OptimConfig(name="gd", lr=lr), steps=60) for lr in (0.05, 80.0, 0.1)]
    frames = _train(engine := Engine(configs))
    assert [s.state for s in engine.status] == ["finished", "diverged", "finished"]
    assert len(engine.members) == 2  # the diverged one left the stack; two members went on stacked
    for config, frame in zip(configs, frames):
        single, status = run(config)
        assert status == engine.status[configs.index(config)]
        if status.state == "finished":
            _same(frame, single)
        else:
            _same(frame.iloc[:-1], single.iloc[:-1])


@pytest.mark.parametrize("family", [MF, RELU], ids=lambda f: f.id)
def test_a_live_step_size_change_applies_to_its_member_only(family: Family) -> None:
    """set_lr(1, ...) at step 5: member 1 continues as a single run whose learning rate changed there; member 0 as
    if nothing happened. The exact law follows the new step size."""
    optim = OptimConfig(name="momentum", lr=0.05, momentum=0.5)
    configs = [make_config(family, optim=optim, steps=12, seed=s) for s in (0, 1)]
    engine = Engine(configs)
    rows: list[list] = [[], []]
    for k in range(13):
        if k == 5:
            engine.set_lr(1, 0.02)
        for member, new in engine.step().items():
            rows[member] += new
    single = Trainer(configs[1])
    alone = [r for _ in range(5) for r in single.step()]
    single.learning_rate = 0.02
    while single.status.state == "running":
        alone += single.step()
    _same(pd.DataFrame(rows[1], columns=engine.columns), pd.DataFrame(alone, columns=single.columns))
    _same(pd.DataFrame(rows[0], columns=engine.columns), run(configs[0]).metrics)
    frame = pd.DataFrame(rows[1], columns=engine.columns)
    assert frame["lr"].tolist() == [0.05] * 5 + [0.02] * 8
    np.testing.assert_allclose(frame["gap_drift_1"], frame["pred_gap_drift_1"], rtol=1e-9, atol=1e-15)


def test_stop_logs_the_state_and_ends_every_member() -> None:
    engine = Engine([make_config(MF, steps=100, seed=s) for s in (0, 1)])
    for _ in range(7):
        engine.step()
    out = engine.stop("stopped by the driver")
    assert sorted(out) == [0, 1] and all(rows[0][0] == 7 for rows in out.values())
    assert engine.status == [RunStatus("stopped", 7, "stopped by the driver")] * 2
    assert not engine.running and engine.step() == {} and engine.stop("again") == {}


@pytest.mark.parametrize("family", [MF, RELU, BATCH_NORM], ids=lambda f: f.id)
def test_neuron_table_of_a_member(family: Family) -> None:
    configs = [make_config(family, steps=6, seed=s) for s in (0, 1)]
    engine = Engine(configs)
    _train(engine)
    single = Trainer(configs[1])
    while single.status.state == "running":
        single.step()
    ours, theirs = engine.neuron_table(1), single.neuron_table()
    assert list(ours) == ["layer", "neuron", "in_sqnorm", "out_sqnorm"] == list(theirs)
    for key in ours:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-10)


def test_mf_weights_in_full_coordinates_follow_plain_gradient_descent() -> None:
    """The subspace coordinates are exact: the weights written back equal 40 steps of GD done by hand on U, V."""
    config = make_config(MF, optim=OptimConfig(name="gd", lr=0.1), steps=40, data={"d1": 9, "d2": 7, "rank": 2})
    engine = Engine([config, config.replace(seed=1)])
    Vt, U = (w.clone() for w in engine.weights(1))
    M = engine.tasks[1].targets
    _train(engine)
    for _ in range(40):
        R = U @ Vt - M
        U, Vt = U - 0.1 * R @ Vt.T, Vt - 0.1 * U.T @ R
    for w, ours in zip((Vt, U), engine.weights(1)):
        torch.testing.assert_close(ours, w, rtol=1e-11, atol=1e-12)


def test_what_cannot_train_together() -> None:
    base = make_config(RELU)
    with pytest.raises(ValueError, match="one run at a time"):
        Engine([base.replace(**{"optim.name": "flow"})] * 2)
    with pytest.raises(ValueError, match="differ in shape"):
        Engine([base, base.replace(**{"model.width": 5})])
    with pytest.raises(ValueError, match="at least one"):
        Engine([])
    Engine([base.replace(**{"optim.name": "flow"})])  # one flow run is fine


FORBIDDEN = {"time", "threading", "multiprocessing", "os", "pathlib", "sqlite3", "socket", "subprocess", "shutil"}


def test_the_engine_has_no_clock_thread_or_io() -> None:
    """No module of balance/engine/ imports a clock, threads, processes or the file system, or calls open().

    Except ``tabular.py``, which reads the one file a run may use, the user's CSV (through ``balance.files``)."""
    for path in Path(balance.engine.__file__).parent.glob("*.py"):
        if path.name == "tabular.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                names = set()
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    assert node.func.id not in ("open", "print"), f"{path.name}: {node.func.id}()"
            assert not names & FORBIDDEN, f"{path.name} imports {names & FORBIDDEN}"
