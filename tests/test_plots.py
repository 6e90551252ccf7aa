"""Tests of balance.views.figures: every chart built from real tiny runs, its traces checked by name and data against
the
metrics columns (and the ratio overlay against theory.predicted_ratio); decimation keeps extremes and spikes."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import balance
from balance.engine import laws
from balance.engine.theory import predicted_ratio
from balance.views import figures as plots
from balance.views import gaps, neurons, overlay, style

MF = balance.preset("fig1-small").replace(**{"data.d1": 8, "data.d2": 6, "data.rank": 2, "steps": 30})
MLP = balance.preset("mlp-relu").replace(**{"model.bias": True, "model.width": 6, "data.samples": 16, "steps": 30})
ADAM = balance.preset("linear-deep").replace(
    **{"model.depth": 3, "model.width": 4, "data.samples": 16, "steps": 10, "optim.name": "adam"}
)
RUNS = {"mf": MF, "mlp": MLP, "adam": ADAM}


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    out = {}
    for name, cfg in RUNS.items():
        df, status = balance.run(cfg)
        assert status.state == "finished"
        out[name] = df
    return out


@pytest.fixture(scope="module")
def tables() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(initial, final) neuron tables of the MLP with biases."""
    trainer = balance.Trainer(MLP)
    initial = trainer.neuron_table()
    while trainer.status.state == "running":
        trainer.step()
    return initial, trainer.neuron_table()


def names_of(case: str) -> tuple[str, ...] | None:
    return style.MF_LAYER_NAMES if case == "mf" else None


def trace(fig: go.Figure, name: str) -> go.Scatter:
    found = [t for t in fig.data if t.name == name]
    assert found, f"no trace {name!r} in {[t.name for t in fig.data]}"
    return found[0]


def annotations(fig: go.Figure) -> list[str]:
    return [a.text for a in fig.layout.annotations]


def all_charts(df: pd.DataFrame, case: str) -> dict[str, go.Figure]:
    return {name: fn(df, layer_names=names_of(case)) for name, (fn, _) in plots.FIGURES.items()}


# --- every chart -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", RUNS)
def test_charts_use_numpy_and_shared_style(frames, case):
    df = frames[case]
    before = df.copy()
    for name, fig in all_charts(df, case).items():
        assert fig.layout.template.layout.paper_bgcolor == "white", name  # plotly_white's look ...
        assert fig.layout.template.data.to_plotly_json() == {}, name  # ... without its per-trace defaults (costly)
        assert fig.layout.uirevision == style.UIREVISION
        assert fig.layout.height == style.HEIGHT
        for t in fig.data:
            assert isinstance(t.x, np.ndarray) and isinstance(t.y, np.ndarray), (name, t.name)
        fig.to_json()  # serialisable
    pd.testing.assert_frame_equal(df, before)  # never mutated


@pytest.mark.parametrize("case", RUNS)
def test_every_axis_states_its_values(frames, case):
    """Log axes label every labelled tick in full (never a bare minor digit: "2" for 0.2 and for 2); step axes
    count in whole, thousands-separated numbers (never 0.5×10⁴). The browser test reads the drawn labels."""
    df = frames[case]
    figures = {
        **all_charts(df, case),
        "neurons": neurons.neuron_figure(
            pd.DataFrame({"layer": [1, 1], "neuron": [0, 1], "in_sqnorm": [0.5, 2.0], "out_sqnorm": [1.0, 3.0]}),
            log_axes=True,
        ),
    }
    for name, fig in figures.items():
        axes = {k: v for k, v in fig.layout.to_plotly_json().items() if re.fullmatch(r"[xy]axis\d*", k)}
        for key, ax in axes.items():
            if ax.get("type") == "log":
                assert ax.get("minorloglabels") == "complete", (name, key)
            if ax.get("title", {}).get("text") == "step":
                assert ax.get("tickformat") == ",~f", (name, key)


def test_a_short_run_has_its_ticks_at_whole_steps(frames):
    two = frames["mf"].iloc[:3]  # steps 0, 1, 2: plotly would tick 0, 0.5, 1, 1.5, 2
    for name, fig in all_charts(two, "mf").items():
        for key in [k for k in fig.layout.to_plotly_json() if k.startswith("xaxis")]:
            assert list(fig.layout[key].tickvals) == [0, 1, 2], (name, key)
    assert plots.loss_figure(frames["mf"]).layout.xaxis.tickvals is None  # a long run: plotly's own ticks


