"""What a run will cost and what one run and one session may use, checked before a run is queued. No torch here.

``estimate(config)`` computes, from the config alone, a run's peak memory (the worker's resident size: the process
itself, the data, the weights, their gradients, the optimiser's state, the activations autograd keeps, the metrics'
matrices and the largest temporary) and its wall time (a FLOP count at a conservative throughput, plus a fixed cost
per step and per logged row). The constants were measured on a 2-core machine with one torch thread per worker:
``benchmarks/bench_limits.py`` prints estimate against measurement per config (see "Calibration" below).

``Limits`` are what the server's owner allows: per run (memory, seconds) and per browser session (runs training and
waiting, how long an unwatched run keeps going). Defaults are the machine's share (half the RAM divided among the
runs that may train at once); ``Limits.load(home)`` reads ``<home>/limits.toml`` to change them::

    max_memory_gib = 4.0       # one run's estimated peak memory
    max_seconds = 3600         # one run's wall time (a run may ask for less, never for more)
    running_per_session = 1    # runs one browser session may have training or paused at once
    queued_per_session = 2     # and waiting for a worker besides
    idle_seconds = 600         # a session's runs pause when no page has shown them this long (0: never)
    idle_stop_seconds = 3600   # and stop when none has for this long, releasing their worker (0: never)

``check(config, limits)`` raises ``LimitError`` (a ``ConfigError``) with the estimate, the limit and what to change.
The foreground ``balance run`` is not checked: it runs in the user's own process, which they can stop.

Calibration (19 configs from MF 100 x 25 to a CNN on 2048 32 x 32 images and an MLP of width 4096; measured peak
resident size and CPU seconds per step with one torch thread, as a worker): the memory estimate is 0.95-1.45x the
measured peak (median 1.2x), the time estimate 0.9-3.8x the measured CPU time (median 1.9x): an upper bound on
purpose, since a worker trains below the server's priority on a shared machine. ``tests/test_limits.py`` keeps five
of them within -15 % / +50 % (memory) and 0.8-8x (time).
"""

from __future__ import annotations

import itertools
import math
import os
import sys
from dataclasses import dataclass, fields

from balance.config import ConfigError, RunConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MIB, GIB = 2**20, 2**30
BYTES = {"float32": 4, "float64": 8}
BASE_BYTES = 380 * MIB  # a worker after its imports (Python, torch, NumPy, SciPy, pandas) and its first step
PENDING_BYTES = 16 * MIB  # rows a worker may hold while the store is locked (the worker thins beyond this)
SLACK = 1.15  # allocator fragmentation and small objects, on top of the counted arrays
# FLOP/s of one torch thread, per kind of model: about half of what was measured (dense matmuls ran at 70-140
# GFLOP/s in float32, convolutions at ~22, matrix factorisation's memory-bound products at ~9 in float64)
FLOPS = {
    ("dense", "float32"): 50e9, ("dense", "float64"): 25e9,
    ("cnn", "float32"): 12e9, ("cnn", "float64"): 5e9,
    ("mf", "float32"): 20e9, ("mf", "float64"): 10e9,
}  # fmt: skip
STEP_SECONDS = 40e-6  # fixed cost of a step (Python, the optimiser, a few ATen ops) ...
LAYER_SECONDS = 25e-6  # ... and per weight layer (forward, backward and update ops of ~10 us each)
ROW_SECONDS = 40e-6  # fixed cost of a logged row of metrics ...
ROW_LAYER_SECONDS = 25e-6  # ... and per weight layer
FLOW_EVALUATIONS = 24  # gradients per step of the gradient-flow solver (DOP853: 12 per solver step)
FLOW_STATE = 20  # float64 vectors of the parameters' size that DOP853 keeps (13 stages, y, f, dense output)
LANCZOS_STEPS = 60  # as balance.engine.sharpness (torch-free here)
DENSE_STEPS = 10_000  # as balance.engine.trainer: every step logged up to here, then about 4,500 rows per decade
CSV_ROWS, CSV_FEATURES = 100_000, 100  # a CSV is estimated at the size its file cap allows (50 MB of text)
IMAGE_CLASSES = 4  # as balance.engine.data
LIMITS_FILE = "limits.toml"
LIMITS_BYTES = 64 * 1024


class LimitError(ConfigError):
    """A run refused because it would exceed a limit; the one-line message gives the estimate, the limit and what
    to change."""


# --- the shape of a run -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layer:
    n_out: int
    fan_in: int  # inputs per output value (conv: in_channels x 9)
    positions: int  # where the layer is applied per sample (conv: side^2; dense: 1)
    bias: bool


