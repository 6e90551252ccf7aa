"""Fuzz: hostile command lines, TOML files and URL queries give a clear refusal, never a traceback (issue 11).

Every case runs ``balance.cli.core(argv)`` in this process (fast) inside a sandbox: the current folder is a fresh
``out`` folder, ``$BALANCE_HOME`` a fresh store and ``$HOME`` an empty folder. Each case must end with exit 2 and
exactly one line on stderr, or succeed; nothing may appear outside the store and the out folder. Training is cut to
a few steps of a small model (larger valid configs stop at the point where they would train), so the fuzz covers
parsing, validation, files and outputs, not the trainer. A handful of cases also run as real processes.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import balance.runs.loop
import balance.runs.sweep
from balance.cli.core import flag_of, main
from balance.config import MAX_MESSAGE, ConfigError, RunConfig, choices_of, schema

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same cases on every run and machine
    database=None,  # and no example database written into the repository
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
SETTINGS = schema()

# --- values ------------------------------------------------------------------------------------------------------

JUNK = [
    "nan", "-nan", "inf", "-inf", "1e309", "-0", "0", "", " ", "0x10", "1_0", "1,2,3", ",", ",,", "9" * 400, "1" * 5000,
    "true", "yes", "None", "[1]", "{}", "1e-400", "2147483648", "-2147483649", "4097", "100000000", "10**9", "é", "\n",
    "'", '"', "\\", "%s", "{0}", "<b>x</b>", "../../etc/passwd", "~nobody/x", "csv:", "csv:/dev/zero",
    "csv:/nonexistent", "csv:files/ok.csv", "csv:files/wide.csv", "csv:files", "a" * 5000,
]  # fmt: skip
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)  # argv never holds a NUL
NUMBER = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1", "2", "3", "4", "0.5", "0.01", "1e-3", "0.1"]),
)
VALUE = st.one_of(NUMBER, st.lists(NUMBER, min_size=1, max_size=4).map(",".join), st.sampled_from(JUNK), TEXT)


def _value(key: str, f: object) -> st.SearchStrategy[str]:
    choices = choices_of(f)  # type: ignore[arg-type]
    return st.one_of(st.sampled_from(choices), VALUE) if choices else VALUE


def _setting_flag(draw: st.DrawFn) -> list[str]:
    key, f = draw(st.sampled_from(SETTINGS))
    flag = flag_of(key, f)
    if f.type == "bool":
        return [draw(st.sampled_from([flag, "--no-" + flag[2:], flag + "=1"]))]
    value = draw(_value(key, f))
    return draw(st.sampled_from([[flag, value], [f"{flag}={value}"], [flag]]))  # also the value forgotten


EXTRA = [[], [], ["--nope"], ["-x"], ["--preset", "fig1-small"], ["--preset", "nope"], ["--config", "files/ok.toml"],
         ["--config", "files/nested.toml"], ["--config", "files/fifo"], ["--config", "/dev/zero"],
         ["--config", "files"], ["--config", "missing.toml"], ["--help"]]  # fmt: skip
OUTS = [[], [], ["--out", "m.csv"], ["--out", "m.parquet"], ["--out", "m.txt"], ["--out", ""], ["--out", "."],
        ["--out", "no/such/m.csv"], ["--out", "/proc/m.csv"], ["--out", "files"], ["--out", "a" * 300 + ".csv"],
        ["--no-store"]]  # fmt: skip


@st.composite
def settings_argv(draw: st.DrawFn, command: str) -> list[str]:
    """``command`` and up to five setting flags (each with a good, bad or missing value) plus a starting point, an
    output or a sweep option, in any order of the flags."""
    groups = [_setting_flag(draw) for _ in range(draw(st.integers(0, 5)))]
    groups.append(draw(st.sampled_from(EXTRA)))
    if command == "run":
        groups.append(draw(st.sampled_from(OUTS)))
    if command == "sweep":
        groups.append(draw(st.sampled_from(SWEEP_OPTIONS)))
    return [command, *(word for group in draw(st.permutations(groups)) for word in group)]


SWEEP_OPTIONS = [[], ["--seeds", "0-2"], ["--seeds", "0-2147483647"], ["--seeds", "x"], ["--workers", "0"],
                 ["--workers", "100000"], ["--chunk", "-1"], ["--name", "a b"], ["--out", ""],
                 ["--out", "files/ok.toml"], ["--out", "sweep"], ["--lr", "0.1,0.2,0.1"]]  # fmt: skip


# --- the sandbox -------------------------------------------------------------------------------------------------


class _WouldTrain(Exception):
    """Raised by the stand-in trainer for a valid config too large to train in a fuzz case: a success."""


def _small(config: RunConfig) -> bool:
    d, m = config.data, config.model
    if m.name == "mf":
        return d.d1 * d.d2 <= 10_000
    width = max(m.hidden_widths(), default=1)
    inputs = max(d.input_dim, d.image_size**2) if d.name in ("teacher", "images") else 16
    small_data = d.name == "csv" or d.samples * inputs <= 20_000
    return small_data and width <= 64 and m.depth <= 6 and d.teacher_width <= 64 and d.output_dim <= 16


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``tmp/out`` as the current folder, ``tmp/home`` the store, ``tmp/user`` as $HOME; a few input files."""
    for name in ("out", "home", "user", "out/files"):
        (tmp_path / name).mkdir()
    files = tmp_path / "out" / "files"
    (files / "ok.toml").write_text("steps = 2\n[data]\nd1 = 4\nd2 = 3\nrank = 1\n")
    (files / "nested.toml").write_text("steps = " + "[" * 3000 + "]" * 3000)
    (files / "ok.csv").write_text("a,b,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(12)))
    (files / "wide.csv").write_text(",".join(f"c{i}" for i in range(5000)) + "\n" + ",".join(["1"] * 5000) + "\n")
    os.mkfifo(files / "fifo")
    monkeypatch.chdir(tmp_path / "out")
    monkeypatch.setenv("BALANCE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    real_run = balance.runs.loop.run

    def run(config: RunConfig, on_step: object = None, stop: object = None) -> object:
        if not _small(config):
            raise _WouldTrain
        return real_run(config.replace(steps=min(config.steps, 3)), None, None)

    def run_sweep(*args: object, **kwargs: object) -> object:
        raise _WouldTrain

    monkeypatch.setattr(balance.runs.loop, "run", run)
    monkeypatch.setattr(balance.runs.sweep, "run_sweep", run_sweep)
    root = sorted(p.name for p in ROOT.iterdir())
    yield tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "out", "user"]
    assert not list((tmp_path / "user").iterdir())  # nothing under $HOME
    assert sorted(p.name for p in ROOT.iterdir()) == root  # nothing in the repository


def check(argv: list[str]) -> None:
    """``main(argv)`` exits 0 (or reaches training), 3 or 4 (a run's end), or 2 with exactly one short line."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except _WouldTrain:
            event("valid, too large to train here")
            return
    lines = err.getvalue().splitlines()
    event(f"exit {code}")  # pytest --hypothesis-show-statistics shows how the cases ended
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("balance: error: "), (argv, err.getvalue()[:2000])
        assert len(lines[0]) <= len("balance: error: ") + MAX_MESSAGE, (argv, lines[0][:500])
    else:
        assert code in (0, 3, 4), (argv, code, err.getvalue()[:2000])
        assert all(line.startswith(("balance: recorded", "balance: note")) for line in lines), (argv, lines)


# --- command lines -----------------------------------------------------------------------------------------------


@FUZZ
@given(argv=st.sampled_from(["config", "run", "sweep"]).flatmap(settings_argv))
def test_command_lines(sandbox: Path, argv: list[str]) -> None:
    check(argv)


@settings(FUZZ, max_examples=60)
@given(argv=st.lists(st.one_of(st.sampled_from(["run", "config", "sweep", "presets", "runs", "claims", "lecture",
                                                "--show", "--only", "--report", "--out", "-v", "--version", "list",
                                                "show"]), TEXT), max_size=5))  # fmt: skip
def test_any_words(sandbox: Path, argv: list[str]) -> None:
    if argv[:1] in (["claims"], ["lecture"]) and "--help" not in argv and "-h" not in argv:
        argv = [*argv, "--only", "x"] if argv[0] == "claims" else [*argv, "--out", "x.txt"]  # never trains
    check(argv)


# --- TOML files --------------------------------------------------------------------------------------------------

KEYS = st.one_of(
    st.sampled_from(["data", "model", "optim", "steps", "seed", "dtype", "log_every", "max_seconds", "name", "preset",
                     "base", "grid", "list", "optim.lr", "model.init_scale", "seed", "lr", "width", "d1", "d2",
                     "rank"]),
    TEXT,
)  # fmt: skip
SCALAR = st.one_of(
    st.integers(-(10**20), 10**20), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), TEXT,
    st.sampled_from(JUNK), st.sampled_from(["mf", "mlp", "teacher", "lowrank", "gd", "sgd", "0-3", "fig1-small"]),
)  # fmt: skip
TOML_VALUE = st.recursive(
    SCALAR, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4), max_leaves=12
)
TABLES = st.dictionaries(KEYS, TOML_VALUE, max_size=6)
RAW = st.one_of(
    st.text(max_size=200),
    st.sampled_from(["[grid", "a = [" * 2000, "x = {a = " * 2000, "steps = " + "9" * 5000, "[[list]]\n" * 500,
                     "\x00", "\ufeffsteps = 2", "[base]\n[base]\n", 'seed = "0-2147483647"',
                     "[grid]\nseed = '0-99999'\n'data.seed' = [1, 2]\n"]),
)  # fmt: skip


def _toml_text(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return draw(RAW)
    return tomli_w.dumps(draw(TABLES))


@FUZZ
@given(data=st.data())
def test_config_and_spec_files(sandbox: Path, data: st.DataObject) -> None:
    text = _toml_text(data.draw)
    path = sandbox / "out" / "fuzz.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    command = data.draw(st.sampled_from(["config", "run", "sweep"]))
    check([command, "--config", str(path)])
    path.unlink()


@FUZZ
@given(table=TABLES)
def test_specs_from_tables(sandbox: Path, table: dict) -> None:
    """``SweepSpec.from_dict`` on any table: a spec or a ConfigError, nothing else."""
    for raw in (table, {"grid": table}, {"base": table}, {"list": [table]}):
        with contextlib.suppress(ConfigError):
            balance.runs.sweep.SweepSpec.from_dict(raw)


# --- URL query parameters -----------------------------------------------------------------------------------------

QUERY_KEYS = st.one_of(st.sampled_from([key for key, _ in SETTINGS]), st.sampled_from(["run", "x", "", "."]), TEXT)


@settings(FUZZ, max_examples=300)
@given(query=st.dictionaries(QUERY_KEYS, st.one_of(VALUE, st.sampled_from(JUNK)), max_size=8))
def test_url_queries(query: dict[str, str]) -> None:
    """A link's query: the lenient parse never raises and names each problem in one short line; the strict one
    raises ConfigError only."""
    config, problems = RunConfig.from_query(query, strict=False)
    assert isinstance(config, RunConfig)
    for problem in problems:
        assert "\n" not in problem and len(problem) <= MAX_MESSAGE, problem
    with contextlib.suppress(ConfigError):
        RunConfig.from_query(query, strict=True)


# --- real processes ----------------------------------------------------------------------------------------------


def test_real_processes(sandbox: Path) -> None:
    """A few hostile command lines through the installed entry point, all at once: exit 2, one line, no traceback."""
    cases = [
        ["run", "--config", "files/nested.toml"],
        ["config", "--config", "files/fifo"],
        ["sweep", "--seeds", "0-2147483647", "--lr", "0.1,nan", "--layer-scales", ",".join(["-1"] * 10**4)],
    ]
    env = {**os.environ, "BALANCE_HOME": str(sandbox / "home"), "HOME": str(sandbox / "user")}
    procs = [
        subprocess.Popen([sys.executable, "-m", "balance", *argv], cwd=sandbox / "out", env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for argv in cases
    ]  # fmt: skip
    for argv, proc in zip(cases, procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and out == "", (argv, proc.returncode, err[-2000:])
        assert err.count("\n") == 1 and err.startswith("balance: error: ") and len(err) <= 330, (argv, err[-2000:])