def test_step_marks_on_every_step_axis(frames):
    fig = style.mark_steps(gaps.balance_figure(frames["mf"]), [(50.0, "η → 0.02")])
    assert [(s.x0, s.xref, s.yref) for s in fig.layout.shapes if s.x0 == 50.0] == [
        (50.0, "x", "y domain"),
        (50.0, "x2", "y2 domain"),
    ]
    assert [a.text for a in fig.layout.annotations].count("η → 0.02") == 2
    logged = style.mark_steps(plots.loss_figure(frames["mf"], log_x=True), [(0.0, "at 0"), (5.0, "η → 1")])
    assert [a.text for a in logged.layout.annotations] == ["η → 1"]  # a log axis cannot show step 0


def test_where_the_law_does_not_apply_no_prediction_is_drawn(frames):
    why = "tanh is not homogeneous: no conservation law to predict"
    for fig in (gaps.balance_figure(frames["mlp"], no_law=why), gaps.gaps_figure(frames["mlp"], no_law=why)):
        names = [t.name for t in fig.data]
        assert not [n for n in names if "predicted" in n or n == "gradient flow"], names
        assert "tanh is not homogeneous" in " ".join(annotations(fig)).replace("<br>", " ")
    ratios = gaps.ratios_figure(frames["mlp"], no_law=why)
    assert [t.name for t in ratios.data] == ["layers 1-2 measured", "layers 2-3 measured"]


def test_fit_legend_keeps_the_plot_area(frames):
    fig = neurons.neuron_figure(
        pd.DataFrame({"layer": list(range(1, 7)), "neuron": [0] * 6, "in_sqnorm": [1.0] * 6, "out_sqnorm": [2.0] * 6})
    )
    assert fig.layout.height == style.HEIGHT
    style.fit_legend(fig, style.NARROW)
    assert fig.layout.height >= style.HEIGHT + 2 * style.LEGEND_ROW  # 7 entries: at least two rows at 300 px


def test_loss_figure(frames):
    df = frames["mlp"]
    fig = plots.loss_figure(df)
    np.testing.assert_array_equal(trace(fig, "loss").y, df["loss"].to_numpy())
    np.testing.assert_array_equal(trace(fig, "loss").x, df["step"].to_numpy())
    assert fig.layout.yaxis.type == "log" and fig.layout.xaxis.type == "-"
    log_x = plots.loss_figure(df, log_x=True)
    assert log_x.layout.xaxis.type == "log"
    np.testing.assert_array_equal(trace(log_x, "loss").x, df["step"].to_numpy()[1:])  # step 0 left out
    assert plots.loss_figure(df, x="t").layout.xaxis.title.text == "t"


@pytest.mark.parametrize("case", ["mf", "mlp"])
@pytest.mark.parametrize(("chart", "prefix"), [("norms", "sqnorm"), ("grad_norms", "grad_norm")])
def test_per_layer_figures(frames, case, chart, prefix):
    df = frames[case]
    fig = plots.FIGURES[chart][0](df, layer_names=names_of(case))
    labels = ["V", "U"] if case == "mf" else ["layer 1", "layer 2", "layer 3"]
    assert [t.name for t in fig.data] == labels
    for h, label in enumerate(labels, start=1):
        np.testing.assert_array_equal(trace(fig, label).y, df[f"{prefix}_{h}"].to_numpy())
        assert trace(fig, label).line.dash == "solid"
    assert len({t.line.color for t in fig.data}) == len(labels)
    assert fig.layout.yaxis.type == "log"


def test_layer_names_must_match(frames):
    with pytest.raises(ValueError, match="2 names"):
        plots.norms_figure(frames["mlp"], layer_names=("V", "U"))


