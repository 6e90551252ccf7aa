"""The lecture: its steps as data, the rescaling oracle, every step's page under AppTest, the handout and the CLI.

One store (a temporary BALANCE_HOME) serves the module: the demos train once (about 10 s of CPU) and every later
test finds them there, as the page does.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from latex2mathml.converter import convert
from streamlit.testing.v1 import AppTest

from balance.app import common as ui
from balance.cli import main
from balance.config import RunConfig
from balance.config.presets import PRESETS, preset
from balance.lecture import steps as lecture
from balance.lecture.handout import handout_html, mathml
from balance.runs.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "app_pages" / "lecture.py")
TIMEOUT = 120
N = len(lecture.STEPS)


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("balance-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BALANCE_HOME", str(path))
        yield path
        ui.runner().shutdown()  # the pages' executor (its workers trained what a page asked for)
        ui._runner.clear()
        ui._store.clear()


@pytest.fixture(scope="module")
def store(home: Path) -> RunStore:
    return ui.store()  # the page's store: what the tests train, the page finds


def lecture_page(query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at.run()


def heading(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("## "))


# --- the steps as data --------------------------------------------------------------------------------------------


def test_eight_steps_each_with_text_formula_and_demo() -> None:
    assert N == 8
    assert [s.number for s in lecture.STEPS] == list(range(1, N + 1))
    assert len({s.key for s in lecture.STEPS}) == N
    for s in lecture.STEPS:
        sentences = [x for x in re.split(r"(?<=[.!?])\s+", s.text) if x]
        assert 2 <= len(sentences) <= 5, (s.key, sentences)  # 2-4 sentences (a quoted one counts apart)
        assert "<math" in convert(s.formula)  # renders offline
        assert s.figure in lecture.FIGURE_KINDS
        assert s.figure == "summary" or s.links, s.key  # every demo opens in Explore
    assert lecture.step_at(0) is lecture.STEPS[0] and lecture.step_at(99) is lecture.STEPS[-1]


def test_lecture_presets_are_valid_presets() -> None:
    for name in ("lecture-rescale", "lecture-neurons", "lecture-small-init", "lecture-step-size"):
        assert name in PRESETS and isinstance(preset(name), RunConfig)
    used = {d.config for s in lecture.STEPS for d in (*s.runs, *s.links)}
    assert preset("fig1-small") in used and preset("fig1-large") in used


def test_explore_links_round_trip_and_show_only_the_steps_controls() -> None:
    for s in lecture.STEPS:
        for d in s.links:
            query = lecture.explore_query(d.config, s.show)
            assert query.get("show", "") == ",".join(s.show)
            rest = {k: v for k, v in query.items() if k != "show"}
            assert RunConfig.from_query(rest)[0] == d.config
            link = lecture.explore_link(d.config, s.show)
            assert link.startswith("./?") and "http" not in link


def test_explore_opens_every_link_with_only_the_steps_controls() -> None:
    """Each student link sets Explore up with the demo's config and shows just the controls the step is about."""
    for s in lecture.STEPS:
        for d in s.links[:1]:
            at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
            for key, value in lecture.explore_query(d.config, s.show).items():
                at.query_params[key] = value
            at.run()
            assert not at.exception and not at.warning, (s.key, at.warning)
            values = {name: at.session_state[f"explore.{name}"] for name in ui.FIELDS}
            assert ui.build_config(values)[0] == d.config
            shown = {w.key for w in [*at.selectbox, *at.number_input, *at.toggle, *at.select_slider, *at.text_input]}
            wanted = {f"explore.{n}" for n in s.show}
            assert shown & {f"explore.{n}" for n in [*ui.FIELDS, "preset"]} <= wanted
            assert shown & wanted, s.key


def test_reseeded_changes_only_the_seed() -> None:
    step = lecture.STEPS[3]
    again = lecture.reseeded(step, 5)
    assert [d.config.seed for d in again.runs] == [5] * len(step.runs)
    assert [d.config.replace(seed=0) for d in again.runs] == [d.config for d in step.runs]
    assert lecture.reseeded(step, None) is step


