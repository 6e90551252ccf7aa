"""The Claims page: each reviewer's doubt as a live experiment with a verdict computed from its runs.

The experiments are ``balance.claims``; their runs come from the run store when it has them (same config, same
code version). Missing runs train only when asked (one button: a page view never starts ~80 trainings by
itself), all at once in the dashboard's executor at the claims' priority, with one progress bar per claim. This
module only lays out what the library returns: numbers, verdicts, figures. ``?claim=N`` in the URL opens claim N.

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

from balance import claims
from balance.app import common as ui
from balance.claims.report import value_text
from balance.config import RunConfig

OUTCOME_BOX = {"supported": st.success, "refuted": st.error, "partly": st.warning, "undecided": st.warning}
# Streamlit's own badges and icons: emoji need a font the browser may not have
BADGE = {
    "supported": ":green-badge[:material/check_circle: supported]",
    "refuted": ":red-badge[:material/cancel: refuted]",
    "partly": ":orange-badge[:material/contrast: partly]",
    "undecided": ":gray-badge[:material/pending: undecided]",
}


def quick() -> bool:
    return os.environ.get("BALANCE_CLAIMS_BUDGET", "") == "quick"


@st.cache_resource(show_spinner=False, max_entries=64)
def _analysed(number: int, run_ids: tuple[str, ...], home: str) -> claims.Evaluated:
    """A claim's runs (all stored, named by id) analysed once per process; ids pin config and code version."""
    claim = claims.by_number([number])[0]
    runs = [ui.store().load(run_id) for run_id in run_ids]
    return claims.Evaluated(claim, runs, claim.analyse(runs))


def explore_url(config: RunConfig, run_id: str) -> str:
    """Explore with this config (``ui.link_query``: the settings and the seed) and the stored run attached.

    Explore is the app's default page, so its address is the app's root: ``/?...`` (``/explore`` is not a route).
    """
    query = urllib.parse.urlencode({**ui.link_query(config), "run": run_id}, safe=",")
    page = (st.context.url or "").split("?")[0]  # e.g. http://host:8501/claims
    root = page.rsplit("/", 1)[0] if page.count("/") >= 3 else ""
    return f"{root}/?{query}"


def train(prefix: str, ids: dict[int, list[str | None]]) -> dict[int, list[str | None]]:
    """Start every missing run on the runner at once (so all claims share the workers), then wait for each claim
    in order under its own progress bar. Returns the run ids, all present."""
    store, budget, runner = ui.store(), quick(), ui.runner()
    stored = {n: [claims.ready([run_id], store) for run_id in v] for n, v in ids.items()}
    ids = claims.start(claims.CLAIMS, store, runner, quick=budget)
    missing = sum(not ok for v in stored.values() for ok in v)
    began = time.monotonic()
    with st.status(f"Training {missing} runs", expanded=True) as box:
        for claim in claims.CLAIMS:
            text = f"{claim.number}. {claim.title}"
            n = len(ids[claim.number])
            bar = st.progress(sum(stored[claim.number]) / n, text=f"{text}: {sum(stored[claim.number])}/{n} runs")

            def progress(done: int, n: int, bar: Any = bar, text: str = text) -> None:
                bar.progress(done / n, text=f"{text}: {done}/{n} runs")

            if not all(stored[claim.number]):
                claims.wait(ids[claim.number], store, runner, progress)  # type: ignore[arg-type]
        took = time.monotonic() - began
        box.update(label=f"Trained {missing} runs in {took:.0f} s", state="complete", expanded=False)
    return ids


def page(prefix: str) -> None:
    st.markdown("#### The reviewers' claims, checked by experiment")
    st.caption(
        "Du, Hu and Lee's reviewers doubted what the invariant means, whether it survives finite steps, momentum, "
        "batch norm and deep ReLU networks, and whether Figure 1 contradicts Theorem 3.1. Each claim below is "
        "settled by runs; its verdict is computed from the numbers shown, with the tolerances stated. The runs are "
        "kept in the run store and reused until the code or a configuration changes."
    )
    ids = claims.start(claims.CLAIMS, ui.store(), None, quick=quick())  # what the store has; starts nothing
    total = sum(len(v) for v in ids.values())
    missing = sum(not claims.ready([run_id], ui.store()) for v in ids.values() for run_id in v)
    if missing:
        offer = st.empty()  # cleared once the runs are trained
        with offer.container():
            st.info(
                f"{missing} of the {total} runs are not in the run store yet (a first visit, or the code changed). "
                "Training them takes about half a minute on two cores."
            )
            clicked = st.button(
                "Run the experiments", type="primary", icon=":material/play_arrow:", key=f"{prefix}.run"
            )
        if clicked:
            ids = train(prefix, ids)
            offer.empty()
    home = os.environ.get("BALANCE_HOME", "")
    results: dict[int, claims.Evaluated | Exception] = {}
    for number, run_ids in ids.items():
        if claims.ready(run_ids, ui.store()):
            try:
                results[number] = _analysed(number, tuple(run_ids), home)  # type: ignore[arg-type]
            except Exception as exc:  # one claim's broken run must not take the page down
                results[number] = exc
    done = [e for e in results.values() if not isinstance(e, Exception)]
    if done:
        st.markdown(ui.plain(claims.report.tally_text(done)))
    wanted = st.query_params.get("claim", "")
    for claim in claims.CLAIMS:
        evaluated = results.get(claim.number)
        if isinstance(evaluated, claims.Evaluated):
            claim_section(prefix, evaluated, expanded=wanted == str(claim.number))
            continue
        with st.expander(
            f"**{claim.number}. {ui.plain(claim.title)}** · " + ("failed" if evaluated else "not run yet")
        ):
            st.markdown(f"**Claim tested.** {ui.plain(claim.statement)}")
            if evaluated is None:
                st.caption("Press **Run the experiments** above to settle it.")
            else:
                st.error(f"This claim's runs could not be analysed: {type(evaluated).__name__}: {evaluated}")


def claim_section(prefix: str, evaluated: claims.Evaluated, expanded: bool) -> None:
    claim, runs, finding = evaluated
    v = finding.verdict
    side = claims.side(claim, v.outcome)
    supports = "a control" if side == "control" else f"supports {claims.report.SIDE_WORDS[side]}"
    label = f"**{claim.number}. {ui.plain(claim.title)}** · {BADGE[v.outcome]} · {supports}"
    with st.expander(label, expanded=expanded):
        st.markdown(f"> {ui.plain(claim.quote)}\n>\n> — {claim.source}")
        st.markdown(f"**Question.** {ui.plain(claim.question)}")
        if claim.kind == "control":
            st.caption("A control: counted apart from the reviewers' and the paper's points.")
        else:
            st.markdown(f"**The reviewer's side.** {ui.plain(claim.reviewer)}.  \n"
                        f"**The paper's side.** {ui.plain(claim.paper)}.")  # fmt: skip
        st.markdown(f"**Claim tested.** {ui.plain(claim.statement)}")
        st.markdown(f"**Experiment.** {ui.plain(claim.experiment)} ({len(runs)} runs.)")
        OUTCOME_BOX[v.outcome](
            f"**Verdict: {v.outcome}.** {ui.plain(claims.who(claim, v.outcome))} {ui.plain(v.reason)}"
        )
        st.caption(f"Evidence: {ui.plain(v.evidence)}. Deciding estimate (95% CI): {ui.plain(v.interval or 'none')}.")
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
