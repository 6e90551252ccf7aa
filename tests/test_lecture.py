"""The lecture: its steps as data, the rescaling oracle, every step's page under AppTest, the handout and the CLI.

One store (a temporary BALANCE_HOME) serves the module: the demos train once (about 10 s of CPU) and every later
test finds them there, as the page does.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from latex2mathml.converter import convert
from streamlit.testing.v1 import AppTest

from balance.app import common as ui
from balance.app import sidebar
from balance.cli import main
from balance.config import RunConfig
from balance.config.presets import PRESETS, preset
from balance.lecture import steps as lecture
from balance.lecture import students
from balance.lecture.handout import PAPER_BIBTEX, handout_html, mathml
from balance.runs import stamp
from balance.runs.store import RunStore
from balance.views import lecture as views

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


def figures_of(at: AppTest) -> list[dict]:
    """The page's lecture figures (Plotly JSON), as its chart component received them."""
    data = [json.loads(c.proto.json) for c in at.get("bidi_component")]
    return [json.loads(d["figure"]) for d in data if isinstance(d, dict) and "figure" in d]


# --- the steps as data ---------------------------------------------------------------------------------------------


def test_eight_steps_each_with_text_formula_and_demo() -> None:
    assert N == 9
    assert [s.number for s in lecture.STEPS] == list(range(1, N + 1))
    assert len({s.key for s in lecture.STEPS}) == N
    for s in lecture.STEPS:
        sentences = [x for x in re.split(r"(?<=[.!?])\s+", s.text) if x]
        assert 2 <= len(sentences) <= 5, (s.key, sentences)  # 2-4 sentences (a quoted one counts apart)
        assert s.formulas and all("<math" in convert(f) for f in s.formulas)  # renders offline
        assert s.notes and s.slug and s.figure_name == f"lecture-{s.number}-{s.slug}"
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
            query = lecture.explore_query(d.config, s.shows(d))
            assert query.get("show", "") == ",".join(s.shows(d)) and set(s.shows(d)) <= set(s.show)
            rest = {k: v for k, v in query.items() if k != "show"}
            assert RunConfig.from_query(rest)[0] == d.config
            link = lecture.explore_link(d.config, s.shows(d))
            assert link.startswith("./?") and "http" not in link
            assert d.config.steps >= 100, (s.key, d.config.steps)  # enough steps to see something on Start


def test_explore_opens_every_link_with_only_the_steps_controls() -> None:
    """Each student link sets Explore up with the demo's config and shows just the controls the step is about."""
    for s in lecture.STEPS:
        for d in s.links[:1]:
            at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
            for key, value in lecture.explore_query(d.config, s.shows(d)).items():
                at.query_params[key] = value
            at.run()
            assert not at.exception and not at.warning, (s.key, at.warning)
            values = {name: at.session_state[f"explore.{name}"] for name in sidebar.FIELDS}
            assert sidebar.build_config(values)[0] == d.config
            shown = {w.key for w in [*at.selectbox, *at.number_input, *at.toggle, *at.select_slider, *at.text_input]}
            wanted = {f"explore.{n}" for n in s.shows(d)}
            assert shown & {f"explore.{n}" for n in [*sidebar.FIELDS, "preset"]} <= wanted
            assert shown & wanted, s.key


def test_reseeded_changes_only_the_seed() -> None:
    step = lecture.STEPS[3]
    again = lecture.reseeded(step, 5)
    assert [d.config.seed for d in again.runs] == [5] * len(step.runs)
    assert [d.config.replace(seed=0) for d in again.runs] == [d.config for d in step.runs]
    assert lecture.reseeded(step, None) is step


# --- step 1: the rescaling oracle ----------------------------------------------------------------------------------


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


# --- demos: cached, fast to rerun ----------------------------------------------------------------------------------


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
    assert lecture.warm_order(4) == [4, 5, 3, 1, 2, 6, 7, 8, 9]
    assert lecture.warm_order(9) == [9, 8, 1, 2, 3, 4, 5, 6, 7]