# --- step 1: the rescaling oracle --------------------------------------------------------------------------------


def test_rescaling_leaves_a_relu_network_unchanged_and_not_tanh() -> None:
    config = preset("lecture-rescale")
    cs = np.array([0.1, 0.5, 1.0, 3.0, 10.0])
    relu = lecture.rescaled_outputs(config, cs, layer=1)
    assert relu["outputs"].shape == (5, 4)
    np.testing.assert_allclose(relu["outputs"], np.broadcast_to(relu["outputs"][2], (5, 4)), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(relu["sqnorm_h"], cs**2 * relu["sqnorm_h"][2], rtol=1e-12)
    np.testing.assert_allclose(relu["sqnorm_next"], relu["sqnorm_next"][2] / cs**2, rtol=1e-12)
    for layer in (1, 2):  # either pair of a 3-layer network
        out = lecture.rescaled_outputs(config, cs, layer=layer)["outputs"]
        assert np.ptp(out, axis=0).max() < 1e-12
    tanh = lecture.rescaled_outputs(config.replace(**{"model.activation": "tanh"}), cs)
    assert np.ptp(tanh["outputs"], axis=0).max() > 1e-2
    with pytest.raises(ValueError, match="layer"):
        lecture.rescaled_outputs(config, cs, layer=3)
    curves = lecture.rescale_curves(config)
    assert list(curves) == ["ReLU", "tanh"] and set(lecture.C_GRID) <= set(curves["ReLU"]["c"])


# --- demos: cached, fast to rerun -----------------------------------------------------------------------------------


def test_every_demo_trains_once_then_comes_from_the_store(store: RunStore) -> None:
    for s in lecture.STEPS:
        runs = lecture.step_runs(s, store)
        assert len(runs) == len(s.runs)
        assert all(r.status.state in ("finished", "diverged") for _, r in runs), s.key
        fig = lecture.demo_figure(s, store, runs, c=2.0)
        assert (fig is None) == (s.figure == "summary")
        if fig is not None:
            assert fig.data, s.key
            assert fig.layout.template.layout.plot_bgcolor == "white", s.key  # the charts' look (plots.figure)
    start = time.perf_counter()
    for s in lecture.STEPS:
        again = lecture.step_runs(s, store)
        assert [r.run_id for _, r in again] == [r.run_id for _, r in lecture.step_runs(s, store)]
    assert time.perf_counter() - start < 10  # found, not trained: well under a second a step on an idle machine


def test_neuron_snapshots_come_with_the_run(store: RunStore) -> None:
    """Every run keeps neuron snapshots (the loop takes them), however it trained: nothing is replayed for them."""
    step = next(s for s in lecture.STEPS if s.figure == "neurons")
    (_, run), *_ = lecture.step_runs(step, store)
    steps = store.neuron_steps(run.run_id)
    first, last = lecture.neuron_tables(store, run)
    assert store.neuron_steps(run.run_id) == steps  # reading them trains and stores nothing
    assert steps[0] == 0 and steps[-1] == run.config.steps and len(steps) > 2
    assert int(first["step"].iloc[0]) == 0 and int(last["step"].iloc[0]) == run.config.steps
    assert len(first) == len(last) == run.config.model.width
    drift = (first["in_sqnorm"] - first["out_sqnorm"]) - (last["in_sqnorm"] - last["out_sqnorm"])
    grew = last["in_sqnorm"].to_numpy() / first["in_sqnorm"].to_numpy()
    assert np.abs(drift).max() < 1e-3 and grew.max() > 3  # units move a lot, their difference hardly


@pytest.mark.parametrize("step", [s for s in lecture.STEPS if s.runs], ids=lambda s: s.key)
def test_a_rerun_with_a_new_seed_takes_under_ten_seconds(store: RunStore, step: lecture.Step) -> None:
    """The requirement: a demo reruns within 10 s on a 2-core laptop. CPU time (one thread) is measured, so other
    work on a shared machine does not count against it."""
    start = time.process_time()
    runs = lecture.step_runs(step, store, seed=11)
    if step.figure == "neurons":
        lecture.neuron_tables(store, runs[0][1])
    lecture.demo_figure(lecture.reseeded(step, 11), store, runs)
    seconds = time.process_time() - start
    print(f"{step.key}: rerun {seconds:.2f} s of CPU")
    assert seconds < 10
    assert all(r.config.seed == 11 for _, r in runs)


def test_warm_up_trains_ahead_in_the_executor_and_the_page_never_waits(tmp_path: Path) -> None:
    """Before: a ``Warmer`` thread trained the demos inside the Streamlit server. Now ``warm`` and ``demo_runs``
    only start runs on the executor (worker processes, warm-up priority) and return at once; nothing trains here."""
    import threading

    from balance.runs.executor import Runner

    with RunStore(tmp_path) as s:
        runner = Runner(s, max_workers=2)
        try:
            threads = threading.active_count()
            start = time.perf_counter()
            lecture.warm(lecture.warm_order(4), s, runner)
            step = lecture.step_at(4)
            assert lecture.demo_runs(step, s, runner) is None  # not trained yet: the page shows a note
            assert time.perf_counter() - start < 5  # submitting, not training (a demo trains for seconds)
            assert threading.active_count() == threads  # no training thread here
            queued = s.list_runs()
            assert set(queued["sweep"]) == {x.label for x in lecture.STEPS if x.runs}
            assert len(queued) == sum(len(x.runs) for x in lecture.STEPS)  # once each, whatever is asked again
            lecture.warm(lecture.warm_order(5), s, runner)
            assert len(s.list_runs()) == len(queued)
            for run_id in queued["id"]:
                assert runner.wait(run_id, TIMEOUT).state in ("finished", "diverged")
            for x in lecture.STEPS:
                runs = lecture.demo_runs(x, s, runner)
                assert runs is not None and len(runs) == len(x.runs)
            assert len(s.list_runs()) == len(queued)
        finally:
            runner.shutdown()
    assert lecture.warm_order(4) == [4, 5, 3, 1, 2, 6, 7, 8]
    assert lecture.warm_order(8) == [8, 7, 1, 2, 3, 4, 5, 6]


# --- the page: every step under AppTest ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(1, N + 1))
def test_each_step_opens_from_its_link(n: int) -> None:
    step = lecture.STEPS[n - 1]
    at = lecture_page({"step": str(n)})
    assert not at.exception, at.exception
    assert heading(at) == f"## {n}. {step.title}"
    assert [x.value.strip("$\n") for x in at.latex] == [step.formula]
    charts = at.get("plotly_chart")
    assert len(charts) == (0 if step.figure == "summary" else 1)
    assert at.button(key="lecture.prev").disabled == (n == 1)
    assert at.button(key="lecture.next").disabled == (n == N)
    assert at.session_state["lecture.step"] == n
    text = " ".join(m.value for m in [*at.markdown, *at.caption])
    for d in step.links:
        assert lecture.explore_link(d.config, step.show) in text


def test_next_and_previous_walk_the_lecture() -> None:
    at = lecture_page()
    assert at.session_state["lecture.step"] == 1
    for n in range(2, N + 1):
        at.button(key="lecture.next").click().run()
        assert not at.exception
        assert heading(at).startswith(f"## {n}. ")
    for n in range(N - 1, 0, -1):
        at.button(key="lecture.prev").click().run()
        assert heading(at).startswith(f"## {n}. ")


def test_summary_links_every_demo_into_explore() -> None:
    at = lecture_page({"step": str(N)})
    text = " ".join(m.value for m in at.markdown)
    for s in lecture.STEPS:
        for d in s.links:
            assert f"]({lecture.explore_link(d.config, s.show)})" in text
    assert at.get("download_button")


def test_bad_step_opens_step_one_with_a_note() -> None:
    for bad in ("0", "99", "three"):
        at = lecture_page({"step": bad})
        assert not at.exception
        assert heading(at).startswith("## 1. ")
        assert any("no such step" in w.value for w in at.warning)


def test_rescaling_slider_from_the_link_and_hidden_controls() -> None:
    at = lecture_page({"step": "1", "c": "3"})
    assert not at.exception
    assert at.select_slider(key="lecture.c").value == 3.0
    assert "change at c = 3" in at.get("plotly_chart")[0].proto.spec
    at.select_slider(key="lecture.c").set_value(0.5).run()
    assert "change at c = 0.5" in at.get("plotly_chart")[0].proto.spec
    at = lecture_page({"step": "1", "c_hide": "1", "nav_hide": "1", "seed_hide": "1"})
    assert not at.exception
    keys = {w.key for w in [*at.select_slider, *at.button]}
    assert not keys & {"lecture.c", "lecture.prev", "lecture.next", "lecture.reseed"}


def test_new_seed_retrains_the_demo() -> None:
    at = lecture_page({"step": "5"})
    at.button(key="lecture.reseed").click().run()
    assert not at.exception
    assert at.session_state["lecture.seed.5"] == 1
    assert any("seed 1" in c.value for c in at.caption)
    assert any("seed=1" in m.value for m in at.caption)  # the Explore links follow the seed


# --- the handout -----------------------------------------------------------------------------------------------------


SCRIPT = re.compile(r"<script\b([^>]*)>(.*?)</script>", re.DOTALL | re.IGNORECASE)
URL = re.compile(r"https?://", re.IGNORECASE)


def test_handout_is_self_contained_and_has_every_step(store: RunStore) -> None:
    """No external URL in the markup, no script or style loaded from anywhere, plotly.js inlined once.

    The inlined plotly.js is the unmodified library: it holds URL strings (map tiles, topojson, attributions) that
    only map and geo traces use, and the handout has none; the browser test opens it with the network cut off and
    sees no request at all.
    """
    text = handout_html(store)
    scripts = SCRIPT.findall(text)
    markup = SCRIPT.sub("", text)
    assert not URL.search(markup.replace('xmlns="http://www.w3.org/2000/svg"', ""))
    assert "@import" not in markup and "url(" not in markup and "<link" not in markup
    assert all("src" not in attributes for attributes, _ in scripts)
    library = [body for _, body in scripts if "plotly.js v" in body[:200]]
    assert len(library) == 1  # plotly.js inlined exactly once
    assert not any(URL.search(body) for _, body in scripts if body not in library)  # our own scripts: no URL
    assert text.count("plotly.js v") == 1  # plotly.js inlined exactly once
    assert text.count("Plotly.newPlot") == sum(s.figure != "summary" for s in lecture.STEPS)
    for s in lecture.STEPS:
        assert html.escape(s.title) in text
        assert mathml(s.formula) in text
    assert text.count("<math") == N
    for s in lecture.STEPS:
        for d in s.links:
            assert lecture.explore_link(d.config, s.show, base="")[1:].split("&")[0] in text


# --- the command line ------------------------------------------------------------------------------------------------


def test_cli_writes_the_handout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "handout.html"
    assert main(["lecture", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and all(html.escape(s.title) in text for s in lecture.STEPS)
    assert out.stat().st_mode & 0o044  # readable by others: a handout is meant to be shared
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/nonexistent-dir/handout.html", "cannot write there"),
        ("{tmp}/handout.txt", "must end in .html"),
        ("{tmp}", "must end in .html"),
    ],
)
def test_cli_bad_output_path_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], path: str, why: str
) -> None:
    assert main(["lecture", "--out", path.format(tmp=tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and why in err and err.startswith("balance: error: --out")


def test_cli_needs_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lecture"]) == 2
    assert "--out" in capsys.readouterr().err
