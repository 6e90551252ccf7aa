"""One frozen config: the single source of truth for defaults, validation, widgets, URL, CLI and saved runs.

Every field carries its own schema in ``dataclasses.field(metadata=...)``:

- ``help``: one line shown in the CLI and next to widgets;
- ``min`` / ``max``: the allowed range (inclusive) for numbers;
- ``choices``: allowed strings, or a zero-argument callable returning them (a registry's keys, looked up lazily
  so that adding a model or dataset is one registry entry);
- ``log``: the widget should offer log-spaced values;
- ``cli``: the command-line flag (default: ``--`` + field name with ``-``);
- ``link``: False for a setting that never enters or leaves a URL (a server path: a link must not make the server
  read a file); ``to_query`` leaves it out and ``from_query`` refuses it;
- ``applies``: when the setting matters, as a predicate over the flat settings ``{"model.name": "mf", ...}``
  (absent: always). A setting that does not apply is kept and validated but has no effect; the dashboard hides it.

``RunConfig.from_dict`` / ``to_dict``, ``to_toml`` / ``from_toml`` and ``to_query`` / ``from_query`` are lossless
round trips (floats are written with ``repr``, which round-trips every float64).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import tomli_w

from balance.config.codecs import (
    MAX_MESSAGE,
    MAX_TEXT,
    ConfigError,
    clip,
    coerce,
    field_kind,
    flatten,
    loads_toml,
    parse_text,
    show,
    to_text,
    unflatten,
)
from balance.engine import laws

__all__ = ["MAX_MESSAGE", "MAX_TEXT", "ConfigError", "clip", "loads_toml"]  # re-exported for balance.config


def _spec(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


def _is(key: str, *values: str) -> Callable[[Mapping[str, Any]], bool]:
    return lambda flat: flat[key] in values


def _data(*names: str) -> Callable[[Mapping[str, Any]], bool]:
    return _is("data.name", *names)


def _not_data(*names: str) -> Callable[[Mapping[str, Any]], bool]:
    return lambda flat: flat["data.name"] not in names


def _model(*names: str) -> Callable[[Mapping[str, Any]], bool]:
    return _is("model.name", *names)


def _not_model(*names: str) -> Callable[[Mapping[str, Any]], bool]:
    return lambda flat: flat["model.name"] not in names


def _datasets() -> tuple[str, ...]:
    return tuple(laws.DATASETS)


def _models() -> tuple[str, ...]:
    return tuple(laws.MODELS)


def _optimizers() -> tuple[str, ...]:
    return tuple(laws.OPTIMIZERS)


def _schedules() -> tuple[str, ...]:
    return tuple(laws.SCHEDULES)


# The choices and which optimiser settings apply come from the torch-free registry: adding an optimiser, an
# activation, a model family or a dataset there is what makes the config (and so the CLI, the URL, the sidebar)
# offer it.
ACTIVATIONS = tuple(laws.ACTIVATIONS)
INITS = ("gaussian", "uniform", "orthogonal")
LOSSES = ("auto", "squared", "logistic", "cross_entropy")
DTYPES = ("float32", "float64")


class _Validated:
    """Checks every field against its metadata on construction, then the class's own ``_check``."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            _check_field(self._section, f, getattr(self, f.name))  # type: ignore[attr-defined]
        self._check()

    def _check(self) -> None:
        pass

    def _fail(self, name: str, value: Any, why: str) -> typing.NoReturn:
        raise ConfigError(f"{self._section}.{name} = {show(value)}: {why}")  # type: ignore[attr-defined]


