"""Shared model families, config builders and hypothesis strategies for the oracle tests.

``FAMILIES`` lists every homogeneous model family the invariants must hold for; ``TANH`` is the control that must
break them. ``explicit_layers`` and ``explicit_neurons`` spell out, per family and from the modules themselves
(not from the models' ``layers`` / ``neurons`` metadata), which tensors are W_h, b_h and which slices belong to
hidden unit i, so tests can check the library against an independent reading of the architecture.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from torch import Tensor

from balance.config import DataConfig, ModelConfig, OptimConfig, RunConfig
from balance.engine import laws
from balance.engine.data import Task, loss_value, make_task
from balance.engine.engine import Engine
from balance.engine.models import CNN, MLP, MODELS, HomogeneousModel, MatrixFactorisation, build_model


def pytest_configure(config: object) -> None:
    """No test reads or writes the user's run store: the default home is a fresh directory (tests that need their
    own set BALANCE_HOME themselves; spawned workers inherit this one)."""
    os.environ["BALANCE_HOME"] = tempfile.mkdtemp(prefix="balance-tests-")


# Tests that measure wall time, memory or thread counts, or need the whole machine: ``make test`` runs them alone,
# after the rest has run on two pytest-xdist workers (``-m serial``), so a busy neighbour never makes them flaky.
# Keyed by "file::test name" (every parametrisation); a key that matches nothing fails the run (a renamed test).
SERIAL = {
    "tests/test_limits.py::test_estimates_agree_with_real_runs": "peak memory and CPU time of real runs",
    "tests/test_runner.py::test_rows_stream_within_half_a_second_and_a_cursor_reads_only_new_rows": "wall time",
    "tests/test_runner.py::test_200_start_stop_cycles_leak_nothing_and_shutdown_cleans_up": "threads and processes",
    "tests/test_runner.py::test_thread_backend_shutdown_leaves_no_threads": "thread count",
    "tests/test_archive.py::test_the_issues_small_archive_that_decoded_to_800_mb_is_refused_at_once": "wall time",
    "tests/test_archive.py::test_per_neuron_import_is_linear_and_keeps_what_a_live_run_keeps": "wall time",
    "tests/test_archive.py::test_a_worker_import_is_ended_past_its_memory_or_time": "memory and wall time",
    "tests/test_lecture.py::test_a_rerun_with_a_new_seed_takes_under_ten_seconds": "wall time",
    "tests/test_lecture.py::test_warm_up_trains_ahead_in_the_executor_and_the_page_never_waits": "wall time, threads",
    "tests/test_data.py::test_csv_columns_and_cells_are_counted_before_parsing": "wall time",
    "tests/test_store.py::test_a_corrupt_file_is_a_clear_error_fast": "wall time",
    "tests/test_store.py::test_a_locked_store_fails_after_its_timeout_not_never": "wall time",
    "tests/test_sweep.py::test_an_address_that_is_not_ray_fails_within_the_limit": "wall time",
    "tests/test_sweep.py::test_a_dead_ray_address_fails_at_once": "wall time",
    "tests/browser/test_claims_page.py::test_cold_page_runs_every_claim": "a cold page trains every claim",
    "tests/browser/test_start_stop.py::test_start_then_stop_50_times": "every stop shown within 1 s",
    "tests/browser/test_dashboard.py::test_the_buttons_follow_every_pause_and_resume": "waits of 30 s per click",
    "tests/test_runner.py::test_every_stop_takes_effect_within_a_second_under_load": "wall time",
}


def pytest_itemcollected(item: pytest.Item) -> None:
    """Mark the ``SERIAL`` tests. (``make test`` gives each module to one xdist worker, in order, ``--dist loadfile``:
    a browser module's server starts once, and the lecture's page tests find the demos its earlier tests trained.)"""
    file = item.nodeid.split("::")[0]
    if f"{file}::{getattr(item, 'originalname', item.name)}" in SERIAL:
        item.add_marker(pytest.mark.serial)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A ``SERIAL`` key that names no test of a collected file fails the run (a renamed test)."""
    files = {item.nodeid.split("::")[0] for item in items}
    names = {f"{item.nodeid.split('::')[0]}::{getattr(item, 'originalname', item.name)}" for item in items}
    missing = [key for key in SERIAL if key.split("::")[0] in files and key not in names]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py SERIAL names tests that do not exist: {missing}")


# The tensors here are tiny: intra-op threads only add synchronisation (100x slower on a busy 2-core machine).
torch.set_num_threads(1)

# Hypothesis: few, reproducible examples (derandomize) and no deadline (first torch calls are slow).
FEW = settings(max_examples=8, deadline=None, derandomize=True)

