"""balance.watch: per symmetry kind, in float64, the watched prediction matches the measured drift to 1e-10 relative
over 100 SGD steps (and under momentum, Nesterov, weight decay, per-group step sizes); Adam is measured only, with
the reason; the run reaches the store (origin 'watched') while the loop runs, exports, and never changes training;
the notebook view's widgets update in place."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import balance
from balance.cli.core import main
from balance.runs.store import RunStore
from balance.watch.check import audit
from balance.watch.watcher import Watch

TOLERANCE = 1e-10
STEPS = 100


class Power(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.relu(self.a(x)) ** 2)


class LoRA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(4, 3).requires_grad_(False)
        self.A = nn.Parameter(torch.randn(2, 4) / 2)
        self.B = nn.Parameter(torch.zeros(3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + x @ self.A.t() @ self.B.t()


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0].sum(dim=1)


def models() -> dict[str, tuple[nn.Module, torch.Tensor, set[str]]]:
    """Per symmetry kind a float64 model, inputs and the kinds its audit finds."""
    torch.manual_seed(0)
    x, seq = torch.randn(16, 4), torch.randn(16, 3, 4)
    bn = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, eps=1e-30), nn.ReLU(), nn.Linear(6, 2))
    ln = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6, eps=1e-30), nn.Linear(6, 2))
    out = {
        "rescale": (nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), x, {"rescale"}),
        "rescale_power": (Power(), x, {"rescale_power"}),
        "linear_pair": (nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2)), x, {"linear_pair"}),
        "batchnorm_scale": (bn, x, {"batchnorm_scale", "rescale"}),
        "layernorm_scale": (ln, x, {"layernorm_scale", "rescale"}),
        "attention": (Attention(), seq, {"attention_qk", "attention_vo"}),
        "lora": (LoRA(), x, {"linear_pair"}),
    }
    return {name: (model.double(), inputs.double(), kinds) for name, (model, inputs, kinds) in out.items()}


SCALE = {"rescale_power": 0.2, "attention": 0.1}  # step-size factors where the default diverges
OPTIMIZERS = {
    "sgd": lambda p, s: torch.optim.SGD(p, lr=0.05 * s),
    "weight decay": lambda p, s: torch.optim.SGD(p, lr=0.05 * s, weight_decay=0.05),
    "momentum": lambda p, s: torch.optim.SGD(p, lr=0.02 * s, momentum=0.9),
    "momentum + decay": lambda p, s: torch.optim.SGD(p, lr=0.02 * s, momentum=0.9, weight_decay=0.05),
    "nesterov": lambda p, s: torch.optim.SGD(p, lr=0.02 * s, momentum=0.9, nesterov=True),
    "nesterov + decay": lambda p, s: torch.optim.SGD(p, lr=0.02 * s, momentum=0.9, nesterov=True, weight_decay=0.05),
}


def train(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, w: Watch | None, steps: int = STEPS) -> None:
    generator = torch.Generator().manual_seed(1)
    target = torch.randn(model(x).shape, generator=generator, dtype=torch.float64)
    for _ in range(steps):
        batch = torch.randint(0, len(x), (8,), generator=generator)  # mini-batches: SGD, not GD
        opt.zero_grad()
        loss = (model(x[batch]) - target[batch]).square().mean()
        loss.backward()
        if w is not None:
            w.loss(loss)
        opt.step()


def drifts(w: Watch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    df = w.frame()
    n = len(w.predictor.tracked)  # type: ignore[union-attr]
    measured = df[[f"gap_drift_{j}" for j in range(1, n + 1)]].to_numpy()
    predicted = df[[f"pred_gap_drift_{j}" for j in range(1, n + 1)]].to_numpy()
    return measured, predicted, df[[f"gap_{j}" for j in range(1, n + 1)]].to_numpy()


def assert_exact(w: Watch) -> None:
    measured, predicted, _ = drifts(w)
    final = np.abs(measured[-1])
    assert (final > 1e-8).all(), "the drift must be large enough for a relative test"
    assert np.abs(measured - predicted).max(axis=0).max() <= TOLERANCE * final.max()
    assert (np.abs(measured[-1] - predicted[-1]) <= TOLERANCE * final).all()


@pytest.mark.parametrize("kind", list(models()))
def test_the_prediction_matches_the_drift_over_100_sgd_steps(kind: str) -> None:
    model, x, kinds = models()[kind]
    opt = OPTIMIZERS["sgd"](model.parameters(), SCALE.get(kind, 1.0))
    w = balance.watch(model, opt, kind, every=1, example_input=x, store=False, matrices=True)
    assert {c.kind for c in w.audit.laws} == kinds  # type: ignore[union-attr]
    train(model, opt, x, w)
    w.close()
    assert w.step == STEPS and len(w.frame()) == STEPS + 1
    assert_exact(w)
    for t, Q in zip(w.predictor.tracked, w.predictor.measure()):  # type: ignore[union-attr]
        if t.Qm is not None:  # the whole matrix of every matrix law, too
            assert t.law.matrix
            assert float((Q - t.Qm).norm()) <= TOLERANCE * float((Q - t.Q0).norm())


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("kind", ["rescale", "attention", "batchnorm_scale"])
def test_momentum_nesterov_and_weight_decay_are_predicted_exactly(kind: str, optimizer: str) -> None:
    model, x, _ = models()[kind]
    opt = OPTIMIZERS[optimizer](model.parameters(), SCALE.get(kind, 1.0))
    w = balance.watch(model, opt, every=5, example_input=x, store=False, matrices=True)
    train(model, opt, x, w)
    w.close()
    assert all(t.rule is not None for t in w.predictor.tracked)  # type: ignore[union-attr]
    assert_exact(w)


def test_lora_plus_step_sizes_predict_the_eta_weighted_law() -> None:
    model, x, _ = models()["lora"]
    A, B = model.A, model.B
    opt = torch.optim.SGD([{"params": [A], "lr": 0.02}, {"params": [B], "lr": 0.32}], momentum=0.9)
    w = balance.watch(model, opt, "lora+", every=1, example_input=x, store=False, matrices=True)
    train(model, opt, x, w)
    w.close()
    assert_exact(w)
    t = w.predictor.tracked[0]  # type: ignore[union-attr]
    assert t.ratios == {"A": 1.0, "B": 16.0}
    A, B = A.detach(), B.detach()
    weighted = A @ A.T - B.T @ B / 16  # A A^T / eta_A - B^T B / eta_B, times eta_A
    _, _, gaps = drifts(w)
    assert gaps[-1, 0] == pytest.approx(float(torch.trace(weighted)), rel=1e-12)


def test_adam_is_measured_only_with_the_reason() -> None:
    model, x, _ = models()["rescale"]
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    w = balance.watch(model, opt, every=1, example_input=x, store=False)
    train(model, opt, x, w, steps=10)
    w.close()
    measured, predicted, _ = drifts(w)
    assert np.isnan(predicted).all() and np.isfinite(measured).all()
    assert "Adam rescales each coordinate" in w.laws()["measured_only"].iloc[0]


def test_watching_does_not_change_training() -> None:
    def trained(watched: bool) -> list[torch.Tensor]:
        torch.manual_seed(5)
        model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, 2)).double()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        x = torch.randn(16, 4, dtype=torch.float64)
        w = balance.watch(model, opt, every=3, store=False) if watched else None  # audits at the first forward
        train(model, opt, x, w, steps=20)
        if w is not None:
            w.close()
            assert w.audit is not None and len(w.audit.laws) == 1
        return [p.detach().clone() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(trained(False), trained(True)))


def test_rows_follow_the_interval_and_the_loss_is_the_loops() -> None:
    model, x, _ = models()["rescale"]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = balance.watch(model, opt, every=10, example_input=x, store=False)
    train(model, opt, x, w, steps=35)
    w.close()
    df = w.frame()
    assert df["step"].tolist() == [0, 10, 20, 30, 35]  # and the final state
    assert np.isfinite(df["loss"].iloc[:-1]).all() and math.isnan(df["loss"].iloc[-1])
    assert df["t"].iloc[-1] == pytest.approx(35 * 0.05)
    assert {"sqnorm_1", "sqnorm_2", "grad_norm_1", "gap_1", "neuron_drift_max"} <= set(df.columns)


def test_a_watched_run_is_stored_live_and_exports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from balance.watch import watcher

    monkeypatch.setattr(watcher, "FLUSH_S", 0.0)  # write at every step, as a long run does every second
    model, x, _ = models()["attention"]
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.5)
    w = balance.watch(model, opt, "my attention", every=1, example_input=x, store=tmp_path)
    store = RunStore(tmp_path, read_only=True)
    record = store.get_run(w.run_id)
    assert (record.origin, record.state, record.name) == ("watched", "running", "my attention")
    for k in range(30):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        scheduler.step()
        if k == 10:  # the dashboard reads the rows while the loop runs
            assert store.metrics(w.run_id)["step"].max() >= 10
    w.close()
    rows = store.metrics(w.run_id)
    assert rows["step"].tolist() == list(range(31))
    assert np.allclose(
        rows["gap_drift_1"], rows["pred_gap_drift_1"], rtol=0, atol=1e-9 * abs(rows["gap_drift_1"]).max()
    )
    record = store.get_run(w.run_id)
    assert record.state == "finished" and "1 = attn (W_Q, W_K per head, 2 heads) [attention_qk]" in record.message
    events = store.events(w.run_id)
    assert events[events["kind"] == "lr"]["step"].tolist() == [20]
    assert store.list_runs()["origin"].tolist() == ["watched"]
    assert len(store.neurons(w.run_id))  # the per-unit table for Explore's neuron chart
    store.close()
    target = tmp_path / "run.zip"
    assert main(["runs", "export", w.run_id, str(target), "--home", str(tmp_path)]) == 0
    other = RunStore(tmp_path / "elsewhere")
    copied = other.import_run(target)
    assert other.get_run(copied).origin == "imported"
    assert other.metrics(copied)["gap_1"].tolist() == rows["gap_1"].tolist()
    other.close()


def test_the_store_keeps_watched_runs_apart_from_trained_ones(tmp_path: Path) -> None:
    from balance.config import RunConfig

    with RunStore(tmp_path) as store:
        with pytest.raises(ValueError, match="origin 'imported'"):
            store.create_run(RunConfig(), ["step"], origin="imported")
        run = store.create_run(RunConfig(), ["step"], origin="watched")
        assert store.get_run(run).origin == "watched"
        from balance.runs import reuse

        assert reuse.__doc__ and "origin" in reuse.__doc__  # reuse takes only origin == 'trained' (tested there)


def test_close_detaches_the_hooks() -> None:
    model, x, _ = models()["rescale"]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = balance.watch(model, opt, every=1, example_input=x, store=False)
    train(model, opt, x, w, steps=3)
    w.close()
    train(model, opt, x, None, steps=3)
    assert w.step == 3 and len(w.frame()) == 4


def test_an_audit_made_once_can_be_reused() -> None:
    model, x, _ = models()["rescale"]
    report = audit(model, x)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = balance.watch(model, opt, report=report, store=False)
    assert w.audit is report and len(w.laws()) == 1
    w.close()


def test_the_notebook_view_updates_its_widgets_in_place() -> None:
    pytest.importorskip("anywidget")
    model, x, _ = models()["attention"]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    w = balance.watch(model, opt, "notebook", every=1, example_input=x, store=False)
    box = w.show()
    view = w._views[0]
    assert set(view.widgets) == {"loss", "gaps", "norms", "grad_norms", "matrix"}
    assert len(view.widgets["gaps"].data) == 0  # no row before the first step: the chart says so
    train(model, opt, x, w, steps=5)
    w.flush()
    balance_widget = view.widgets["gaps"]  # a new widget, in the same place, now that there are rows
    assert box.children[2] is balance_widget
    trace = balance_widget.data[0]
    assert len(trace.x) == 5 and trace.mode == "lines"  # rows 0 .. 4 (row k is the state before step k)
    train(model, opt, x, w, steps=7)
    w.flush()
    assert view.widgets["gaps"] is balance_widget and box.children[2] is balance_widget  # the same widget
    assert balance_widget.data[0] is trace and len(trace.x) == 12  # its traces updated in place
    names = [t.name for t in balance_widget.data]
    assert "1: attn (W_Q, W_K per head, 2 heads) measured" in names
    assert "2: attn (W_V, W_O per head, 2 heads) predicted" in names
    assert "laws: 1: attn" in view.header.value
    frame = w.frame()
    y = np.asarray(balance_widget.data[names.index("1: attn (W_Q, W_K per head, 2 heads) measured")].y)
    assert np.allclose(y, frame["gap_drift_1"].to_numpy())
    w.close()


def test_the_runs_page_names_a_watched_runs_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from balance.app import runs as page

    model, x, _ = models()["rescale"]
    w = balance.watch(model, torch.optim.SGD(model.parameters(), lr=0.05), "mine", example_input=x, store=tmp_path)
    w.close()
    store = RunStore(tmp_path, read_only=True)
    monkeypatch.setattr(page, "store", lambda: store)
    listed = page.watched_models(store.list_runs()).assign(step_size="0.05")
    assert listed[["model", "dataset", "origin"]].values.tolist() == [["Sequential (watched)", "your data", "watched"]]
    assert page.run_labels(listed)[w.run_id].endswith("· watched")
    store.close()


def test_importing_the_package_loads_no_torch() -> None:
    import json
    import subprocess
    import sys

    code = "import json, sys, balance.watch, balance.engine.symmetries; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "torch" not in json.loads(out)


def test_explore_draws_a_watched_run_with_its_stand_in_config() -> None:
    # Explore reads a run's config for its charts: as matrix factorisation, a watched run got MF's two layer names
    # (V, U) for its eight layers and the page failed; the stand-in is a ReLU MLP on teacher data.
    from balance.app.common import run_figures
    from balance.config import RunConfig
    from balance.watch.watcher import stand_in

    model, x, _ = models()["attention"]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    w = balance.watch(model, opt, every=1, example_input=x, store=False)
    train(model, opt, x, w, steps=5)
    w.close()
    config = stand_in(opt, 1)
    assert (config.model.name, config.data.name, config.optim.name, config.optim.lr) == (
        "mlp",
        "teacher",
        "momentum",
        0.01,
    )
    names = [name for name, _, _ in run_figures(w.frame(), config, (None, None), False)]
    assert names == ["loss", "norms", "balance", "grad_norms", "matrix"]
    with pytest.raises(ValueError, match="layer_names"):
        run_figures(w.frame().assign(sqnorm_3=1.0), RunConfig(), (None, None), False)
