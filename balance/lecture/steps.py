"""The lecture: eight steps from homogeneity to the reviewers' objection, each a text, a formula and a demo.

The steps are data (``assets/lecture.toml``): title, two to four sentences, a LaTeX formula, the demo's figure and
runs (presets with changes), and the settings a student link into Explore shows. This module turns them into
``Step`` objects, trains (or finds in the run store) each demo's runs through ``balance.runs.reuse``, and builds each
demo's figure with ``balance.views.lecture``. No Streamlit here: the page (``balance.app.lecture``), the handout
(``balance.lecture.handout``) and the CLI share it.

No waiting and no training in the page's process: ``warm`` starts every step's runs on the executor at the
lecture's warm-up priority (the step on screen first), so a step's runs are in the store before it opens;
``demo_runs`` gives a step's runs if they have ended and otherwise starts them and returns None (the page shows a
placeholder and looks again). ``step_runs`` waits for them (the handout, tests; without an executor it trains them
in this process, through the same loop).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from balance.config import RunConfig, link_query
from balance.config.presets import preset
from balance.engine.data import make_task
from balance.engine.engine import DTYPES
from balance.engine.models import MODELS, build_model
from balance.engine.status import ENDED
from balance.runs.record import RunRecord
from balance.runs.reuse import cached_runs, submit
from balance.runs.store import RunStore
from balance.views import lecture as figures
from balance.views.mechanisms import mechanisms_figure

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

STEPS_PATH = Path(__file__).resolve().parent.parent / "assets" / "lecture.toml"
# the rescaling slider's values (step 1); the curves are drawn on a finer grid that contains them
C_GRID: tuple[float, ...] = (0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0)
C_CURVE: tuple[float, ...] = tuple(sorted({*np.geomspace(0.1, 10.0, 61).tolist(), *C_GRID}))


@dataclass(frozen=True)
class Demo:
    """One run of a step's demo: a label for the legend and its config; ``show``: the settings a student link to it
    shows (empty: the step's)."""

    label: str
    config: RunConfig
    show: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    number: int  # 1-based
    key: str
    slug: str  # names the step's exported figure: lecture-{number}-{slug}.svg
    title: str
    text: str  # Markdown
    formulas: tuple[str, ...]  # LaTeX, one a line
    notes: str  # the speaker's notes (the presenter view only)
    figure: str  # name in FIGURE_KINDS
    runs: tuple[Demo, ...]  # trained for the demo
    links: tuple[Demo, ...]  # opened in Explore (the runs, or what to try when the demo trains nothing)
    show: tuple[str, ...]  # the settings a student link shows (Explore's ``show=`` flag)

    @property
    def label(self) -> str:
        """The run store's name for this step's runs (their sweep)."""
        return f"lecture {self.number}: {self.key}"

    @property
    def figure_name(self) -> str:
        """The file name (no suffix) of the step's figure on a slide: 'lecture-3-layer-gaps'."""
        return f"lecture-{self.number}-{self.slug}"

    def shows(self, demo: Demo) -> tuple[str, ...]:
        """The settings a student link to ``demo`` shows."""
        return demo.show or self.show


FIGURE_KINDS = (
    "rescale", "neurons", "balance", "step-sizes", "figure-1", "breaks", "difference", "mechanisms", "summary"
)  # fmt: skip


def _demo(raw: Mapping[str, Any]) -> Demo:
    config = preset(raw["preset"])
    if raw.get("set"):
        config = config.replace(**dict(raw["set"]))
    return Demo(str(raw["label"]), config, tuple(raw.get("show", ())))


def _words(text: str) -> str:
    return " ".join(text.split())


def load_steps(path: Path = STEPS_PATH) -> tuple[Step, ...]:
    """The steps of ``path`` (TOML, see ``assets/lecture.toml``); a ``ConfigError`` names a bad preset or setting."""
    raw = tomllib.loads(path.read_text(encoding="utf-8"))["steps"]
    steps = []
    for i, s in enumerate(raw, start=1):
        if s["figure"] not in FIGURE_KINDS:
            raise ValueError(f"{path}: step {i}: figure {s['figure']!r} is not one of {', '.join(FIGURE_KINDS)}")
        runs = tuple(_demo(r) for r in s.get("runs", ()))
        links = tuple(_demo(r) for r in s.get("links", ())) or runs
        formulas = tuple(s["formulas"])
        steps.append(
            Step(i, s["key"], s["slug"], s["title"], _words(s["text"]), formulas, _words(s.get("notes", "")),
                 s["figure"], runs, links, tuple(s["show"]))
        )  # fmt: skip
    return tuple(steps)


STEPS: tuple[Step, ...] = load_steps()


def step_at(number: int) -> Step:
    """Step ``number`` (1-based), clamped to the lecture's range."""
    return STEPS[min(max(number, 1), len(STEPS)) - 1]


def reseeded(step: Step, seed: int | None) -> Step:
    """``step`` with every run's (and link's) seed set to ``seed``; None: as the presets have it."""
    if seed is None:
        return step
    runs = tuple(dataclasses.replace(d, config=d.config.replace(seed=seed)) for d in step.runs)
    links = tuple(dataclasses.replace(d, config=d.config.replace(seed=seed)) for d in step.links)
    return dataclasses.replace(step, runs=runs, links=links)


# --- links ---------------------------------------------------------------------------------------------------------


def explore_query(config: RunConfig, show: Sequence[str] = ()) -> dict[str, str]:
    """Explore's URL query for ``config`` (``link_query``: the settings that differ from the defaults, the seed), with
    ``show=a,b`` when only some controls should be shown (a student link)."""
    query = link_query(config)
    if show:
        query["show"] = ",".join(show)
    return query


def explore_link(config: RunConfig, show: Sequence[str] = (), base: str = "./") -> str:
    """A relative link to the Explore page (the app's default page) set up with ``config``."""
    return base + "?" + urlencode(explore_query(config, show), safe=",.:")


def demo_code(step: Step, index: int) -> str:
    """The short name of link ``index`` (0-based) of ``step``: '3' for a step's only link, '6.2' for its second."""
    return str(step.number) if len(step.links) == 1 else f"{step.number}.{index + 1}"


def short_query(step: Step, index: int, seed: int | None = None) -> dict[str, str]:
    """The Lecture page's query that forwards to link ``index`` of ``step`` in Explore (``short_link``)."""
    query = {"demo": demo_code(step, index)}
    if seed is not None:
        query["seed"] = str(seed)
    return query


def short_link(step: Step, index: int, seed: int | None = None, base: str = "lecture") -> str:
    """A link short enough to read off a projector and type: 'lecture?demo=6.2' (``&seed=3`` for a reseeded demo).
    The Lecture page forwards it to Explore with the demo's full settings (``resolve_demo``)."""
    return base + "?" + urlencode(short_query(step, index, seed))


def resolve_demo(code: str, seed: str | None = None) -> tuple[Step, Demo] | None:
    """The step and link a short code names ('3', '6.2'; ``seed`` a whole number or None), reseeded; None for
    anything else (the page then says so)."""
    match = re.fullmatch(r"([1-9][0-9]?)(?:\.([1-9][0-9]?))?", code)
    if match is None or int(match[1]) > len(STEPS):
        return None
    step = STEPS[int(match[1]) - 1]
    i = int(match[2]) - 1 if match[2] else 0
    if not 0 <= i < len(step.links):
        return None
    if seed is not None:
        if not seed.isdigit() or len(seed) > 9:
            return None
        step = reseeded(step, int(seed))
    return step, step.links[i]


# --- demos ---------------------------------------------------------------------------------------------------------


def _configs(step: Step, seed: int | None) -> list[RunConfig]:
    return [d.config for d in reseeded(step, seed).runs]


def step_runs(
    step: Step,
    store: RunStore,
    seed: int | None = None,
    on_done: Callable[[int, int], None] | None = None,
    runner: Any = None,
) -> list[tuple[str, RunRecord]]:
    """The step's runs as (label, run), from the store or trained now and recorded there, waiting for them: on the
    executor (``runner``, at the warm-up priority) or, without one, in this process (the command line's handout).

    ``seed`` replaces every run's seed (the page's "new seed"); None keeps the presets' seeds.
    """
    if not step.runs:
        return []
    runs = cached_runs(_configs(step, seed), step.label, store, runner, on_done, priority="lecture")
    return [(d.label, r) for d, r in zip(step.runs, runs)]


def demo_runs(step: Step, store: RunStore, runner: Any, seed: int | None = None) -> list[tuple[str, RunRecord]] | None:
    """The step's runs as (label, run) if they have all ended; else None, with the missing ones started on
    ``runner`` at the warm-up priority (never waits, never trains here: for the page)."""
    if not step.runs:
        return []
    ids = submit(_configs(step, seed), step.label, store, runner, priority="lecture")
    records = [store.get_run(run_id) if run_id is not None else None for run_id in ids]
    if not all(r is not None and r.state in ENDED for r in records):
        return None
    return [(d.label, store.load(run_id)) for d, run_id in zip(step.runs, ids)]  # type: ignore[arg-type]


def warm(numbers: Sequence[int], store: RunStore, runner: Any, seed: int | None = None) -> None:
    """Start the runs of steps ``numbers`` (``numbers[0]`` first) on ``runner`` at the warm-up priority, unless
    they are stored or training; returns at once."""
    for n in numbers:
        step = step_at(n)
        if step.runs:
            submit(_configs(step, seed), step.label, store, runner, priority="lecture")


def neuron_tables(store: RunStore, run: RunRecord) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run's per-neuron tables at its first and last step (every run keeps its snapshots: the loop takes them)."""
    return store.neurons(run.run_id, step=0), store.neurons(run.run_id)


def rescaled_outputs(config: RunConfig, cs: np.ndarray, layer: int = 1, samples: int = 4) -> dict[str, np.ndarray]:
    """Outputs of ``config``'s freshly initialised model with layer ``layer`` (1-based, its bias too) multiplied
    by c and layer ``layer + 1`` by 1/c, for each c in ``cs``, on the first ``samples`` inputs.

    Returns ``c`` [n], ``outputs`` [n, samples] (first output unit), ``sqnorm_h`` and ``sqnorm_next`` [n]: the two
    layers' squared norms, c^2 ||W_h||^2 and ||W_{h+1}||^2 / c^2. A homogeneous model's outputs do not depend on c.
    """
    dtype = DTYPES[config.dtype]
    task = make_task(config.data, dtype, image_input=MODELS[config.model.name].image_input)
    model = build_model(config, task, torch.Generator().manual_seed(config.seed), dtype)
    params, layers = model.params, model.layers
    if not 1 <= layer < len(layers):
        raise ValueError(f"layer = {layer}: choose 1 to {len(layers) - 1} (a layer with a next one)")
    h, nxt = layers[layer - 1], layers[layer]
    x = None if task.inputs is None else task.inputs[:samples]
    originals = {i: params[i].detach().clone() for i in (h.weight, h.bias, nxt.weight) if i is not None}
    outputs = []
    with torch.no_grad():
        for c in np.asarray(cs, dtype=float):
            for i, p0 in originals.items():
                params[i].copy_(p0 / c if i == nxt.weight else p0 * c)
            y = model() if x is None else model(x)
            outputs.append(y.reshape(y.shape[0], -1)[:samples, 0].numpy().copy())
        for i, p0 in originals.items():
            params[i].copy_(p0)
    c = np.asarray(cs, dtype=float)
    w_h, w_next = (float((originals[i] ** 2).sum()) for i in (h.weight, nxt.weight))
    return {"c": c, "outputs": np.array(outputs), "sqnorm_h": c**2 * w_h, "sqnorm_next": w_next / c**2}


@functools.lru_cache(maxsize=8)
def rescale_curves(config: RunConfig) -> dict[str, dict[str, np.ndarray]]:
    """``rescaled_outputs`` at every c of ``C_CURVE`` for the ReLU network of ``config`` and its tanh twin (cached:
    treat the arrays as read-only)."""
    cs = np.array(C_CURVE)
    tanh = config.replace(**{"model.activation": "tanh"})
    return {"ReLU": rescaled_outputs(config, cs), "tanh": rescaled_outputs(tanh, cs)}


def demo_figure(
    step: Step, store: RunStore, runs: Sequence[tuple[str, RunRecord]], c: float = 1.0, slider: bool = False
) -> go.Figure | None:
    """The step's figure from its runs (``step_runs``); ``c`` is the rescaling slider of step 1. None for the
    summary, which has links instead."""
    frames = {label: run.metrics for label, run in runs}
    kind = step.figure
    if kind == "rescale":
        return figures.rescale_figure(rescale_curves(step.links[0].config), c, C_GRID if slider else ())
    if kind == "neurons":
        first, last = neuron_tables(store, runs[0][1])
        return figures.neuron_scatter(first, last)
    if kind == "balance":
        return figures.balance_panels(next(iter(frames.values())))
    if kind == "step-sizes":
        return figures.step_size_figure(frames)
    if kind == "figure-1":
        return figures.figure1(frames)
    if kind == "breaks":
        return figures.breaks_figure(frames)
    if kind == "difference":
        return figures.difference_figure(frames)
    if kind == "mechanisms":
        return mechanisms_figure(frames)
    return None


def step_figure(
    step: Step, store: RunStore, seed: int | None = None, c: float = 1.0, slider: bool = False
) -> go.Figure | None:
    """Train (or look up) the step's runs, then draw its figure; ``slider``: step 1's c as a Plotly slider."""
    return demo_figure(reseeded(step, seed), store, step_runs(step, store, seed), c, slider)


def warm_order(current: int) -> list[int]:
    """The step on screen, the next, the previous, then the rest in order."""
    n = len(STEPS)
    rest = [i for i in range(1, n + 1) if i not in (current, current + 1, current - 1)]
    return [i for i in (current, current + 1, current - 1) if 1 <= i <= n] + rest
