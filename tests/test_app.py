"""The dashboard under Streamlit's AppTest: every page runs without an exception; widgets driven by key.

One store (a temporary BALANCE_HOME) and one runner serve the whole module; runs are tiny (MF 20 x 10).
AppTest runs a ``run_every`` fragment once per ``run()`` and does not rewrite the URL (the browser tests do).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from balance.app import common as ui
from balance.app import links as ui_links
from balance.app import sidebar as ui_settings
from balance.config import ConfigError, RunConfig, applicable
from balance.config.presets import PRESETS, preset
from balance.runs import uploads

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["app.py", *(f"app_pages/{p.name}" for p in sorted((ROOT / "app_pages").glob("*.py")))]
TIMEOUT = 60
CSV = b"x1,x2,y\n0.5,1,0\n1.5,0,1\n2,2,1\n-1,0.5,0\n"
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
    """The config the sidebar holds (its saved values: Streamlit drops the state of settings it does not draw)."""
    return ui_settings.build_config(at.session_state["explore.values"])[0]


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


def shown(markdown: str) -> str:
    """Text as the page shows it: ``ui.literal``'s escapes and zero-width spaces taken out."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("\u200b", "")


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


def test_widgets_come_from_the_schema_and_only_what_applies_is_shown(home: Path) -> None:
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
        {"model.name": "mlp", "data.name": "csv", "optim.name": "flow", "csv": uploads.save_upload(home, CSV)},
        {"optim.schedule": "theorem"},
        {"model.name": "mlp", "data.name": "teacher", "model.bias": "true", "model.batch_norm": "true",
         "optim.name": "sam"},
        {"model.name": "linear", "data.name": "teacher", "optim.name": "label_noise"},
    ]:  # fmt: skip
        at = app(query)
        assert not at.exception
        config = sidebar_config(at)
        assert config is not None
        shown = widget_keys(at)
        assert {f"explore.{name}" for name in applicable(config.flat())} <= shown
        seen |= shown
    assert {f"explore.{name}" for name in ui_settings.FIELDS} <= seen  # every setting has its widget somewhere


def test_classroom_link_shows_only_the_chosen_settings() -> None:
    at = app({"show": "optim.lr", "optim.lr": "0.05", "model.init_scale": "0.001"})
    assert not at.exception
    assert widget_keys(at) & {f"explore.{name}" for name in [*ui_settings.FIELDS, "preset"]} == {"explore.optim.lr"}
    config = sidebar_config(at)
    assert config is not None and config.model.init_scale == 0.001 and config.optim.lr == 0.05
    at.button(key="explore.show_all").click().run()
    assert "explore.model.init_scale" in widget_keys(at) and "explore.preset" in widget_keys(at)


def test_hide_flag_hides_one_setting() -> None:
    at = app({"optim.name": "momentum", "optim.momentum_hide": "1"})
    assert not at.exception
    keys = widget_keys(at)
    assert "explore.optim.momentum" not in keys and "explore.optim.lr" in keys
    assert ui_links.hidden_by_link({"optim.momentum_hide": "1", "nonsense_hide": "1"})[0] == {"optim.momentum"}
    hidden = frozenset(ui_settings.FIELDS) - {"optim.lr"}
    assert ui_links.hidden_by_link(ui_links.link_flags(hidden))[0] == hidden
    assert ui_links.hidden_by_link(ui_links.link_flags(frozenset({"steps"})))[0] == {"steps"}


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


@pytest.mark.parametrize(
    ("query", "key", "choice"),
    [({}, "model.name", "mlp"), ({}, "model.name", "linear"), ({}, "model.name", "cnn"),
     ({"optim.name": "momentum"}, "optim.name", "gd")],
)  # fmt: skip
def test_first_start_after_a_change_starts_a_run(query: dict[str, str], key: str, choice: str) -> None:
    """Streamlit drops the state of widgets a run did not draw (MF's d1 after a switch to mlp): Start's callback
    read None there, built no config and did nothing, silently; the second press worked."""
    at = app(query)
    at.selectbox(key=f"explore.{key}").select(choice).run()
    at.button(key="explore.start").click().run()
    assert not at.exception
    run_id = at.session_state["explore.run"]
    assert run_id, [e.value for e in at.error]
    assert ui.store().get_run(run_id).config.flat()[key] == choice
    ui.runner().stop(run_id)
    ui.runner().wait(run_id, timeout=TIMEOUT)


def test_start_that_is_refused_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(config: RunConfig, **_: object) -> str:
        raise ConfigError("steps = 100000000: this run would take about 9 days, over the limit of 1 day")

    at = app()
    monkeypatch.setattr(ui.runner(), "start", refuse)
    at.button(key="explore.start").click().run()
    assert not at.exception
    assert "explore.run" not in at.session_state or not at.session_state["explore.run"]
    assert any("Not started" in e.value and "over the limit" in e.value for e in at.error)