@pytest.mark.parametrize("case", ["mf", "mlp"])
def test_gaps_figure(frames, case):
    df = frames[case]
    fig = gaps.gaps_figure(df, layer_names=names_of(case))
    pairs = ["V-U"] if case == "mf" else ["layers 1-2", "layers 2-3"]
    assert [t.name for t in fig.data] == [f"{p} {k}" for p in pairs for k in ("measured", "predicted")] + [
        "gradient flow"
    ]
    for h, pair in enumerate(pairs, start=1):
        measured, predicted = trace(fig, f"{pair} measured"), trace(fig, f"{pair} predicted")
        np.testing.assert_array_equal(measured.y, df[f"gap_drift_{h}"].to_numpy())
        np.testing.assert_array_equal(predicted.y, df[f"pred_gap_drift_{h}"].to_numpy())
        assert (measured.line.dash, predicted.line.dash) == ("solid", "dash")
        assert measured.line.color == predicted.line.color
        # GD in float64: the prediction is exact
        np.testing.assert_allclose(measured.y, predicted.y, rtol=1e-8, atol=1e-12 * np.abs(df[f"gap_{h}"]).max())
    flow = trace(fig, "gradient flow")
    assert flow.line.dash == "dot" and np.all(flow.y == 0)
    assert flow.x[0] == df["step"].iloc[0] and flow.x[-1] == df["step"].iloc[-1]
    assert fig.layout.yaxis.type == "-"  # not log: the drift changes sign


def test_gaps_without_prediction(frames):
    df = frames["adam"]
    assert df["pred_gap_drift_1"].isna().all()
    fig = gaps.gaps_figure(df)
    assert not [t for t in fig.data if "predicted" in t.name]
    assert "no finite-step prediction for this optimiser" in annotations(fig)
    np.testing.assert_array_equal(trace(fig, "layers 2-3 measured").y, df["gap_drift_2"].to_numpy())


def expected_ratio(df: pd.DataFrame, h: int, with_drift: bool = True) -> np.ndarray:
    bias = df[f"bias_sqnorm_{h}"] if f"bias_sqnorm_{h}" in df else 0.0 * df[f"sqnorm_{h}"]
    gap0 = df[f"gap_{h}"].iloc[0]
    drift = df[f"pred_gap_drift_{h}"] if with_drift else 0.0 * df[f"sqnorm_{h}"]
    return predicted_ratio(df[f"sqnorm_{h}"].to_numpy(), bias.to_numpy(), gap0, drift.to_numpy())


@pytest.mark.parametrize("case", ["mf", "mlp"])
def test_ratios_figure(frames, case):
    df = frames[case]
    fig = gaps.ratios_figure(df, layer_names=names_of(case))
    pairs = ["V-U"] if case == "mf" else ["layers 1-2", "layers 2-3"]
    for h, pair in enumerate(pairs, start=1):
        measured, predicted = trace(fig, f"{pair} measured"), trace(fig, f"{pair} predicted")
        np.testing.assert_array_equal(measured.y, df[f"ratio_{h}"].to_numpy())
        np.testing.assert_allclose(predicted.y, expected_ratio(df, h), rtol=1e-12)
        np.testing.assert_allclose(predicted.y, measured.y, rtol=1e-8)  # the invariant explains the ratio exactly
        assert predicted.line.dash == "dash" and measured.line.color == predicted.line.color
    assert fig.layout.yaxis.type == "log"
    assert fig.layout.shapes[0].y0 == 1  # the balanced ratio


def test_ratios_without_prediction_show_conserved_reading(frames):
    df = frames["adam"]
    fig = gaps.ratios_figure(df)
    conserved = trace(fig, "layers 1-2 if gap conserved")
    np.testing.assert_allclose(conserved.y, expected_ratio(df, 1, with_drift=False), rtol=1e-12)
    assert conserved.line.dash == "dash"


@pytest.mark.parametrize("case", RUNS)
def test_balance_figure_is_two_panels_sharing_the_legend(frames, case):
    df = frames[case]
    fig = gaps.balance_figure(df, layer_names=names_of(case))
    alone = gaps.gaps_figure(df, layer_names=names_of(case))
    ratios = gaps.ratios_figure(df, layer_names=names_of(case))
    assert len(fig.data) == len(alone.data) + len(ratios.data)
    left = [t for t in fig.data if t.yaxis in (None, "y")]
    right = [t for t in fig.data if t.yaxis == "y2"]
    assert [t.name for t in left] == [t.name for t in alone.data]
    assert [t.name for t in right] == [t.name for t in ratios.data]
    for a, b in zip(right, ratios.data):
        np.testing.assert_array_equal(a.y, b.y)
    shown = [t.name for t in fig.data if t.showlegend is not False]
    assert len(shown) == len(set(shown))  # a pair's gap and ratio traces share one legend entry
    assert fig.layout.yaxis.type == "-" and fig.layout.yaxis2.type == "log"