# --- the page: every step under AppTest ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(1, N + 1))
def test_each_step_opens_from_its_link(n: int, store: RunStore) -> None:
    step = lecture.STEPS[n - 1]
    lecture.step_runs(step, store)  # trained (or found) first: the page never waits, it would show its note
    at = lecture_page({"step": str(n)})
    assert not at.exception, at.exception
    assert heading(at) == f"## {n}. {step.title}"
    assert [x.value.strip("$\n") for x in at.latex] == list(step.formulas)
    assert len(figures_of(at)) == (0 if step.figure == "summary" else 1)
    assert at.button(key="lecture.prev").disabled == (n == 1)
    assert at.button(key="lecture.next").disabled == (n == N)
    assert at.session_state["lecture.step"] == n
    text = " ".join(m.value for m in [*at.markdown, *at.caption])
    for d in step.links:
        assert lecture.explore_link(d.config, step.shows(d)) in text
    assert not any(step.notes[:40] in m.value for m in at.markdown)  # the audience sees no notes


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
            assert f"]({lecture.explore_link(d.config, s.shows(d))})" in text
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
    assert "at <i>c</i> = 3:" in json.dumps(figures_of(at)[0])
    at.select_slider(key="lecture.c").set_value(0.5).run()
    assert "at <i>c</i> = 0.5:" in json.dumps(figures_of(at)[0])
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


# --- the handout ---------------------------------------------------------------------------------------------------


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
        assert all(mathml(f) in text for f in s.formulas)
    assert text.count("<math") == sum(len(s.formulas) for s in lecture.STEPS)
    for s in lecture.STEPS:
        for d in s.links:
            assert lecture.explore_link(d.config, s.shows(d), base="")[1:].split("&")[0] in text


# --- the command line ----------------------------------------------------------------------------------------------


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