def test_a_run_over_the_limits_is_refused_with_the_estimate() -> None:
    """?model.name=mlp&model.width=4096&model.depth=32&data.samples=100000&data.input_dim=4096 was accepted (about
    100 GB): the runner refuses it (LimitError) and the page says so in one line, with the estimate and the limit."""
    huge = {"model.name": "mlp", "data.name": "teacher", "model.width": "4096", "model.depth": "32"}
    at = app({**huge, "data.samples": "100000", "data.input_dim": "4096"})
    at.button(key="explore.start").click().run()
    assert not at.exception
    assert "explore.run" not in at.session_state or not at.session_state["explore.run"]
    text = " ".join(shown(e.value) for e in at.error)
    assert "Not started: this run needs" in text and "the limit is" in text and "\n" not in text


def test_queued_runs_show_their_place_and_why_and_a_session_s_share_is_kept() -> None:
    """Per-session limits: one run training and two waiting by default; each waiting one shows its place in the
    queue and why it waits; a fourth is refused with the reason."""
    at = app()
    set_widgets(at, {**TINY, "explore.steps": 10**7})
    started = []
    try:
        for _ in range(3):
            at.button(key="explore.start").click().run()
            started.append(at.session_state["explore.run"])
            ui.runner().wait(started[0], timeout=TIMEOUT, states=("running",))
        at.run()
        assert len(set(started)) == 3
        status = " ".join(m.value for m in at.markdown)
        assert "queued" in status and "in the queue" in status
        captions = [shown(c.value) for c in at.caption]
        assert any("queued:" in c and "its share" in c for c in captions), captions
        at.button(key="explore.start").click().run()
        assert not at.exception
        assert at.session_state["explore.run"] == started[-1]  # the fourth did not start
        assert any("Not started" in e.value for e in at.error)
    finally:
        for run_id in started:
            ui.runner().stop(run_id)
        for run_id in started:
            ui.runner().wait(run_id, timeout=TIMEOUT)


