"""Sweeps: the spec (TOML, flags, validation), running into the store, divergence and failure isolation, the
process-pool fallback, the Ray path, the slope fit, the figures and the Sweeps page.

Members are tiny (MF 6 x 5, a few dozen steps). Each member's stored metrics are checked against a single
``Trainer`` run of its config in float64, so a sweep that mixes up members, configs or rows fails.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FAMILIES, make_config
from streamlit.testing.v1 import AppTest

from balance.app import common as ui
from balance.cli import main
from balance.config import ConfigError, RunConfig
from balance.runs.loop import run
from balance.runs.store import RunStore
from balance.runs.sweep import SweepSpec, fit_slopes, member_name, parse_seeds, plan, run_sweep, summary
from balance.views import sweeps as sweep_plots

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

SPEC = """
name = "lr-study"
[base]
steps = 40
log_every = 5
[base.data]
d1 = 6
d2 = 5
rank = 2
[grid]
"optim.lr" = [0.01, 0.05]
"model.init_scale" = [0.1, 0.5]
seed = "0-1"
"""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RunStore]:
    with RunStore(tmp_path / "home") as s:
        yield s


def assert_like_single(store: RunStore, run_id: str) -> None:
    """The stored run equals a fresh single run of its stored config (float64, 1e-10), status included."""
    record = store.get_run(run_id)
    single = run(record.config)
    assert (record.state, record.step, record.message) == (single.status.state, single.status.step,
                                                           single.status.message)  # fmt: skip
    stored = store.metrics(run_id)
    assert list(stored.columns) == list(single.metrics.columns)
    np.testing.assert_allclose(stored.to_numpy(float), single.metrics.to_numpy(float), rtol=1e-10, atol=1e-12)


# --- the spec ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seeds"),
    [("0-7", tuple(range(8))), ("0,3,5", (0, 3, 5)), ("0-3,8", (0, 1, 2, 3, 8)), (" 4 ", (4,)), ("2-2", (2,))],
)
def test_parse_seeds(text: str, seeds: tuple[int, ...]) -> None:
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    ("text", "why"), [("7-0", "backwards"), ("a", "such as 0-7"), ("0,0", "twice"), ("", "such as")]
)
def test_bad_seeds_say_why(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_seeds(text)


def test_spec_from_toml_is_the_grid_over_the_base() -> None:
    spec = SweepSpec.from_toml(SPEC)
    configs = spec.configs()
    assert len(configs) == 8 and spec.name == "lr-study"
    assert {(c.optim.lr, c.model.init_scale, c.seed) for c in configs} == {
        (lr, s, seed) for lr in (0.01, 0.05) for s in (0.1, 0.5) for seed in (0, 1)
    }
    assert all(c.steps == 40 and c.data.d1 == 6 and c.log_every == 5 for c in configs)
    assert configs[0] == RunConfig().replace(**{"steps": 40, "log_every": 5, "data.d1": 6, "data.d2": 5,
                                                "data.rank": 2, "optim.lr": 0.01, "model.init_scale": 0.1})  # fmt: skip
    assert spec.varied() == ["optim.lr", "model.init_scale", "seed"]
    assert member_name(spec.changes()[3]) == "lr=0.01 init_scale=0.5 seed=1"


def test_list_members_multiply_the_grid() -> None:
    text = SPEC + '[[list]]\n"optim.name" = "gd"\n[[list]]\n"optim.name" = "momentum"\n"optim.momentum" = 0.5\n'
    configs = SweepSpec.from_toml(text).configs()
    assert len(configs) == 16
    assert [c.optim.name for c in configs].count("momentum") == 8
    assert {c.optim.momentum for c in configs if c.optim.name == "momentum"} == {0.5}


def test_a_plain_run_config_is_a_sweep_of_one() -> None:
    config = RunConfig().replace(**{"optim.lr": 0.02, "steps": 7})
    assert SweepSpec.from_toml(config.to_toml()).configs() == [config]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1", "unknown key 'colour'"),
        ('[grid]\n"lr" = [0.1]', r"'lr' is not a setting \(did you mean optim.lr\?\)"),
        ('[grid]\n"optim.lr" = []', "optim.lr: give a non-empty list"),
        ('[grid]\n"optim.lr" = 0.1', "optim.lr: give a non-empty list"),
        ('[grid]\n"optim.lr" = [0.1, 0.1]', "given twice"),
        ('[grid]\n"optim.lr" = ["fast"]', "optim.lr = 'fast': not a valid float"),
        ('[grid]\n"optim.lr" = [0.1, 500.0]', r"sweep member \(optim.lr=500.0\): optim.lr = 500.0: out of range"),
        ('[grid]\n"model.name" = ["mf", "mlp"]', r"member \(model.name=mlp\).*only mf does"),
        (
            '[grid]\n"optim.lr" = [0.1]\n[[list]]\n"optim.lr" = 0.2',
            "both in \\[grid\\] and in \\[\\[list\\]\\] entry 1",
        ),
        ("[base]\nsteps = -1", r"\[base\] run.steps = -1: out of range"),
        ("[base.optim]\nspeed = 1", r"\[base\] optim.speed: unknown setting"),
        ('name = "a b"', "use letters, digits"),
        ('preset = "nope"', "preset 'nope' is not one of"),
        ("[grid", "not valid TOML"),
    ],
)
def test_spec_validation_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SweepSpec.from_toml(text)


def test_plan_groups_by_shape_in_equal_chunks() -> None:
    base = make_config(FAMILIES[0])
    mf = [base.replace(seed=i) for i in range(70)]
    wide = [base.replace(**{"data.d1": 7, "seed": i}) for i in range(3)]
    cnn = make_config(FAMILIES[-1])
    units = plan([*mf, cnn, *wide])
    assert sorted(len(u) for u in units) == [1, 3, 35, 35]
    assert [70] in units  # the cnn member trains alone
    assert sorted(i for u in units for i in u) == list(range(74))
    assert sorted(len(u) for u in plan(mf, chunk=16)) == [14] * 5


# --- running into the store ----------------------------------------------------------------------------------------


def test_members_land_in_the_store_as_runs_of_their_sweep(store: RunStore) -> None:
    text = SPEC.replace("[0.01, 0.05]", "[0.01, 0.05, 40.0]")
    spec = SweepSpec.from_toml(text)
    seen: list[tuple[int, int]] = []
    result = run_sweep(spec, store, workers=1, on_progress=lambda d, n: seen.append((d, n)))
    assert result.sweep.startswith("lr-study-") and len(result.run_ids) == 12
    assert seen[0] == (0, 12) and seen[-1] == (12, 12)
    # step size 40 diverges; the other members are untouched by it
    assert result.states == ["diverged" if c.optim.lr == 40.0 else "finished" for c in spec.configs()]
    for run_id in result.run_ids:
        assert_like_single(store, run_id)
    runs = store.list_runs()
    assert set(runs.loc[runs["sweep"] == result.sweep, "id"]) == set(result.run_ids)
    (row,) = store.sweeps().itertuples()
    assert (row.sweep, row.runs, row.finished, row.diverged, row.failed, row.active) == (result.sweep, 12, 8, 4, 0, 0)
    assert [r.id for r in store.sweep_runs(result.sweep)] == result.run_ids
    assert store.get_run(result.run_ids[0]).name == "lr=0.01 init_scale=0.1 seed=0"


def test_summary_holds_each_members_final_values(store: RunStore) -> None:
    spec = SweepSpec(make_config(FAMILIES[3], steps=12), (("optim.lr", (0.05, 0.1)),), (), "mlp")
    result = run_sweep(spec, store, workers=1)
    table = summary(store, result.sweep)
    assert table["run"].tolist() == result.run_ids
    for r in table.itertuples():
        last = store.metrics(r.run).iloc[-1]
        h = max((1, 2), key=lambda h: abs(last[f"gap_drift_{h}"]))  # depth 3: two layer pairs
        expected = [last[c] for c in ("loss", f"gap_drift_{h}", f"pred_gap_drift_{h}", f"ratio_{h}")]
        assert [r.loss, r.gap_drift, r.pred_gap_drift, r.ratio] == expected
        assert r.diverged == 0.0 and r.steps == 12 and r.state == "finished"
    assert list(table[["optim.lr", "model.init_scale", "seed"]].itertuples(index=False, name=None)) == [
        (0.05, 0.5, 0), (0.1, 0.5, 0)]  # fmt: skip


def test_a_failing_chunk_fails_its_members_only(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import balance.runs.loop

    real = balance.runs.loop.train

    def flaky(configs: list[RunConfig], snapshots: int) -> list:
        if any(c.model.init_scale == 0.5 for c in configs):
            raise RuntimeError("out of memory")
        return real(configs, snapshots=snapshots)

    monkeypatch.setattr(balance.runs.loop, "train", flaky)
    result = run_sweep(SweepSpec.from_toml(SPEC), store, workers=1, chunk=2)
    scales = [c.model.init_scale for c in SweepSpec.from_toml(SPEC).configs()]
    assert result.states == ["failed" if s == 0.5 else "finished" for s in scales]
    failed = store.get_run(result.run_ids[scales.index(0.5)])
    assert failed.message == "failed: RuntimeError: out of memory"
    assert store.sweeps()["failed"].tolist() == [4]


def test_an_interrupted_sweep_leaves_no_member_queued(store: RunStore) -> None:
    def interrupt(done: int, total: int) -> None:
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(SweepSpec.from_toml(SPEC), store, workers=1, chunk=2, on_progress=interrupt)
    states = store.list_runs()["state"].tolist()
    assert states.count("finished") == 2 and states.count("stopped") == 6


def test_members_that_cannot_batch_train_in_worker_processes(store: RunStore) -> None:
    cnn = make_config(FAMILIES[-2], steps=6)
    sgd = make_config(FAMILIES[3], steps=6).replace(**{"optim.name": "sgd", "optim.batch_size": 4})
    spec = SweepSpec(cnn, (), ((("seed", 1),), (("seed", 2),)), "pool")
    mixed = SweepSpec(sgd, (), ((("seed", 1),), (("seed", 2),)), "pool")
    result = run_sweep(spec, store, workers=2)
    result2 = run_sweep(mixed, store, workers=2)
    assert result.states == result2.states == ["finished", "finished"]
    for run_id in [*result.run_ids, *result2.run_ids]:
        assert_like_single(store, run_id)


def test_workers_do_not_run_the_parents_main_script(
    store: RunStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under Streamlit (and after an AppTest) ``__main__`` is a page script; a spawned worker must not run it."""
    import sys
    import types

    script = tmp_path / "page.py"
    script.write_text("raise SystemExit('a pool worker ran the page script')\n")
    page = types.ModuleType("__main__")
    page.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", page)
    cnn = make_config(FAMILIES[-2], steps=2)
    result = run_sweep(SweepSpec(cnn, (), ((("seed", 1),), (("seed", 2),)), "main"), store, workers=2)
    assert result.states == ["finished", "finished"]