def _check_field(section: str, f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    where = f"{section}.{f.name} = {show(value)}"
    kind = field_kind(f)
    items = value if kind in (tuple, "inttuple") else (value,)
    base = float if kind is tuple else int if kind == "inttuple" else kind
    if kind in (tuple, "inttuple") and not isinstance(value, tuple):
        raise ConfigError(f"{where}: expected a list of numbers")
    for v in items:
        if base is bool:
            if not isinstance(v, bool):
                raise ConfigError(f"{where}: expected true or false")
            continue
        if base is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise ConfigError(f"{where}: expected a whole number")
        if base is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{where}: expected a number")
            if not math.isfinite(v):
                raise ConfigError(f"{where}: expected a finite number")
        if base is str and not isinstance(v, str):
            raise ConfigError(f"{where}: expected text")
        if base is str and len(v) > MAX_TEXT:
            raise ConfigError(f"{where}: longer than {MAX_TEXT} characters")
        lo, hi = meta.get("min"), meta.get("max")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ConfigError(f"{where}: out of range, allowed {lo} to {hi}")
    choices = meta.get("choices")
    if choices is not None:
        allowed = choices() if callable(choices) else choices
        if value not in allowed:
            raise ConfigError(f"{where}: not one of {', '.join(allowed)}")


@dataclass(frozen=True)
class DataConfig(_Validated):
    """What to fit. ``lowrank`` is the paper's matrix M* = A diag(s) B^T; the rest are sample sets."""

    _section = "data"
    name: str = _spec("lowrank", "dataset", choices=_datasets, cli="--dataset")
    d1: int = _spec(100, "rows of the target matrix M (lowrank)", min=1, max=2000, applies=_data("lowrank"))
    d2: int = _spec(25, "columns of the target matrix M (lowrank)", min=1, max=2000, applies=_data("lowrank"))
    rank: int = _spec(5, "rank r of the target matrix (lowrank)", min=1, max=500, applies=_data("lowrank"))
    singular_values: tuple[float, ...] = _spec(
        (), "singular values of M, largest first (default r, r-1, ..., 1)", min=0.0, max=1e6, applies=_data("lowrank")
    )
    samples: int = _spec(
        256, "number of samples (sample sets)", min=4, max=100_000, applies=_not_data("lowrank", "csv")
    )
    input_dim: int = _spec(10, "input dimension (teacher)", min=1, max=4096, applies=_data("teacher"))
    output_dim: int = _spec(1, "output dimension (teacher)", min=1, max=256, applies=_data("teacher"))
    teacher_width: int = _spec(
        16, "hidden width of the teacher network (teacher)", min=1, max=1024, applies=_data("teacher")
    )
    noise: float = _spec(
        0.1, "label noise (teacher) or point jitter (2-D sets)", min=0.0, max=10.0, applies=_not_data("lowrank", "csv")
    )
    image_size: int = _spec(8, "side of the generated square images (images)", min=4, max=32, applies=_data("images"))
    csv_path: str = _spec(
        "", "path of a CSV file: numeric features and a target column (csv)", applies=_data("csv"), link=False
    )
    target: str = _spec("", "target column of the CSV (default: the last)", applies=_data("csv"))
    loss: str = _spec(
        "auto",
        "loss; auto picks squared error or logistic / cross-entropy",
        choices=LOSSES,
        applies=_not_data("lowrank"),
    )
    seed: int = _spec(0, "seed of the data (separate from the run seed)", min=0, max=2**31 - 1, cli="--data-seed")

    def _check(self) -> None:
        if self.name == "lowrank" and self.rank > min(self.d1, self.d2):
            self._fail("rank", self.rank, f"the rank cannot exceed min(d1, d2) = {min(self.d1, self.d2)}")
        if self.singular_values and len(self.singular_values) != self.rank:
            self._fail("singular_values", self.singular_values, f"give exactly rank = {self.rank} values")
        if self.name == "csv" and not self.csv_path:
            self._fail("csv_path", self.csv_path, "the csv dataset needs a file path (--dataset csv:PATH)")


@dataclass(frozen=True)
class ModelConfig(_Validated):
    """The network and its initialisation. Layer 1 is the input side; for ``mf`` layer 1 is V and layer 2 is U."""

    _section = "model"
    name: str = _spec("mf", "model family", choices=_models, cli="--model")
    depth: int = _spec(
        3, "number of weight layers (linear, mlp; cnn: conv layers + head)", min=2, max=32, applies=_not_model("mf")
    )
    width: int = _spec(32, "hidden width (linear, mlp) or channels (cnn)", min=1, max=4096, applies=_not_model("mf"))
    widths: tuple[int, ...] = _spec(
        (), "hidden widths, one per hidden layer (overrides width)", min=1, max=4096, applies=_not_model("mf")
    )
    rank: int = _spec(
        0,
        "factor rank of U and V (mf; 0: the target's rank)",
        min=0,
        max=2000,
        cli="--factor-rank",
        applies=_model("mf"),
    )
    activation: str = _spec(
        "relu", "activation of hidden layers (mlp, cnn)", choices=ACTIVATIONS, applies=_model("mlp", "cnn")
    )
    negative_slope: float = _spec(
        0.1,
        "slope of leaky_relu for negative inputs",
        min=0.0,
        max=1.0,
        applies=lambda v: v["model.name"] in ("mlp", "cnn") and v["model.activation"] == "leaky_relu",
    )
    bias: bool = _spec(False, "hidden and output layers have biases", applies=_not_model("mf"))
    batch_norm: bool = _spec(False, "BatchNorm after every hidden linear layer (mlp)", applies=_model("mlp"))
    regularizer: float = _spec(
        0.0, "lambda of the balancing term lambda/8 ||U^T U - V^T V||_F^2 (mf)", min=0.0, max=1e3, applies=_model("mf")
    )
    init: str = _spec("gaussian", "initial weight distribution (same standard deviation)", choices=INITS)
    init_scale: float = _spec(0.1, "standard deviation of each initial weight", min=1e-8, max=100.0, log=True)
    layer_scales: tuple[float, ...] = _spec(
        (), "per-layer multipliers on the init scale, input side first", min=0.0, max=1e6
    )

    def hidden_widths(self) -> tuple[int, ...]:
        """Widths of the hidden layers (linear, mlp, cnn): ``widths`` if given, else ``width`` repeated."""
        return self.widths or (self.width,) * (self.depth - 1)

    def _check(self) -> None:
        if self.widths and len(self.widths) != self.depth - 1:
            self._fail("widths", self.widths, f"give depth - 1 = {self.depth - 1} hidden widths")
        n_layers = 2 if self.name == "mf" else self.depth
        if self.layer_scales and len(self.layer_scales) != n_layers:
            self._fail("layer_scales", self.layer_scales, f"give one multiplier per layer ({n_layers})")
        if self.batch_norm and self.name != "mlp":
            self._fail("batch_norm", self.batch_norm, "batch norm is available for mlp only")
        if self.regularizer and self.name != "mf":
            self._fail("regularizer", self.regularizer, "the balancing regulariser applies to mf only")


@dataclass(frozen=True)
class OptimConfig(_Validated):
    """How to step. ``flow`` integrates gradient flow with an adaptive ODE solver; t advances by lr per step."""

    _section = "optim"
    name: str = _spec("gd", "optimiser", choices=_optimizers, cli="--optimizer")
    lr: float = _spec(0.01, "step size eta (flow: time per step)", min=1e-8, max=100.0, log=True)
    momentum: float = _spec(
        0.9,
        "momentum beta (momentum, nesterov; adam: beta1)",
        min=0.0,
        max=0.9999,
        applies=laws.reads("optim.momentum"),
    )
    beta2: float = _spec(0.999, "adam's second-moment decay", min=0.0, max=0.999999, applies=laws.reads("optim.beta2"))
    eps: float = _spec(1e-8, "adam's epsilon", min=1e-16, max=1.0, log=True, applies=laws.reads("optim.eps"))
    weight_decay: float = _spec(
        0.0,
        "coupled L2 weight decay lambda (gradient + lambda * W)",
        min=0.0,
        max=10.0,
        applies=laws.reads("optim.weight_decay"),
    )
    schedule: str = _spec("constant", "step-size schedule", choices=_schedules, applies=laws.reads("optim.schedule"))
    decay_power: float = _spec(
        0.25,
        "delta of the theorem schedule eta0 (k+1)^-(1/2+delta)",
        min=0.0,
        max=0.5,
        applies=laws.reads("optim.decay_power"),
    )
    decay_every: int = _spec(
        1000,
        "steps between step-decay drops",
        min=1,
        max=10**8,
        applies=laws.reads("optim.decay_every"),
    )
    decay_factor: float = _spec(
        0.5,
        "factor of each step-decay drop",
        min=1e-6,
        max=1.0,
        applies=laws.reads("optim.decay_factor"),
    )
    batch_size: int = _spec(
        0,
        "mini-batch size (0: full batch)",
        min=0,
        max=100_000,
        applies=lambda v: laws.reads("optim.batch_size")(v) and v["data.name"] != "lowrank",
    )
    rtol: float = _spec(
        1e-10,
        "relative tolerance of the gradient-flow solver",
        min=1e-14,
        max=1e-2,
        log=True,
        applies=laws.reads("optim.rtol"),
    )

    def _check(self) -> None:
        if self.name == "sgd" and self.batch_size == 0:
            self._fail("batch_size", 0, "sgd needs a mini-batch size of at least 1 (or use gd for full batch)")
        if self.name in ("gd", "flow") and self.batch_size:
            self._fail("batch_size", self.batch_size, f"{self.name} is full-batch; use sgd for mini-batches")
        if self.name == "flow" and (self.weight_decay or self.schedule != "constant"):
            self._fail("name", self.name, "gradient flow takes no weight decay and no schedule")


@dataclass(frozen=True)
class RunConfig(_Validated):
    """A whole experiment: data, model, optimiser and how long to train. Seeded: same config, same numbers."""

    _section = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = _spec(3000, "number of optimiser steps", min=0, max=10**8)
    dtype: str = _spec("float64", "floating-point precision", choices=DTYPES)
    seed: int = _spec(0, "seed of the initialisation and mini-batches", min=0, max=2**31 - 1)
    log_every: int = _spec(
        1, "log every n-th step (long runs thin further, keeping about 20,000 rows)", min=1, max=10**6
    )
    max_seconds: float = _spec(3600.0, "wall-time limit of the run", min=0.1, max=7 * 86400.0)

    def __post_init__(self) -> None:
        for name in ("data", "model", "optim"):
            if not isinstance(getattr(self, name), SECTIONS[name]):
                raise ConfigError(f"run.{name}: expected a {SECTIONS[name].__name__}")
        for f in _own_fields(RunConfig):
            _check_field("run", f, getattr(self, f.name))
        self._check()

    def _check(self) -> None:
        d, m, o = self.data, self.model, self.optim
        if (m.name == "mf") != (d.name == "lowrank"):
            raise ConfigError(
                f"model.name = {m.name!r} with data.name = {d.name!r}: "
                "matrix factorisation (mf) fits the lowrank matrix, and only mf does"
            )
        if m.name == "mf" and m.rank > min(d.d1, d.d2):
            raise ConfigError(f"model.rank = {m.rank}: the factor rank cannot exceed min(d1, d2) = {min(d.d1, d.d2)}")
        if d.name == "lowrank" and o.batch_size:
            raise ConfigError(f"optim.batch_size = {o.batch_size}: the lowrank matrix has no samples to batch")
        if o.batch_size > d.samples and d.name not in ("lowrank", "csv"):
            raise ConfigError(f"optim.batch_size = {o.batch_size}: larger than data.samples = {d.samples}")

    # --- round trips ---------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (tuples become lists), the inverse of ``from_dict``."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            out[name] = {f.name: _plain(getattr(getattr(self, name), f.name)) for f in _own_fields(SECTIONS[name])}
        out.update({f.name: _plain(getattr(self, f.name)) for f in _own_fields(RunConfig)})
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RunConfig:
        """Strict: unknown keys and wrong types raise ``ConfigError`` naming the key; missing keys take defaults."""
        if not isinstance(raw, Mapping):
            raise ConfigError("config: expected a table of sections (data, model, optim) and run fields")
        run_names = {f.name for f in _own_fields(RunConfig)}
        for key in raw:
            if key not in SECTIONS and key not in run_names:
                raise ConfigError(
                    f"config: unknown key {show(key)}; allowed: {', '.join([*SECTIONS, *sorted(run_names)])}"
                )
        parts = {}
        for name, section_cls in SECTIONS.items():
            sub = raw.get(name, {})
            if not isinstance(sub, Mapping):
                raise ConfigError(f"{name}: expected a table of fields")
            parts[name] = _build(section_cls, name, sub)
        top = {k: coerce("run", _field(RunConfig, k), v) for k, v in raw.items() if k in run_names}
        return cls(**parts, **top)

    def flat(self) -> dict[str, Any]:
        """Every setting by dotted name, ``{"model.name": "mf", ..., "steps": 3000}`` (lists as lists)."""
        return flatten(self.to_dict())

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, text: str) -> RunConfig:
        return cls.from_dict(loads_toml(text))

    def to_query(self) -> dict[str, str]:
        """Flat ``{"model.width": "32", ...}`` of the fields that differ from the defaults (short links).

        Settings marked ``link=False`` (a file path) are left out.
        """
        default = flatten(RunConfig().to_dict())
        flat = flatten(self.to_dict())
        return {k: to_text(v) for k, v in flat.items() if default[k] != v and k not in _UNLINKED}

    @classmethod
    def from_query(cls, query: Mapping[str, str], strict: bool = True) -> tuple[RunConfig, list[str]]:
        """Parse a URL query. Strict: the first bad value raises. Lenient: bad keys are dropped and named.

        Returns the config and the list of problems (empty when strict).
        """
        problems: list[str] = []
        values: dict[str, Any] = {}  # dotted key -> parsed value, each valid on its own
        for key, text in query.items():
            section, _, name = key.rpartition(".")
            try:
                owner = SECTIONS.get(section, RunConfig if section == "" else None)
                if owner is None or name not in {f.name for f in _own_fields(owner)}:
                    raise ConfigError(f"{key}: unknown setting")
                f = _field(owner, name)
                if not f.metadata.get("link", True):
                    raise ConfigError(f"{key}: a link cannot set this (a file on the server); choose it on the page")
                values[key] = parse_text(section or "run", f, str(text))
                _check_field(section or "run", f, coerce(section or "run", f, values[key]))
            except ConfigError as exc:
                if strict:
                    raise
                problems.append(str(exc))
                values.pop(key, None)
        # Validated as a whole, not key by key: {data.name: teacher, model.name: mlp} is only valid together.
        try:
            return cls.from_dict(unflatten(values)), problems
        except ConfigError as exc:  # a combination invalid as a whole
            if strict:
                raise
            why = str(exc)
        for key in reversed(values):  # usually one key conflicts with the rest: drop the latest such key
            rest = {k: v for k, v in values.items() if k != key}
            if _consistent(rest):
                return cls.from_dict(unflatten(rest)), [*problems, f"{why} (dropped {key})"]
        kept: dict[str, Any] = {}
        for key, value in values.items():
            if _consistent({**kept, key: value}):
                kept[key] = value
        dropped = ", ".join(k for k in values if k not in kept)
        return cls.from_dict(unflatten(kept)), [*problems, f"{why} (dropped {dropped})"]

    def replace(self, **changes: Any) -> RunConfig:
        """Copy with changes given as dotted names, e.g. ``replace(**{"optim.lr": 0.1, "steps": 10})``."""
        flat = flatten(self.to_dict())
        for key, value in changes.items():
            if key not in flat:
                raise ConfigError(f"{key}: unknown setting")
            flat[key] = _plain(value)
        return RunConfig.from_dict(unflatten(flat))


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig}


