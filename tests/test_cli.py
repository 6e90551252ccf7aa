"""Tests of balance.cli.core: flags from the schema, output files, exit codes, one-line errors, precedence."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pandas as pd
import pytest

import balance.runs.loop
from balance.cli import core as cli
from balance.cli.core import config_from_args, flag_of, main
from balance.config import RunConfig, schema
from balance.config.codecs import tomllib
from balance.config.presets import PRESETS, preset
from balance.engine.trainer import Trainer

# a 6 x 4 rank-2 matrix: every run below takes a fraction of a second; the run store has its own tests
MF = ["--d1", "6", "--d2", "4", "--rank", "2", "--lr", "0.05", "--init-scale", "0.5", "--steps", "40", "--no-store"]
MLP = ["--model", "mlp", "--dataset", "teacher", "--samples", "16", "--input-dim", "3", "--width", "5"]
MLP += ["--depth", "3", "--lr", "0.05", "--init-scale", "0.4", "--steps", "30", "--no-store"]
DIVERGES = [*MF, "--lr", "5", "--init-scale", "3"]  # explodes at step 1

# the flags the issue names, spelled as it spells them
ISSUE_FLAGS = [
    "--preset", "--config", "--out", "--model", "--activation", "--depth", "--width", "--d1", "--d2", "--rank",
    "--factor-rank", "--bias", "--no-bias", "--batch-norm", "--dataset", "--samples", "--input-dim",
    "--singular-values", "--init", "--init-scale", "--layer-scales", "--optimizer", "--lr", "--momentum",
    "--weight-decay", "--schedule", "--batch-size", "--steps", "--dtype", "--seed", "--log-every", "--no-store",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _home(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A run that is recorded goes to a throwaway store, never to ~/.balance."""
    monkeypatch.setenv("BALANCE_HOME", str(tmp_path_factory.mktemp("home")))


def _config(argv: list[str]) -> RunConfig:
    """The config ``balance run ARGV`` would train."""
    return config_from_args(cli.build_parser().parse_args(["run", *argv]))


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- help and the parser ------------------------------------------------------------------------------------


def test_run_help_mentions_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "run", "--help")
    assert code == 0
    flags = {flag_of(key, f) for key, f in schema()}
    flags |= {"--no-" + flag_of(key, f)[2:] for key, f in schema() if f.type == "bool"}
    assert set(ISSUE_FLAGS) - flags == {"--preset", "--config", "--out", "--no-store"}
    for flag in flags | set(ISSUE_FLAGS):
        assert flag in out, flag
    assert "csv:PATH" in out and "{mf,linear,mlp,cnn}" in out and "exit codes" in out


def test_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--help")
    assert code == 0
    assert all(name in out for name in ("run", "presets", "config", "exit codes"))


def test_flags_map_to_fields() -> None:
    flags = ["--rank", "3", "--bias", "--init", "uniform", "--layer-scales", "1,0.5,2", "--seed", "7", "--optimizer",
             "momentum", "--momentum", "0.5", "--weight-decay", "0.01", "--dtype", "float32"]  # fmt: skip
    config = _config([*MLP, *flags])
    assert (config.model.name, config.data.name, config.model.width, config.data.rank) == ("mlp", "teacher", 5, 3)
    assert config.model.bias and config.model.init == "uniform" and config.model.layer_scales == (1.0, 0.5, 2.0)
    assert (config.optim.name, config.optim.momentum, config.optim.weight_decay) == ("momentum", 0.5, 0.01)
    assert (config.seed, config.dtype) == (7, "float32")
    assert _config(["--factor-rank", "1", "--singular-values", "3,1", *MF]).model.rank == 1
    assert not _config(["--preset", "mlp-relu", "--bias", "--no-bias"]).model.bias
    csv = _config(["--model", "mlp", "--dataset", "csv:/some/file.csv"]).data
    assert (csv.name, csv.csv_path) == ("csv", "/some/file.csv")


# --- precedence ---------------------------------------------------------------------------------------------


def test_precedence_preset_then_flags(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "config", "--preset", "fig1-small", "--init-scale", "0.25", "--steps", "9")
    assert code == 0
    config = RunConfig.from_dict(tomllib.loads(out))
    assert config == preset("fig1-small").replace(**{"model.init_scale": 0.25, "steps": 9})
    assert _config([]).model.init_scale == RunConfig().model.init_scale  # no preset: the defaults