@pytest.mark.parametrize("case", ["mf", "adam"])
def test_matrix_figure(frames, case):
    df = frames[case]
    fig = gaps.matrix_figure(df, layer_names=names_of(case))
    hs = [1] if case == "mf" else [1, 2]
    labels = ["V-U"] if case == "mf" else ["layers 1-2", "layers 2-3"]
    assert [t.name for t in fig.data] == [f"{p} {k}" for p in labels for k in ("drift", "||D||")]
    for h, label in zip(hs, labels):
        np.testing.assert_array_equal(trace(fig, f"{label} drift").y, df[f"matrix_drift_{h}"].to_numpy())
        np.testing.assert_array_equal(trace(fig, f"{label} ||D||").y, df[f"matrix_inv_{h}"].to_numpy())
    assert fig.layout.yaxis.type == "log"


def test_matrix_figure_without_linear_layers(frames):
    fig = gaps.matrix_figure(frames["mlp"])
    assert not fig.data and annotations(fig) == ["no linear layers"]


def test_overlay_figure(frames):
    runs = {"eta = 0.01": frames["mf"], "eta = 0.05": frames["mlp"], "no loss": frames["mlp"].drop(columns="loss")}
    fig = overlay.overlay_figure(runs, "loss")
    assert [t.name for t in fig.data] == ["eta = 0.01", "eta = 0.05"]
    np.testing.assert_array_equal(fig.data[1].y, frames["mlp"]["loss"].to_numpy())
    assert fig.layout.yaxis.type == "log"
    assert fig.data[0].line.color != fig.data[1].line.color
    linear = overlay.overlay_figure(runs, "gap_drift_1", log_y=False, x="t")
    assert linear.layout.yaxis.type == "-"
    np.testing.assert_array_equal(linear.data[0].x, frames["mf"]["t"].to_numpy())
    missing = overlay.overlay_figure(runs, "matrix_drift_2")
    assert not missing.data and "no run has the column 'matrix_drift_2'" in annotations(missing)
    assert not overlay.overlay_figure({}, "loss").data


# --- the neuron scatter -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("log_axes", [False, True])
def test_neuron_figure_with_biases(tables, log_axes):
    initial, final = tables
    kept = {k: v.copy() for k, v in final.items()}
    fig = neurons.neuron_figure(final, initial=pd.DataFrame(initial), log_axes=log_axes)
    for k in final:
        np.testing.assert_array_equal(final[k], kept[k])  # never mutated
    layers = sorted(set(final["layer"].tolist()))
    assert layers == [1, 2]
    expected = ["in = out"]
    expected += [f"hidden {h} {k}" for h in layers for k in ("in - out constant", "at start")]
    expected += [f"hidden {h}" for h in layers]
    assert [t.name for t in fig.data] == expected
    for h in layers:
        rows = final["layer"] == h
        points = trace(fig, f"hidden {h}")
        np.testing.assert_array_equal(points.x, final["in_sqnorm"][rows])
        np.testing.assert_array_equal(points.y, final["out_sqnorm"][rows])
        np.testing.assert_array_equal(points.customdata, final["neuron"][rows])
        lines = trace(fig, f"hidden {h} in - out constant")
        assert lines.line.dash == "dash"
        start = initial["layer"] == h
        offsets = (initial["out_sqnorm"] - initial["in_sqnorm"])[start]
        segments = np.isnan(lines.x).sum()
        assert segments == start.sum()
        for segment, offset in zip(np.split(np.arange(len(lines.x)), np.flatnonzero(np.isnan(lines.x)) + 1), offsets):
            x, y = lines.x[segment], lines.y[segment]
            ok = np.isfinite(x) & np.isfinite(y)
            assert ok.any()
            np.testing.assert_allclose(y[ok] - x[ok], offset, atol=1e-12)
        assert points.marker.color == lines.line.color
    assert fig.layout.xaxis.type == ("log" if log_axes else "-")
    assert tuple(fig.layout.xaxis.range) == tuple(fig.layout.yaxis.range)
    diagonal = trace(fig, "in = out")
    assert diagonal.line.dash == "dot"
    span = 10.0 ** np.array(fig.layout.xaxis.range) if log_axes else np.array(fig.layout.xaxis.range)
    np.testing.assert_allclose(diagonal.x, span)