def _consistent(flat: Mapping[str, Any]) -> bool:
    try:
        RunConfig.from_dict(unflatten(flat))
    except ConfigError:
        return False
    return True


def _own_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.name not in SECTIONS]


def _field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _build(cls: type, section: str, raw: Mapping[str, Any]) -> Any:
    names = {f.name for f in _own_fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(f"{section}.{key}: unknown setting; allowed: {', '.join(sorted(names))}")
    return cls(**{k: coerce(section, _field(cls, k), v) for k, v in raw.items()})


def parse_value(key: str, text: str) -> Any:
    """Parse ``text`` for the dotted setting ``key`` (e.g. ``optim.lr``) as the CLI and URL do."""
    section, _, name = key.rpartition(".")
    owner = SECTIONS.get(section, RunConfig)
    return parse_text(section or "run", _field(owner, name), text)


def schema() -> list[tuple[str, dataclasses.Field]]:
    """Every setting as (dotted name, field), in display order: data, model, optim, then run fields.

    The CLI, the URL and the dashboard's widgets are all built from this list.
    """
    out = [(f"{s}.{f.name}", f) for s, cls in SECTIONS.items() for f in _own_fields(cls)]
    return out + [(f.name, f) for f in _own_fields(RunConfig)]


_UNLINKED = frozenset(name for name, f in schema() if not f.metadata.get("link", True))


def choices_of(f: dataclasses.Field) -> tuple[str, ...] | None:
    choices: Callable[[], tuple[str, ...]] | tuple[str, ...] | None = f.metadata.get("choices")
    return choices() if callable(choices) else choices


def applicable(flat: Mapping[str, Any]) -> list[str]:
    """The dotted settings that matter for the flat settings ``flat`` (e.g. ``model.rank`` only for mf)."""
    return [key for key, f in schema() if f.metadata.get("applies", lambda _: True)(flat)]


def link_query(config: RunConfig) -> dict[str, str]:
    """A link's query: the settings that differ from the defaults, and the seed always (a link should say which
    seed it is). The dashboard's URL, share links and the claims' and lecture's links into Explore all use it."""
    return {**config.to_query(), "seed": str(config.seed)}
