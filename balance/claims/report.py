"""The claims report: one Markdown file with every claim, its numbers and its verdict, and one HTML figure per
claim next to it (sharing one ``plotly.min.js``, so the report opens offline)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import tomli_w

from balance.claims import points
from balance.claims.base import SIDES, fmt, side, who
from balance.config import RunConfig, link_query
from balance.files import write_atomic
from balance.runs.stamp import stamp_text

BADGE = {"supported": "✅ supported", "refuted": "❌ refuted", "partly": "◐ partly", "undecided": "⋯ undecided"}
SIDE_WORDS = {"reviewer": "the reviewer", "paper": "the paper", "both": "both sides", "undecided": "neither yet",
              "control": "control"}  # fmt: skip


def tally(results: Sequence[Any]) -> dict[str, int]:
    """How many verdicts support each side (``balance.claims.base.SIDES``), controls apart (key "control: ...")."""
    counts: dict[str, int] = {}
    for e in results:
        s = side(e.claim, e.finding.verdict.outcome)
        key = f"control: {e.finding.verdict.outcome}" if s == "control" else s
        counts[key] = counts.get(key, 0) + 1
    return counts


def tally_text(results: Sequence[Any]) -> str:
    """One line: 'Reviewers' and paper's claims: the reviewer 2, the paper 3, both 1 · controls: 3 supported'."""
    counts = tally(results)
    main = ", ".join(f"{SIDE_WORDS[s]} {counts[s]}" for s in SIDES if s in counts)
    controls = ", ".join(f"{n} {k.split(': ')[1]}" for k, n in counts.items() if k.startswith("control: "))
    return f"Verdicts on the reviewers' and the paper's statements support: {main or 'none'}" + (
        f" · controls (apart): {controls}" if controls else ""
    )


def explore_link(config: RunConfig, run_id: str = "") -> str:
    """The dashboard path that opens ``config`` (and the stored run) in Explore, the app's default page (``/``)."""
    query = link_query(config)
    if run_id:
        query["run"] = run_id
    return "/?" + urllib.parse.urlencode(query, safe=",")


def value_text(value: Any) -> str:
    return fmt(value, 4) if isinstance(value, float) else str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def claim_markdown(evaluated: Any, figure_name: str) -> str:
    """One claim's section: quote, statement, experiment, verdict with reason and tolerances, numbers, links."""
    claim, runs, finding = evaluated
    v = finding.verdict
    spec = figure_name.replace(".html", ".toml")
    main = runs[finding.main]
    lines = [
        f"## {claim.number}. {claim.title}: {BADGE[v.outcome]}",
        "",
        f"> {claim.quote}",
        f"> — {claim.source}",
        "",
        f"**Question.** {claim.question}",
        "",
        *(
            [f"**The reviewer's side.** {claim.reviewer}.", "", f"**The paper's side.** {claim.paper}.", ""]
            if claim.kind != "control"
            else ["**A control** (counted apart from the reviewers' points).", ""]
        ),
        f"**Claim tested.** {claim.statement}",
        "",
        f"**Experiment.** {claim.experiment} ({len(runs)} runs.)",
        "",
        f"**Verdict: {v.outcome}.** {who(claim, v.outcome)} {v.reason}",
        "",
        f"Evidence: {v.evidence}. Deciding estimate (95% CI): {v.interval or 'none'}.",
        "",
        "Tolerances: " + "; ".join(f"{_cell(k)}: {t}" for k, t in v.tolerances.items()) + ".",
        "",
        "| quantity | value |",
        "|---|---|",
        *(f"| {_cell(k)} | {_cell(value_text(x))} |" for k, x in finding.numbers.items()),
        "",
        f"Figure: [{figure_name}]({figure_name}); the runs' configs: [{spec}]({spec}). Main run `{main.run_id}`, "
        "open it in the dashboard's Explore page: "
        f"`{explore_link(main.config, main.run_id)}`",
        "",
    ]
    return "\n".join(lines)


def render(results: Sequence[Any], seconds: float, quick: bool) -> str:
    """The whole report as Markdown (figures named ``claim-N.html``)."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        "# The reviewers' claims, checked by experiment",
        "",
        f"Written by `balance claims` on {stamp}{' with the reduced (--quick) budget' if quick else ''}; the "
        f"experiments took {seconds:.1f} s (runs already in the store are reused). Every verdict is computed from the "
        "numbers below by a function of `balance.claims.verdicts`, with the tolerances stated.",
        "",
        f"Reproducibility: {stamp_text()}. `balance claims --only N{' --quick' if quick else ''} --report FILE.md` "
        "on a checkout at this commit re-runs section N from the configs it lists (its main run's link holds the "
        "full config).",
        "",
        tally_text(results) + ".",
        "",
        "| # | claim | source | verdict | supports |",
        "|---|---|---|---|---|",
        *(
            f"| {e.claim.number} | {_cell(e.claim.title)} | {e.claim.source} | {BADGE[e.finding.verdict.outcome]} | "
            f"{SIDE_WORDS[side(e.claim, e.finding.verdict.outcome)]} |"
            for e in results
        ),
        "",
        *points.markdown(results),
        "",
    ]
    body = [claim_markdown(e, f"claim-{e.claim.number}.html") for e in results]
    return "\n".join(head + body)


def configs_toml(number: int, configs: Sequence[RunConfig]) -> str:
    """A claim's configs as a sweep spec of listed members (each the settings that differ from the defaults), headed
    by the stamp: ``balance sweep --config claim-N.toml`` trains exactly these runs again."""
    default = RunConfig().flat()
    members = [{k: list(v) if isinstance(v, tuple) else v for k, v in c.flat().items() if v != default.get(k)}
               for c in configs]  # fmt: skip
    head = (f"# claim {number}: its {len(configs)} runs. Made by {stamp_text()}.\n"
            f"# 'balance sweep --config claim-{number}.toml' trains them again; 'balance claims --only {number}' "
            "re-runs the section with its verdict.\n")  # fmt: skip
    return head + tomli_w.dumps({"name": f"claim-{number}", "list": members})


def write(results: Sequence[Any], path: Path, seconds: float, quick: bool = False) -> list[Path]:
    """Write the report to ``path`` and, beside it, ``claim-N.html`` (the figure) and ``claim-N.toml`` (the runs'
    configs, a sweep spec) per claim; returns the files written."""
    write_atomic(path, render(results, seconds, quick))
    written = [path]
    for e in results:
        spec_path = path.parent / f"claim-{e.claim.number}.toml"
        write_atomic(spec_path, configs_toml(e.claim.number, [r.config for r in e.runs]))
        written.append(spec_path)
        figure_path = path.parent / f"claim-{e.claim.number}.html"
        fig = e.finding.figure
        fig.update_layout(title={"text": f"Claim {e.claim.number}: {e.claim.title}"})
        html = lambda tmp, fig=fig: fig.write_html(tmp, include_plotlyjs="directory", full_html=True)  # noqa: E731
        write_atomic(figure_path, html)
        written.append(figure_path)
    return written