def test_neuron_figure_without_initial_and_edge_cases(tables):
    _, final = tables
    fig = neurons.neuron_figure(pd.DataFrame(final))
    assert [t.name for t in fig.data] == ["in = out", "hidden 1", "hidden 2"]
    empty = {k: v[:0] for k, v in final.items()}
    assert annotations(neurons.neuron_figure(empty)) == ["no hidden units"]
    assert annotations(neurons.neuron_figure({"layer": final["layer"]})) == ["no neuron table"]
    floats = neurons.neuron_figure(pd.DataFrame(final).astype(float).assign(step=30.0))  # as a store might return it
    assert [t.name for t in floats.data] == ["in = out", "hidden 1", "hidden 2"]
    thinned = neurons.neuron_figure(final, max_points=5)
    assert sum(len(t.x) for t in thinned.data[1:]) == 5


# --- absent columns, no rows, long runs ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", plots.FIGURES)
def test_empty_and_absent_columns(frames, name):
    fn = plots.FIGURES[name][0]
    no_rows = fn(frames["mlp"].iloc[:0])
    assert not no_rows.data
    assert annotations(no_rows) == (["no linear layers"] if name == "matrix" else ["no rows yet"])
    only_step = fn(frames["mlp"][["step"]])
    assert not only_step.data and len(annotations(only_step)) == 1
    no_x = fn(frames["mlp"].drop(columns="step"))
    assert not no_x.data


def test_single_row_is_drawn_as_markers(frames):
    fig = plots.loss_figure(frames["mlp"].iloc[:1])
    assert fig.data[0].mode == "markers" and len(fig.data[0].y) == 1


def test_long_run_is_decimated_and_keeps_a_spike(frames):
    base = frames["mlp"]
    n = 50_000
    rng = np.random.default_rng(0)
    long = pd.DataFrame({c: rng.uniform(1.0, 2.0, n) for c in base.columns})
    long["step"] = np.arange(n)
    long.loc[31_337, "grad_norm_2"] = 1e6
    for name, (fn, _) in plots.FIGURES.items():
        fig = fn(long, max_points=500)
        for t in fig.data:
            assert len(t.x) <= 2 * 500 + 2, (name, t.name)
    spike = trace(plots.grad_norms_figure(long, max_points=500), "layer 2")
    assert spike.y.max() == 1e6 and 31_337 in spike.x


# --- decimate --------------------------------------------------------------------------------------------------


def spiky_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return pd.DataFrame(
        {
            "step": t,
            "smooth": np.exp(-t / n),
            "noise": rng.normal(size=n),
            "walk": rng.normal(size=n).cumsum(),
            "flat": np.zeros(n),
            "label": ["x"] * n,
        }
    )


def check_decimated(df: pd.DataFrame, out: pd.DataFrame, max_points: int, x: str = "step") -> None:
    assert len(out) <= 2 * max_points + 2
    assert out[x].is_monotonic_increasing
    assert list(out.columns) == list(df.columns)
    ordered = df.sort_values(x, kind="stable")
    pd.testing.assert_series_equal(out.iloc[0], ordered.iloc[0], check_names=False)
    pd.testing.assert_series_equal(out.iloc[-1], ordered.iloc[-1], check_names=False)
    for c in df.select_dtypes("number").columns:
        if df[c].notna().any():
            assert out[c].max() == df[c].max() and out[c].min() == df[c].min(), c
    assert set(out.index) <= set(df.index)
    pd.testing.assert_frame_equal(out, ordered.loc[out.index])  # whole rows, unchanged


def test_decimate_keeps_extremes_ends_and_bound():
    df = spiky_frame(20_000)
    before = df.copy()
    out = style.decimate(df, max_points=300)
    check_decimated(df, out, 300)
    assert len(out) > 300  # uses its budget, not just the extremes
    pd.testing.assert_frame_equal(df, before)


def test_decimate_keeps_a_single_spike_in_100k_rows():
    n = 100_000
    df = pd.DataFrame({"step": np.arange(n), "loss": np.linspace(1.0, 0.5, n), "g": np.ones(n)})
    df.loc[77_777, "loss"] = 50.0
    df.loc[12_345, "g"] = -3.0
    out = style.decimate(df)
    assert len(out) <= 2 * style.MAX_POINTS + 2
    assert 77_777 in out.index and 12_345 in out.index
    assert out.loc[77_777, "loss"] == 50.0


