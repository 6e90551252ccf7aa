"""Claims: every verdict function on numbers that should pass and on numbers that should fail; the slope fit
against known power laws; ``balance claims`` on the reduced budget; the Claims page under AppTest.

The command and the page share one temporary store (BALANCE_HOME): the command trains the reduced budget's runs
once, the page then finds them there.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from balance import claims
from balance.app import common as ui
from balance.claims import verdicts
from balance.claims.base import Fit, Verdict, loglog_slope
from balance.cli import main

ROOT = Path(__file__).resolve().parents[1]


def fit(slope: float, half: float = 0.01) -> Fit:
    return Fit(slope, slope - half, slope + half)


def check(v: Verdict, outcome: str) -> None:
    assert v.outcome == outcome, v.reason
    assert v.reason.endswith(".") and "\n" not in v.reason
    assert v.tolerances and all(isinstance(t, str) for t in v.tolerances.values())


# --- the verdicts: data that should pass, data that should fail -----------------------------------------------


def test_difference_not_balance() -> None:
    good = dict(drift_a=0.002, ratio_a=2.5, drift_b=0.001, growth_b=50, ratio_b0=2.2, ratio_b=1.01, flow_err=0.01)
    check(verdicts.difference_not_balance(**good), "supported")
    assert "2.5" in verdicts.difference_not_balance(**good).reason  # the reason quotes the numbers
    check(verdicts.difference_not_balance(**{**good, "ratio_a": 1.05}), "partly")  # the unbalanced run balanced
    check(verdicts.difference_not_balance(**{**good, "drift_a": 0.5}), "refuted")  # the difference was not kept


def test_init_not_needed() -> None:
    same = [(1.0008, 1e-30, 1e-15), (1.0009, 1e-30, 1e-15), (1.0007, 1e-30, 1e-15)]
    mlp = [(1.6, 0.03, 1e-15), (1.7, 0.03, 1e-15), (1.65, 0.04, 1e-15)]
    check(
        verdicts.init_not_needed({"MF": {"gaussian": same, "uniform": same}, "MLP": {"gaussian": mlp, "uniform": mlp}}),
        "supported",
    )
    apart = [(r + 1.0, d, e) for r, d, e in mlp]  # uniform ends far from Gaussian
    check(
        verdicts.init_not_needed(
            {"MF": {"gaussian": same, "uniform": same}, "MLP": {"gaussian": mlp, "uniform": apart}}
        ),
        "partly",
    )
    stuck = [(r, 0.9, e) for r, _, e in same]  # did not converge
    check(verdicts.init_not_needed({"MF": {"gaussian": same, "uniform": stuck}}), "refuted")  # fmt: skip


def test_step_size_rate() -> None:
    check(verdicts.step_size_rate(fit(1.01), 1e-12, 5e-4), "supported")
    check(verdicts.step_size_rate(fit(1.5), 1e-12, 5e-4), "partly")  # vanishes, but not at first order
    check(verdicts.step_size_rate(fit(1.0), 0.3, 5e-4), "partly")  # the exact prediction is off
    check(verdicts.step_size_rate(fit(0.02), 1e-12, 5e-2), "refuted")  # does not vanish


def test_momentum_holds() -> None:
    fits = {"gd": fit(1.0), "sgd": fit(1.0), "momentum": fit(0.95, 0.05), "nesterov": fit(0.95, 0.05), "adam": fit(0.0)}
    amp = {"momentum": (18.8, 19.0), "nesterov": (17.0, 17.2)}
    check(verdicts.momentum_holds(fits, amp, 1e-15), "supported")
    check(verdicts.momentum_holds(fits, {"momentum": (5.0, 19.0)}, 1e-15), "partly")  # amplification off
    check(verdicts.momentum_holds({**fits, "adam": fit(1.0)}, amp, 1e-15), "partly")  # Adam conserved too
    broken = {**fits, "sgd": fit(0.0), "momentum": fit(0.0), "nesterov": fit(0.0)}
    check(verdicts.momentum_holds(broken, amp, 1e-15), "refuted")


def test_batchnorm_moves_invariant() -> None:
    check(verdicts.batchnorm_moves_invariant(0.02, -1e-9, 1.0, 4.1), "supported")
    check(verdicts.batchnorm_moves_invariant(0.02, 1e-3, 1.0, 4.1), "partly")  # the BN-fed norm shrank
    check(verdicts.batchnorm_moves_invariant(0.02, -1e-9, 4.0, 4.1), "refuted")  # the cross-layer gap held


def test_figure1_consistent() -> None:
    check(verdicts.figure1_consistent(1e-5, 1.93, 1e-3, 1.000011, 1.000011), "refuted")
    check(verdicts.figure1_consistent(0.5, 1.93, 1e-3, 1.3, 1.000011), "supported")  # the theorem's quantity grew
    check(verdicts.figure1_consistent(1e-5, 1.93, 0.4, 1.000011, 1.000011), "partly")  # the ratio unexplained


def test_deep_networks_conserve() -> None:
    good = {"3-layer": (3e-3, 1e-15, 0.01), "CNN": (5e-3, 1e-15, 0.2)}
    check(verdicts.deep_networks_conserve(good), "supported")
    check(verdicts.deep_networks_conserve({**good, "CNN": (0.3, 1e-15, 0.2)}), "partly")  # one drifted
    check(verdicts.deep_networks_conserve({k: (d, e, 0.99) for k, (d, e, _) in good.items()}), "refuted")  # no learning


def test_tanh_breaks() -> None:
    check(verdicts.tanh_breaks(fit(0.0), fit(1.0), 700.0), "supported")
    check(verdicts.tanh_breaks(fit(1.0), fit(1.0), 1.0), "refuted")  # tanh vanishes like ReLU
    check(verdicts.tanh_breaks(fit(0.5), fit(1.0), 50.0), "partly")


def test_weight_decay_formula() -> None:
    check(verdicts.weight_decay_formula(0.014, 1e-14, 0.0068, 0.995), "supported")
    check(verdicts.weight_decay_formula(0.3, 1e-14, 0.0068, 0.995), "partly")  # the smooth formula misses
    check(verdicts.weight_decay_formula(0.3, 0.3, 0.9, 0.995), "refuted")


def test_large_steps_balance() -> None:
    etas, conv = [0.05, 0.5, 0.9, 1.1], [True, True, True, False]
    check(verdicts.large_steps_balance(etas, [3.1, 3.2, 1.2, 2.0], conv, [36, 0.5, 0.2, -5]), "supported")
    check(verdicts.large_steps_balance(etas, [3.1, 3.2, 1.2, 2.0], conv, [36, 0.5, -0.2, -5]), "partly")  # bound broken
    check(verdicts.large_steps_balance(etas, [3.1, 3.2, 3.3, 2.0], conv, [36, 0.5, 0.2, -5]), "refuted")  # no balancing
    check(verdicts.large_steps_balance(etas, [3.1, 3.2, 1.2, 2.0], [True] + [False] * 3, [1] * 4), "refuted")


def test_verdict_refuses_unknown_outcomes() -> None:
    with pytest.raises(ValueError, match="maybe"):
        Verdict("maybe", "x.")


# --- helpers ---------------------------------------------------------------------------------------------------


def test_slope_of_a_power_law_and_its_interval() -> None:
    x = np.geomspace(1e-3, 1e-1, 7)
    exact = loglog_slope(x, 3 * x**2)
    assert exact.slope == pytest.approx(2.0) and exact.high - exact.low < 1e-9
    noisy = loglog_slope(x, -3 * x * np.exp(np.random.default_rng(0).normal(0, 0.05, 7)))  # sign is ignored
    assert noisy.low < 1.0 < noisy.high and noisy.high - noisy.low < 0.2
    with pytest.raises(ValueError):
        loglog_slope([1, 2], [1, 2])


def test_registry_is_numbered_and_complete() -> None:
    assert [c.number for c in claims.CLAIMS] == list(range(1, 11))
    assert all(c.statement and c.source and c.quote and c.experiment for c in claims.CLAIMS)
    assert [c.number for c in claims.by_number([3, 1])] == [3, 1]
    with pytest.raises(ValueError, match="claim 11"):
        claims.by_number([11])
    for c in claims.CLAIMS:  # every config is valid and float64 (the identities are checked to 1e-9)
        assert all(cfg.dtype == "float64" for cfg in c.configs(True))


def test_step_size_study_spans_two_decades_at_fixed_time() -> None:
    configs = claims.by_number([3])[0].configs(False)
    lrs = [c.optim.lr for c in configs]
    assert len(lrs) >= 5 and max(lrs) / min(lrs) >= 99
    assert {round(c.optim.lr * c.steps, 9) for c in configs} == {claims.steps.RATE_T}


# --- the command, then the page, on one store ------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("balance-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BALANCE_HOME", str(path))
        mp.setenv("BALANCE_CLAIMS_BUDGET", "quick")
        yield path
        ui.runner().shutdown()
        ui._runner.clear()
        ui._store.clear()


def test_report_command_on_the_reduced_budget(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    report = tmp_path / "claims.md"
    assert main(["claims", "--quick", "--report", str(report), "--home", str(home)]) == 0
    err = capsys.readouterr().err
    assert re.search(r"claim 3: (supported|partly|refuted) \(", err) and "claim 7 (Deep ReLU networks): 6/6 runs" in err
    text = report.read_text()
    for c in claims.CLAIMS:
        assert f"## {c.number}. {c.title}" in text
        assert (tmp_path / f"claim-{c.number}.html").stat().st_size > 1000
    assert (tmp_path / "plotly.min.js").exists()
    assert text.count("**Verdict: ") == 10 and text.count("Tolerances: ") == 10
    assert "`/?" in text and "&run=" in text
    # a second call reuses every run: nothing trains, the same verdicts
    again = tmp_path / "again.md"
    assert main(["claims", "--quick", "--only", "3,9", "--report", str(again), "--home", str(home)]) == 0
    assert "## 3." in again.read_text() and "## 1." not in again.read_text()
    assert re.findall(r"claim 3: \w+", capsys.readouterr().err) == re.findall(r"claim 3: \w+", err)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "11"], "claim 11: no such claim"),
        (["--only", "x"], "expected claim numbers"),
        (["--report", "/nonexistent-dir/r.md"], "does not exist"),
        (["--report", "notes.txt"], "ending in .md"),
    ],
)
def test_report_command_refuses_bad_input_in_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["claims", "--report", str(tmp_path / "r.md"), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_report_command_refuses_a_path_under_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "file.txt").write_text("")
    assert main(["claims", "--report", str(tmp_path / "file.txt" / "r.md")]) == 2
    assert "does not exist" in capsys.readouterr().err


def page(query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app_pages" / "claims.py"), default_timeout=120)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at.run()


def test_page_shows_every_claim_from_the_store(home: Path) -> None:
    """After the command above, the page trains nothing: 10 claims, each with a verdict, a figure, an Explore link."""
    at = page({"claim": "3"})
    assert not at.exception, at.exception
    if at.button:  # this test alone, without the command's runs: train them first
        at.button(key="claims.run").click().run()
        at = page({"claim": "3"})
    assert not at.button  # nothing missing, so no Run button
    labels = [e.label for e in at.expander]
    assert len(labels) == 10 and all(re.search(r"(supported|refuted|partly)", label) for label in labels)
    assert len(at.get("plotly_chart")) == 10
    boxes = [*at.success, *at.error, *at.warning]
    assert len(boxes) == 10 and all(b.value.startswith("**Verdict: ") for b in boxes)
    links = at.get("link_button")
    assert len(links) == 10
    urls = [link.proto.url for link in links]
    assert all(u.startswith("/?") and "&run=" in u and "seed=" in u for u in urls)
    # the link's run is the claim's main run, and the query rebuilds its exact config
    from urllib.parse import parse_qsl, urlsplit

    from balance.config import RunConfig

    query = dict(parse_qsl(urlsplit(urls[2]).query))
    run_id = query.pop("run")
    config, problems = RunConfig.from_query(query)
    assert not problems and config == ui.store().get_run(run_id).config
    assert config in claims.by_number([3])[0].configs(True)


def test_page_with_missing_runs_offers_to_train_them(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A config not in the store: the page says so and trains it on the button, with a progress bar per claim."""
    nine = claims.by_number([9])[0]
    changed = [c.replace(**{"optim.weight_decay": 0.04}) for c in nine.configs(True)]
    patched = dataclasses.replace(nine, configs=lambda quick: changed)
    monkeypatch.setattr(claims, "CLAIMS", (*claims.CLAIMS[:8], patched, claims.CLAIMS[9]))
    at = page()
    assert not at.exception, at.exception
    assert any("not in the run store yet" in i.value for i in at.info)
    assert [e.label for e in at.expander][8].endswith("not run yet")
    at.button(key="claims.run").click().run()
    assert not at.exception, at.exception
    bars = [bar.proto.text for bar in at.get("progress")]  # one bar per claim, each at its end
    assert len(bars) == 10 and "9. Weight decay: 1/1 runs" in bars, bars
    labels = [e.label for e in at.expander]
    assert re.search(r"9\. Weight decay\*\* · .*(supported|refuted|partly)", "\n".join(labels)), labels
    assert not at.button  # nothing missing any more


def test_claims_package_never_imports_the_ui() -> None:
    """STYLE rule 1: the experiments, verdicts, figures and report are core code (the page is balance/ui_claims.py)."""
    for path in (ROOT / "balance" / "claims").glob("*.py"):
        assert not re.search(r"^\s*(import|from) (streamlit|balance\.ui)", path.read_text(), re.M), path.name


def test_report_link_is_the_dashboards_link() -> None:
    """The report cannot import balance.app (Streamlit): its Explore link must still be the one the page builds."""
    from urllib.parse import parse_qsl, urlsplit

    config = claims.by_number([6])[0].configs(False)[0]
    link = claims.report.explore_link(config, "abc123")
    assert urlsplit(link).path == "/"
    assert dict(parse_qsl(urlsplit(link).query)) == {**ui.link_query(config), "run": "abc123"}
