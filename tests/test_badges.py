"""Residual badges and the sharpness chart (views only): computed from a run's columns, drawn on the charts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from balance.engine.laws import column
from balance.views import badges
from balance.views.gaps import balance_figure
from balance.views.mechanisms import mechanisms_figure, sharpness_figure


def _frame(error: float, sharp: float = 1.0, lr: float = 0.5) -> pd.DataFrame:
    k = np.arange(50.0)
    drift = 1e-2 * np.sqrt(k)
    return pd.DataFrame({
        "step": k, "t": k * lr, "lr": lr, "loss": np.exp(-k), column("sqnorm", 1): 1.0, column("sqnorm", 2): 2.0,
        column("gap", 1): 1.0 + drift, column("gap_drift", 1): drift,
        column("pred_gap_drift", 1): drift * (1 + error), column("ratio", 1): np.sqrt(2.0),
        "sharpness": np.where(k % 10 == 0, sharp, np.nan), "stability_bound": 2 / lr,
    })  # fmt: skip


@pytest.mark.parametrize(
    ("error", "kind"),
    [(1e-14, badges.EXACT), (1e-3, badges.FIRST_ORDER), (0.5, badges.NOT_PREDICTED)],
)
def test_law_badge(error: float, kind: str) -> None:
    assert badges.law_badge(_frame(error)).startswith(kind)
    assert badges.law_residual(_frame(error)) == pytest.approx(error, rel=1e-6)


def test_no_prediction_no_badge() -> None:
    df = _frame(0.0).assign(**{column("pred_gap_drift", 1): np.nan})
    assert badges.law_badge(df) == "" and np.isnan(badges.law_residual(df))


def test_bound_badge() -> None:
    assert badges.bound_badge(_frame(0.0, sharp=3.0, lr=0.5)).startswith(badges.RESPECTED)  # 3 <= 4
    assert badges.bound_badge(_frame(0.0, sharp=5.0, lr=0.5)).startswith(badges.EXCEEDED)
    assert badges.bound_badge(_frame(0.0).assign(sharpness=np.nan)) == ""


def test_charts_carry_their_badges() -> None:
    texts = [a.text for a in balance_figure(_frame(1e-14)).layout.annotations]
    assert any(badges.EXACT in t for t in texts)
    texts = [a.text for a in balance_figure(_frame(1e-14), no_law="tanh is not homogeneous").layout.annotations]
    assert not any(badges.EXACT in t for t in texts)
    fig = sharpness_figure(_frame(0.0, sharp=3.0))
    assert [t.name for t in fig.data] == ["λ_max(∇²L)", "2/η_k"]
    assert any(badges.RESPECTED in a.text for a in fig.layout.annotations)
    assert "sharpness_every" in sharpness_figure(_frame(0.0).assign(sharpness=np.nan)).layout.annotations[0].text


def test_mechanisms_figure_counts_the_bound() -> None:
    fig = mechanisms_figure({"a": _frame(1e-14, sharp=3.0), "b": _frame(1e-14, sharp=5.0)})
    texts = " ".join(a.text for a in fig.layout.annotations)
    assert "1 of 2" in texts and badges.RESPECTED in texts and "exact to<br>round-off" in texts
    assert len(fig.data) == 6 and all(t.opacity == 1 for t in fig.data)