def test_decimate_sorts_copies_and_handles_nan():
    df = spiky_frame(5_000).sample(frac=1.0, random_state=1)
    df["pred"] = np.nan  # adam: no prediction
    df.loc[df.index[:10], "part"] = 1.0
    before = df.copy()
    out = style.decimate(df, max_points=100, x="step")
    check_decimated(df, out, 100)
    pd.testing.assert_frame_equal(df, before)
    small = style.decimate(df.iloc[:50], max_points=100)
    assert len(small) == 50 and small["step"].is_monotonic_increasing
    assert small is not df
    with pytest.raises(ValueError, match="max_points"):
        style.decimate(df, max_points=0)


def test_decimate_many_noisy_columns_stays_within_bound():
    rng = np.random.default_rng(3)
    n = 30_000
    df = pd.DataFrame({"step": np.arange(n), **{f"c{i}": rng.normal(size=n) for i in range(25)}})
    out = style.decimate(df, max_points=200)
    check_decimated(df, out, 200)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3_000),
    max_points=st.integers(1, 200),
    seed=st.integers(0, 2**16),
)
def test_decimate_property(n, max_points, seed):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"step": rng.permutation(n), "a": rng.normal(size=n), "b": rng.integers(0, 3, n)})
    out = style.decimate(df, max_points=max_points)
    assert len(out) <= 2 * max(max_points, 3) + 2 + 2 * 3  # at worst one bucket: 2 rows a column + the ends
    if len(df) > 2 * max_points + 2 and max_points >= 3:
        assert len(out) <= 2 * max_points + 2
    for c in df.columns:
        assert out[c].max() == df[c].max() and out[c].min() == df[c].min()
    assert out["step"].is_monotonic_increasing


# --- registry, captions, boundaries ----------------------------------------------------------------------------


def test_captions_cover_every_chart():
    from_file = plots.load_captions()
    assert set(from_file) == set(plots.CAPTIONS) == set(plots.FIGURES) | {"neurons", "overlay"}
    for name, caption in plots.CAPTIONS.items():
        assert caption == laws.expand(from_file[name]) and "\n" not in caption and len(caption) > 40, name
        assert "{{" not in caption and plots.FIGURES.get(name, (None, caption))[1] == caption
    assert "eta" in plots.CAPTIONS["gaps"] and "dashed" in plots.CAPTIONS["ratios"]


# the metrics each chart's caption names: their TeX labels come from the registry, never from the captions file
CAPTION_METRICS = {
    "loss": ["loss"],
    "norms": ["sqnorm", "gap"],
    "gaps": ["gap_drift", "pred_gap_drift", "gap"],
    "ratios": ["ratio"],
    "balance": ["gap_drift", "pred_gap_drift", "ratio"],
    "grad_norms": ["grad_norm"],
    "matrix": ["matrix_drift", "matrix_inv"],
    "neurons": ["in_sqnorm", "out_sqnorm"],
}


@pytest.mark.parametrize("name", CAPTION_METRICS)
def test_captions_take_the_metrics_labels_from_the_registry(name, monkeypatch):
    raw = plots.load_captions()[name]
    for metric in CAPTION_METRICS[name]:
        label = laws.METRICS[metric].label()
        assert label in plots.CAPTIONS[name], metric
        assert label not in raw, f"{name}: {metric}'s label is spelt in captions.toml, not referenced"
    # relabel a metric in the registry: the caption follows
    metric = CAPTION_METRICS[name][0]
    monkeypatch.setitem(laws.METRICS, metric, dataclasses.replace(laws.METRICS[metric], tex=r"\mathrm{relabelled}"))
    assert r"$\mathrm{relabelled}$" in laws.expand(raw)


def test_a_caption_naming_an_unknown_metric_fails_when_read():
    with pytest.raises(KeyError, match="nope"):
        laws.expand("the {{nope}} metric")


def test_missing_captions_file_falls_back_to_docstrings(tmp_path):
    assert plots.load_captions(tmp_path / "absent.toml") == {}


def test_plots_never_import_streamlit():
    for path in Path(plots.__file__).parent.glob("*.py"):  # every module of balance.views
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in imported if m.split(".")[0] in ("streamlit", "torch")], path.name


def test_a_text_axis_is_not_forced_linear():
    """style leaves a non-log axis to plotly's autotype, so categories on x are drawn (a forced "linear" draws
    nothing for text)."""
    fig = style.style(style.figure(go.Scatter(x=["a", "b"], y=[1.0, 2.0])))
    assert fig.layout.xaxis.type == "-"
    assert style.styled([], log_x=True).layout.xaxis.type == "log"
