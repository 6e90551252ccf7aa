"""The lecture: eight steps from homogeneity to the reviewers' objection, each a text, a formula and a demo.

The steps are data (``assets/lecture.toml``): title, two to four sentences, a LaTeX formula, the demo's figure and
runs (presets with changes), and the settings a student link into Explore shows. This module turns them into
``Step`` objects, trains (or finds in the run store) each demo's runs through ``balance.runs.reuse``, and builds each
demo's figure with ``balance.views.lecture``. No Streamlit here: the page (``balance.app.lecture``), the handout
(``balance.lecture.handout``) and the CLI share it.

No waiting: ``Warmer`` trains the demos in a background thread, the step on screen and the next one first, so a
step's runs are in the store before it opens; a demo's runs train in a few seconds when they are not.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import logging
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from balance.config import RunConfig
from balance.config.presets import preset
from balance.engine.data import make_task
from balance.engine.models import MODELS, build_model
from balance.engine.trainer import DTYPES, Trainer
from balance.runs.reuse import CachedRun, cached_runs
from balance.runs.store import RunStore
from balance.views import lecture as figures

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


FIGURE_KINDS = ("rescale", "neurons", "balance", "step-sizes", "figure-1", "breaks", "difference", "summary")


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
    """Explore's URL query for ``config`` (the settings that differ from the defaults, and the seed), with
    ``show=a,b`` when only some controls should be shown (a student link)."""
    query = {**config.to_query(), "seed": str(config.seed)}
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


def _one_thread() -> None:
    """One intra-op thread for the calling thread. The demos' tensors are tiny: more threads only add
    synchronisation. Called in every thread that trains, unconditionally: OpenMP's thread count is per thread and
    ``torch.get_num_threads()`` reports the process-wide value, so a thread started after the main thread set 1
    reads 1 yet runs with the default (measured: 600 steps of mlp-relu, 2 s in the main thread, 38-68 s in a new
    thread on a busy 2-core machine, 2 s there after this call)."""
    torch.set_num_threads(1)


# --- demos ---------------------------------------------------------------------------------------------------------


def step_runs(
    step: Step,
    store: RunStore,
    seed: int | None = None,
    on_done: Callable[[int, int], None] | None = None,
) -> list[tuple[str, CachedRun]]:
    """The step's runs as (label, run), from the store or trained now (in this process) and recorded there.

    ``seed`` replaces every run's seed (the page's "new seed"); None keeps the presets' seeds.
    """
    if not step.runs:
        return []
    _one_thread()
    configs = [d.config for d in reseeded(step, seed).runs]
    runs = cached_runs(configs, step.label, store, on_done=on_done)
    return [(d.label, r) for d, r in zip(step.runs, runs)]


def neuron_tables(store: RunStore, run: CachedRun) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run's per-neuron tables at its first and last step.

    A run trained by the runner has them in the store; one trained in-process (``balance.runs.reuse``) stores metrics
    only, so the run is replayed here once (same config, same seed: the same numbers) and both tables are saved.
    """
    first, last = store.neurons(run.run_id, step=0), store.neurons(run.run_id)
    if len(first) and len(last) and int(last["step"].iloc[0]) == run.status.step:
        return first, last
    _one_thread()
    trainer = Trainer(run.config)
    store.save_neurons(run.run_id, 0, trainer.neuron_table())
    while trainer.status.state == "running":
        trainer.step()
    store.save_neurons(run.run_id, trainer.step_index, trainer.neuron_table())
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
    step: Step, store: RunStore, runs: Sequence[tuple[str, CachedRun]], c: float = 1.0, slider: bool = False
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
    return None


def step_figure(
    step: Step, store: RunStore, seed: int | None = None, c: float = 1.0, slider: bool = False
) -> go.Figure | None:
    """Train (or look up) the step's runs, then draw its figure; ``slider``: step 1's c as a Plotly slider."""
    return demo_figure(reseeded(step, seed), store, step_runs(step, store, seed), c, slider)


# --- no waiting -----------------------------------------------------------------------------------------------------


class Warmer:
    """Trains the lecture's demos ahead, in one background thread, into ``store``.

    ``warm(numbers)`` queues steps (first in line first); ``runs(step, seed)`` returns a step's runs, waiting for
    the thread if it is training that step right now rather than training the same runs twice.
    """

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self._stopped = False
        self._lock = threading.Lock()
        self._busy: dict[tuple[int, int | None], threading.Lock] = {}
        self._queue: deque[tuple[int, int | None]] = deque()
        self._thread: threading.Thread | None = None
        self.seconds: dict[tuple[int, int | None], float] = {}  # time each step's runs took (0 when found)
        # a daemon thread killed inside torch at interpreter exit aborts the process ("terminate called ..."):
        # stop taking work and let the step in hand finish first
        atexit.register(self.stop)

    def _key_lock(self, key: tuple[int, int | None]) -> threading.Lock:
        with self._lock:
            return self._busy.setdefault(key, threading.Lock())

    def runs(self, step: Step, seed: int | None = None) -> list[tuple[str, CachedRun]]:
        key = (step.number, seed)
        with self._key_lock(key):
            start = time.perf_counter()
            out = step_runs(step, self.store, seed)
            if step.figure == "neurons" and out:
                neuron_tables(self.store, out[0][1])  # the replay for the snapshots, ahead too
            self.seconds.setdefault(key, time.perf_counter() - start)
            return out

    def warm(self, numbers: Sequence[int], seed: int | None = None) -> None:
        """Queue steps to train ahead, ``numbers[0]`` first; starts the thread if it is idle."""
        with self._lock:
            if self._stopped:
                return
            for n in reversed(numbers):
                key = (n, seed)
                if key in self._queue:
                    self._queue.remove(key)
                self._queue.appendleft(key)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="balance-lecture-warmer", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Drop the queue and wait (up to ``timeout`` s) for the step being trained; later ``warm`` calls do nothing."""
        with self._lock:
            self._stopped = True
            self._queue.clear()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the queue is done (or ``timeout`` seconds); True if it is."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.idle():
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def idle(self) -> bool:
        with self._lock:
            return not self._queue and (self._thread is None or not self._thread.is_alive())

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None
                    return
                number, seed = self._queue.popleft()
            try:
                self.runs(step_at(number), seed)
            except Exception:  # a background warm-up must never take the page down; the step trains on open
                log.exception("warming lecture step %d failed", number)


def warm_order(current: int) -> list[int]:
    """The step on screen, the next, the previous, then the rest in order."""
    n = len(STEPS)
    rest = [i for i in range(1, n + 1) if i not in (current, current + 1, current - 1)]
    return [i for i in (current, current + 1, current - 1) if 1 <= i <= n] + rest