TEACHER = {"name": "teacher", "samples": 12, "input_dim": 3, "output_dim": 2, "teacher_width": 4}
IMAGES = {"name": "images", "samples": 8, "image_size": 5}
LOWRANK = {"name": "lowrank", "d1": 5, "d2": 4, "rank": 2}


@dataclass(frozen=True)
class Family:
    id: str
    model: dict[str, Any]
    data: dict[str, Any] = field(default_factory=lambda: dict(TEACHER))

    @property
    def bias(self) -> bool:
        return bool(self.model.get("bias"))

    @property
    def linear(self) -> bool:
        """Identity activations: the matrix invariant applies."""
        return self.model["name"] in ("mf", "linear") or self.model.get("activation") == "linear"


FAMILIES = [
    Family("mf", {"name": "mf"}, dict(LOWRANK)),
    Family("linear", {"name": "linear"}),
    Family("linear-bias", {"name": "linear", "bias": True}),
    Family("mlp-relu", {"name": "mlp", "activation": "relu"}),
    Family("mlp-relu-bias", {"name": "mlp", "activation": "relu", "bias": True}),
    Family("mlp-leaky", {"name": "mlp", "activation": "leaky_relu", "negative_slope": 0.2}),
    Family("mlp-leaky-bias", {"name": "mlp", "activation": "leaky_relu", "negative_slope": 0.2, "bias": True}),
    Family("mlp-linear", {"name": "mlp", "activation": "linear"}),
    Family("mlp-linear-bias", {"name": "mlp", "activation": "linear", "bias": True}),
    Family("cnn", {"name": "cnn", "activation": "relu"}, dict(IMAGES)),
    Family("cnn-bias", {"name": "cnn", "activation": "relu", "bias": True}, dict(IMAGES)),
]
FAMILY_IDS = [f.id for f in FAMILIES]
TANH = Family("mlp-tanh", {"name": "mlp", "activation": "tanh", "bias": True})
BATCH_NORM = Family("mlp-bn", {"name": "mlp", "activation": "relu", "bias": True, "batch_norm": True})


def make_config(
    family: Family,
    *,
    optim: OptimConfig | None = None,
    steps: int = 10,
    seed: int = 0,
    dtype: str = "float64",
    data: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
) -> RunConfig:
    """A small run of ``family``: depth 3, width 4 (mf: rank 2) unless overridden."""
    shape = {} if family.model["name"] == "mf" else {"depth": 3, "width": 4}
    return RunConfig(
        data=DataConfig(**{**family.data, **(data or {})}),
        model=ModelConfig(**{"init_scale": 0.5, **shape, **family.model, **(model or {})}),
        optim=optim or OptimConfig(name="gd", lr=0.1),
        steps=steps,
        seed=seed,
        dtype=dtype,
    )


@st.composite
def family_configs(draw: st.DrawFn, family: Family) -> RunConfig:
    """A random small instance of ``family``: random sizes, seeds and init scale (always valid)."""
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.3, 0.6, 1.0]))
    name = family.model["name"]
    if name == "mf":
        d1, d2 = draw(st.integers(1, 6)), draw(st.integers(1, 6))
        rank = draw(st.integers(1, min(d1, d2)))
        factor_rank = draw(st.integers(0, min(d1, d2)))
        data = {"d1": d1, "d2": d2, "rank": rank, "seed": seed}
        model = {"rank": factor_rank, "init_scale": scale}
    else:
        depth = draw(st.integers(2, 3 if name == "cnn" else 4))
        widths = tuple(draw(st.lists(st.integers(1, 4), min_size=depth - 1, max_size=depth - 1)))
        model = {"depth": depth, "widths": widths, "init_scale": scale}
        if name == "cnn":
            data = {"image_size": draw(st.integers(4, 7)), "samples": draw(st.integers(4, 8)), "seed": seed}
        else:
            data = {
                "input_dim": draw(st.integers(1, 4)),
                "output_dim": draw(st.integers(1, 3)),
                "samples": draw(st.integers(4, 12)),
                "seed": seed,
            }
    return make_config(family, seed=seed, data=data, model=model)


@dataclass
class Instance:
    """A built model with random (nonzero) biases and its task, float64, plus the loss as a closure."""

    config: RunConfig
    model: HomogeneousModel
    task: Task

    def loss(self) -> Tensor:
        return objective(self.model, self.task)

    def grads(self) -> list[Tensor]:
        return list(torch.autograd.grad(self.loss(), self.model.params))


def objective(model: HomogeneousModel, task: Task) -> Tensor:
    if task.inputs is None:
        R = model() - task.targets
        return 0.5 * (R * R).sum()
    return loss_value(model(task.inputs), task.targets, task.loss, task.name)


