"""balance.engine.laws, the registry of laws and metrics: torch-free, complete (every entry has its torch side, keyed
by the same name), columns made and parsed only here, and a new metric or optimiser is one entry that reaches the
engine's columns and rows (and the run's DataFrame through ``balance.run``)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import BATCH_NORM, FAMILIES, TANH, make_config

from balance import config as config_module
from balance.app.common import run_figures
from balance.cli.core import build_parser, config_from_args, main
from balance.config import OptimConfig, RunConfig
from balance.engine import laws
from balance.engine.engine import Engine
from balance.engine.metrics import COMPUTE
from balance.engine.models import ACTIVATION_FUNCTIONS
from balance.engine.optim import RULES, Rule, Step
from balance.engine.theory import RECURSIONS, LawStep
from balance.engine.trainer import Trainer
from balance.runs.loop import run
from balance.views import figures as plots
from balance.views import gaps, overlay, style

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


# --- what a reader sees: labels, captions, help ---------------------------------------------------------------------


def test_labels_plain_text_and_words() -> None:
    assert laws.METRICS["ratio"].label() == r"\|W_{h+1}\|_F / \|W_{h}\|_F"  # the generic label: h, h + 1
    assert laws.plain("sqnorm_2") == "||W₂||²" and laws.METRICS["sqnorm"].plain() == "||W_h||²"
    assert laws.plain("ratio_12") == "||W₁₃|| / ||W₁₂||" and laws.plain("not_a_metric") == "not_a_metric"
    assert laws.describe("gap_drift_1") == "gap drift, layers 1-2" and laws.describe("loss") == "loss"
    assert laws.METRICS["sqnorm"].place(2, ("V", "U")) == "U" and laws.METRICS["gap"].place(1, ("V", "U")) == "V-U"
    assert laws.pattern("gap_drift") == "gap_drift_h" and laws.pattern("loss") == "loss"
    assert laws.prediction_of("gap_drift") == "pred_gap_drift" and laws.prediction_of("loss") is None
    assert laws.expand("{{gap=}}, {{ratio}}") == (
        r"$G_{h} = \|W_{h+1}\|_F^2 - \|W_{h}\|_F^2 - \|b_{h}\|^2$, $\|W_{h+1}\|_F / \|W_{h}\|_F$"
    )
    for name, m in laws.METRICS.items():
        assert m.title and m.text, name  # every entry says itself in words and in plain text
        assert ("{h}" in m.text) == (m.scope in ("layer", "pair")), name
        assert m.predicts in ("", *laws.METRICS) and (m.kind == "predicted") == bool(m.predicts), name


def test_run_help_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    """``balance run --help`` lists every metric's columns and every optimiser's law (or why there is none); the
    listing reads only the torch-free registry (the config's choices of datasets and models still load torch)."""
    code = "import sys\nfrom balance.cli.core import metrics_help\nmetrics_help()\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    out = " ".join(_cli(["run", "--help"], capsys).split())  # words, not argparse's line breaks
    for name, m in laws.METRICS.items():
        if m.scope != "neuron":
            assert f"{laws.pattern(name)} {'predicted: ' if m.predicts else ''}{' '.join(m.formula.split())}" in out
    for name, o in laws.OPTIMIZERS.items():
        assert f"{name} {' '.join((o.law.recursion if o.law else 'no law: ' + o.no_law).split())}" in out, name


# --- a new metric or optimiser reaches the CSV, a chart and the CLI help --------------------------------------------


def _config(argv: list[str]) -> RunConfig:
    return config_from_args(build_parser().parse_args(["run", *argv]))


MF_ARGS = ["--d1", "6", "--d2", "4", "--rank", "2", "--lr", "0.05", "--init-scale", "0.5", "--steps", "20"]


@pytest.fixture
def restored() -> Iterator[None]:
    """The registry (and its torch side) is exactly as before once a test that registered toy entries is done."""
    tables = (laws.METRICS, laws.OPTIMIZERS, COMPUTE, RULES, RECURSIONS)
    before = [dict(t) for t in tables]
    yield
    assert [dict(t) for t in tables] == before


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_a_registered_metric_reaches_the_csv_a_chart_and_the_help(
    restored: None, toy_metrics: None, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "x.csv"
    _cli(["run", *MF_ARGS, "--no-store", "--out", str(path)], capsys)
    csv = pd.read_csv(path)
    assert {"toy_total", "toy_grad_sq_1", "toy_grad_sq_2"} <= set(csv.columns)
    np.testing.assert_allclose(csv["toy_total"], csv["sqnorm_1"] + csv["sqnorm_2"], rtol=1e-12)
    np.testing.assert_allclose(csv["toy_grad_sq_2"], csv["grad_norm_2"] ** 2, rtol=1e-12)
    # a chart of its own, named and labelled by the registry (Explore draws it: run_figures)
    assert plots.more_metrics(csv.columns) == ["toy_total", "toy_grad_sq"]
    fig = plots.metric_figure(csv, "toy_grad_sq", style.MF_LAYER_NAMES)
    assert [t.name for t in fig.data] == ["V", "U"] and fig.layout.yaxis.title.text == r"\|g_{h}\|^2"
    np.testing.assert_array_equal(fig.data[1].y, csv["toy_grad_sq_2"].to_numpy())
    assert fig.data[1].hovertemplate.startswith(r"U: \|g_{2}\|^2 = ")
    config = _config(MF_ARGS)
    charts = {name: (f, caption) for name, f, caption in run_figures(csv, config, (None, None), False)}
    assert list(charts)[-2:] == ["metric.toy_total", "metric.toy_grad_sq"]
    fig, caption = charts["metric.toy_total"]
    np.testing.assert_array_equal(fig.data[0].y, csv["toy_total"].to_numpy())
    assert "$T$" in caption and "weight²" in caption
    # the CLI help lists it with its formula and unit
    help_text = _cli(["run", "--help"], capsys)
    assert "toy_total            sum_h ||W_h||^2 [weight²]" in help_text
    assert "toy_grad_sq_h        ||g_h||^2 [gradient²]" in help_text


def test_a_registered_optimizer_reaches_the_csv_a_chart_and_the_help(
    restored: None, toy_optimizer: str, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert f"{toy_optimizer}  " in _cli(["run", "--help"], capsys)  # its law is listed ...
    assert f",{toy_optimizer}}}" in _cli(["run", "--help"], capsys)  # ... and --optimizer accepts it
    path = tmp_path / "x.csv"
    argv = [*MF_ARGS, "--optimizer", toy_optimizer, "--weight-decay", "0.05"]
    out = _cli(["run", *argv, "--no-store", "--out", str(path)], capsys)
    csv = pd.read_csv(path)
    drift, predicted = csv["gap_drift_1"], csv["pred_gap_drift_1"]
    assert drift.abs().max() > 1e-6 and (drift - predicted).abs().max() <= 1e-10 * drift.abs().max()
    assert "vs predicted" in out and "nan" not in out  # the summary line has its prediction
    # the charts draw its law's prediction: nothing says there is none
    config = _config(argv)
    assert config.optim.name == toy_optimizer and laws.why_no_law(config) == ""
    charts = {name: f for name, f, _ in run_figures(csv, config, (None, None), False)}
    predicted_trace = next(t for t in charts["balance"].data if t.name == "V-U predicted")
    np.testing.assert_array_equal(predicted_trace.y, predicted.to_numpy())
    assert not [a.text for a in charts["balance"].layout.annotations if "prediction" in a.text]


def test_a_relabelled_metric_relabels_the_charts(restored: None, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = pd.DataFrame({"step": [0, 1], "sqnorm_1": [1.0, 2.0], "sqnorm_2": [3.0, 4.0]})
    relabelled = dataclasses.replace(laws.METRICS["sqnorm"], text="S{h}", title="size")
    monkeypatch.setitem(laws.METRICS, "sqnorm", relabelled)
    fig = plots.norms_figure(frame)
    assert fig.layout.yaxis.title.text == "S_h" and fig.data[1].hovertemplate.startswith("layer 2: S₂ = ")
    assert overlay.overlay_figure({"a": frame}, "sqnorm_2").layout.yaxis.title.text == "S₂"
    drift = dataclasses.replace(laws.METRICS["gap_drift"], text="Δ{h}", title="moved")
    monkeypatch.setitem(laws.METRICS, "gap_drift", drift)
    frame = frame.assign(gap_1=[2.0, 2.5], gap_drift_1=[0.0, 0.5], pred_gap_drift_1=[0.0, 0.5], ratio_1=[1.7, 1.4])
    assert gaps.gaps_figure(frame).layout.yaxis.title.text == "Δ_h"
    assert "moved Δ_h" in [a.text for a in gaps.balance_figure(frame).layout.annotations]
