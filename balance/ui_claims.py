"""The Claims page: each reviewer's doubt as a live experiment with a verdict computed from its runs.

The experiments are ``balance.claims``; their runs come from the run store when it has them (same config, same
code version) and otherwise train in the dashboard's runner, with one progress bar per claim. This module only
lays out what the library returns: numbers, verdicts, figures. ``?claim=N`` in the URL opens claim N.

``BALANCE_CLAIMS_BUDGET=quick`` in the server's environment runs the reduced budget of ``balance claims --quick``
(the tests use it).
"""

from __future__ import annotations

import os
import time
import urllib.parse
from typing import Any

import pandas as pd
import streamlit as st

from balance import cache, claims, ui
from balance.claims.report import BADGE, value_text
from balance.config import RunConfig

OUTCOME_BOX = {"supported": st.success, "refuted": st.error, "partly": st.warning}


def quick() -> bool:
    return os.environ.get("BALANCE_CLAIMS_BUDGET", "") == "quick"


@st.cache_resource(show_spinner=False, max_entries=64)
def _analysed(number: int, run_ids: tuple[str, ...], home: str) -> claims.Evaluated:
    """A claim's runs (all stored, named by id) analysed once per process; ids pin config and code version."""
    claim = claims.by_number([number])[0]
    runs = [cache.load(ui.store(), run_id) for run_id in run_ids]
    return claims.Evaluated(claim, runs, claim.analyse(runs))


def explore_url(config: RunConfig, run_id: str) -> str:
    """Explore with this config (``ui.link_query``: the settings and the seed) and the stored run attached."""
    query = urllib.parse.urlencode({**ui.link_query(config), "run": run_id}, safe=",")
    page = (st.context.url or "").split("?")[0]
    base = page.rsplit("/", 1)[0] if "/" in page.removeprefix("http://").removeprefix("https://") else ""
    return f"{base}/explore?{query}"


def run_all(prefix: str) -> dict[int, claims.Evaluated | Exception]:
    """Every claim's finding: stored runs reused, every missing run started on the runner at once (so all claims
    share the workers), then each claim collected in order under its own progress bar."""
    store, budget, runner = ui.store(), quick(), ui.runner()
    home = os.environ.get("BALANCE_HOME", "")
    ids = claims.start(claims.CLAIMS, store, runner, quick=budget)
    stored = set(store.list_runs().query("state in ('finished', 'diverged')")["id"])
    total = sum(len(v) for v in ids.values())
    missing = sum(run_id not in stored for v in ids.values() for run_id in v)
    out: dict[int, claims.Evaluated | Exception] = {}
    began = time.monotonic()
    label = f"{len(claims.CLAIMS)} claims, {total} runs"
    with st.status(f"{label}: training {missing} runs" if missing else label, expanded=bool(missing)) as box:
        for claim in claims.CLAIMS:
            text = f"{claim.number}. {claim.title}"
            ready = all(run_id in stored for run_id in ids[claim.number])
            bar = st.progress(1.0 if ready else 0.0, text=f"{text}: {len(ids[claim.number])} runs stored")

            def progress(done: int, n: int, bar: Any = bar, text: str = text) -> None:
                bar.progress(done / n, text=f"{text}: {done}/{n} runs")

            try:
                if not ready:
                    claims.wait(ids[claim.number], runner, progress)
                out[claim.number] = _analysed(claim.number, tuple(ids[claim.number]), home)
            except Exception as exc:  # one claim's broken run must not take the page down
                out[claim.number] = exc
        took = time.monotonic() - began
        done = f"{label}: {missing} trained now in {took:.0f} s, the rest from the store" if missing else label
        box.update(label=f"{done} (reused until the code or a config changes)", state="complete", expanded=False)
    return out


def page(prefix: str) -> None:
    st.markdown("#### The reviewers' claims, checked by experiment")
    st.caption(
        "Du, Hu and Lee's reviewers doubted what the invariant means, whether it survives finite steps, momentum, "
        "batch norm and deep ReLU networks, and whether Figure 1 contradicts Theorem 3.1. Each claim below is "
        "settled by runs; its verdict is computed from the numbers shown, with the tolerances stated."
    )
    results = run_all(prefix)
    outcomes = [e.finding.verdict.outcome for e in results.values() if not isinstance(e, Exception)]
    counts = pd.Series(outcomes, dtype=object).value_counts()
    st.markdown(" · ".join(f"{BADGE[o]}: **{counts[o]}**" for o in claims.OUTCOMES if o in counts))
    wanted = st.query_params.get("claim", "")
    for number, evaluated in results.items():
        if isinstance(evaluated, Exception):
            claim = claims.by_number([number])[0]
            with st.expander(f"**{number}. {ui.plain(claim.title)}** · failed", expanded=True):
                st.error(f"This claim's runs could not be analysed: {type(evaluated).__name__}: {evaluated}")
            continue
        claim_section(prefix, evaluated, expanded=wanted == str(number))


def claim_section(prefix: str, evaluated: claims.Evaluated, expanded: bool) -> None:
    claim, runs, finding = evaluated
    v = finding.verdict
    with st.expander(f"**{claim.number}. {ui.plain(claim.title)}** · {BADGE[v.outcome]}", expanded=expanded):
        st.markdown(f"> {ui.plain(claim.quote)}\n>\n> — {claim.source}")
        st.markdown(f"**Claim tested.** {ui.plain(claim.statement)}")
        st.markdown(f"**Experiment.** {ui.plain(claim.experiment)} ({len(runs)} runs.)")
        OUTCOME_BOX[v.outcome](f"**Verdict: {v.outcome}.** {ui.plain(v.reason)}")
        st.caption("Tolerances: " + ui.plain("; ".join(f"{k}: {t}" for k, t in v.tolerances.items())))
        st.plotly_chart(
            finding.figure, key=f"{prefix}.chart.{claim.number}", config=ui.chart_config(f"claim-{claim.number}")
        )
        numbers = pd.DataFrame({"quantity": list(finding.numbers), "value": map(value_text, finding.numbers.values())})
        st.dataframe(numbers, hide_index=True, key=f"{prefix}.numbers.{claim.number}")
        main = runs[finding.main]
        with st.container(horizontal=True, vertical_alignment="center"):
            st.link_button(
                "Open in Explore",
                explore_url(main.config, main.run_id),
                icon=":material/open_in_new:",
                help="this claim's main run, with its exact configuration, in a new tab",
            )
            st.caption(
                f"Main run `{main.run_id}`; all {len(runs)} runs are on the Runs page (sweep '{claims.label(claim)}')."
            )
