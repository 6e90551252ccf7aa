"""The Runs overlay (overlay.overlay_figure): a log y axis never hides data, and run names are shown as text.

Built from real tiny runs at two step sizes: MF's gap drift is signed (negative here), its loss positive.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import balance
from balance.views import overlay

MF = balance.preset("fig1-small").replace(**{"data.d1": 8, "data.d2": 6, "data.rank": 2, "steps": 40})


@pytest.fixture(scope="module")
def runs() -> dict[str, pd.DataFrame]:
    out = {}
    for lr in (0.01, 0.05):
        df, status = balance.run(MF.replace(**{"optim.lr": lr}))
        assert status.state == "finished"
        out[f"eta = {lr}"] = df
    return out


def drawn(fig) -> int:
    """Points Plotly can place: on a log axis only y > 0 (the rest vanish without a word)."""
    ys = np.concatenate([np.asarray(t.y, dtype=float) for t in fig.data])
    return int((ys > 0).sum()) if fig.layout.yaxis.type == "log" else int(np.isfinite(ys).sum())


def test_a_signed_metric_is_drawn_on_a_linear_axis_whatever_log_y_asks(runs):
    drift = np.concatenate([df["gap_drift_1"].to_numpy() for df in runs.values()])
    assert (drift < 0).any(), "the fixture should have a negative drift"
    fig = overlay.overlay_figure(runs, "gap_drift_1")  # log_y=True is the default
    assert fig.layout.yaxis.type != "log"
    assert drawn(fig) == len(drift)  # every point (these runs are far below the decimation limit)
    assert "values <= 0" in fig.layout.title.subtitle.text
    assert not overlay.overlay_log_ok(runs, "gap_drift_1")


def test_a_positive_metric_keeps_its_log_axis(runs):
    assert overlay.overlay_log_ok(runs, "loss")
    fig = overlay.overlay_figure(runs, "loss")
    assert fig.layout.yaxis.type == "log" and not fig.layout.title.subtitle.text
    assert fig.layout.legend.orientation == "h"  # below the plot: long run labels leave it its width
    assert drawn(fig) == sum(len(df) for df in runs.values())
    assert overlay.overlay_figure(runs, "loss", log_y=False).layout.yaxis.type == "-"


def test_one_run_with_a_value_at_zero_is_enough_to_refuse_log(runs):
    first, second = runs.values()
    zero = second.assign(loss=np.where(second["step"] == 10, 0.0, second["loss"]))
    assert not overlay.overlay_log_ok({"a": first, "b": zero}, "loss")
    assert overlay.overlay_figure({"a": first, "b": zero}, "loss").layout.yaxis.type != "log"
    # NaN (a diverged tail) hides nothing and does not count; with log x, step 0 is not drawn so not counted
    nan = second.assign(loss=np.where(second["step"] == 10, np.nan, second["loss"]))
    assert overlay.overlay_log_ok({"a": first, "b": nan}, "loss")
    at_zero = second.assign(loss=np.where(second["step"] == 0, 0.0, second["loss"]))
    assert overlay.overlay_log_ok({"b": at_zero}, "loss", log_x=True)
    assert not overlay.overlay_log_ok({"b": at_zero}, "loss")


def test_run_names_are_text_not_markup(runs):
    name = '<b>bold</b> <a href="http://host/x">link</a> & ![b](http://host/beacon.png)'
    fig = overlay.overlay_figure({name: next(iter(runs.values()))}, "loss")
    assert fig.data[0].name == name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert "<" not in fig.data[0].name