def test_precedence_config_file_then_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(preset("fig1-large").replace(steps=7, **{"optim.lr": 0.5}).to_toml())
    config = _config(["--config", str(path), "--lr", "0.25"])
    assert (config.steps, config.optim.lr, config.model.init_scale) == (7, 0.25, 0.5)


def test_presets_lists_and_shows(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "presets")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert names == list(PRESETS) and "fig1-small" in names and "fig1-large" in names
    code, out, _ = _run(capsys, "presets", "--show", "fig1-large")
    assert code == 0 and RunConfig.from_toml(out) == preset("fig1-large")


# --- output files -------------------------------------------------------------------------------------------


def test_mf_csv_columns_and_exact_numbers(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "mf.csv"
    code, out, err = _run(capsys, "run", *MF, "--out", str(path))
    assert code == 0 and err == ""
    assert out.startswith("finished: 40 steps, final loss") and "gap drift" in out and len(out.splitlines()) == 1
    df = pd.read_csv(path)
    assert list(df.columns) == [
        "step", "t", "lr", "loss", "sqnorm_1", "sqnorm_2", "grad_norm_1", "grad_norm_2", "gap_1", "gap_drift_1",
        "pred_gap_drift_1", "ratio_1", "neuron_drift_max", "neuron_drift_mean", "pred_neuron_drift_max",
        "pred_neuron_drift_mean", "identity_residual", "matrix_inv_1", "matrix_drift_1", "matrix_residual_1",
        "sharpness", "stability_bound",
    ]  # fmt: skip
    assert list(df["step"]) == list(range(41))
    # the file holds every float64 exactly: the same as the in-memory run
    config = _config(MF)
    pd.testing.assert_frame_equal(df, balance.runs.loop.run(config).metrics, check_exact=True)
    # layer 1 is V, layer 2 is U
    model = Trainer(config).model
    assert df["sqnorm_1"][0] == pytest.approx(float((model.V.detach() ** 2).sum()), rel=1e-15)
    assert df["sqnorm_2"][0] == pytest.approx(float((model.U.detach() ** 2).sum()), rel=1e-15)
    # the identity can be checked from the file: measured gap drift = the exact per-step prediction
    assert (df["gap_drift_1"] - df["pred_gap_drift_1"]).abs().max() < 1e-10
    assert df["gap_drift_1"].abs().max() > 1e-4  # a real drift, not 0 = 0
    # ... and per unit, and one step at a time (the residuals are round-off)
    assert (df["neuron_drift_max"] - df["pred_neuron_drift_max"]).abs().max() < 1e-10
    assert df["identity_residual"].iloc[1:].max() < 1e-12 and df["matrix_residual_1"].iloc[1:].max() < 1e-12


def test_mlp_csv_columns(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "mlp.csv"
    assert _run(capsys, "run", *MLP, "--out", str(path))[0] == 0
    df = pd.read_csv(path)
    for name in ("step", "t", "loss", "neuron_drift_max", "sqnorm_1", "sqnorm_2", "sqnorm_3"):
        assert name in df.columns, name
    for stem in ("gap", "gap_drift", "pred_gap_drift", "ratio"):
        assert f"{stem}_1" in df.columns and f"{stem}_2" in df.columns and f"{stem}_3" not in df.columns
    assert "sqnorm_4" not in df.columns and len(df) == 31
    for h in (1, 2):
        assert (df[f"gap_drift_{h}"] - df[f"pred_gap_drift_{h}"]).abs().max() < 1e-10


def test_parquet_round_trip(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "mf.parquet"
    assert _run(capsys, "run", *MF, "--out", str(path))[0] == 0
    expected = balance.runs.loop.run(_config(MF)).metrics
    pd.testing.assert_frame_equal(pd.read_parquet(path), expected, check_exact=True)


def test_csv_dataset_by_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("a,b,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(12)))
    code, out, _ = _run(capsys, "run", "--model", "mlp", "--width", "4", "--steps", "5", "--dataset", f"csv:{data}")
    assert code == 0 and out.startswith("finished: 5 steps")


def test_failed_write_leaves_no_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_then_fail(df: pd.DataFrame, path: str) -> None:
        Path(path).write_text("step,t\n0,")
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(cli.WRITERS, ".csv", half_then_fail)
    path = tmp_path / "mf.csv"
    code, _, err = _run(capsys, "run", *MF, "--out", str(path))
    assert code == 2 and err == f"balance: error: --out {path}: writing failed (No space left on device)\n"
    assert list(tmp_path.iterdir()) == []


# --- exit codes ---------------------------------------------------------------------------------------------


def test_diverged_run_exits_3(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "diverged.csv"
    code, out, _ = _run(capsys, "run", *DIVERGES, "--out", str(path))
    assert code == 3 and out.startswith("diverged: 1 step, final loss") and "try a step size of" in out
    assert len(pd.read_csv(path)) == 2  # the rows up to and including the step that went wrong


def test_wall_time_limit_exits_4(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "run", *MF, "--steps", "100000000", "--max-seconds", "0.1")
    assert code == 4 and out.startswith("stopped:")


def test_interrupt_exits_130(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(balance.runs.loop, "run", interrupted)
    assert _run(capsys, "run", *MF) == (130, "", "balance: interrupted\n")


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], bool]]:
    """Each case: argv, and whether ``balance config`` refuses it too (output and data files are run-time only)."""
    (tmp / "malformed.toml").write_text("steps = \n[model\n")
    (tmp / "unknown.toml").write_text("[model]\nwidht = 3\n")
    (tmp / "binary.toml").write_bytes(b"\xff\xfe\x00")
    (tmp / "folder.csv").mkdir()
    return {
        "width 0": (["--width", "0"], True),
        "negative lr": (["--lr", "-1"], True),
        "unknown model": (["--model", "nope"], True),
        "not a number": (["--steps", "1e3"], True),
        "unknown preset": (["--preset", "nope"], True),
        "preset and config": (["--preset", "fig1-small", "--config", str(tmp / "unknown.toml")], True),
        "malformed toml": (["--config", str(tmp / "malformed.toml")], True),
        "unknown key": (["--config", str(tmp / "unknown.toml")], True),
        "missing toml": (["--config", str(tmp / "missing.toml")], True),
        "binary toml": (["--config", str(tmp / "binary.toml")], True),
        "sgd without batch": (["--optimizer", "sgd"], True),
        "mf on teacher": (["--dataset", "teacher"], True),
        "unknown flag": (["--widht", "3"], True),
        "missing value": (["--lr"], True),
        "bad suffix": (["--out", str(tmp / "foo.txt")], False),
        "no such folder": (["--out", str(tmp / "no" / "such" / "out.csv")], False),
        "out is a folder": (["--out", str(tmp / "folder.csv")], False),
        "missing csv": (["--model", "mlp", "--dataset", "csv:/nonexistent.csv"], False),
    }


BAD_INPUTS = [  # the case names, for test ids
    "width 0", "negative lr", "unknown model", "not a number", "unknown preset", "preset and config",
    "malformed toml", "unknown key", "missing toml", "binary toml", "sgd without batch", "mf on teacher",
    "unknown flag", "missing value", "bad suffix", "no such folder", "out is a folder", "missing csv",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str) -> None:
    cases = _bad_inputs(tmp_path)
    assert sorted(cases) == sorted(BAD_INPUTS)
    argv, config_refuses = cases[case]
    for command in ("run", "config") if config_refuses else ("run",):
        code, out, err = _run(capsys, command, "--steps", "2", *argv)
        assert code == 2, (command, err)
        assert out == "" and err.startswith("balance: error: ") and err.count("\n") == 1, err
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["binary.toml", "folder.csv", "malformed.toml", "unknown.toml"]


def test_no_command_and_unknown_preset_show(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys)
    assert code == 2 and err.startswith("balance: error:") and err.count("\n") == 1
    code, _, err = _run(capsys, "presets", "--show", "nope")
    assert code == 2 and "preset 'nope'" in err


# --- progress bar -------------------------------------------------------------------------------------------


def test_progress_bar_only_on_a_terminal(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run(capsys, "run", *MF)[2] == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = _run(capsys, "run", *MF)
    assert code == 0 and "40/40" in err and "finished" not in err and out.startswith("finished")


# --- the installed command ----------------------------------------------------------------------------------


def test_console_script_and_module(tmp_path: Path) -> None:
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "balance"]
    assert script.value == "balance.cli:entry"  # main, then os._exit once the output is flushed
    path = tmp_path / "mf.csv"
    argv = [sys.executable, "-m", "balance", "run", *DIVERGES, "--out", str(path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 3 and done.stdout.startswith("diverged") and path.exists(), done.stderr


# --- hostile inputs: special files, nesting, long values, Ctrl-C, permissions (issue 11) ---------------------


def _one_line_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == "" and err.startswith("balance: error: ") and err.count("\n") == 1, (code, err)
    return err


@pytest.mark.parametrize("command", ["run", "config", "sweep"])
def test_special_files_as_config_are_refused_at_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    """A FIFO as config blocked forever and /dev/zero grew to 3 GiB: only regular files under a cap are read."""
    import os

    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.toml"
    with huge.open("wb") as f:
        f.truncate(2 * cli.MAX_INPUT_BYTES)
    expected = {
        fifo: "not a regular file",
        Path("/dev/zero"): "not a regular file",
        tmp_path: "is a directory",
        huge: "larger than the limit of 1.0 MiB",
        tmp_path / "missing.toml": "cannot read it (no such file)",
    }
    start = time.monotonic()
    with _fifo_writer(fifo):  # should the FIFO be opened after all, the test fails instead of hanging
        for path, why in expected.items():
            err = _one_line_error(capsys, command, "--config", str(path), "--home" if command == "sweep" else "--steps",
                                  str(tmp_path / "home") if command == "sweep" else "1")  # fmt: skip
            assert why in err, err
    assert time.monotonic() - start < 10


@contextlib.contextmanager
def _fifo_writer(fifo: Path) -> Iterator[None]:
    """A thread that opens ``fifo`` for writing after 3 s and closes it, so a reader that blocked on it wakes up."""
    import os
    import threading

    done = threading.Event()

    def write() -> None:
        if not done.wait(3):
            with open(fifo, "wb"):
                pass

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        while thread.is_alive():  # let the writer's open return: a reader of our own, then nothing more
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
            thread.join(0.1)


@pytest.mark.parametrize("command", ["run", "config", "sweep"])
def test_deeply_nested_toml_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    """Was RecursionError, a traceback and exit 1 in each of run, config and sweep."""
    path = tmp_path / "nested.toml"
    for text in ("steps = " + "[" * 100_000 + "]" * 100_000, "[base]\nsteps = " + "{a=" * 5000 + "1" + "}" * 5000):
        path.write_text(text)
        err = _one_line_error(capsys, command, "--config", str(path))
        assert "nested too deeply" in err and "Traceback" not in err


def test_error_lines_are_capped(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """10^5 layer scales (a flag) or 10^5 in a TOML: one error line of a few hundred characters, not 400 kB."""
    scales = ",".join(["-1"] * 10**5)
    path = tmp_path / "long.toml"
    path.write_text(f"[model]\nlayer_scales = [{scales}]\n")
    for argv in (["config", "--layer-scales", scales], ["config", "--config", str(path)],
                 ["config", "--model", "x" * 10**5], ["sweep", "--lr", ",".join(["x"] * 10**5)],
                 ["run", "--out", "x" * 10**5 + ".txt"], ["config", "--" + "y" * 10**5]):  # fmt: skip
        err = _one_line_error(capsys, *argv)
        assert len(err) <= 320, (argv[:2], len(err))


def test_out_files_get_the_usual_permissions(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--out files were 0600 (mkstemp's); a file a user writes gets 0666 less the umask, as with any program."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        for name in ("mf.csv", "mf.parquet"):
            assert _run(capsys, "run", *MF, "--out", str(tmp_path / name))[0] == 0
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
        out = tmp_path / "sweep"
        argv = ["sweep", "--d1", "4", "--d2", "3", "--rank", "1", "--lr", "0.01,0.02", "--steps", "2", "--workers", "1"]
        assert main([*argv, "--home", str(tmp_path / "home"), "--out", str(out)]) == 0
        for name in ("summary.csv", "metrics.parquet", "spec.toml"):
            assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    finally:
        os.umask(old)
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # no temporary file left behind


def test_lecture_handout_gets_the_usual_permissions(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import stat

    import balance.lecture.handout

    monkeypatch.setattr(balance.lecture.handout, "handout_html", lambda store, on_step=None: "<html></html>")
    old = os.umask(0o027)
    try:
        assert _run(capsys, "lecture", "--no-store", "--out", str(tmp_path / "h.html"))[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "h.html").stat().st_mode) == 0o640
    assert (tmp_path / "h.html").read_text() == "<html></html>"


def test_ctrl_c_keeps_the_rows_so_far(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The first Ctrl-C stops after the current step: rows recorded (state 'interrupted') and written, exit 130."""
    import signal

    from balance.runs.store import RunStore

    real = balance.runs.loop.run

    def press_ctrl_c_at_step_7(config: RunConfig, on_step: object = None, stop: object = None) -> object:
        def on(k: int) -> None:
            if k == 7:
                signal.raise_signal(signal.SIGINT)

        return real(config, on, stop)  # type: ignore[arg-type]

    monkeypatch.setattr(balance.runs.loop, "run", press_ctrl_c_at_step_7)
    monkeypatch.setenv("BALANCE_HOME", str(tmp_path / "home"))
    path = tmp_path / "mf.csv"
    code, out, err = _run(capsys, "run", *[a for a in MF if a != "--no-store"], "--steps", "1000", "--out", str(path))
    assert code == 130 and out.startswith("interrupted: 7 steps") and "interrupted at step 7 of 1000" in out
    assert err.startswith("balance: recorded as run ") and err.count("\n") == 1
    df = pd.read_csv(path)
    assert list(df["step"]) == list(range(8))
    with RunStore(tmp_path / "home") as store:
        (run_id,) = store.list_runs()["id"]
        record = store.get_run(run_id)
        assert (record.state, record.step) == ("interrupted", 7)
        pd.testing.assert_frame_equal(store.metrics(run_id), df, check_exact=True, check_dtype=False)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


def test_ctrl_c_in_a_real_process(tmp_path: Path) -> None:
    """SIGINT to a foreground 'balance run' (as a terminal's Ctrl-C): exit 130, rows in the file and the store."""
    import os
    import signal

    marker, path, home = tmp_path / "training", tmp_path / "run.csv", tmp_path / "home"
    code = (  # a marker file once training has begun, so the signal does not land during the imports
        "import pathlib, sys\nimport balance.runs.loop\nreal = balance.runs.loop.run\n"
        "def run(config, on_step=None, stop=None):\n"
        "    return real(config, lambda k: k == 50 and pathlib.Path(sys.argv[1]).touch(), stop)\n"
        "balance.runs.loop.run = run\nfrom balance.cli import main\nsys.exit(main(sys.argv[2:]))\n"
    )
    argv = [*[a for a in MF if a != "--no-store"], "--steps", "100000000", "--out", str(path)]
    env = {**os.environ, "BALANCE_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(marker), "run", *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert out.startswith("interrupted: ") and out.count("\n") == 1 and "Traceback" not in err
    df = pd.read_csv(path)
    assert len(df) > 50 and df["step"].is_monotonic_increasing
    from balance.runs.store import RunStore

    with RunStore(home) as store:
        (run_id,) = store.list_runs()["id"]
        assert store.get_run(run_id).state == "interrupted" and len(store.metrics(run_id)) == len(df)


AUDIT = {  # inputs that raised a traceback (or trained first, or were taken silently) before the bad-input audit
    "NUL in --out": (["run", "--out", "\x00.csv"], "not a usable file name"),
    "--out name too long": (["run", "--out", "a" * 300 + ".csv"], "cannot write there (File name too long)"),
    "no such user in --config": (["run", "--config", "~nobody-such/x.toml"], "cannot read it (no such file)"),
    "NUL in --config": (["config", "--config", "\x00"], "cannot read it (not a usable file name)"),
    "no such user in the CSV path": (
        ["run", "--model", "mlp", "--dataset", "csv:~nobody-such/x.csv"],
        "cannot read it",
    ),
    "empty --config": (["run", "--config", ""], "config file : cannot read it (no such file)"),
    "empty --preset": (["config", "--preset", ""], "preset '': unknown"),
    "empty --out": (["run", "--out", ""], "the file name must end in .csv or .parquet"),
    "empty sweep --out": (["sweep", "--out", ""], "--out: give a folder name"),
    "NUL in sweep --out": (["sweep", "--out", "\x00"], "not a usable folder name"),
    "a 5,000-character sweep name": (["sweep", "--name", "x" * 5000], "use letters, digits, - and _ (at most 64)"),
    "a 10^5-character text setting": (["config", "--target", "t" * 10**5], "longer than 4096 characters"),
    "a 5,000-digit number": (["config", "--steps", "9" * 5000], "not a valid int"),
    "a report under /proc": (["claims", "--report", "/proc/r.md", "--only", "1"], "not writable"),
}


@pytest.mark.parametrize("case", list(AUDIT))
def test_audited_inputs_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str) -> None:
    argv, why = AUDIT[case]
    if "/proc/r.md" in argv and not Path("/proc").is_dir():
        pytest.skip("no /proc here")
    argv = [*argv, "--home", str(tmp_path)] if argv[0] in ("sweep", "claims") else argv
    err = _one_line_error(capsys, *argv)
    assert why in err and len(err) <= 320, err


def test_a_spec_with_a_list_as_preset_is_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text("preset = [1]\n")  # was TypeError: unhashable type: 'list'
    assert "preset [1] is not one of" in _one_line_error(capsys, "sweep", "--config", str(spec))


# --- start-up: what a command that does not train imports, and how the program exits -----------------------------

_PROBE = (
    "import contextlib, io, json, sys\n"
    "from balance.cli.core import main\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    code = main(sys.argv[1:])\n"
    "print(json.dumps([code, sorted(m for m in ('torch', 'scipy', 'pandas') if m in sys.modules)]))\n"
)


@pytest.mark.parametrize(
    ("argv", "allowed"),
    [
        (["--help"], []),
        (["presets"], []),
        (["presets", "--show", "fig1-small"], []),
        (["run", "--help"], []),
        (["config", "--preset", "fig1-small"], []),
        (["runs", "list"], ["pandas"]),  # the store reads its tables with pandas; never torch
    ],
)
def test_commands_that_do_not_train_never_import_torch(tmp_path: Path, argv: list[str], allowed: list[str]) -> None:
    """``balance --help`` took 2.0-2.7 s: building the parser imported pandas, and the presets' validation torch
    and scipy. Now only the command being run builds its options, and none of these loads torch or scipy."""
    import json
    import os

    env = {**os.environ, "BALANCE_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    code, loaded = json.loads(done.stdout.splitlines()[-1])
    assert code == 0 and [m for m in loaded if m not in allowed] == [], loaded


def test_the_help_table_matches_what_each_command_registers() -> None:
    """``balance --help`` lists the commands with their own module from ``EXTENSIONS`` without importing them."""
    import argparse

    parser = cli.build_parser()  # every command, every module imported
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    registered = {c.dest: c.help for c in sub._choices_actions}
    assert {name: help for name, (_, help) in cli.EXTENSIONS.items()} == {n: registered[n] for n in cli.EXTENSIONS}
    lazy = cli.build_parser(["--help"])
    (lazy_sub,) = [a for a in lazy._actions if isinstance(a, argparse._SubParsersAction)]
    assert {c.dest: c.help for c in lazy_sub._choices_actions} == registered  # the same list, in the same order


@pytest.mark.parametrize(
    ("argv", "code", "out"),
    [
        (["presets"], 0, "fig1-small  "),
        (["config", "--steps", "nope"], 2, ""),
        (["run", *MF], 0, "finished: 40 steps"),
        (["run", *DIVERGES], 3, "diverged"),
    ],
)
def test_the_program_keeps_its_exit_codes_and_output(tmp_path: Path, argv: list[str], code: int, out: str) -> None:
    """``python -m balance`` ends with ``os._exit`` once its output is flushed (no interpreter teardown): every
    line still arrives, through a pipe too, and the exit code is the command's."""
    import os

    env = {**os.environ, "BALANCE_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "balance", *argv], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == code, done.stderr[-2000:]
    assert (out in done.stdout and done.stdout.endswith("\n")) if out else done.stdout == ""
    assert "Traceback" not in done.stderr


def test_balance_run_trains_small_models_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two torch threads cost a 1000-step MF run 2.9x the wall and 2.75x the CPU on a busy machine; large models
    keep torch's default (there the second core pays)."""
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert cli._set_threads(preset("fig1-small")) == 1
        torch.set_num_threads(2)
        big = RunConfig().replace(
            **{"model.name": "mlp", "data.name": "teacher", "model.width": 512, "model.depth": 6, "data.samples": 512}
        )
        assert cli._set_threads(big) == 2
    finally:
        torch.set_num_threads(before)


def test_no_process_outlives_a_sweep_on_two_workers(tmp_path: Path) -> None:
    """The pool's children once lingered after ``balance sweep`` exited; with the exit by ``os._exit`` nothing of
    the command's process group (its workers, the resource tracker) may be left behind either."""
    import os

    argv = ["sweep", "--home", str(tmp_path), "--d1", "6", "--d2", "5", "--rank", "2", "--lr", "0.01,0.02",
            "--seeds", "0-1", "--steps", "20", "--workers", "2"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "balance", *argv], start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "4 finished" in out, err[-2000:]

    def group() -> list[str]:
        left = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # ended meanwhile
                continue
            if int(stat[2]) == proc.pid:  # the process group the command led
                left.append(entry)
        return left

    deadline = time.monotonic() + 5  # a child told to exit may take a moment: then it must be gone
    while group() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert group() == []
