"""balance.engine.laws, the registry of laws and metrics: torch-free, complete (every entry has its torch side, keyed
by the same name), columns made and parsed only here, and a new metric or optimiser is one entry that reaches the
engine's columns and rows (and the run's DataFrame through ``balance.run``)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import BATCH_NORM, FAMILIES, TANH, make_config

from balance import config as config_module
from balance.config import OptimConfig, RunConfig
from balance.engine import laws
from balance.engine.engine import Engine
from balance.engine.metrics import COMPUTE
from balance.engine.models import ACTIVATION_FUNCTIONS
from balance.engine.optim import RULES, Rule, Step
from balance.engine.theory import RECURSIONS, LawStep
from balance.engine.trainer import Trainer
from balance.runs.loop import run

ALL = [*FAMILIES, BATCH_NORM, TANH]


@pytest.mark.parametrize(
    "module", ["balance.engine.laws", "balance.engine.columns", "balance.engine.laws", "balance.engine.theory"]
)
def test_importing_the_registry_imports_no_torch(module: str) -> None:
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    allowed = "[]" if module.endswith(("laws", "columns")) else "['numpy']"
    assert out.strip() == allowed


def test_every_entry_has_its_torch_side() -> None:
    assert set(COMPUTE) == set(laws.METRICS)
    assert set(RULES) == set(laws.OPTIMIZERS)
    assert set(RECURSIONS) == {name for name, e in laws.OPTIMIZERS.items() if e.law is not None}
    assert set(ACTIVATION_FUNCTIONS) == set(laws.ACTIVATIONS) == set(config_module.ACTIVATIONS)
    assert set(laws.SCHEDULES) == set(config_module.OptimConfig.__dataclass_fields__["schedule"].metadata["choices"]())


def test_entries_are_complete() -> None:
    for name, m in laws.METRICS.items():
        assert m.formula and m.tex and m.unit, name
        indexed = m.scope in ("layer", "pair")
        assert ("{h}" in m.tex) == indexed, name  # the label names its layer or pair
    for name, o in laws.OPTIMIZERS.items():
        assert o.help and (o.law is None) == bool(o.no_law), name
        assert all(s.split(".")[0] == "optim" for s in o.settings), name
    for name, a in laws.ACTIVATIONS.items():
        assert a.help and a.homogeneous == (not a.no_law), name


@pytest.mark.parametrize("family", ALL, ids=lambda f: f.id)
def test_columns_of_every_family_parse_back(family) -> None:
    trainer = Trainer(make_config(family, steps=1))
    columns, L = trainer.columns, len(trainer.model.layers)
    assert len(set(columns)) == len(columns)
    for name in columns:
        metric, index = laws.parse(name)
        assert laws.column(metric, index) == name
        assert laws.label(name) == laws.METRICS[metric].label(index)
    assert laws.of_metric(columns, "sqnorm") == list(range(1, L + 1))
    assert laws.of_metric(columns, "gap_drift") == list(range(1, L))


@pytest.mark.parametrize("bad", ["gap_drift", "gap_drift_0", "gap_drift_01", "nope_1", "step_1", "in_sqnorm", ""])
def test_parse_rejects_what_no_metric_makes(bad: str) -> None:
    with pytest.raises(ValueError, match="not a column"):
        laws.parse(bad)


def test_layout_indices() -> None:
    layout = laws.Layout(4, biases=(1, 3), linear=(2,))
    assert laws.columns(layout)[:4] == ["step", "t", "lr", "loss"]
    assert laws.of_metric(laws.columns(layout), "bias_sqnorm") == [1, 3]
    assert laws.of_metric(laws.columns(layout), "matrix_inv") == [2]
    assert laws.of_metric(laws.columns(layout), "ratio") == [1, 2, 3]
    assert laws.of_metric(laws.columns(layout), "sqnorm") == [1, 2, 3, 4]
    assert laws.METRICS["ratio"].label(2) == r"\|W_{3}\|_F / \|W_{2}\|_F"


# --- a new metric is one entry -------------------------------------------------------------------------------------


@pytest.fixture
def toy_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """A scalar metric (the total squared weight) and a layer metric (||g_h||^2), registered for this test only."""
    monkeypatch.setitem(laws.METRICS, "toy_total", laws.Metric("scalar", "measured", "sum_h ||W_h||^2", "T", "weight²"))
    monkeypatch.setitem(COMPUTE, "toy_total", lambda s: s.sq.sum(1))
    grad = laws.Metric("layer", "measured", "||g_h||^2", r"\|g_{h}\|^2", "gradient²")
    monkeypatch.setitem(laws.METRICS, "toy_grad_sq", grad)
    monkeypatch.setitem(COMPUTE, "toy_grad_sq", lambda s: s.engine.grad_sq[:, s.engine.weight_index])


@pytest.mark.parametrize("family", [FAMILIES[0], FAMILIES[4]], ids=lambda f: f.id)
def test_a_registered_metric_reaches_columns_and_rows(toy_metrics: None, family) -> None:
    configs = [make_config(family, steps=5, seed=s) for s in (0, 1)]
    engine = Engine(configs)
    L = len(engine.model.layers)
    assert engine.columns[-1 - L :] == ["toy_total", *(f"toy_grad_sq_{h}" for h in range(1, L + 1))]
    assert laws.parse("toy_grad_sq_2") == ("toy_grad_sq", 2) and laws.label("toy_grad_sq_2") == r"\|g_{2}\|^2"
    rows = engine.rows()
    frame = pd.DataFrame(rows, columns=engine.columns)
    weights = frame[[c for c in engine.columns if c.startswith(("sqnorm_", "bias_sqnorm_"))]].sum(axis=1)
    np.testing.assert_allclose(frame["toy_total"], weights, rtol=1e-13)
    for h in range(1, L + 1):
        np.testing.assert_allclose(frame[f"toy_grad_sq_{h}"], frame[f"grad_norm_{h}"] ** 2, rtol=1e-13)
    df, _ = run(configs[1])  # through the single-run facade and the API's DataFrame
    assert "toy_total" in df.columns and df["toy_total"].iloc[0] == pytest.approx(frame["toy_total"][1], rel=1e-13)


# --- a new optimiser is one entry ----------------------------------------------------------------------------------


def _half_gd(s: Step) -> dict:
    """theta <- theta - (eta / 2) (g + lambda theta): gradient descent at half the step size, as a new rule would."""
    for p, d, a in zip(s.params, s.decayed(), s.neg_lr):
        p.addcmul_(d, a / 2)
    return {}


def _half_gd_law(G: np.ndarray, B: np.ndarray, s: LawStep) -> tuple[np.ndarray, np.ndarray]:
    decay = 1 - s.eta / 2 * s.lam
    return decay**2 * G - s.eta * decay * s.E + (s.eta / 2) ** 2 * s.delta("gg"), B


@pytest.fixture
def toy_optimizer(monkeypatch: pytest.MonkeyPatch) -> str:
    law = laws.Law("G_{k+1} = (1 - eta lambda / 2)^2 G_k - eta (1 - eta lambda / 2) E_k + eta^2 / 4 Delta||g_k||^2", "")
    entry = laws.Optimizer("gradient descent at half the step size", ("optim.lr", "optim.weight_decay"), law)
    monkeypatch.setitem(laws.OPTIMIZERS, "half_gd", entry)
    monkeypatch.setitem(RULES, "half_gd", Rule((), _half_gd))
    monkeypatch.setitem(RECURSIONS, "half_gd", _half_gd_law)
    return "half_gd"


@pytest.mark.parametrize("family", [FAMILIES[0], FAMILIES[4]], ids=lambda f: f.id)
def test_a_registered_optimizer_trains_and_its_law_is_predicted(toy_optimizer: str, family) -> None:
    """The config accepts the new name, the engine steps with its rule, stacked and single, and the logged
    prediction is its law's: gap_drift = pred_gap_drift to 1e-10 of its size; GD at half the step size gives the
    same rows."""
    optim = OptimConfig(name=toy_optimizer, lr=0.2, weight_decay=0.05)
    configs = [make_config(family, optim=optim, steps=30, seed=s) for s in (0, 1)]
    engine = Engine(configs)
    rows: list[list] = [[], []]
    while engine.running:
        for member, new in engine.step().items():
            rows[member] += new
    frame = pd.DataFrame(rows[1], columns=engine.columns)
    pairs = laws.of_metric(engine.columns, "gap_drift")
    size = max(frame[f"pred_gap_drift_{h}"].abs().max() for h in pairs)
    err = max((frame[f"gap_drift_{h}"] - frame[f"pred_gap_drift_{h}"]).abs().max() for h in pairs)
    assert size > 1e-6 and err <= 1e-10 * size
    plain = run(configs[1].replace(**{"optim.name": "gd", "optim.lr": 0.1})).metrics
    single = run(configs[1]).metrics
    for name in ("loss", "sqnorm_1", "gap_1", "gap_drift_1", "pred_gap_drift_1"):
        np.testing.assert_allclose(frame[name], single[name], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(single[name], plain[name], rtol=1e-10, atol=1e-14)
    assert laws.why_no_law(configs[0]) == ""


def test_the_config_reads_the_optimizer_registry(toy_optimizer: str) -> None:
    assert RunConfig().replace(**{"optim.name": toy_optimizer}).optim.name == toy_optimizer
    assert torch.get_default_dtype() == torch.float32  # nothing here changed torch's global state


@pytest.mark.parametrize("optimizer", list(laws.OPTIMIZERS))
@pytest.mark.parametrize("schedule", list(laws.SCHEDULES))
def test_the_settings_an_optimizer_reads_are_the_ones_the_config_applies(optimizer: str, schedule: str) -> None:
    """The registry's ``settings`` (and the schedule's) name exactly the optim.* settings that apply in the config (on
    a data set with samples, where a mini-batch size can apply): the config can derive ``applies`` from them."""
    flat = {**RunConfig().flat(), "optim.name": optimizer, "optim.schedule": schedule, "data.name": "teacher"}
    applied = {k for k in config_module.applicable(flat) if k.startswith("optim.") and k != "optim.name"}
    entry = laws.OPTIMIZERS[optimizer]
    reads = set(entry.settings)
    if "optim.schedule" in reads:
        reads |= set(laws.SCHEDULES[schedule].settings)
    assert applied == reads
