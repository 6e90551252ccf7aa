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
    flatten,
    loads_toml,
    parse_text,
    show,
    to_text,
    unflatten,
)
from balance.config.fields import DTYPES, _check_field, _spec, _Validated
from balance.config.sections import ACTIVATIONS, DataConfig, ModelConfig, OptimConfig
from balance.engine import laws

__all__ = [
    "ACTIVATIONS",
    "MAX_MESSAGE",
    "MAX_TEXT",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "clip",
    "loads_toml",
]  # re-exported for balance.config


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
    sharpness_every: int = _spec(
        0,
        "log the sharpness (largest Hessian eigenvalue, against 2/eta) every n-th step; 0: off (it costs)",
        min=0,
        max=10**8,
    )

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
        if o.name == "label_noise":
            loss = laws.DATASETS[d.name].default_loss if d.loss == "auto" else d.loss
            if d.name == "lowrank" or loss != "squared":
                raise ConfigError(
                    f"optim.name = 'label_noise' with data.name = {d.name!r}: label noise needs a regression set of "
                    "samples (squared loss), e.g. teacher"
                )
        layers = 2 if m.name == "mf" else m.depth
        if o.layer_lrs and len(o.layer_lrs) != layers:
            raise ConfigError(
                f"optim.layer_lrs = {show(o.layer_lrs)}: give one step-size multiplier per weight layer ({layers})"
            )

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