def test_cli_needs_something_to_write(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lecture"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--figures" in err and "--pdf" in err and err.count("\n") == 1


def test_cli_bad_pdf_path_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lecture", "--pdf", str(tmp_path / "lecture.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("balance: error: --pdf") and "must end in .pdf" in err and err.count("\n") == 1
    assert main(["lecture", "--figures", "/nonexistent-dir/figures"]) == 2
    assert capsys.readouterr().err.startswith("balance: error: --figures /nonexistent-dir/figures: cannot write")


def test_cli_exports_every_figure_for_slides_and_a_pdf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SVG and PNG (2x) per figure, named after its step; the PDF has a page a step and one for the stamp."""
    from PIL import Image

    folder, pdf = tmp_path / "figures", tmp_path / "lecture.pdf"
    assert main(["lecture", "--figures", str(folder), "--pdf", str(pdf)]) == 0
    shown = [s for s in lecture.STEPS if s.figure != "summary"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{s.figure_name}.{ext}" for s in shown for ext in ("svg", "png")
    )
    assert "lecture-3-layer-gaps.svg" in {p.name for p in folder.iterdir()}
    for s in shown:
        svg = (folder / f"{s.figure_name}.svg").read_text(encoding="utf-8")
        assert svg.startswith("<svg") and "</svg>" in svg
        with Image.open(folder / f"{s.figure_name}.png") as image:
            assert image.size == (2 * 1280, 2 * 640)  # twice the slide size
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page[^s]", data)) == N + 1
    assert "wrote" in capsys.readouterr().out


# --- each figure shows what its text says (issue 15.3) -------------------------------------------------------------


def step_fig(store: RunStore, key: str) -> tuple[lecture.Step, object]:
    step = next(s for s in lecture.STEPS if s.key == key)
    return step, lecture.step_figure(step, store, c=2.0)


def ys(trace: object) -> np.ndarray:
    return np.asarray(trace.y, dtype=float)


def test_step_2_each_unit_slides_along_its_line_from_open_to_filled_circle(store: RunStore) -> None:
    step, fig = step_fig(store, "neurons")
    assert "open circle" in step.text and "dashed" in step.text and "several-fold" in step.text
    starts, ends, lines = (views.traces(fig, role) for role in ("start", "end", "constant"))
    assert len(starts) == len(ends) == len(lines) == 6
    for start, end, line in zip(starts, ends, lines):
        assert start.marker.symbol.endswith("-open") and not end.marker.symbol.endswith("-open")
        assert start.marker.size >= 20 and line.line.width >= 3 and line.line.dash == "dash"
        d0 = start.x[0] - start.y[0]
        assert abs((end.x[0] - end.y[0]) - d0) < 1e-3 * max(end.x[0], end.y[0])  # on its line
        np.testing.assert_allclose(np.asarray(line.x) - np.asarray(line.y), d0, rtol=1e-9, atol=1e-12)
        assert (end.x[0] + end.y[0]) / (start.x[0] + start.y[0]) > 3  # several-fold
    assert len({t.marker.color for t in starts}) == 6  # one colour a unit


def test_step_3_norms_grow_ten_thousandfold_the_gap_stays_tiny_ratio_to_one(store: RunStore) -> None:
    step, fig = step_fig(store, "small-init")
    assert "ten-thousandfold" in step.text and "10⁻²" in step.text
    (h,), (nxt,), (gap,), (ratio,) = (views.traces(fig, r) for r in ("sqnorm h", "sqnorm next", "gap", "ratio"))
    assert min(ys(h)[-1] / ys(h)[0], ys(nxt)[-1] / ys(nxt)[0]) > 5000
    assert ys(gap).max() < 1e-2
    assert abs(ys(ratio)[-1] - 1) < 0.01


def test_step_4_drift_is_first_order_in_eta_at_fixed_time_and_exact_per_step(store: RunStore) -> None:
    """The text: exactly η² a step (measured = law to rounding), and at a fixed training time first order in η:
    halving the step halves the drift, and the change divided by η is one curve."""
    step, fig = step_fig(store, "step-size")
    assert "first order in η" in step.title and "fixed" in step.title and "halves the drift" in step.text
    measured, law, per_eta = (views.traces(fig, r) for r in ("measured", "predicted", "per eta"))
    etas = [float(d.config.optim.lr) for d in step.runs]
    ends = [float(t.x[-1]) for t in measured]
    assert ends == pytest.approx([ends[0]] * 3)  # the same training time t = ηk for every run
    for m, p in zip(measured, law):
        assert np.max(np.abs(ys(m) - ys(p))) < 1e-10  # exact per step
    drift = np.array([ys(m)[-1] for m in measured])
    slope = np.polyfit(np.log(etas), np.log(np.abs(drift)), 1)[0]
    assert 0.9 < slope < 1.1, slope  # first order: not η² (2) at fixed t
    assert np.ptp([ys(t)[-1] for t in per_eta]) < 0.05 * abs(ys(per_eta[0])[-1])  # one curve
    assert "measured = law, to" in fig.layout.annotations[0].text


def test_step_5_is_called_an_analogue_and_balances_only_from_a_small_start(store: RunStore) -> None:
    step, fig = step_fig(store, "figure-1")
    assert "analogue" in step.title and "does not give" in step.text
    small, large = (views.traces(fig, "ratio", d.label)[0] for d in step.runs)
    loss_small, loss_large = (views.traces(fig, "loss", d.label)[0] for d in step.runs)
    assert abs(ys(small)[-1] - 1) < 0.01 and ys(loss_small)[-1] < 1e-6
    assert 3 < ys(large)[-1] < 7 and ys(loss_large)[-1] > 1e-3  # "ratio near 5", loss far from 0


def test_step_6_same_pair_a_legend_and_weight_decay_shrinks_the_gap_geometrically(store: RunStore) -> None:
    step, fig = step_fig(store, "breaks")
    assert all("layers 2–3" in a.text for a in fig.layout.annotations[:4])  # the same pair, said in every panel
    assert fig.layout.showlegend and any(t.showlegend is not False for t in views.traces(fig, "baseline"))
    base = {t.meta["run"]: ys(t) for t in views.traces(fig, "baseline")}
    runs = {t.meta["run"]: ys(t) for t in views.traces(fig, "measured")}
    for label in ("tanh", "Adam", "batch norm"):  # the gap wanders off: far more than the baseline's change
        assert np.abs(runs[label]).max() > 10 * np.abs(base[label]).max(), label
    decay = "weight decay λ = 0.05"
    assert "decays geometrically" in step.text
    g = runs[decay]
    assert abs(g[-1]) < 0.1 * abs(g[0]) and np.all(np.diff(np.abs(g)) <= 1e-12)  # the gap itself falls to 0
    (law,) = views.traces(fig, "predicted", decay)
    assert np.max(np.abs(ys(law) - g)) < 1e-6 * abs(g[0])  # exactly as its law says
    titles = [fig.layout[f"yaxis{i}"].title.text for i in ("", "2", "3", "4")]
    assert all(t and "_" not in t for t in titles)  # words and maths, not raw column names


def test_step_7_shows_the_ratio_of_about_2000_at_step_0_and_near_1_5_at_the_end(store: RunStore) -> None:
    step, fig = step_fig(store, "difference")
    assert "ratio about 2000" in step.text and "near 1.5" in step.text and "gap about 1" in step.text
    (ratio,) = views.traces(fig, "ratio", step.runs[0].label)
    assert ratio.x[0] == 0 and 1500 < ys(ratio)[0] < 2500  # step 0 is drawn
    assert 1.3 < ys(ratio)[-1] < 1.7
    (gap,) = views.traces(fig, "gap")
    assert 0.5 < ys(gap)[0] < 2 and np.ptp(ys(gap)) < 0.01 * ys(gap)[0]
    (small,) = views.traces(fig, "ratio", step.runs[1].label)
    assert abs(ys(small)[-1] - 1) < 0.01


def test_every_figure_is_projector_grade(store: RunStore) -> None:
    """18 px ticks, 20 px titles, axis titles and legends, lines of 3 px or more at full opacity, no raw column
    names on an axis (the browser test measures the drawn sizes)."""
    for s in lecture.STEPS:
        fig = lecture.step_figure(s, store, c=2.0)
        if fig is None:
            continue
        assert fig.layout.font.size >= 18 and fig.layout.legend.font.size >= 20, s.key
        assert all(a.font.size >= 20 for a in fig.layout.annotations), s.key
        for name in [k for k in fig.layout.to_plotly_json() if re.fullmatch(r"[xy]axis\d*", k)]:
            ax = fig.layout[name]
            assert ax.tickfont.size >= 18 and ax.title.font.size >= 20, (s.key, name)
            assert "_" not in (ax.title.text or ""), (s.key, name)
        for t in fig.data:
            assert t.opacity in (None, 1.0), (s.key, t.name)
            if "lines" in (t.mode or ""):
                assert t.line.width >= 3, (s.key, t.name)


# --- students: short links, QR codes, the seed ---------------------------------------------------------------------


def test_short_links_name_every_demo_and_carry_the_seed() -> None:
    for s in lecture.STEPS:
        for i, d in enumerate(s.links):
            link = lecture.short_link(s, i)
            assert link.startswith("lecture?demo=") and len(link) <= len("lecture?demo=6.5")
            step, demo = lecture.resolve_demo(lecture.demo_code(s, i))
            assert step is s and demo == d
            again, reseeded = lecture.resolve_demo(lecture.demo_code(s, i), "7")
            assert reseeded.config == d.config.replace(seed=7) and again.number == s.number
            assert lecture.short_link(s, i, 7).endswith("&seed=7")
    for bad in ("0", "9", "6.9", "x", "1.0", "", "6.", "1e3"):
        assert lecture.resolve_demo(bad) is None, bad
    assert lecture.resolve_demo("3", "-1") is None and lecture.resolve_demo("3", "1" * 12) is None


def test_qr_codes_and_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(students.PUBLIC_URL, raising=False)
    assert students.origin("http://10.0.0.5:8501/lecture?step=3") == "http://10.0.0.5:8501"
    assert students.origin("https://host/base/lecture") == "https://host/base"
    assert students.origin(None) == "" and students.origin("javascript:alert(1)") == ""
    monkeypatch.setenv(students.PUBLIC_URL, "https://class.example.org/balance/")
    assert students.origin("http://127.0.0.1:8501/lecture") == "https://class.example.org/balance"
    url = students.absolute("http://10.0.0.5:8501", "lecture?demo=3")
    assert students.shown(url) == "10.0.0.5:8501/lecture?demo=3"
    assert students.this_machine_only("http://127.0.0.1:8501/x") and not students.this_machine_only(url)
    assert students.qr_svg(url).startswith("<svg") and students.qr_png(url)[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_short_link_opens_the_demo_in_explore_with_only_its_control() -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.switch_page("app_pages/lecture.py")
    at.query_params["demo"] = "6.3"
    at.run()
    assert not at.exception
    step = lecture.STEPS[5]
    demo = step.links[2]
    values = {name: at.session_state[f"explore.{name}"] for name in sidebar.FIELDS}
    assert sidebar.build_config(values)[0] == demo.config
    shown = {w.key for w in [*at.selectbox, *at.number_input, *at.toggle, *at.select_slider, *at.text_input]}
    assert shown & {f"explore.{n}" for n in [*sidebar.FIELDS, "preset"]} == {f"explore.{n}" for n in demo.show}


def test_a_bad_short_link_says_so_and_shows_the_lecture() -> None:
    at = lecture_page({"demo": "42"})
    assert not at.exception and heading(at).startswith("## 1. ")
    assert any("no such demo" in w.value for w in at.warning)


def test_the_title_step_and_every_demo_have_a_qr_code_and_a_short_link() -> None:
    at = lecture_page({"step": "1"})
    assert len(at.get("image")) >= 2  # the follow-along QR code, and the demo's in its popover
    text = " ".join(c.value for c in at.caption)
    assert "follow along" in text and "lecture?demo=1" in text
    at = lecture_page({"step": "4"})
    assert any("lecture?demo=4.1" in c.value and "(4.2, 4.3)" in c.value for c in at.caption)
    assert at.get("popover")


def test_a_reseeded_demo_opens_from_its_link_with_its_seed() -> None:
    at = lecture_page({"step": "5", "seed": "3"})
    assert not at.exception
    assert at.session_state["lecture.seed.5"] == 3
    assert any("seed=3" in c.value for c in at.caption)


# --- the presenter view --------------------------------------------------------------------------------------------


def test_presenter_view_has_every_steps_notes() -> None:
    at = AppTest.from_file(str(ROOT / "app_pages" / "presenter.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    (data,) = [json.loads(c.proto.json) for c in at.get("bidi_component")]
    assert [s["notes"] for s in data["steps"]] == [s.notes for s in lecture.STEPS]
    assert all(len(s.notes.split()) >= 20 for s in lecture.STEPS)


# --- the handout's stamp -------------------------------------------------------------------------------------------


def test_handout_carries_the_reproducibility_stamp_and_how_to_cite(store: RunStore) -> None:
    text = handout_html(store)
    values = stamp.stamp()
    assert html.escape(stamp.stamp_text(values)) in text
    assert f"code {stamp.code_hash()}" in text and values["torch"] in text
    assert html.escape(PAPER_BIBTEX) in text and "@software{balance" in text and "1806.00900" in text
