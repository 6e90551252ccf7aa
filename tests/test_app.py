"""The dashboard under Streamlit's AppTest: every page runs without an exception; widgets driven by key.

One store (a temporary BALANCE_HOME) and one runner serve the whole module; runs are tiny (MF 20 x 10).
AppTest runs a ``run_every`` fragment once per ``run()`` and does not rewrite the URL (the browser tests do).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from balance import ui
from balance.config import RunConfig, applicable
from balance.presets import PRESETS, preset

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["app.py", *(f"app_pages/{p.name}" for p in sorted((ROOT / "app_pages").glob("*.py")))]
TIMEOUT = 60
TINY = {"explore.data.d1": 20, "explore.data.d2": 10, "explore.steps": 200}


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("balance-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BALANCE_HOME", str(path))
        yield path
        ui.runner().shutdown()  # this home's runner: stop its workers, and forget it
        ui._runner.clear()
        ui._store.clear()


def app(query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at.run()


def set_widgets(at: AppTest, values: dict[str, object]) -> AppTest:
    for key, value in values.items():
        at.get_by_key(key).set_value(value)
    return at.run()


def sidebar_config(at: AppTest) -> RunConfig | None:
    return ui.build_config({name: at.session_state[f"explore.{name}"] for name in ui.FIELDS})[0]


def start(at: AppTest, **widgets: object) -> str:
    """Set the widgets (tiny run by default), press Start, wait until the run has ended; returns its id."""
    set_widgets(at, {**TINY, **{f"explore.{k.replace('__', '.')}": v for k, v in widgets.items()}})
    at.button(key="explore.start").click().run()
    assert not at.exception
    run_id = at.session_state["explore.run"]
    assert run_id
    ui.runner().wait(run_id, timeout=TIMEOUT)
    at.run()
    assert not at.exception
    return run_id


def figures(at: AppTest) -> dict[str, dict]:
    """Every Plotly chart on the page by its title (or first trace name), as its JSON spec."""
    out = {}
    live = [json.loads(json.loads(c.proto.json)["figure"]) for c in at.get("bidi_component")]
    for spec in [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")] + live:
        title = spec["layout"].get("title", {}).get("text") or (spec["data"][0]["name"] if spec["data"] else "")
        out[title] = spec
    return out


def trace_names(spec: dict) -> list[str]:
    return [t.get("name", "") for t in spec["data"]]


# --- smoke -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_without_exception(page: str) -> None:
    at = AppTest.from_file(str(ROOT / page), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception


def test_navigation_reaches_every_page() -> None:
    at = app()
    for page in PAGES[1:]:
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)


def widget_keys(at: AppTest) -> set[str]:
    return {w.key for w in [*at.selectbox, *at.number_input, *at.toggle, *at.select_slider, *at.text_input]}


def test_widgets_come_from_the_schema_and_only_what_applies_is_shown() -> None:
    at = app()
    assert widget_keys(at) >= {f"explore.{name}" for name in applicable(RunConfig().flat())}
    assert "explore.model.depth" not in widget_keys(at)  # mf has no depth
    assert {s.key for s in at.select_slider} >= {"explore.optim.lr", "explore.model.init_scale"}
    scales = at.select_slider(key="explore.model.init_scale").options
    assert scales[0] == "0.0001" and scales[-1] == "10"
    seen = widget_keys(at)
    for query in [
        {"model.name": "mlp", "data.name": "teacher", "model.activation": "leaky_relu", "optim.name": "adam"},
        {"model.name": "cnn", "data.name": "images", "optim.name": "momentum", "optim.schedule": "step"},
        {"model.name": "mlp", "data.name": "csv", "optim.name": "flow", "data.csv_path": __file__},
        {"optim.schedule": "theorem"},
    ]:
        at = app(query)
        assert not at.exception
        config = sidebar_config(at)
        assert config is not None
        shown = widget_keys(at)
        assert {f"explore.{name}" for name in applicable(config.flat())} <= shown
        seen |= shown
    assert {f"explore.{name}" for name in ui.FIELDS} <= seen  # every setting has its widget somewhere


def test_classroom_link_shows_only_the_chosen_settings() -> None:
    at = app({"show": "optim.lr", "optim.lr": "0.05", "model.init_scale": "0.001"})
    assert not at.exception
    assert widget_keys(at) & {f"explore.{name}" for name in [*ui.FIELDS, "preset"]} == {"explore.optim.lr"}
    config = sidebar_config(at)
    assert config is not None and config.model.init_scale == 0.001 and config.optim.lr == 0.05
    at.button(key="explore.show_all").click().run()
    assert "explore.model.init_scale" in widget_keys(at) and "explore.preset" in widget_keys(at)


def test_hide_flag_hides_one_setting() -> None:
    at = app({"optim.name": "momentum", "optim.momentum_hide": "1"})
    assert not at.exception
    keys = widget_keys(at)
    assert "explore.optim.momentum" not in keys and "explore.optim.lr" in keys
    assert ui.hidden_by_link({"optim.momentum_hide": "1", "nonsense_hide": "1"})[0] == {"optim.momentum"}
    hidden = frozenset(ui.FIELDS) - {"optim.lr"}
    assert ui.hidden_by_link(ui.link_flags(hidden))[0] == hidden
    assert ui.hidden_by_link(ui.link_flags(frozenset({"steps"})))[0] == {"steps"}


# --- settings, presets, links ------------------------------------------------------------------------------------


def test_bad_combination_is_explained_next_to_the_control() -> None:
    at = app({"model.name": "mlp", "data.name": "teacher", "model.batch_norm": "true"})
    at.selectbox(key="explore.model.name").select("cnn").run()  # batch norm does not apply to cnn ...
    assert not at.exception
    assert any("batch norm is available for mlp only" in e.value for e in at.sidebar.error)
    assert at.toggle(key="explore.model.batch_norm").value  # ... but stays shown, so it can be switched off
    assert at.button(key="explore.start").disabled


def test_bad_list_is_explained() -> None:
    at = app()
    at.text_input(key="explore.model.layer_scales").input("1,abc").run()
    assert not at.exception
    assert any("layer_scales" in e.value for e in at.sidebar.error)


def test_new_model_picks_a_dataset_that_fits() -> None:
    at = app()
    at.selectbox(key="explore.model.name").select("mlp").run()
    assert not at.exception
    assert at.session_state["explore.data.name"] != "lowrank"
    assert not at.sidebar.error
    assert any("does not fit" in t.value for t in at.toast)


def test_preset_sets_every_widget() -> None:
    at = app()
    at.selectbox(key="explore.preset").select("mlp-unbalanced").run()
    assert not at.exception
    assert sidebar_config(at) == preset("mlp-unbalanced")


@pytest.mark.parametrize("name", ["mlp-relu", "cnn", "fig1-large-reg"])
def test_link_sets_up_the_run(name: str) -> None:
    config = PRESETS[name][1].replace(seed=7)
    at = app(config.to_query())
    assert not at.exception
    assert not at.warning
    assert sidebar_config(at) == config


def test_bad_link_opens_with_defaults_and_names_the_values() -> None:
    at = app({"optim.lr": "abc", "model.depth": "999", "nonsense": "1", "steps": "50"})
    assert not at.exception
    text = " ".join(w.value for w in at.warning)
    assert "optim.lr" in text and "model.depth" in text and "nonsense" in text
    assert at.session_state["explore.optim.lr"] == RunConfig().optim.lr
    assert at.session_state["explore.steps"] == 50  # the good value is kept


def test_unknown_run_in_link_says_so() -> None:
    at = app({"run": "nosuchrun"})
    assert not at.exception
    assert any("nosuchrun" in w.value for w in at.warning)


# --- runs ---------------------------------------------------------------------------------------------------------


def test_tiny_run_draws_the_expected_traces() -> None:
    at = app()
    start(at)
    charts = figures(at)
    assert trace_names(charts["loss"]) == ["loss"]
    assert trace_names(charts["squared norms"]) == ["V", "U"]
    balance = next(spec for spec in charts.values() if "V-U predicted" in trace_names(spec))
    assert {"V-U measured", "V-U predicted", "gradient flow"} <= set(trace_names(balance))
    assert any("hidden 1" in trace_names(spec) for spec in charts.values())  # the per-neuron scatter
    assert "matrix invariant" in charts
    assert "gradient norms" in charts
    status = " ".join(m.value for m in at.markdown)
    assert "finished" in status and "step **200**" in status
    assert not at.button(key="explore.start").disabled
    assert at.button(key="explore.stop").disabled


def test_diverged_run_says_so_with_a_suggestion() -> None:
    at = app()
    at.select_slider(key="explore.optim.lr").set_value(10.0).run()
    start(at)
    errors = " ".join(e.value for e in at.error).lower()
    assert "diverged at step" in errors
    assert "try a step size of" in errors or "smaller step size" in errors


def test_reload_reattaches_to_the_run_in_the_url() -> None:
    at = app()
    run_id = start(at)
    again = app({**sidebar_config(at).to_query(), "run": run_id})
    assert not again.exception
    assert again.session_state["explore.run"] == run_id
    assert "loss" in figures(again)
    only_id = app({"run": run_id})  # the run's own config is loaded when the link has no settings
    assert only_id.session_state["explore.run"] == run_id
    assert only_id.session_state["explore.data.d1"] == 20


def test_step_size_changes_while_running_without_a_reset() -> None:
    at = app()
    set_widgets(at, {**TINY, "explore.steps": 10**7})
    at.button(key="explore.start").click().run()
    run_id = at.session_state["explore.run"]
    ui.runner().wait(run_id, timeout=TIMEOUT, states=("running",))
    at.select_slider(key="explore.optim.lr").set_value(0.02).run()
    assert not at.exception
    at.button(key="explore.pause").click().run()
    ui.runner().wait(run_id, timeout=TIMEOUT, states=("paused",))
    at.run()
    events = ui.store().events(run_id)
    assert (events["kind"] == "lr").any() and events["value"].iloc[-1] == 0.02
    assert at.session_state["explore.run"] == run_id  # the same run, not a new one
    before = ui.runner().status(run_id).step
    at.button(key="explore.step10").click().run()
    deadline = time.monotonic() + TIMEOUT
    while ui.runner().status(run_id).step < before + 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert ui.runner().status(run_id).step == before + 10
    assert ui.runner().status(run_id).state == "paused"
    at.run()
    assert at.session_state["explore.cursor"] == before + 10  # the charts show the stepped state
    assert any(f"step **{before + 10:,}**" in m.value for m in at.markdown)
    at.button(key="explore.reset").click().run()
    assert not at.exception
    assert at.session_state["explore.run"] is None
    assert ui.runner().wait(run_id, timeout=TIMEOUT).state == "stopped"


def test_run_deleted_elsewhere_does_not_break_the_page() -> None:
    at = app()
    run_id = start(at)
    ui.store().delete_run(run_id)  # as another session would, on the Runs page
    at.run()
    assert not at.exception
    assert any("no run" in i.value for i in at.info)


def test_open_in_explore_loads_the_run() -> None:
    at = app()
    run_id = start(at, optim__lr=0.05)
    at.button(key="explore.reset").click().run()
    runs = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()  # a new session: Runs first
    runs.switch_page("app_pages/runs.py").run()
    runs.multiselect(key="runs.selected").set_value([run_id]).run()
    runs.button(key="runs.open").click().run()
    assert not runs.exception
    assert runs.session_state["explore.run"] == run_id
    assert runs.session_state["explore.optim.lr"] == 0.05 and runs.session_state["explore.data.d1"] == 20


# --- pure helpers -----------------------------------------------------------------------------------------------


def test_log_grid_covers_the_range_and_keeps_the_current_value() -> None:
    grid = ui.log_grid("model.init_scale", ui.FIELDS["model.init_scale"], 32**-0.5)
    assert grid[0] == 1e-4 and grid[-1] == 10.0 and 32**-0.5 in grid and grid == sorted(grid)


@pytest.mark.parametrize("v", [0.1, 1e-5, 32**-0.5, 3.0, 7])
def test_number_text_round_trips(v: float) -> None:
    assert type(v)(ui.number_text(v)) == v


def test_error_field_names_the_setting() -> None:
    assert ui.error_field("model.batch_norm = True: batch norm is available for mlp only") == "model.batch_norm"
    assert ui.error_field("run.steps = -1: out of range") == "steps"
    assert ui.error_field("config: something else") == ""


def test_only_the_ui_modules_import_streamlit() -> None:
    """The core never imports the UI (STYLE rule 1): streamlit only in app.py, app_pages/ and balance/ui*.py."""
    allowed = {ROOT / "balance" / "ui.py", *(ROOT / "balance").glob("ui_*.py")}
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "balance").rglob("*.py")  # subpackages too (balance/claims/)
        if p not in allowed and re.search(r"^\s*(import|from) streamlit", p.read_text(), re.M)
    ]
    assert offenders == []


def test_streamlit_config_serves_plotly_and_skips_the_per_run_gc() -> None:
    """The live charts need static serving (plotly.js from static/, no CDN); a full gc.collect after every fragment
    tick cost 42% of the server's CPU while a run trained. Streamlit reads this file from next to app.py."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["enableStaticServing"] is True
    assert config["runner"]["postScriptGC"] is False
    ui.serve_plotly_js()
    assert (ui.STATIC / "plotly.min.js").stat().st_size > 1_000_000