@dataclass(frozen=True)
class _Shape:
    samples: int  # N (lowrank: none; the "batch" is the matrix)
    inputs: int  # values per sample
    hidden: tuple[int, ...]  # activation values per sample after each hidden layer (conv: channels x side^2)
    layers: tuple[_Layer, ...]
    linear: tuple[tuple[int, int], ...]  # (units, fan_in + fan_out) of hidden layers whose matrix invariant is logged


def _task(config: RunConfig) -> tuple[int, int, int]:
    """(samples, inputs per sample, outputs) of the dataset, as ``balance.engine.data`` builds it."""
    d, m = config.data, config.model
    images = m.name == "cnn"
    if d.name == "teacher":
        return d.samples, d.image_size**2 if images else d.input_dim, d.output_dim
    if d.name == "images":
        return d.samples, d.channels * d.image_size**2, IMAGE_CLASSES
    if d.name == "csv":
        return CSV_ROWS, CSV_FEATURES, 256 if d.loss == "cross_entropy" else 1
    return d.samples, 2, 1  # the 2-D sets


def _shape(config: RunConfig) -> _Shape:
    d, m = config.data, config.model
    if m.name == "mf":
        r = m.rank or d.rank
        return _Shape(0, 0, (), (_Layer(r, d.d2, 1, False), _Layer(d.d1, r, 1, False)), ((r, d.d1 + d.d2),))
    samples, inputs, outputs = _task(config)
    widths = m.hidden_widths()
    if m.name == "cnn":
        layers, hidden, side = [], [], d.image_size
        c_in = d.channels if d.name == "images" else 1
        for c in widths:
            layers.append(_Layer(c, c_in * 9, side * side, m.bias))
            hidden.append(c * side * side)
            side, c_in = (side // 2 if side >= 2 else side), c
        layers.append(_Layer(outputs, c_in * side * side, 1, m.bias))
        return _Shape(samples, inputs, tuple(hidden), tuple(layers), ())
    dims = (inputs, *widths, outputs)
    layers = tuple(_Layer(b, a, 1, m.bias) for a, b in itertools.pairwise(dims))
    identity = m.name == "linear" or (m.activation == "linear" and not m.batch_norm)
    linear = tuple((w, dims[h] + dims[h + 2]) for h, w in enumerate(widths)) if identity else ()
    return _Shape(samples, inputs, tuple(widths), layers, linear)


def logged_rows(steps: int, log_every: int = 1) -> int:
    """About how many rows ``balance.engine.trainer.should_log`` keeps for a run of ``steps`` steps."""
    rows = min(steps, DENSE_STEPS) / log_every
    lo = DENSE_STEPS
    while lo < steps:
        hi = min(steps, lo * 10)
        rows += (hi - lo) / (log_every * 2 * lo / 1000)
        lo *= 10
    return int(rows) + 2


# --- the estimate -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A run's estimated peak memory (bytes, the worker's resident size) and wall time (seconds, an upper bound).

    ``parts``: the memory by part, in bytes, besides the process itself (``BASE_BYTES``) and before the allocator's
    slack (``SLACK``).
    """

    memory: int
    seconds: float
    parameters: int
    flops_per_step: float
    parts: tuple[tuple[str, int], ...]

    def describe(self) -> str:
        return f"about {gib(self.memory)} of memory and {duration(self.seconds)}"


def estimate(config: RunConfig) -> Estimate:
    """Peak memory and wall time of training ``config`` in a worker (see the module's docstring)."""
    shape = _shape(config)
    b = BYTES[config.dtype]
    o = config.optim
    batch = o.batch_size or shape.samples
    weights = sum(L.n_out * L.fan_in for L in shape.layers)
    params = weights + sum(L.n_out for L in shape.layers if L.bias)
    params += 2 * sum(config.model.hidden_widths()) if config.model.batch_norm else 0
    data_peak, data_kept = _data_bytes(config, shape)
    optimiser = {"momentum": 1, "nesterov": 2, "adam": 3, "sam": 2}.get(o.name, 0) * params * b  # SAM: shift, g~
    if o.name == "flow":
        optimiser = (FLOW_STATE + 2) * params * 8
    if config.model.name == "mf":
        (V, U) = shape.layers
        saved, transient = U.n_out * V.fan_in * b * 2, 0  # R = U V^T - M and U V^T
    else:
        per_sample = (3 if config.model.batch_norm else 2) * sum(shape.hidden) + 2 * shape.layers[-1].n_out
        saved = batch * per_sample * b
        widest = max([shape.inputs, *shape.hidden])
        transient = 2 * batch * widest * b  # two activation gradients alive at once in the backward pass
        if o.batch_size:  # the full training loss of a logged row: one forward pass over every sample, no graph
            transient = max(transient, 2 * shape.samples * widest * b)
        if config.model.name == "cnn":  # im2col: the forward's columns, the backward's and the weight gradient's
            unfolded = max(L.fan_in * L.positions for L in shape.layers[:-1])
            transient = max(transient, 3 * batch * unfolded * b)
    largest = max(L.n_out * L.fan_in for L in shape.layers)
    init = largest * 8 * (3 if config.model.init == "orthogonal" else 1)
    matrices = sum(n * n for n, _ in shape.linear) * 8  # each linear layer's initial matrix invariant, float64
    if config.sharpness_every:  # Lanczos: its float64 basis, a float64 model copy, the double-backward graph
        matrices += (LANCZOS_STEPS + 2) * params * 8 + 2 * saved * 8 // b
    widest_matrix = max((n for n, _ in shape.linear), default=0)
    transient = max(transient, 3 * widest_matrix**2 * 8, 2 * largest * 8, init)
    parts = (
        ("data", data_kept),
        ("weights", params * b),
        ("gradients", params * b),
        ("optimiser", optimiser),
        ("activations", saved),
        ("metrics", matrices + PENDING_BYTES),
        ("temporaries", transient),
        # glibc raises its mmap threshold (up to 32 MiB) as blocks are freed, so a step's temporaries below it come
        # from the heap and the freed ones stay resident beside the next step's: the Adam MLP of test_limits peaked
        # at 790-940 MiB between identical runs against 714 MiB counted without this
        ("allocator", transient),
    )
    memory = BASE_BYTES + int(SLACK * max(sum(n for _, n in parts), data_peak))
    flops, seconds = _seconds(config, shape, params, batch)
    return Estimate(memory, seconds, params, flops, parts)


def _data_bytes(config: RunConfig, shape: _Shape) -> tuple[int, int]:
    """(peak while building, kept while training): generated in float64, then cast once to the run's dtype."""
    d, b = config.data, BYTES[config.dtype]
    cast = b if config.dtype != "float64" else 0
    if d.name == "lowrank":
        n = d.d1 * d.d2
        return n * (16 + cast), n * b
    n, inputs = shape.samples, shape.inputs
    kept = n * inputs * b + n * 8
    if d.name == "teacher":
        return n * inputs * (8 + cast) + 2 * n * d.teacher_width * 8, kept
    if d.name == "images":
        return n * inputs * (24 + cast), kept
    if d.name == "csv":  # text, pandas' frame, NumPy, torch and the standardised copy
        return n * inputs * 40, kept
    return n * inputs * (24 + cast), kept


def _seconds(config: RunConfig, shape: _Shape, params: int, batch: int) -> tuple[float, float]:
    """(FLOPs of one step, estimated seconds of the whole run)."""
    family = config.model.name if config.model.name in ("mf", "cnn") else "dense"
    rate = FLOPS[family, config.dtype]
    layers = len(shape.layers)
    if config.model.name == "mf":
        (V, U) = shape.layers
        step = 6.0 * U.n_out * V.fan_in * V.n_out
        if config.model.regularizer:
            step += 8.0 * (U.n_out + V.fan_in) * V.n_out**2
    else:
        dense = sum(L.n_out * L.fan_in * L.positions for L in shape.layers)
        elementwise = 250.0 if config.model.batch_norm else 10.0  # BatchNorm's passes are memory-bound: measured
        step = 6.0 * batch * dense + elementwise * batch * sum(shape.hidden)
    step += 10.0 * params  # the update and the gradients' norms
    if config.optim.name == "flow":
        step *= FLOW_EVALUATIONS
    if config.optim.name == "sam":  # a second gradient, at the perturbed point
        step *= 2
    row = 12.0 * params + sum(2.0 * n * n * fan for n, fan in shape.linear)
    if config.optim.batch_size:
        row += 2.0 * shape.samples * sum(L.n_out * L.fan_in * L.positions for L in shape.layers)
    rows = logged_rows(config.steps, config.log_every)
    start = sum(4.0 * max(L.n_out, L.fan_in) * min(L.n_out, L.fan_in) ** 2 for L in shape.layers)  # orthogonal QR
    start = (start if config.model.init == "orthogonal" else 0.0) + 2.0 * shape.samples * shape.inputs * 64
    seconds = config.steps * (step / rate + STEP_SECONDS + LAYER_SECONDS * layers)
    seconds += rows * (row / rate + ROW_SECONDS + ROW_LAYER_SECONDS * layers) + start / rate
    if config.optim.name == "sam":  # the second evaluation's fixed costs
        seconds += config.steps * (STEP_SECONDS + LAYER_SECONDS * layers)
    if config.sharpness_every:  # each value: up to LANCZOS_STEPS Hessian-vector products of ~2 gradients each
        values = min(rows, config.steps // config.sharpness_every + 2)
        seconds += values * LANCZOS_STEPS * (2 * step / rate + STEP_SECONDS + LAYER_SECONDS * layers)
    return step, seconds


# --- limits -------------------------------------------------------------------------------------------------------


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover (not POSIX)
        return 8 * GIB


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class Limits:
    """What one run and one browser session may use (the module's docstring shows the file that sets them).

    Sessions named "" (the command line, claims, the lecture) have no per-session limits; every run has the
    per-run ones.
    """

    max_memory: int = 4 * GIB  # bytes of a run's estimated peak memory
    max_seconds: float = 3600.0  # a run's wall time
    running_per_session: int = 1  # runs of one session training or paused at once
    queued_per_session: int = 2  # runs of one session waiting for a worker besides
    idle_seconds: float = 600.0  # pause a session's runs when no page has shown them this long (0: never)
    idle_stop_seconds: float = 3600.0  # stop them (releasing their workers) after this long (0: never)

    @classmethod
    def default(cls) -> Limits:
        """The machine's share: half the RAM divided among the runs that train at once (one per core)."""
        cores = _cores()
        memory = max(GIB, _total_memory() // (2 * cores))
        return cls(max_memory=memory, running_per_session=max(1, cores // 2))

    @classmethod
    def load(cls, home: str | os.PathLike[str]) -> Limits:
        """The defaults, changed by ``<home>/limits.toml`` if there is one; a bad file raises ``ConfigError``."""
        from pathlib import Path

        from balance.files import FileRefused, read_text_limited

        path = Path(home).expanduser() / LIMITS_FILE
        if not path.exists():
            return cls.default()
        try:
            raw = tomllib.loads(read_text_limited(path, LIMITS_BYTES, "limits file"))
        except FileRefused as exc:
            raise ConfigError(str(exc)) from None
        except (tomllib.TOMLDecodeError, RecursionError) as exc:
            raise ConfigError(f"limits file {path}: not valid TOML ({str(exc)[:200]})") from None
        return cls.default().updated(raw, f"limits file {path}")

    def updated(self, raw: dict, where: str = "limits") -> Limits:
        """A copy with the settings of a ``limits.toml`` table (``max_memory_gib`` sets ``max_memory``)."""
        names = {("max_memory_gib" if f.name == "max_memory" else f.name): f for f in fields(self)}
        values = {}
        for key, value in raw.items():
            f = names.get(key)
            if f is None:
                raise ConfigError(f"{where}: unknown setting {str(key)[:80]!r}; allowed: {', '.join(names)}")
            whole = f.type == "int" and key != "max_memory_gib"
            ok = isinstance(value, int) if whole else isinstance(value, (int, float))
            if isinstance(value, bool) or not ok or not math.isfinite(value) or value < (1 if whole else 0):
                kind = "a whole number >= 1" if whole else "a number >= 0"
                raise ConfigError(f"{where}: {key} = {str(value)[:80]}: expected {kind}")
            values[f.name] = int(value * GIB) if key == "max_memory_gib" else value
        return Limits(**{**self.__dict__, **values})


def check(config: RunConfig, limits: Limits, cost: Estimate | None = None) -> Estimate:
    """Raise ``LimitError`` if ``config`` would exceed the per-run limits; returns its estimate otherwise."""
    cost = cost or estimate(config)
    if cost.memory > limits.max_memory:
        biggest = max(cost.parts, key=lambda part: part[1])
        raise LimitError(
            f"this run needs {cost.describe()}; the limit is {gib(limits.max_memory)} per run "
            f"(most of it: {biggest[0]}, {gib(biggest[1])}): use a smaller width, depth, number of samples or input "
            "size, float32, or mini-batches"
        )
    if config.max_seconds > limits.max_seconds and cost.seconds > limits.max_seconds:
        steps = _steps_within(config, limits.max_seconds, cost)
        raise LimitError(
            f"this run may take {duration(cost.seconds)} ({config.steps:,} steps) and asks for up to "
            f"max_seconds = {config.max_seconds:g}; the limit is {limits.max_seconds:g} s per run: set max_seconds "
            f"to at most {limits.max_seconds:g}" + (f" or steps to at most {steps:,}" if steps else "")
        )
    return cost


def _steps_within(config: RunConfig, seconds: float, cost: Estimate) -> int:
    """Roughly the most steps that fit in ``seconds`` (time is about linear in steps), rounded down to 2 digits."""
    steps = int(config.steps * seconds / cost.seconds * 0.9)
    if steps < 10:
        return 0
    scale = 10 ** (len(str(steps)) - 2)
    return steps // scale * scale


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / MIB:.0f} MiB"


def duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"about {seconds / size:.1f} {unit}"
    return f"about {max(seconds, 0.1):.1f} s"
