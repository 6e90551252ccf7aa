"""Reading sweeps at a fixed training time or step, settings that do not apply left out, the page's sweep form
(its spec, size, cap, and a start that does not wait), and the member closest to a cell's median."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from balance.app import common as ui
from balance.config import ConfigError
from balance.runs import sweep_start, sweep_stats
from balance.runs.store import RunStore
from balance.runs.sweep import SweepSpec, run_sweep, summary

ROOT = Path(__file__).resolve().parents[1]
SPEC = {
    "name": "t-study",
    "base": {"log_every": 1, "data": {"d1": 6, "d2": 5, "rank": 2}},
    "grid": {"model.init_scale": [0.1], "seed": "0-1"},
    "list": [{"optim.lr": 0.05, "steps": 40}, {"optim.lr": 0.1, "steps": 20}, {"optim.lr": 0.2, "steps": 5}],
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RunStore]:
    with RunStore(tmp_path / "home") as s:
        yield s


def test_metrics_are_read_at_a_fixed_training_time(store: RunStore) -> None:
    """Before: every member was read at its last step (t = 2, 2 and 1 here). At t = 1 each is read where t = 1."""
    result = run_sweep(SweepSpec.from_dict(SPEC), store, workers=1)
    last = summary(store, result.sweep)
    assert sorted(set(last["t"].round(9))) == [1.0, 2.0]
    at = summary(store, result.sweep, at_time=1.0)
    assert at["t"].round(9).tolist() == [1.0] * 6 and at["steps"].tolist() == [20, 20, 10, 10, 5, 5]
    for _, r in at.iterrows():  # the value is the stored row at that step, not the last one
        row = store.metrics(r["run"]).set_index("step").loc[r["steps"]]
        assert r["loss"] == row["loss"] and r["at.sqnorm_1"] == row["sqnorm_1"]
    beyond = summary(store, result.sweep, at_time=1.5)  # the eta = 0.2 members stopped at t = 1
    assert beyond["t"].isna().tolist() == [False, False, False, False, True, True]
    at_step = summary(store, result.sweep, at_step=5)
    assert at_step["steps"].tolist() == [5] * 6 and at_step["t"].round(9).tolist() == [0.25, 0.25, 0.5, 0.5, 1, 1]


def test_settings_that_do_not_apply_are_left_out(store: RunStore) -> None:
    members = [{"optim.name": name, "optim.lr": 0.05, "steps": 4} for name in ("gd", "momentum")]
    spec = SweepSpec.from_dict({**SPEC, "list": members})
    table = summary(store, run_sweep(spec, store, workers=1).sweep)
    gd, heavy = table[table["optim.name"] == "gd"], table[table["optim.name"] == "momentum"]
    assert gd["optim.momentum"].isna().all() and (heavy["optim.momentum"] == 0.9).all()  # GD has no momentum
    plain = summary(store, run_sweep(SweepSpec.from_dict(SPEC), store, workers=1).sweep)
    assert "optim.momentum" not in plain and "model.width" not in plain  # applies to no member (GD, MF)


def test_closest_to_median() -> None:
    assert sweep_stats.closest_to_median(pd.Series([5.0, 1.0, 3.0, math.nan], index=list("abcd"))) == "c"
    assert sweep_stats.closest_to_median(pd.Series([math.nan])) is None


def test_form_spec_at_a_fixed_time_and_the_cap() -> None:
    spec = sweep_start.form_spec("fig1-small", "0.01, 0.02", "0.1", "0-2", 100, at_time=2.0)
    configs = spec.configs()
    assert len(configs) == 6 and {round(c.optim.lr * c.steps, 9) for c in configs} == {2.0}
    assert {c.steps for c in sweep_start.form_spec("fig1-small", "0.01", "0.1", "0", 77).configs()} == {77}
    cost = sweep_start.cost(spec)
    assert cost.members == 6 and cost.seconds > 0 and "6 runs" in cost.describe()
    sweep_start.check_cap(cost)
    with pytest.raises(ConfigError, match="at most 4"):
        sweep_start.check_cap(cost, {"members": 4, "seconds": 1e9})
    with pytest.raises(ConfigError, match="fewer steps"):
        sweep_start.check_cap(cost, {"members": 100, "seconds": 1e-3})
    with pytest.raises(ConfigError, match="step sizes"):
        sweep_start.form_spec("fig1-small", "0.01, x", "0.1", "0", 10)
    with pytest.raises(ConfigError, match="positive"):
        sweep_start.form_spec("fig1-small", "0.01", "0.1", "0", 10, at_time=-1.0)


@pytest.fixture
def page_home(tmp_path: Path) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BALANCE_HOME", str(tmp_path))
        yield tmp_path
        ui.runner().shutdown()
        ui._runner.clear()
        ui._store.clear()


def test_the_page_starts_a_sweep_and_reads_it_at_a_time(page_home: Path) -> None:
    at = AppTest.from_file(str(ROOT / "app_pages" / "sweep.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    at.selectbox(key="sweep.new.preset").set_value("fig1-small")
    at.text_input(key="sweep.new.lrs").set_value("0.02, 0.04")
    at.text_input(key="sweep.new.scales").set_value("0.1")
    at.text_input(key="sweep.new.seeds").set_value("0-1")
    at.number_input(key="sweep.new.t").set_value(0.4)
    at.button[1].click().run()  # "Start the sweep"
    assert not at.exception, at.exception
    assert any("4 runs queued" in s.value for s in at.success), [s.value for s in at.success]
    sweep = at.session_state["sweep.sweep"]
    store = ui.store()
    for run_id in store.sweep_runs(sweep):
        from balance.runs.reuse import wait

        assert wait(store, run_id.id, ui.runner()) == "finished"
    at = AppTest.from_file(str(ROOT / "app_pages" / "sweep.py"), default_timeout=120).run()
    at.radio(key="sweep.read_at").set_value("a fixed training time t").run()
    at.number_input(key="sweep.at_time").set_value(0.4).run()
    assert not at.exception, at.exception
    assert any("training time t = 0.4" in m.value for m in at.markdown)
    at.text_input(key="sweep.new.lrs").set_value("0.01")
    at.text_input(key="sweep.new.seeds").set_value("0-9999")
    at.button[0].click().run()  # "Check the size": over the cap, said in one line
    assert any("at most 512" in e.value for e in at.error)


def test_python_api_sweep_returns_the_summary_at_a_time(tmp_path: Path) -> None:
    import balance
    from balance.runs import stamp

    spec = {"name": "api", "base": {"steps": 20, "data": {"d1": 6, "d2": 5, "rank": 2}},
            "grid": {"optim.lr": [0.01, 0.02], "seed": "0-1"}}  # fmt: skip
    table = balance.sweep(spec, home=str(tmp_path), workers=1, at_time=0.1)
    assert len(table) == 4 and table["t"].round(9).tolist() == [0.1] * 4
    assert table.attrs["stamp"]["code"] == stamp.code_hash() and table.attrs["sweep"].startswith("api-")


def test_a_setting_the_axes_determine_is_no_filter() -> None:
    """A fixed-time sweep's steps go with the step size: a filter on them would keep one column of the heat map."""
    df = pd.DataFrame({"optim.lr": [0.01, 0.01, 0.02, 0.02], "model.init_scale": [0.1] * 4, "seed": [0, 1, 0, 1],
                       "steps": [200, 200, 100, 100], "optim.name": ["gd", "momentum"] * 2})  # fmt: skip
    assert sweep_stats.filter_axes(df, ["optim.lr", "model.init_scale", "seed", "steps", "optim.name"]) == [
        "seed", "optim.name"]  # fmt: skip