def test_an_open_page_keeps_its_runs_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner pauses a session's runs when no page has shown them for a while: Explore touches its session on
    every tick, and after a reload (a new session) the session that started the run it shows."""
    seen: list[str] = []
    monkeypatch.setattr(ui.runner(), "touch", seen.append)
    at = app()
    set_widgets(at, {**TINY, "explore.steps": 10**7})
    at.button(key="explore.start").click().run()
    run_id = at.session_state["explore.run"]
    try:
        at.run()
        session = ui.run_sessions()[run_id]
        assert session and session in seen
        seen.clear()
        ui.run_sessions()[run_id] = "the session before a reload"  # AppTest gives every session one id
        again = app({"run": run_id})  # a reload: another session, which shows the run
        assert not again.exception
        assert {"the session before a reload", session} <= set(seen)
    finally:
        ui.runner().stop(run_id)
        ui.runner().wait(run_id, timeout=TIMEOUT)


def test_new_model_brings_its_defaults_except_what_the_user_set() -> None:
    """MF's init 0.1 and step 0.01 leave an MLP at rest; an MLP's teacher data make a CNN crawl."""
    at = app()
    at.selectbox(key="explore.model.name").select("mlp").run()
    mlp = PRESETS["mlp-relu"][1]
    assert sidebar_config(at).model.init_scale == mlp.model.init_scale
    assert sidebar_config(at).optim.lr == mlp.optim.lr and sidebar_config(at).data.name == "teacher"
    assert any("usual settings" in t.value for t in at.toast)
    set_widgets(at, {"explore.model.width": 12, "explore.optim.lr": 0.02})  # the user's own choices
    at.selectbox(key="explore.model.name").select("cnn").run()
    assert not at.exception
    config, cnn = sidebar_config(at), PRESETS["cnn"][1]
    assert config.data.name == "images" and config.model.init_scale == cnn.model.init_scale
    assert config.steps == cnn.steps
    assert config.model.width == 12 and config.optim.lr == 0.02  # kept: the user set them
    at.selectbox(key="explore.preset").select("fig1-small").run()  # a preset's values are nobody's edits
    at.selectbox(key="explore.model.name").select("linear").run()
    assert sidebar_config(at).model.init_scale == PRESETS["linear-deep"][1].model.init_scale


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


def test_a_link_names_an_upload_by_its_key_never_a_path(home: Path) -> None:
    """`?data.name=csv&data.csv_path=/path` + Start used to read any file the server could read."""
    key = uploads.save_upload(home, CSV)
    at = app({"model.name": "mlp", "data.name": "csv", "csv": key, "data.csv_path": "/etc/passwd"})
    assert not at.exception
    assert any("data.csv_path: a link cannot set this" in shown(w.value) for w in at.warning)
    config = sidebar_config(at)
    assert config is not None and config.data.csv_path == str(uploads.find_csv(home, key))
    query = ui_links.page_query(config)
    assert query["csv"] == key and not any("/" in v for v in query.values())
    at = app({"model.name": "mlp", "data.name": "csv", "csv": "../../etc/passwd"})
    assert any("no such CSV file here" in shown(w.value) for w in at.warning)
    assert sidebar_config(at).model.name == "mlp" and sidebar_config(at).data.csv_path == ""


def test_a_stored_run_s_csv_path_is_read_only_if_the_page_offers_it(home: Path) -> None:
    """An imported run may name any path: Explore never reads it, and asks for an upload instead."""
    config = RunConfig().replace(**{"model.name": "mlp", "data.name": "csv", "data.csv_path": "/etc/passwd"})
    foreign = ui.store().create_run(config, [], name="imported")
    ui.store().set_status(foreign, "finished", 0)
    at = app({"run": foreign})
    assert not at.exception
    assert at.session_state["explore.values"]["data.csv_path"] == ""
    assert at.button(key="explore.start").disabled
    assert any("upload a CSV file" in e.value for e in at.error)
    path = str(uploads.find_csv(home, uploads.save_upload(home, CSV)))
    own = ui.store().create_run(config.replace(**{"data.csv_path": path}), [])
    ui.store().set_status(own, "finished", 0)
    at = app({"run": own})
    assert at.session_state["explore.values"]["data.csv_path"] == path
    assert not at.button(key="explore.start").disabled


def test_an_imported_run_says_so(tmp_path: Path) -> None:
    from balance.runs.store import RunStore

    with RunStore(tmp_path / "elsewhere") as other:
        run_id = other.create_run(RunConfig(), ["step", "loss"], name="from a colleague")
        other.claim_run(run_id, ["step", "loss"])
        other.append_rows(run_id, [[0, 1.0], [1, 0.5]])
        other.set_status(run_id, "finished", 1)
        other.export_run(run_id, tmp_path / "run.zip")
    imported = ui.store().import_run(tmp_path / "run.zip")
    at = app({"run": imported})
    assert not at.exception
    assert any("imported" in c.value for c in at.caption)


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


def test_divergence_advice_is_never_known_to_fail_and_offers_what_worked() -> None:
    """The old advice halved the step size ("below 5" still diverged at 5, 2, 1, 0.5). The page keeps track of
    the step sizes that finished and diverged in this session for these settings."""
    at = app()
    for lr in (10.0, 5.0):
        at.select_slider(key="explore.optim.lr").set_value(lr).run()
        start(at)
    text = shown(" ".join(e.value for e in at.error))
    offered = float(re.search(r"Use step size (\S+)", " ".join(b.label for b in at.button)).group(1))
    assert "diverged at step" in text.lower() and offered < 5.0
    at.select_slider(key="explore.optim.lr").set_value(0.01).run()
    start(at)  # finishes: it worked
    at.select_slider(key="explore.optim.lr").set_value(2.0).run()
    start(at)
    text = shown(" ".join(e.value for e in at.error))
    assert "η = 0.01 worked for these settings in this session" in text
    use = next(b for b in at.button if b.label.startswith("Use step size"))
    assert use.label == "Use step size 0.01"
    use.click().run()
    assert not at.exception
    assert at.session_state["explore.values"]["optim.lr"] == 0.01  # the sidebar holds it: one press of Start


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
    step = int(events.loc[events["kind"] == "lr", "step"].iloc[-1])
    for name, spec in figures(at).items():  # a dotted line and a label at that step on every step axis
        if spec["layout"].get("xaxis", {}).get("title", {}).get("text") == "step":
            assert any(a.get("text") == "η → 0.02" and a.get("x") == step for a in spec["layout"]["annotations"]), name
    notes = " ".join(c.value for c in at.caption) + " ".join(w.value for w in at.warning)
    assert f"at step {step:,}: η → 0.02" in notes and "does not replay" in notes
    assert "The run's starting settings (η = 0.01)" in notes  # the share link says what it re-creates
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


def test_every_press_is_answered_even_when_the_run_ended_meanwhile() -> None:
    at = app()
    set_widgets(at, {**TINY, "explore.steps": 10**7})
    at.button(key="explore.start").click().run()
    run_id = at.session_state["explore.run"]
    ui.runner().wait(run_id, timeout=TIMEOUT, states=("running",))
    at.run()
    assert not at.button(key="explore.pause").disabled
    ui.runner().stop(run_id)  # elsewhere (another tab), between the page's last run and the click
    ui.runner().wait(run_id, timeout=TIMEOUT)
    at.button(key="explore.pause").click().run()
    assert not at.exception
    assert any("Pause did not reach the run: it is stopped" in shown(e.value) for e in at.error)


def test_stop_shows_at_once() -> None:
    at = app()
    set_widgets(at, {**TINY, "explore.steps": 10**7})
    at.button(key="explore.start").click().run()
    run_id = at.session_state["explore.run"]
    ui.runner().wait(run_id, timeout=TIMEOUT, states=("running",))
    at.run()
    at.button(key="explore.stop").click().run()
    status = " ".join(m.value for m in at.markdown)
    assert "stopping…" in status or "stopped" in status, status
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


def test_charts_html_has_its_formulas_as_mathml() -> None:
    at = app()
    run_id = start(at)
    captions = re.findall(r"<p>(.*?)</p>", ui.run_html(ui.store(), run_id))
    assert len(captions) >= 5 and all("<math" in c and "$" not in c and "\\" not in c for c in captions)
    one = ui.caption_html("a $\\eta^2$ **b** <i>")
    assert one.startswith("a <math") and one.endswith("</math> <strong>b</strong> &lt;i&gt;") and "<msup>" in one


# --- pure helpers -----------------------------------------------------------------------------------------------


def test_log_grid_covers_the_range_and_keeps_the_current_value() -> None:
    grid = ui_settings.log_grid("model.init_scale", ui_settings.FIELDS["model.init_scale"], 32**-0.5)
    assert grid[0] == 1e-4 and grid[-1] == 10.0 and 32**-0.5 in grid and grid == sorted(grid)


@pytest.mark.parametrize("v", [0.1, 1e-5, 32**-0.5, 3.0, 7])
def test_number_text_round_trips(v: float) -> None:
    assert type(v)(ui.number_text(v)) == v


@pytest.mark.parametrize(
    "text", ["![b](http://h/b.png)", "<img src=x>", "www.h.com", "a@h.com", ":smile:", "$x$", "**b** _i_ `c`", "# h"]
)
def test_literal_leaves_no_markup(text: str) -> None:
    """Every markup character escaped (CommonMark renders an escaped one as itself); autolinks and :codes: broken."""
    out = ui.literal(text)
    assert re.sub(r"\\(.)", r"\1", out).replace("\u200b", "") == text  # shows the same characters
    assert not re.search(r"(?<!\\)[!\[\]()<>*`$#:@]", out)  # none of them unescaped
    assert "www." not in out and ":smile:" not in out.replace("\\", "")
    assert ui.literal("optim.lr = 'abc' layer_scales") == "optim.lr \\= \\'abc\\' layer_scales"


def test_error_field_names_the_setting() -> None:
    field = ui_settings.error_field
    assert field("model.batch_norm = True: batch norm is available for mlp only") == "model.batch_norm"
    assert field("run.steps = -1: out of range") == "steps"
    assert field("config: something else") == ""


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
    assert config["server"]["address"] == "127.0.0.1"  # no login: loopback unless the owner says otherwise
    assert config["client"]["toolbarMode"] == "viewer"  # no Deploy button, no developer menu
    assert config["server"]["maxUploadSize"] <= 100  # MB an upload may hold in the server's memory


def listening(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on ``port`` (from /proc/net/tcp and tcp6), in hex."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the listening sockets from /proc/net")
def test_a_bare_streamlit_run_listens_on_loopback_only(tmp_path: Path) -> None:
    """`streamlit run app.py` from another folder, no flags: the config beside app.py binds 127.0.0.1 only."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port)]
    command += ["--server.headless", "true"]
    env = {**os.environ, "BALANCE_HOME": str(tmp_path)}
    with (tmp_path / "log").open("w") as log:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as r:
                    if r.read() == b"ok":
                        break
            except OSError:
                time.sleep(0.2)
        assert listening(port) == {"0100007F"}, (tmp_path / "log").read_text()  # 127.0.0.1, and no [::]
    finally:
        proc.terminate()
        proc.wait(10)


def test_make_run_binds_loopback_and_a_class_switch_says_what_it_exposes() -> None:
    if shutil.which("make") is None:
        pytest.skip("needs make")
    plain = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "--server.address 127.0.0.1" in plain and "--server.fileWatcherType none" in plain
    assert "no login" not in plain
    wide = subprocess.run(["make", "-n", "run", "HOST=0.0.0.0"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "--server.address 0.0.0.0" in wide and "no login" in wide and "delete every" in wide