# --- the command line ----------------------------------------------------------------------------------------------


def test_cli_flags_with_comma_lists_and_seed_ranges(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    argv = ["sweep", "--model", "mf", "--d1", "6", "--d2", "5", "--rank", "2", "--lr", "0.01,0.02,0.05",
            "--init-scale", "0.01,0.1", "--seeds", "0-1", "--steps", "20", "--log-every", "5",
            "--out", str(out), "--home", str(home), "--workers", "1", "--name", "cli"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "12 runs (12 finished)" in printed and "sweep cli-" in printed
    table = pd.read_csv(out / "summary.csv")
    assert len(table) == 12 and set(table["optim.lr"]) == {0.01, 0.02, 0.05} and set(table["seed"]) == {0, 1}
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert set(metrics["run"]) == set(table["run"]) and len(metrics) == 12 * 5
    again = SweepSpec.from_toml((out / "spec.toml").read_text())
    assert len(again.configs()) == 12 and again.name == "cli"
    from balance.runs import stamp

    assert json.loads((out / "stamp.json").read_text())["code"] == stamp.code_hash()  # which code made it
    with RunStore(home) as s:
        assert_like_single(s, table["run"].iloc[-1])


def test_cli_flags_override_the_spec_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    argv = ["sweep", "--config", str(spec), "--lr", "0.02", "--seeds", "3", "--home", str(tmp_path), "--workers", "1"]
    assert main(argv) == 0
    assert "2 runs (2 finished)" in capsys.readouterr().out  # one step size, one seed, the file's two scales
    with RunStore(tmp_path) as s:
        runs = s.list_runs()
        assert set(runs["lr"]) == {0.02} and set(runs["init_scale"]) == {0.1, 0.5}
        assert {s.get_run(i).config.seed for i in runs["id"]} == {3}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "0.1,fast"], "optim.lr = 'fast': not a valid float"),
        (["--lr", "0.1,0.1"], "given twice"),
        (["--seeds", "3-1"], "runs backwards"),
        (["--lr", "0.1,500"], "out of range"),
        (["--config", "/nonexistent/spec.toml"], "cannot read it"),
        (["--workers", "0"], "--workers 0: give at least 1"),
        (["--colour", "red"], "unrecognized arguments"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args: list[str], message: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    assert main(["sweep", "--steps", "2", "--home", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("balance: error:") and message in err
    with RunStore(tmp_path) as s:
        assert s.list_runs().empty  # nothing trained, nothing stored


def test_without_ray_address_nothing_of_ray_is_imported(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom balance.cli import main\n"
        f"assert main(['sweep', '--d1', '4', '--d2', '3', '--rank', '1', '--lr', '0.01,0.02', '--steps', '3', "
        f"'--home', {str(tmp_path)!r}, '--workers', '1']) == 0\n"
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# --- Ray -----------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-CPU Ray head on loopback, started (and stopped) by this test module in its own process group."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("ray") / "ray.log", "w")  # noqa: SIM115 - closed below
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    # Ray's socket paths (temp/session_<date>_<pid>/sockets/plasma_store) must fit AF_UNIX's 107 bytes: under
    # pytest-xdist the base temp gains "popen-gw1/" and ray start exited 1, so a short folder under /tmp
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port",
           str(port), "--num-cpus", "1", "--include-dashboard", "false", "--disable-usage-stats",
           "--temp-dir", str(temp)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:  # a head that fails to start is cleaned up too (its open log leaked into the next test as a warning)
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"ray start exited with {proc.returncode}: {log.name}")
                time.sleep(0.5)
        yield address
    finally:
        import signal

        os.killpg(proc.pid, signal.SIGTERM)  # the head and the processes it started: this test's group only
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:  # 'ray start --block' takes its time to tear down: no need to wait
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_address_sends_chunks_to_the_cluster(ray_cluster: str, store: RunStore) -> None:
    text = SPEC.replace("[0.01, 0.05]", "[0.01, 40.0]")
    spec = SweepSpec.from_toml(text)
    result = run_sweep(spec, store, ray_address=ray_cluster, chunk=4)
    assert "ray" in sys.modules
    assert result.states == ["diverged" if c.optim.lr == 40.0 else "finished" for c in spec.configs()]
    for run_id in result.run_ids:
        assert_like_single(store, run_id)


# --- the slope fit and the figures ---------------------------------------------------------------------------------


def frame(rows: list[tuple]) -> pd.DataFrame:
    columns = ["run", "state", "optim.lr", "model.init_scale", "seed", "gap_drift", "pred_gap_drift", "ratio", "loss",
               "diverged"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def test_fit_slopes_are_per_seed_with_an_interval_across_seeds() -> None:
    lrs = [0.01, 0.02, 0.04, 0.08]
    noise = {0: [1.0, 1.1, 0.95, 1.02], 1: [1.0, 0.9, 1.05, 1.1], 2: [1.02, 1.0, 0.97, 1.0]}
    # seeds with different offsets (3 and 7): a per-seed fit is not widened by them, a pooled one would be
    rows = [(f"a{s}{i}", "finished", lr, 0.1, s, (3 + 4 * s) * lr**2, 0, 1, 1, 0) for s in (0, 1) for i, lr in
            enumerate(lrs)]  # fmt: skip
    rows += [(f"b{s}{i}", "finished", lr, 1.0, s, -5 * lr * e, 0, 1, 1, 0) for s, es in noise.items()
             for i, (lr, e) in enumerate(zip(lrs, es))]  # fmt: skip
    rows += [("c", "diverged", 1.0, 1.0, 0, 1e9, 0, 1, 1, 1), ("d", "finished", 0.1, 2.0, 0, 1.0, 0, 1, 1, 0)]
    fits = fit_slopes(frame(rows)).set_index("model.init_scale")
    assert fits.loc[0.1, "slope"] == pytest.approx(2, abs=1e-12) and fits.loc[0.1, "high"] - fits.loc[0.1, "low"] < 1e-9
    assert fits.loc[0.1, "seeds"] == 2
    # oracle: each seed's least-squares slope, then the t interval of their mean (4.303: 95%, 2 dof)
    x = np.log(lrs)
    slopes = [np.polyfit(x, np.log(5 * np.array(lrs) * es), 1)[0] for es in noise.values()]
    half = 4.302652729749464 * np.std(slopes, ddof=1) / math.sqrt(3)
    assert fits.loc[1.0, "slope"] == pytest.approx(np.mean(slopes), rel=1e-12)
    assert fits.loc[1.0, "high"] - fits.loc[1.0, "slope"] == pytest.approx(half, rel=1e-9)
    assert fits.loc[1.0, "seeds"] == 3 and fits.loc[1.0, "points"] == 4  # the diverged member is left out
    assert math.isnan(fits.loc[2.0, "slope"]) and "2 seeds" in fits.loc[2.0, "note"]


def test_heatmap_cells_hold_the_median_and_the_member_closest_to_it() -> None:
    rows = [
        ("r1", "finished", 0.01, 0.1, 0, 1e-6, 0, 1.5, 0.2, 0),
        ("r2", "finished", 0.01, 0.1, 1, -3e-6, 0, 1.7, 0.4, 0),
        ("r3", "finished", 0.01, 0.1, 2, -2e-6, 0, 1.6, 0.3, 0),
        ("r4", "diverged", 0.1, 0.1, 0, 5.0, 0, 9, 1e9, 1),
        ("r5", "finished", 0.1, 0.1, 1, 1e-4, 0, 1.1, 0.1, 0),
        ("r6", "finished", 0.01, 1.0, 0, 1e-2, 0, 1, 1, 0),
    ]
    df = frame(rows)
    before = df.copy()
    ratio = sweep_plots.heatmap_figure(df, "ratio")
    pd.testing.assert_frame_equal(df, before)  # the input is not changed
    heat, clicks = ratio.data
    assert list(heat.x) == ["0.01", "0.1"] and list(heat.y) == ["0.1", "1"]
    assert heat.z[0][0] == 1.6 and heat.z[0][1] == 1.1 and heat.z[1][0] == 1.0  # diverged r4 left out
    assert math.isnan(heat.z[1][1])  # no member there
    assert heat.customdata[0][0] == "r3" and heat.customdata[0][1] == "r5"  # the member at the median opens
    assert list(clicks.customdata) == ["r3", "r5", "r6", ""]
    size = sweep_plots.heatmap_figure(df, sweep_plots.ABS_DRIFT).data[0]  # the median of |drift|: 2e-6
    assert size.z[0][0] == pytest.approx(math.log10(2e-6)) and size.text[0][0] == "2e-06"
    signed = sweep_plots.heatmap_figure(df, "gap_drift").data[0]  # the signed median, its sign shown
    assert signed.z[0][0] == pytest.approx(-2e-6) and signed.text[0][0] == "-2e-06" and signed.zmid == 0
    assert signed.text[0][1] == "+0.0001"
    diverged = sweep_plots.heatmap_figure(df, "diverged").data[0]
    assert diverged.z[0][1] == 0.5 and diverged.z[0][0] == 0


def test_drift_figure_shows_members_prediction_and_fit() -> None:
    rows = [(f"r{s}{i}", "finished", lr, 0.1, s, 2 * lr**2, 2 * lr**2, 1, 1, 0) for s in (0, 1)
            for i, lr in enumerate([0.01, 0.02, 0.04])]  # fmt: skip
    df = frame(rows)
    fig = sweep_plots.drift_figure(df, fit_slopes(df))
    members, predicted, fitted = fig.data
    assert list(members.customdata)[:3] == ["r00", "r01", "r02"]
    assert "slope 2.000 [2.000, 2.000], 2 seeds" in members.name
    assert predicted.marker.symbol == "circle-open" and list(predicted.y) == list(members.y)  # exact for GD
    assert fitted.mode == "lines" and list(fitted.y[[0, -1]]) == pytest.approx([2e-4, 32e-4], rel=1e-9)
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"


# --- the page ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("sweep-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BALANCE_HOME", str(path))
        yield path
        ui.runner().shutdown()
        ui._runner.clear()
        ui._store.clear()


def sweeps_page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    return at.switch_page("app_pages/sweep.py").run()


def test_sweeps_page(page_home: Path) -> None:
    at = sweeps_page()
    assert not at.exception
    assert "No sweeps stored yet" in at.info[0].value
    with RunStore(page_home) as s:
        result = run_sweep(SweepSpec.from_toml(SPEC.replace("[0.01, 0.05]", "[0.01, 0.05, 40.0]")), s, workers=1)
    at = sweeps_page()
    assert not at.exception, at.exception
    charts = [c.proto.spec for c in at.get("plotly_chart")]
    assert len(charts) == 6 and "median of |drift|" in charts[0] and "signed median" in charts[1]
    assert "against the step size" in charts[5]
    assert at.selectbox(key="sweep.sweep").value == result.sweep
    at.selectbox(key="sweep.filter.seed").set_value(1).run()
    assert not at.exception
    # a member opens in Explore, as from the Runs page
    at.selectbox(key="sweep.member").set_value(result.run_ids[5]).run()
    at.button(key="sweep.open_member").click().run()
    assert not at.exception
    assert at.session_state["explore.run"] == result.run_ids[5]
    assert at.session_state["explore.optim.lr"] == 0.05 and at.session_state["explore.data.d1"] == 6
    # a click on a heat-map cell (the chart's selection callback) does the same
    at = sweeps_page()
    at.session_state["sweep.open"] = result.run_ids[2]
    at.run()
    assert not at.exception and at.session_state["explore.run"] == result.run_ids[2]


def test_sweeps_page_link_names_the_sweep(page_home: Path) -> None:
    with RunStore(page_home) as s:
        first = run_sweep(SweepSpec.from_toml(SPEC.replace('"lr-study"', '"first"')), s, workers=1).sweep
        run_sweep(SweepSpec.from_toml(SPEC.replace('"lr-study"', '"second"')), s, workers=1)
    at = AppTest.from_file(str(ROOT / "app_pages" / "sweep.py"), default_timeout=60)
    at.query_params["sweep"] = first
    at.run()
    assert not at.exception and at.selectbox(key="sweep.sweep").value == first
    at = AppTest.from_file(str(ROOT / "app_pages" / "sweep.py"), default_timeout=60).run()
    assert at.selectbox(key="sweep.sweep").value.startswith("second-")  # newest first without a link
    assert at.query_params["sweep"] == at.selectbox(key="sweep.sweep").value


# --- sizes, cores and Ray addresses checked before anything is built (issue 11.6) ----------------------------------


def _peak_bytes(fn: object) -> tuple[int, BaseException | None]:
    """Peak Python allocation while calling ``fn`` (and the exception it raised)."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()  # type: ignore[operator]
        raised = None
    except Exception as exc:  # returned for the caller to check
        raised = exc
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, raised


THOUSAND = ", ".join(repr(0.001 * (i + 1)) for i in range(1000))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: parse_seeds("0-2147483647"), "2,147,483,648 seeds; a sweep has at most 100,000 members"),
        (lambda: SweepSpec.from_toml('[grid]\nseed = "0-2147483647"'), "2,147,483,648 seeds"),
        (lambda: SweepSpec.from_toml(f'[grid]\n"optim.lr" = [{THOUSAND}]\n"model.init_scale" = [{THOUSAND}]\n'
                                     f'"data.seed" = [{", ".join(map(str, range(1000)))}]\nseed = "0-999"'),
         "1,000,000,000,000 members; a sweep has at most 100,000"),
        (lambda: SweepSpec(RunConfig(), (("seed", tuple(range(1000))), ("data.seed", tuple(range(1000))))).configs(),
         "1,000,000 members"),
    ],
)  # fmt: skip
def test_members_are_counted_before_anything_is_built(build: object, message: str) -> None:
    """--seeds 0-2147483647, three 1000-value axes and a 10^12-member spec each grew to 3 GiB: now refused in a few
    MB, from the product of the axis lengths."""
    peak, raised = _peak_bytes(build)
    assert isinstance(raised, ConfigError) and message in str(raised), raised
    assert peak < 20 * 2**20, peak


def test_cli_three_thousand_value_axes_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    values = ",".join(repr(0.001 * (i + 1)) for i in range(1000))
    argv = ["sweep", "--lr", values, "--init-scale", values, "--data-seed", ",".join(map(str, range(1000))),
            "--home", str(tmp_path)]  # fmt: skip
    peak, raised = _peak_bytes(lambda: main(argv) == 2 or pytest.fail("not exit 2"))
    assert raised is None and peak < 50 * 2**20, peak
    err = capsys.readouterr().err
    assert err == "balance: error: sweep spec: 1,000,000,000 members; a sweep has at most 100,000\n"


def test_workers_are_capped_at_the_cores(tmp_path: Path, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import balance.runs.sweep

    seen = []
    real = balance.runs.sweep.run_sweep
    monkeypatch.setattr(balance.runs.sweep, "usable_cores", lambda: 1)
    monkeypatch.setattr(balance.runs.sweep, "run_sweep", lambda *a, **k: seen.append(k["workers"]) or real(*a, **k))
    argv = ["sweep", "--d1", "4", "--d2", "3", "--rank", "1", "--lr", "0.01,0.02", "--steps", "2", "--workers",
            "100000", "--home", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0 and seen == [1]
    captured = capsys.readouterr()
    assert captured.err == "balance: note: --workers 100000: using 1, the cores here\n"
    assert "2 runs (2 finished)" in captured.out


def test_a_dead_ray_address_fails_at_once(tmp_path: Path) -> None:
    """Nothing listening: exit 2 with one line in seconds (was: Ray's client retrying for minutes); nothing stored and
    nothing of Ray imported."""
    port = _free_port()  # bound, then closed: connections are refused
    code = (
        "import sys, time\nfrom balance.cli import main\nstart = time.monotonic()\n"
        f"code = main(['sweep', '--d1', '4', '--d2', '3', '--rank', '1', '--lr', '0.01,0.02', '--steps', '2', "
        f"'--home', {str(tmp_path)!r}, '--ray-address', '127.0.0.1:{port}'])\n"
        "assert code == 2, code\nassert time.monotonic() - start < 10, time.monotonic() - start\n"
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"balance: error: --ray-address 127.0.0.1:{port}: nothing answers there (Connection " \
        "refused); is the Ray head running?\n"  # fmt: skip
    with RunStore(tmp_path) as s:
        assert s.list_runs().empty


def test_an_address_that_is_not_ray_fails_within_the_limit(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A port that accepts connections but never speaks Ray: refused when the limit runs out, nothing stored."""
    import threading

    import balance.runs.sweep

    monkeypatch.setattr(balance.runs.sweep, "RAY_CONNECT_SECONDS", 3.0)
    held: list[socket.socket] = []

    def accept(server: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the server closes under it at the end
            while True:
                held.append(server.accept()[0])

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        thread = threading.Thread(target=accept, args=(server,), daemon=True)
        thread.start()
        start = time.monotonic()
        with pytest.raises(ConfigError, match=r"--ray-address 127.0.0.1:\d+: no Ray cluster answered within 3 s"):
            run_sweep(SweepSpec.from_toml(SPEC), store, ray_address=f"127.0.0.1:{server.getsockname()[1]}")
        assert time.monotonic() - start < 10
        server.shutdown(socket.SHUT_RDWR)
    thread.join(5)
    for conn in held:
        conn.close()
    assert store.list_runs().empty