def instance(config: RunConfig, dtype: torch.dtype = torch.float64, randomise: bool = True) -> Instance:
    """Build ``config``; with ``randomise`` the biases (and BatchNorm's gamma, beta) get random values.

    The library initialises biases at 0, where the bias terms of every identity vanish; random values make a
    wrong bias grouping visible.
    """
    task = make_task(config.data, dtype, image_input=MODELS[config.model.name].image_input)
    gen = torch.Generator().manual_seed(config.seed)
    model = build_model(config, task, gen, dtype)
    if randomise:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias") or (".norms." in f".{name}" and name.endswith("weight")):
                    shift = 1.0 if name.endswith("weight") else 0.0  # gamma around 1
                    p.copy_(shift + 0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype))
    return Instance(config, model, task)


# --- an explicit reading of each architecture ------------------------------------------------------------------


def _lookup(model: HomogeneousModel, tensors: list[Tensor] | None) -> Any:
    params = list(model.parameters())
    by_id = {id(p): t for p, t in zip(params, [p.detach() for p in params] if tensors is None else tensors)}
    return lambda p: None if p is None else by_id[id(p)]


def explicit_layers(model: HomogeneousModel, tensors: list[Tensor] | None = None) -> list[tuple[Tensor, Tensor | None]]:
    """(W_h, b_h) for h = 1 .. L, input side first, read from the modules (mf: V^T then U).

    ``tensors`` is anything laid out like ``model.params`` (gradients, updated copies); default the parameters.
    """
    get = _lookup(model, tensors)
    if isinstance(model, MatrixFactorisation):
        return [(get(model.W1), None), (get(model.W2), None)]
    if isinstance(model, MLP):
        return [(get(lin.weight), get(lin.bias)) for lin in model.linears]
    assert isinstance(model, CNN)
    return [(get(m.weight), get(m.bias)) for m in [*model.convs, model.head]]


def explicit_neurons(model: HomogeneousModel, tensors: list[Tensor] | None = None) -> list[list[tuple]]:
    """For every hidden layer, for every unit i: (incoming slices, outgoing slice) of ``tensors``.

    ``tensors`` is anything laid out like ``model.params`` (parameters, gradients, updated copies); by default the
    parameters. Incoming: row i of W_h (conv filter i) and b_h[i], or BatchNorm's gamma_i, beta_i; outgoing:
    column i of W_{h+1}, input channel i of the next conv, or the head's columns of channel i (the flatten is
    channel-major: columns i*s*s .. (i+1)*s*s - 1).
    """
    get = _lookup(model, tensors)
    out = []
    if isinstance(model, MatrixFactorisation):
        Vt, U = get(model.W1), get(model.W2)
        return [[([Vt[i]], U[:, i]) for i in range(Vt.shape[0])]]
    if isinstance(model, MLP):
        for h in range(len(model.linears) - 1):
            if model.norms is not None:
                into = [get(model.norms[h].weight), get(model.norms[h].bias)]
            else:
                into = [get(model.linears[h].weight), get(model.linears[h].bias)]
            nxt = get(model.linears[h + 1].weight)
            out.append([([t[i] for t in into if t is not None], nxt[:, i]) for i in range(nxt.shape[1])])
        return out
    assert isinstance(model, CNN)
    modules = [*model.convs, model.head]
    for h, conv in enumerate(model.convs):
        W, b = get(conv.weight), get(conv.bias)
        nxt = get(modules[h + 1].weight)
        units = W.shape[0]
        units_out = []
        for i in range(units):
            if h + 1 < len(model.convs):
                o = nxt[:, i]
            else:
                block = nxt.shape[1] // units
                o = nxt[:, i * block : (i + 1) * block]
            units_out.append(([W[i]] + ([b[i]] if b is not None else []), o))
        out.append(units_out)
    return out


def sq(t: Tensor) -> Tensor:
    return (t * t).sum()


def dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum()


def train_frame(config: RunConfig) -> pd.DataFrame:
    """One run of ``config`` on the engine, every logged row as a DataFrame (no loop, no store)."""
    engine = Engine([config])
    rows: list[np.ndarray] = []
    while engine.running:
        rows += engine.step().get(0, [])
    return pd.DataFrame(np.array(rows), columns=engine.columns)


def law_residual(df: pd.DataFrame) -> float:
    """Largest |measured - predicted| gap drift over pairs and steps, relative to the largest drift."""
    worst, scale = 0.0, 0.0
    for h in laws.of_metric(df.columns, "gap_drift"):
        drift = df[laws.column("gap_drift", h)].to_numpy()
        worst = max(worst, float(np.abs(drift - df[laws.column("pred_gap_drift", h)].to_numpy()).max()))
        scale = max(scale, float(np.abs(drift).max()))
    assert scale > 0
    return worst / scale
